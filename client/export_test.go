package client

// WithPasswdFile makes the Client look DaemonUser up in path instead of
// /etc/passwd.
func WithPasswdFile(path string) Option {
	return func(o *options) { o.passwd = path }
}
