package secretfile

import "syscall"

// ostNoFollow refuses a symlink as the last path element, so a secret path
// cannot be redirected to another file after it was checked.
func ostNoFollow() int { return syscall.O_NOFOLLOW }
