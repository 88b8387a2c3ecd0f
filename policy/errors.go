package policy

import "errors"

var (
	// ErrInvalidPolicy: Compile refused a rule. Every error from Compile
	// wraps it and names the rule at fault.
	ErrInvalidPolicy = errors.New("invalid policy")
	// ErrUnknownOperation: ParseOperation was given a name outside the
	// closed set of operations.
	ErrUnknownOperation = errors.New("unknown operation")
)
