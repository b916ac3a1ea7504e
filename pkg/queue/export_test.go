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
