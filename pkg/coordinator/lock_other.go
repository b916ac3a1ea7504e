//go:build !unix

package coordinator

import "os"

// tryLock is a no-op where flock does not exist: run a single coordinator
// per DataDir there.
func tryLock(*os.File) (bool, error) { return true, nil }
