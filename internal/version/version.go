// Package version is keyward's build version, shared by keywardd and
// keyward. The Makefile stamps it from git (`git describe --always
// --dirty`) with -ldflags "-X github.com/keyward/keyward/internal/version.stamp=...";
// an unstamped build (go build, go install, go test) reports what the Go
// toolchain recorded: the module's version when built as a dependency or by
// go install pkg@version, else the VCS revision (12 hex digits, "-dirty"
// when the tree had changes), else "devel".
package version

import (
	"runtime"
	"runtime/debug"
)

// stamp is set at link time; empty in an unstamped build.
var stamp string

// String is the build version: never empty.
func String() string {
	if stamp != "" {
		return stamp
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	return fromBuildInfo(bi)
}

// fromBuildInfo picks the version out of what the toolchain recorded.
func fromBuildInfo(bi *debug.BuildInfo) string {
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev string
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return rev
}

// Go is the Go release the binary was built with.
func Go() string { return runtime.Version() }

// Line is what --version prints: "NAME VERSION (GO)".
func Line(name string) string {
	return name + " " + String() + " (" + Go() + ")"
}
