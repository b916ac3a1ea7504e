package queue

import (
	"context"
	"time"

	"github.com/stepflow-go/stepflow/pkg/blob"
)

// ReadBlobFromLeader reads a blob the way Get does when a direct get may
// have been served by a lagging replica: through the stream leader.
func ReadBlobFromLeader(ctx context.Context, s *ObjectBlobStore, id string) ([]byte, blob.Kind, error) {
	return s.read(ctx, id, true)
}

// SetPutTrackerClock replaces the clock of s's put tracking.
func SetPutTrackerClock(s *ObjectBlobStore, now func() time.Time) {
	s.tracker.mu.Lock()
	defer s.tracker.mu.Unlock()
	s.tracker.now = now
}

// KVWriter is the write side of a KV bucket that compare-and-sets use.
type KVWriter = kvWriter

// WrapLeaseWriter replaces the writer of l's bucket with wrap's.
func WrapLeaseWriter(l *Lease, wrap func(KVWriter) KVWriter) { l.b.w = wrap(l.b.w) }

// WrapRunStoreWriter replaces the writer of s's bucket with wrap's.
func WrapRunStoreWriter(s *RunStore, wrap func(KVWriter) KVWriter) { s.b.w = wrap(s.b.w) }

// SetUnresponsiveClock replaces the clock of u.
func SetUnresponsiveClock(u *Unresponsive, now func() time.Time) { u.now = now }

// SetDeferredClock sets the clock of a store's deferred puts
// (WithDeferredPuts).
func SetDeferredClock(s *ObjectBlobStore, now func() time.Time) {
	s.deferred.mu.Lock()
	defer s.deferred.mu.Unlock()
	s.deferred.now = now
}
