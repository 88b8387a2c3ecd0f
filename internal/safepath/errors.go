package safepath

import "errors"

// ErrUnsafe means a directory on the path, or a symlink on it, can be
// changed by a user who is neither root nor trusted.
var ErrUnsafe = errors.New("path can be changed by an untrusted user")
