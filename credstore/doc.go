// Package credstore is keyward's store of systemd credentials: one keyward
// blob per credential at <dir>/<unit>/<id>, wrapped with the context
// {unit: <unit>, credential: <id>}, and the parser of the address systemd
// binds when it asks for one (LoadCredential=ID:/path/to/socket).
//
// The store only moves bytes: which caller may have a credential, and the
// unwrapping, are the daemon's. Every name is checked before it touches a
// path, every directory and file is opened without following symlinks, and
// a file that someone other than root or the daemon's user could have
// written is refused.
package credstore
