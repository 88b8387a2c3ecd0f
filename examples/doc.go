// Package examples holds clients of keywardd in other languages (python/,
// node/) and the tests that run them against a real keywardd --dev; see
// docs/other-languages.md.
package examples
