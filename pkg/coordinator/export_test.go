package coordinator

import (
	"net/http"
	"time"

	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// JournaledBlobs returns the ids of the blobs in the journal.
func (c *Coordinator) JournaledBlobs() (map[string]bool, error) {
	ids := map[string]bool{}
	err := c.journal.replay(func(b *stepflowv1.Blob) error {
		ids[b.GetId()] = true
		return nil
	})
	return ids, err
}

// SawItemsLastSeq makes the coordinator believe it read seq as the items
// stream's last sequence: a stream found below it went back.
func (c *Coordinator) SawItemsLastSeq(seq uint64) { c.noteItemsLastSeq(seq) }

// RoutePatterns returns the patterns Handler registers, in order.
func (c *Coordinator) RoutePatterns() []string {
	var r patternRecorder
	c.routes(&r)
	return r
}

// patternRecorder is a router that records patterns.
type patternRecorder []string

func (r *patternRecorder) Handle(pattern string, _ http.Handler) { *r = append(*r, pattern) }

func (r *patternRecorder) HandleFunc(pattern string, _ func(http.ResponseWriter, *http.Request)) {
	*r = append(*r, pattern)
}

// SetLoginClock sets the clock of the sign-in limiter.
func (c *Coordinator) SetLoginClock(now func() time.Time) {
	c.logins.mu.Lock()
	defer c.logins.mu.Unlock()
	c.logins.now = now
}
