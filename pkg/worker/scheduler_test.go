package worker

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// A pull holds the slots it asks for until it is full or expires, so a
// run's first pull (its backlog unknown) asks for no more than the run
// has items: a one-item run with --max-concurrent 50 on a worker with 64
// slots holds one slot, not 50 for FetchMaxWait.
func TestPickSizesPulls(t *testing.T) {
	s := &scheduler{slots: newSlots(64), runs: map[string]*runState{}}
	rs := &runState{id: "r", rec: &stepflowv1.RunRecord{MaxConcurrency: 50, ItemTotal: 1}, active: true, pending: -1}
	s.order = []*runState{rs}
	pick := func(free int) int {
		t.Helper()
		got, n, _ := s.pick(free, time.Now())
		require.Same(t, rs, got)
		return n
	}
	require.Equal(t, 1, pick(64), "no more than the run's items")
	rs.rec.ItemTotal = 1000
	require.Equal(t, 56, pick(64), "the run's concurrency and its lookahead (an eighth)")
	rs.inflight = 50
	require.Equal(t, 6, pick(64), "at its limit, pulls wait at the server for the next free place")
	rs.pulls = maxPullsPerRun
	got, _, _ := s.pick(64, time.Now())
	require.Nil(t, got, "no more pulls pending on one run than maxPullsPerRun")
	rs.pulls, rs.inflight = 0, 0
	rs.rec.MaxConcurrency = 0
	require.Equal(t, 64, pick(64), "the free slots")
	rs.pending = 3
	require.Equal(t, 3, pick(64), "the backlog the last message reported")
	rs.cold = true
	require.Equal(t, 1, pick(64), "a cold run is long-polled for one")

	// Two runs share the free slots.
	rs.cold, rs.pending = false, -1
	other := &runState{id: "o", rec: &stepflowv1.RunRecord{ItemTotal: 1000}, active: true, pending: -1}
	s.order = append(s.order, other)
	s.cursor = 0
	got, n, _ := s.pick(64, time.Now())
	require.Same(t, rs, got)
	require.Equal(t, 32, n)
	// A cold run gets one pull at a time.
	other.cold, other.pulls = true, 1
	rs.pulls = maxPullsPerRun
	got, _, _ = s.pick(64, time.Now())
	require.Nil(t, got)
}
