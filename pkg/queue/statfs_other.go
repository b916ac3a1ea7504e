//go:build !unix

package queue

import "errors"

// diskSpace cannot tell free space here: JetStream is restarted at the
// first check after it failed.
func diskSpace(string) (free, total int64, err error) { return 0, 0, errors.ErrUnsupported }
