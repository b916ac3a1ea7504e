//go:build linux

package protocol

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// SetPipeSize asks the kernel to resize the pipe f belongs to (either end)
// to size bytes with F_SETPIPE_SZ, and returns the size it actually has
// afterwards (F_GETPIPE_SZ). The kernel rounds the size up to a power of
// two pages and refuses sizes above /proc/sys/fs/pipe-max-size (EPERM)
// for unprivileged processes; the error is then returned with the
// unchanged size. On other systems SetPipeSize does nothing and returns
// 0, nil.
func SetPipeSize(f *os.File, size int) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("pipe size: %w", err)
	}
	var got int
	var setErr, getErr error
	// Control keeps the descriptor in non-blocking mode (f.Fd would not).
	if err := rc.Control(func(fd uintptr) {
		_, setErr = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, size)
		got, getErr = unix.FcntlInt(fd, unix.F_GETPIPE_SZ, 0)
	}); err != nil {
		return 0, fmt.Errorf("pipe size: %w", err)
	}
	if getErr != nil {
		return 0, fmt.Errorf("pipe size: F_GETPIPE_SZ: %w", getErr)
	}
	if setErr != nil {
		return got, fmt.Errorf("pipe size: F_SETPIPE_SZ %d: %w", size, setErr)
	}
	return got, nil
}
