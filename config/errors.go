package config

import "errors"

// ErrConfig wraps every configuration error.
var ErrConfig = errors.New("invalid configuration")
