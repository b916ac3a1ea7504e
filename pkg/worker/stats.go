package worker

import (
	"slices"
	"sync"
	"time"
)

// Size of the recent-duration window of a worker's status.
const (
	// statsWindow is how far back the mean and p95 item durations of the
	// worker's status reach: recent enough to show a worker that became
	// slow, long enough to hold a few items of a slow flow.
	statsWindow = 5 * time.Minute
	// statsSamples bounds the durations kept (the most recent ones).
	statsSamples = 512
)

// stats counts what the worker did, for its heartbeat in the worker
// registry. Items report to it from their own goroutines.
type stats struct {
	mu        sync.Mutex
	busy      map[string]int // items executing, by run
	completed uint64
	failed    uint64
	returned  uint64
	// ring of the most recent item durations
	samples [statsSamples]sample
	next    int
	n       int
}

type sample struct {
	at time.Time
	d  time.Duration
}

func newStats() *stats { return &stats{busy: map[string]int{}} }

// begin counts an item of runID as executing; end undoes it.
func (s *stats) begin(runID string) {
	s.mu.Lock()
	s.busy[runID]++
	s.mu.Unlock()
}

func (s *stats) end(runID string) {
	s.mu.Lock()
	if s.busy[runID]--; s.busy[runID] <= 0 {
		delete(s.busy, runID)
	}
	s.mu.Unlock()
}

// finished records an item whose result was stored, and how long it took
// from the start of its execution.
func (s *stats) finished(d time.Duration, failed bool, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if failed {
		s.failed++
	} else {
		s.completed++
	}
	s.samples[s.next] = sample{at: now, d: d}
	s.next = (s.next + 1) % statsSamples
	s.n = min(s.n+1, statsSamples)
}

// handedBack records an item returned to the queue without a result.
func (s *stats) handedBack() {
	s.mu.Lock()
	s.returned++
	s.mu.Unlock()
}

// statsSnapshot is what the heartbeat reports.
type statsSnapshot struct {
	busy                        map[string]int
	busyTotal                   int
	completed, failed, returned uint64
	windowItems                 int
	mean, p95                   time.Duration
}

// snapshot returns the counters and the mean and 95th percentile of the
// durations of the items finished within statsWindow before now.
func (s *stats) snapshot(now time.Time) statsSnapshot {
	s.mu.Lock()
	out := statsSnapshot{busy: make(map[string]int, len(s.busy)), completed: s.completed, failed: s.failed, returned: s.returned}
	for run, n := range s.busy {
		out.busy[run] = n
		out.busyTotal += n
	}
	ds := make([]time.Duration, 0, s.n)
	for i := range s.n {
		if sm := s.samples[i]; now.Sub(sm.at) <= statsWindow {
			ds = append(ds, sm.d)
		}
	}
	s.mu.Unlock()
	out.windowItems = len(ds)
	if len(ds) == 0 {
		return out
	}
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	out.mean = sum / time.Duration(len(ds))
	slices.Sort(ds)
	// nearest-rank percentile
	rank := (95*len(ds) + 99) / 100
	out.p95 = ds[rank-1]
	return out
}
