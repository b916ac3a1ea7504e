package coordinator_test

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/coordinator"
	"github.com/stepflow-go/stepflow/pkg/queue"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// Two coordinators share a NATS server and a DataDir: both serve the
// API, the standby forwarding to the leader. When the leader stops in the
// middle of a run, the standby takes over the lease and the run, and
// the run completes with every result exactly once.
func TestStandbyTakesOverTheRuns(t *testing.T) {
	t.Parallel()
	srv := queue.NewEmbedded(queue.EmbeddedConfig{StoreDir: t.TempDir(), Logger: testLogger(t)})
	require.NoError(t, srv.Start(testCtx(t)))
	t.Cleanup(srv.Shutdown)
	dataDir := t.TempDir()
	newCoord := func(id string) *coordinator.Coordinator {
		return coordinatorOn(t, srv, dataDir, coordinator.Config{
			ID: id, Queue: queue.Config{LeaseTTL: 2 * time.Second}, Logger: testLogger(t).Named(id),
		})
	}
	a := newCoord("a")
	b := newCoord("b")

	gate := make(chan struct{})
	var gateOnce sync.Once
	openGate := func() { gateOnce.Do(func() { close(gate) }) }
	t.Cleanup(openGate)
	var (
		mu   sync.Mutex
		runs = map[uint64]int{}
	)
	startWorker(t, srv.ClientURL(), func(it *stepflowv1.Item, _ uint64) action {
		mu.Lock()
		runs[it.GetIndex()]++
		mu.Unlock()
		if it.GetIndex() >= 100 {
			<-gate
		}
		return actEcho
	})

	// Everything through the standby, which forwards to the leader.
	cb := newClient(t, b)
	flowID := cb.storeFlow()
	const n = 400
	lines := inputLines(n)
	r := cb.uploadJSONL(flowID, "&wait=false&maxConcurrency=4", lines, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	require.Equal(t, "a", r.Header.Get("Stepflow-Forwarded-To"))
	runID := r.JSON(t)["runId"].(string)
	// The API's documentation is the standby's own, like the probes.
	r = cb.get("/openapi.json")
	require.Equal(t, http.StatusOK, r.Status)
	require.Empty(t, r.Header.Get("Stepflow-Forwarded-To"))
	counts := func() map[string]any {
		r := cb.get("/runs/" + runID)
		if r.Status != http.StatusOK {
			return nil // between leaders: 503, retry
		}
		return r.JSON(t)
	}
	waitFor(t, 30*time.Second, func() bool {
		d := counts()
		return d != nil && d["items"].(map[string]any)["completed"] == 100.0
	}, "the first 100 items done")

	require.NoError(t, a.Stop(context.Background()))
	openGate()
	var details map[string]any
	waitFor(t, 60*time.Second, func() bool {
		details = counts()
		return details != nil && details["status"] == "completed"
	}, "the run completed under the new leader")
	require.EqualValues(t, n, details["items"].(map[string]any)["completed"])
	r = cb.get("/runs/" + runID)
	require.Empty(t, r.Header.Get("Stepflow-Forwarded-To"), "b leads now")
	got := cb.itemsJSONL(runID)
	require.Len(t, got, n)
	for i, line := range got {
		require.JSONEq(t, echoResult(lines[i]), line, "item %d", i)
	}
	mu.Lock()
	defer mu.Unlock()
	for i := range uint64(n) {
		require.GreaterOrEqual(t, runs[i], 1, "item %d ran", i)
	}
}

// The leader renews its lease every TTL/4, not each time it sees its own
// renewal (which would spin): three renewals take at least two periods.
func TestLeaderRenewsAtItsPace(t *testing.T) {
	t.Parallel()
	srv := queue.NewEmbedded(queue.EmbeddedConfig{StoreDir: t.TempDir(), Logger: testLogger(t)})
	require.NoError(t, srv.Start(testCtx(t)))
	t.Cleanup(srv.Shutdown)
	const ttl = 2 * time.Second
	coordinatorOn(t, srv, t.TempDir(), coordinator.Config{Queue: queue.Config{LeaseTTL: ttl}})

	kv, err := inspectJS(t, srv).KeyValue(testCtx(t), queue.BucketCoordinators)
	require.NoError(t, err)
	w, err := kv.Watch(testCtx(t), "leader", jetstream.UpdatesOnly())
	require.NoError(t, err)
	defer func() { _ = w.Stop() }()
	start := time.Now()
	for range 3 {
		select {
		case e := <-w.Updates():
			require.NotNil(t, e)
		case <-time.After(10 * time.Second):
			t.Fatal("the leader stopped renewing its lease")
		}
	}
	require.GreaterOrEqual(t, time.Since(start), 2*ttl/4-100*time.Millisecond, "renewals faster than every TTL/4")
}
