// Package softhsmtest gives a test binary its own SoftHSM2 token: a private
// temporary directory holding a softhsm2.conf, a token directory and an
// initialised token with random PINs, selected through SOFTHSM2_CONF.
//
// It touches no global state: nothing under /etc/softhsm or /var/lib/softhsm
// is read or written, and Close removes everything it created and restores the
// previous SOFTHSM2_CONF. Tokens are found by label, never by slot number,
// because SoftHSM2 moves a token to a random slot id when it is initialised.
//
// Typical use:
//
//	var tok *softhsmtest.Token
//
//	func TestMain(m *testing.M) { os.Exit(softhsmtest.Main(m, &tok)) }
//
//	func TestSomething(t *testing.T) {
//		softhsmtest.Need(t, tok)
//		// tok.Module, tok.Label, tok.PINFile ...
//	}
//
// Threat model: none. The tokens are throwaway test fixtures. The PINs are
// still kept off every process's argv (they are typed into softhsm2-util
// through a pseudo-terminal with echo off) so the helper models what the
// production provisioning must do, and so that `ps` during a test run shows
// nothing worth copying.
//
// SOFTHSM2_CONF is process-wide, so a test binary should hold one Token at a
// time (Main's); tests that create more must not run in parallel with tests
// that depend on the environment, and must Close them in reverse order.
package softhsmtest
