package keywardtest

import (
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The daemon's request reaches it through a pipe, never the environment.
// $KEYWARDTEST_DAEMON only says where to look and what to expect:
//
//	v1 PPID INODE NONCE
//
// PPID is the pid of the process that started the child, INODE the inode
// of the pipe's read end, handed to the child as fd 3, and NONCE 32 random
// bytes in hex. The parent writes NONCE, a newline and the request (JSON)
// into the pipe and closes it. The child serves only when its parent is
// still PPID, fd 3 is that very pipe, and the pipe starts with NONCE; it
// checks all but the last before reading anything from fd 3, so a program
// that merely inherited the variable (with an fd 3 of its own, or none)
// reads nothing and runs normally.

// handoffFD is the child's descriptor of the pipe (cmd.ExtraFiles[0]).
const handoffFD = 3

// maxRequest bounds what the child reads from the pipe.
const maxRequest = 1 << 20

// errNotChild: the variable is set but this process is not a child that
// Start made; it runs normally.
var errNotChild = errors.New("not a daemon started by keywardtest")

// handoff is the parent's side: the pipe's read end for the child, the
// variable to set, and the bytes to write once the child runs.
type handoff struct {
	r, w    *os.File
	env     string
	payload []byte
}

func newHandoff(req childRequest) (*handoff, error) {
	spec, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, 32)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(r.Fd()), &st); err != nil {
		r.Close()
		w.Close()
		return nil, err
	}
	h := hex.EncodeToString(nonce)
	return &handoff{r: r, w: w, payload: append([]byte(h+"\n"), spec...),
		env: fmt.Sprintf("%s=v1 %d %d %s", envChild, os.Getpid(), st.Ino, h)}, nil
}

// send writes the request once the child started (it holds the read end
// now) and closes the parent's ends.
func (h *handoff) send() error {
	h.r.Close()
	_, err := h.w.Write(h.payload)
	if cerr := h.w.Close(); err == nil {
		err = cerr
	}
	return err
}

// abandon closes both ends when the child could not start.
func (h *handoff) abandon() {
	h.r.Close()
	h.w.Close()
}

// receive is the child's side: it checks the variable's value against
// this process and fd 3, then reads and checks the request.
func receive(v string) (childRequest, error) {
	var req childRequest
	f := strings.Fields(v)
	if len(f) != 4 || f[0] != "v1" {
		return req, fmt.Errorf("%w: the value is not a handoff", errNotChild)
	}
	ppid, err1 := strconv.Atoi(f[1])
	ino, err2 := strconv.ParseUint(f[2], 10, 64)
	nonce, err3 := hex.DecodeString(f[3])
	if err1 != nil || err2 != nil || err3 != nil || len(nonce) != 32 {
		return req, fmt.Errorf("%w: the value is not a handoff", errNotChild)
	}
	if unix.Getppid() != ppid {
		return req, fmt.Errorf("%w: the parent is not pid %d", errNotChild, ppid)
	}
	var st unix.Stat_t
	if err := unix.Fstat(handoffFD, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO || st.Ino != ino {
		return req, fmt.Errorf("%w: fd %d is not the parent's pipe", errNotChild, handoffFD)
	}
	pipe := os.NewFile(handoffFD, "keywardtest handoff")
	b, err := io.ReadAll(io.LimitReader(pipe, maxRequest+1))
	pipe.Close()
	if err != nil || len(b) > maxRequest {
		return req, fmt.Errorf("%w: the pipe could not be read whole", errNotChild)
	}
	line, spec, _ := bytes.Cut(b, []byte("\n"))
	if subtle.ConstantTimeCompare(line, []byte(f[3])) != 1 {
		return req, fmt.Errorf("%w: the pipe does not start with the nonce", errNotChild)
	}
	d := json.NewDecoder(bytes.NewReader(spec))
	d.DisallowUnknownFields()
	if err := d.Decode(&req); err != nil {
		return req, fmt.Errorf("request: %w", err)
	}
	return req, nil
}
