package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	pb "github.com/keyward/keyward/api/keyward/v1"
	softhsmtest "github.com/keyward/keyward/softhsm-test"
)

// The test binary re-executes itself in these modes, before any test runs.
const (
	envSeccompExec = "KW_TEST_SECCOMP_EXEC" // install the filter its value names (seccompFilters), then exec the arguments after "--"
	envMDWEProbe   = "KW_TEST_MDWE_PROBE"   // install the mdwe filter, try a W+X mapping, report
)

// seccompFilters are the filters a re-executed test binary installs:
// keyward.service's, one part each.
var seccompFilters = map[string]func() error{
	"mdwe":      denyWriteExecute,
	"resources": denySetScheduler,
}

func init() {
	switch {
	case os.Getenv(envSeccompExec) != "":
		runtime.LockOSThread() // the filter and the exec on one thread
		install, ok := seccompFilters[os.Getenv(envSeccompExec)]
		if !ok {
			fmt.Fprintln(os.Stderr, "seccomp: no filter", os.Getenv(envSeccompExec))
			os.Exit(125)
		}
		if err := install(); err != nil {
			fmt.Fprintln(os.Stderr, "seccomp:", err)
			os.Exit(125)
		}
		args := os.Args[len(os.Args)-2:]
		for i, a := range os.Args {
			if a == "--" {
				args = os.Args[i+1:]
				break
			}
		}
		env := []string{}
		for _, e := range os.Environ() {
			if !strings.HasPrefix(e, envSeccompExec+"=") {
				env = append(env, e)
			}
		}
		err := syscall.Exec(args[0], args, env)
		fmt.Fprintln(os.Stderr, "seccomp: exec:", err)
		os.Exit(126)
	case os.Getenv(envMDWEProbe) != "":
		runtime.LockOSThread()
		if err := denyWriteExecute(); err != nil {
			fmt.Fprintln(os.Stderr, "mdwe:", err)
			os.Exit(125)
		}
		_, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE|unix.PROT_EXEC, unix.MAP_ANON|unix.MAP_PRIVATE)
		fmt.Printf("mmap W+X: %v\n", err)
		os.Exit(0)
	}
}

// BPF for the filters below: a statement, a jump if the accumulator
// equals k, and the loads of seccomp_data's fields.
func stmt(code uint16, k uint32) unix.SockFilter { return unix.SockFilter{Code: code, K: k} }

func jeq(k uint32, jt, jf uint8) unix.SockFilter {
	return unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: k, Jt: jt, Jf: jf}
}

const (
	ldw    = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
	offNr  = 0
	offArc = 4
	offA2  = 16 + 2*8 // low half of args[2] (little endian): prot, or shmflg
)

// denied is the action of a refused call: EPERM, as systemd's
// SystemCallErrorNumber=EPERM and MemoryDenyWriteExecute= do.
const denied = uint32(unix.SECCOMP_RET_ERRNO) | uint32(unix.EPERM)

// x86only lets every call of another architecture through.
func x86only() []unix.SockFilter {
	return []unix.SockFilter{
		stmt(ldw, offArc),
		jeq(unix.AUDIT_ARCH_X86_64, 1, 0),
		stmt(unix.BPF_RET|unix.BPF_K, unix.SECCOMP_RET_ALLOW),
	}
}

// denyWriteExecute installs the seccomp filter systemd 252 installs for
// MemoryDenyWriteExecute=yes (seccomp_memory_deny_write_execute): EPERM for
// mmap with PROT_WRITE|PROT_EXEC, mprotect and pkey_mprotect with PROT_EXEC,
// and shmat with SHM_EXEC. x86-64 only; other architectures pass through.
func denyWriteExecute() error {
	const shmExec = 0o100000
	f := x86only()
	for _, r := range []struct{ nr, mask uint32 }{
		{unix.SYS_MMAP, unix.PROT_WRITE | unix.PROT_EXEC},
		{unix.SYS_MPROTECT, unix.PROT_EXEC},
		{unix.SYS_PKEY_MPROTECT, unix.PROT_EXEC},
		{unix.SYS_SHMAT, shmExec},
	} {
		f = append(f,
			stmt(ldw, offNr),
			jeq(r.nr, 0, 4), // another call: on to the next rule
			stmt(ldw, offA2),
			stmt(unix.BPF_ALU|unix.BPF_AND|unix.BPF_K, r.mask),
			jeq(r.mask, 0, 1), // every masked bit set: refuse
			stmt(unix.BPF_RET|unix.BPF_K, denied),
		)
	}
	return installFilter(append(f, stmt(unix.BPF_RET|unix.BPF_K, unix.SECCOMP_RET_ALLOW)))
}

