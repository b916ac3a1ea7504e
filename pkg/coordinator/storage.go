package coordinator

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"
)

// storageFault tracks whether the coordinator can store results: a result
// log that failed a write or an fsync for want of space marks it full
// until a later commit stores. Meanwhile the runs pause (workers keep
// their results and send them again, which costs no item a delivery),
// readiness and /api/v1/health say why, and the error is logged once
// rather than at every retry.
type storageFault struct {
	mu    sync.Mutex
	err   error     // nil: storing
	since time.Time // when err was first seen
	hits  int       // failed commits since
}

// errDiskFull wraps the storage error Ready reports.
var errDiskFull = errors.New("the coordinator cannot store results: its data dir is full")

// fail records a failed commit; it reports whether the failure is new
// (to be logged as an error; repeats are logged at debug).
func (f *storageFault) fail(err error) (first bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hits++
	if f.err != nil {
		return false
	}
	f.err, f.since, f.hits = err, time.Now(), 1
	return true
}

// ok records a commit that stored; it returns how long storing had
// failed, 0 if it had not.
func (f *storageFault) ok() (failedFor time.Duration, hits int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		return 0, 0
	}
	failedFor, hits = time.Since(f.since), f.hits
	f.err = nil
	return failedFor, hits
}

// state returns the current fault, nil when storing works.
func (f *storageFault) state() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		return nil
	}
	return fmt.Errorf("%w since %s (%v); runs are paused and resume on their own once space is freed",
		errDiskFull, f.since.UTC().Format(time.RFC3339), f.err)
}

// storageHealth is nil when the coordinator can store: its result logs
// and, when embedded, its NATS server's JetStream.
func (c *Coordinator) storageHealth() error {
	if err := c.storage.state(); err != nil {
		return err
	}
	if c.embedded != nil {
		return c.embedded.Health()
	}
	return nil
}

// noteStoreError logs a result-store failure: a full disk once when it
// starts (and marks storage failed), anything else every time.
func (c *Coordinator) noteStoreError(msg string, run string, err error) {
	if !isNoSpace(err) {
		c.log.Error(msg, zap.String("run", run), zap.Error(err))
		return
	}
	if c.storage.fail(err) {
		c.log.Error(msg+"; the disk is full: runs pause until space is freed", zap.String("run", run), zap.Error(err))
		return
	}
	c.log.Debug(msg, zap.String("run", run), zap.Error(err))
}

// noteStored records a commit that stored results.
func (c *Coordinator) noteStored() {
	if d, hits := c.storage.ok(); hits > 0 {
		c.log.Warn("results are stored again: the disk has space", zap.Duration("after", d.Round(time.Millisecond)), zap.Int("failedCommits", hits))
	}
}
