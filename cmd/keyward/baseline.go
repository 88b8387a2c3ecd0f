package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/keyward/keyward/internal/benchrun"
)

// envModule names the PKCS#11 module when --module is not given.
const envModule = "KEYWARD_PKCS11_MODULE"

// childError is keywardd bench-baseline's failure: its message (with its
// hint, if any) and its exit status, which has keyward's meanings.
type childError struct {
	msg  string
	code int
}

func (e *childError) Error() string { return e.msg }

// baseline runs the in-process half of bench --baseline in keywardd: this
// command links no PKCS#11 module.
type baseline struct {
	bin   string // keywardd
	o     benchOptions
	grace time.Duration
}

// findKeywardd is --keywardd, else the keywardd beside this executable,
// else keywardd in $PATH.
func findKeywardd(given string) (string, error) {
	if given != "" {
		return given, nil
	}
	if exe, err := os.Executable(); err == nil {
		if p := filepath.Join(filepath.Dir(exe), "keywardd"); isExecutable(p) {
			return p, nil
		}
	}
	p, err := exec.LookPath("keywardd")
	if err != nil {
		return "", usagef("bench", "--baseline runs keywardd bench-baseline, and keywardd is neither beside keyward nor in $PATH: give --keywardd PATH")
	}
	return p, nil
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// run measures op on key at concurrency conc in keywardd (conc 0: one
// check call, no measurement).
func (b *baseline) run(ctx context.Context, op, key string, conc int) (*benchStats, error) {
	args := []string{"bench-baseline", "--op", op, "--key", key, "--module", b.o.module, "--token", b.o.token,
		"--payload", strconv.Itoa(b.o.payload), "--batch", strconv.Itoa(b.o.batch), "--grace", b.grace.String()}
	if b.o.pinFile != "" {
		args = append(args, "--pin-file", b.o.pinFile)
	}
	if conc > 0 {
		args = append(args, "--concurrency", strconv.Itoa(conc), "--duration", b.o.duration.String())
	}
	cmd := exec.CommandContext(ctx, b.bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee) && ctx.Err() == nil:
		msg := strings.TrimPrefix(strings.TrimSpace(stderr.String()), "keywardd ")
		code := ee.ExitCode()
		if code < exitFailed || code > exitUnavailable {
			code = exitFailed
		}
		return nil, &childError{msg: "bench: baseline: " + oneLine(msg), code: code}
	case err != nil:
		return nil, fmt.Errorf("bench: baseline: %s: %w", b.bin, err)
	case conc == 0:
		return nil, nil
	}
	var out struct {
		benchrun.Stats
		FirstError string `json:"first_error"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		return nil, fmt.Errorf("bench: baseline: %s printed %q: %w", b.bin, stdout.String(), err)
	}
	if out.FirstError != "" {
		out.FirstErr = errors.New(out.FirstError)
	}
	return &out.Stats, nil
}