// denySetScheduler refuses sched_setscheduler with EPERM, as
// keyward.service's SystemCallFilter=~@resources with
// SystemCallErrorNumber=EPERM does. x86-64 only.
func denySetScheduler() error {
	return installFilter(append(x86only(),
		stmt(ldw, offNr),
		jeq(unix.SYS_SCHED_SETSCHEDULER, 0, 1),
		stmt(unix.BPF_RET|unix.BPF_K, denied),
		stmt(unix.BPF_RET|unix.BPF_K, unix.SECCOMP_RET_ALLOW),
	))
}

// installFilter installs f on every thread of the process.
func installFilter(f []unix.SockFilter) error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	prog := unix.SockFprog{Len: uint16(len(f)), Filter: &f[0]}
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&prog))); e != 0 {
		return fmt.Errorf("seccomp: %w", e)
	}
	return nil
}

// TestMemoryDenyWriteExecute answers whether keyward.service may keep
// MemoryDenyWriteExecute=yes with the SoftHSM2 module loaded through cgo:
// keywardd runs under the same seccomp filter systemd installs for it (a
// systemd-run is not possible without systemd as PID 1) and does every kind
// of operation on every key type. The filter is shown to bite first.
func TestMemoryDenyWriteExecute(t *testing.T) {
	softhsmtest.Need(t, tok)
	if runtime.GOARCH != "amd64" {
		t.Skip("the filter is written for x86-64")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	probe := exec.Command(self)
	probe.Env = append(os.Environ(), envMDWEProbe+"=1")
	out, err := probe.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "mmap W+X: operation not permitted") {
		t.Fatalf("the filter does not refuse a W+X mapping: %v: %s", err, out)
	}

	dir := t.TempDir()
	sock := filepath.Join(dir, "mdwe.sock")
	cmdArgs := []string{"--", bin, "--dev", "--socket", sock}
	cmd := exec.Command(self, cmdArgs...)
	cmd.Env = append(os.Environ(), envSeccompExec+"=mdwe")
	p := startCmd(t, sock, cmd)
	go io.Copy(io.Discard, pipeRest(p))
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if !strings.Contains(string(status), "Seccomp:\t2") {
		t.Fatalf("keywardd is not under a seccomp filter:\n%s", status)
	}
	c := dial(t, sock)
	ctx := context.Background()
	for _, kt := range []string{"aes-256-gcm", "hmac-sha256", "ecdsa-p256", "rsa-3072-pss", "ed25519"} {
		name := "mdwe/" + kt
		if _, err := c.CreateKey(ctx, &pb.CreateKeyRequest{Key: name, KeyType: kt}); err != nil {
			t.Fatalf("create %s: %v", kt, err)
		}
		switch kt {
		case "aes-256-gcm":
			w, err := c.Wrap(ctx, &pb.WrapRequest{Key: name, Plaintext: []byte("x")})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Unwrap(ctx, &pb.UnwrapRequest{Ciphertext: w.Ciphertext}); err != nil {
				t.Fatal(err)
			}
		case "hmac-sha256":
			if _, err := c.Mac(ctx, &pb.MacRequest{Key: name, Message: []byte("x")}); err != nil {
				t.Fatal(err)
			}
		default:
			s, err := c.Sign(ctx, &pb.SignRequest{Key: name, Message: []byte("x")})
			if err != nil {
				t.Fatalf("sign %s: %v", kt, err)
			}
			if _, err := c.Verify(ctx, &pb.VerifyRequest{Key: name, Version: s.GetVersion(), Message: []byte("x"), Signature: s.GetSignature()}); err != nil {
				t.Fatalf("verify %s: %v", kt, err)
			}
		}
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("keywardd under the filter: %v\n%s", err, p.stderr.String())
	}
}
