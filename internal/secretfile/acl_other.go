//go:build !linux

package secretfile

import "os"

func privateByACL(*os.File, os.FileMode) bool { return false }
