//go:build linux

// Package diskfull gives tests a real small filesystem to fill: a tmpfs
// mounted for the test (which needs root; CI runs as root) and a file
// that takes all but a given amount of its space.
package diskfull

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// Mount mounts a tmpfs of size bytes on a new directory and unmounts it
// at cleanup.
func Mount(t testing.TB, size int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "small")
	require.NoError(t, os.Mkdir(dir, 0o755))
	err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+strconv.Itoa(size))
	require.NoError(t, err, "mounting a %d-byte tmpfs for a full-disk test needs root (CI runs as root)", size)
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// Fill writes a file that leaves about keep bytes free on dir's
// filesystem and returns its path; removing it gives the space back.
func Fill(t testing.TB, dir string, keep int64) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	require.NoError(t, err)
	defer f.Close()
	var st unix.Statfs_t
	require.NoError(t, unix.Statfs(dir, &st))
	chunk := make([]byte, 64<<10)
	for left := int64(st.Bavail)*st.Bsize - keep; left > 0; {
		n := min(left, int64(len(chunk)))
		if _, err := f.Write(chunk[:n]); err != nil {
			break // full already
		}
		left -= n
	}
	return path
}
