// Package config is keywardd's configuration file: its types (Config,
// Backend, Limits), the defaults an empty file means, strict decoding that
// names the line of every problem (LoadConfig, ParseConfig), value checks
// (Config.Validate) and CheckConfig, which also compiles the policy. It
// needs no server: keyward (policy explain/report) and keywardd
// --check-config use it without the daemon's packages.
//
// Promises: an unknown key, a key of the other backend kind, a wrong type
// or a bad value is an error wrapping ErrConfig and naming its file, line
// and dotted key; every problem of a file is reported, in a fixed order
// (the file's, then the checks'); a PIN written into backend.uri is refused
// and never echoed.
package config
