//go:build race

package daemon_test

// raceEnabled: the race detector multiplies memory use (shadow memory), so
// memory bounds are reported, not enforced.
const raceEnabled = true
