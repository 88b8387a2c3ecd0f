package softhsmtest

import (
	"fmt"
	"os"
	"syscall"
	"unsafe"
)

// ptyAvailable reports whether a pseudo-terminal can be opened, so that a
// machine without /dev/ptmx fails in New with a clear error.
func ptyAvailable() error {
	m, s, err := openPTY()
	if err != nil {
		return err
	}
	s.Close()
	return m.Close()
}

// openPTY opens a pseudo-terminal pair and turns echo off on the slave side,
// so input written to the master (PINs) is never echoed back.
func openPTY() (master, slave *os.File, err error) {
	master, err = os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open pty: %w", err)
	}
	fail := func(err error) (*os.File, *os.File, error) {
		master.Close()
		if slave != nil {
			slave.Close()
		}
		return nil, nil, fmt.Errorf("open pty: %w", err)
	}
	var unlock int32
	if err := ioctl(master, syscall.TIOCSPTLCK, unsafe.Pointer(&unlock)); err != nil {
		return fail(fmt.Errorf("unlockpt: %w", err))
	}
	var n uint32
	if err := ioctl(master, syscall.TIOCGPTN, unsafe.Pointer(&n)); err != nil {
		return fail(fmt.Errorf("ptsname: %w", err))
	}
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return fail(err)
	}
	var tio syscall.Termios
	if err := ioctl(slave, syscall.TCGETS, unsafe.Pointer(&tio)); err != nil {
		return fail(fmt.Errorf("tcgetattr: %w", err))
	}
	tio.Lflag &^= syscall.ECHO | syscall.ECHOE | syscall.ECHOK | syscall.ECHONL
	if err := ioctl(slave, syscall.TCSETS, unsafe.Pointer(&tio)); err != nil {
		return fail(fmt.Errorf("tcsetattr: %w", err))
	}
	return master, slave, nil
}

func ioctl(f *os.File, req uintptr, arg unsafe.Pointer) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, req, uintptr(arg))
	}); err != nil {
		return err
	}
	if errno != 0 {
		return errno
	}
	return nil
}
