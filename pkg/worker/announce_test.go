package worker

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/plugin"
	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// workerStatus returns the registry's entry of a worker, nil when absent.
func (b *bundle) workerStatus(id string) *queue.WorkerEntry {
	b.t.Helper()
	ws, err := queue.ListWorkers(testCtx(b.t), b.js)
	require.NoError(b.t, err)
	for _, w := range ws {
		if w.Status.GetWorkerId() == id {
			return &w
		}
	}
	return nil
}

// TestWorkerRegistryHeartbeat: a worker announces itself at start, its
// status follows what it executes (slots busy per run, items completed
// and failed, recent durations), and a clean stop removes it.
func TestWorkerRegistryHeartbeat(t *testing.T) {
	t.Parallel()
	b := setup(t)
	release := make(chan struct{})
	started := make(chan struct{}, 10)
	comps := map[string]component{
		"/hold": func(ctx context.Context, req *executor.Request, _ plugin.Host) (value.Value, error) {
			started <- struct{}{}
			select {
			case <-release:
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
			return req.Input, nil
		},
	}
	cfg := b.workerConfig("reg.w1", 3, comps)
	cfg.StatusInterval = 50 * time.Millisecond
	cfg.Version = "v-test"
	w, err := New(cfg)
	require.NoError(t, err)
	require.NoError(t, w.Start(testCtx(t)))
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			require.NoError(t, w.Stop(context.Background()))
		}
	})

	// Announced at once, idle.
	e := b.workerStatus("reg.w1")
	require.NotNil(t, e)
	st := e.Status
	require.Equal(t, uint32(3), st.GetSlotsTotal())
	require.Zero(t, st.GetSlotsBusy())
	require.Equal(t, "v-test", st.GetVersion())
	require.Positive(t, st.GetPid())
	require.Equal(t, 50*time.Millisecond, st.GetHeartbeatInterval().AsDuration())
	require.False(t, st.GetDraining())

	// Two held items of one run: busy 2, both on that run.
	run := b.createRun(runSpec{flow: `
steps:
  - { id: hold, component: /test/hold, input: { $input: "$" } }
output: { $step: hold }
`, items: 2, maxConc: 2})
	<-started
	<-started
	require.Eventually(t, func() bool {
		st := b.workerStatus("reg.w1").Status
		return st.GetSlotsBusy() == 2 && st.GetRunBusy()[run] == 2
	}, 10*time.Second, 20*time.Millisecond)
	close(release)
	b.results(run, 2)

	// A failing run: items fail (the flow needs a component that does not
	// exist), counted as failed.
	bad := b.createRun(runSpec{flow: `
steps:
  - { id: x, component: /test/missing, input: { $input: "$" } }
output: { $step: x }
`, items: 3, maxConc: 3})
	b.results(bad, 3)
	require.Eventually(t, func() bool {
		st := b.workerStatus("reg.w1").Status
		return st.GetSlotsBusy() == 0 && len(st.GetRunBusy()) == 0 &&
			st.GetItemsCompleted() == 2 && st.GetItemsFailed() == 3 && st.GetWindowItems() == 5
	}, 10*time.Second, 20*time.Millisecond)
	st = b.workerStatus("reg.w1").Status
	require.Positive(t, st.GetMeanDuration().AsDuration())
	require.GreaterOrEqual(t, st.GetP95Duration().AsDuration(), st.GetMeanDuration().AsDuration())
	require.Greater(t, st.GetHeartbeatAt().AsTime(), st.GetStartedAt().AsTime())

	// A clean stop leaves the registry.
	require.NoError(t, w.Stop(context.Background()))
	stopped = true
	require.Nil(t, b.workerStatus("reg.w1"))
}

func TestStatsWindow(t *testing.T) {
	t.Parallel()
	s := newStats()
	now := time.Now()
	// 100 items of 1..100ms, plus an old slow one outside the window.
	s.finished(time.Hour, false, now.Add(-statsWindow-time.Second))
	for i := 1; i <= 100; i++ {
		s.finished(time.Duration(i)*time.Millisecond, i%10 == 0, now)
	}
	s.begin("a")
	s.begin("a")
	s.begin("b")
	s.end("b")
	s.handedBack()
	snap := s.snapshot(now)
	require.Equal(t, uint64(91), snap.completed)
	require.Equal(t, uint64(10), snap.failed)
	require.Equal(t, uint64(1), snap.returned)
	require.Equal(t, 100, snap.windowItems)
	require.Equal(t, map[string]int{"a": 2}, snap.busy)
	require.Equal(t, 2, snap.busyTotal)
	require.Equal(t, 50500*time.Microsecond, snap.mean)
	require.Equal(t, 95*time.Millisecond, snap.p95)

	// The ring keeps the most recent statsSamples.
	for range statsSamples {
		s.finished(time.Second, false, now)
	}
	snap = s.snapshot(now)
	require.Equal(t, statsSamples, snap.windowItems)
	require.Equal(t, time.Second, snap.mean)
	require.Zero(t, newStats().snapshot(now).windowItems)
}
