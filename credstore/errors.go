package credstore

import "errors"

var (
	// ErrAddress: the peer's address is not systemd's credential request.
	ErrAddress = errors.New("credstore: not a systemd credential request address")
	// ErrName: a unit name or credential id that the store does not accept.
	ErrName = errors.New("credstore: invalid unit name or credential id")
	// ErrNotFound: no credential for that unit and id (nor its template's).
	ErrNotFound = errors.New("credstore: no such credential")
	// ErrExists: a credential of that unit and id exists and replacing it was not asked for.
	ErrExists = errors.New("credstore: credential exists")
	// ErrUnsafe: a directory or file of the store is not a plain one
	// owned by root or the daemon's user and closed to others.
	ErrUnsafe = errors.New("credstore: unsafe store entry")
	// ErrTooLarge: a stored blob larger than any keyward blob.
	ErrTooLarge = errors.New("credstore: stored credential too large")
)
