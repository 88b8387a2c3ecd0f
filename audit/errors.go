package audit

import "errors"

var (
	// ErrUnavailable: the record could not be made durable (the log is
	// failing, or closed). The caller must refuse the operation: the daemon
	// maps it to gRPC Unavailable.
	ErrUnavailable = errors.New("audit log unavailable")

	// ErrClosed: Append after Close. It also matches ErrUnavailable.
	ErrClosed = &closedError{}

	// ErrInvalidRecord: Append was given a record it will not write (no op
	// or result, a time outside years 1..9999, a line over MaxLine). A
	// programming error in the caller; the operation must still be refused.
	ErrInvalidRecord = errors.New("invalid audit record")

	// ErrCorrupt: Open found a complete record after damaged bytes, or a
	// rotated file that does not end as its name says. Open refuses to guess;
	// "keyward audit verify" names the record.
	ErrCorrupt = errors.New("audit log corrupt")

	// ErrInUse: another process (another keywardd) has the log open. Two
	// writers would fork the chain.
	ErrInUse = errors.New("audit log in use by another process")

	// ErrBroken: Verify found the chain broken. The error is a *Break that
	// names the record.
	ErrBroken = errors.New("audit chain broken")

	// ErrUnsafe: Open refused the log's directory or one of its files: a
	// symlink, not a regular file, owned by another user, or a directory
	// its group or others may write (or a context key others may read).
	// Nothing was written through it.
	ErrUnsafe = errors.New("audit log path unsafe")
)

type closedError struct{}

func (*closedError) Error() string { return "audit log closed" }

func (*closedError) Is(target error) bool { return target == ErrUnavailable }
