//go:build unix

package queue

import "golang.org/x/sys/unix"

// diskSpace returns the space available to unprivileged writers on the
// filesystem of dir, and its size.
func diskSpace(dir string) (free, total int64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, 0, err
	}
	bs := int64(st.Bsize) //nolint:unconvert // the field's type differs by platform
	return int64(st.Bavail) * bs, int64(st.Blocks) * bs, nil
}
