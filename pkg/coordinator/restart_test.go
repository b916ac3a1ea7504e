package coordinator_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/coordinator"
	"github.com/stepflow-go/stepflow/pkg/metrics/metricstest"
	"github.com/stepflow-go/stepflow/pkg/queue"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// A coordinator stopped in the middle of a run, while workers keep
// producing results, is replaced by a new one on the same DataDir and
// NATS: the run completes with every index exactly once.
func TestRestartMidRunExternalNATS(t *testing.T) {
	t.Parallel()
	srv := queue.NewEmbedded(queue.EmbeddedConfig{StoreDir: t.TempDir(), Logger: testLogger(t)})
	require.NoError(t, srv.Start(testCtx(t)))
	t.Cleanup(srv.Shutdown)
	dataDir := t.TempDir()
	newCoord := func() *coordinator.Coordinator { return coordinatorOn(t, srv, dataDir, coordinator.Config{}) }
	c1 := newCoord()

	// Items from 20 on wait until the first coordinator is gone; their
	// workers then keep their results and send them until a coordinator
	// answers.
	g := startGatedRun(t, srv, c1, nil)
	runID, lines, openGate := g.runID, g.lines, g.open

	require.NoError(t, c1.Stop(context.Background()))
	openGate()

	c2 := newCoord()
	cl2 := newClient(t, c2)
	details := cl2.waitStatus(runID, "completed")
	items := details["items"].(map[string]any)
	require.EqualValues(t, 60, items["completed"])
	require.EqualValues(t, 60, items["total"])
	got := cl2.itemsJSONL(runID)
	require.Len(t, got, 60)
	for i, line := range got {
		require.JSONEq(t, echoResult(lines[i]), line, "item %d", i)
	}
	// Finished (the record is written first, then the cleanup): consumer
	// gone, no item left on the queue.
	waitFor(t, 10*time.Second, func() bool {
		_, err := queue.RunConsumerHandle(testCtx(t), c2.JetStream(), runID)
		return errors.Is(err, queue.ErrConsumerNotFound) &&
			subjectCount(t, c2.JetStream(), queue.StreamItems, queue.ItemSubject(runID)) == 0
	}, "the finished run cleaned up")
}

// inspectJS connects to srv for inspection.
func inspectJS(t *testing.T, srv *queue.Embedded) jetstream.JetStream {
	t.Helper()
	nc, js, err := queue.Connect(testCtx(t), srv.ClientURL(), queue.ConnectOptions{Name: "inspector"})
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	return js
}

// A coordinator with its embedded NATS server, stopped with a run queued
// and restarted on the same DataDir, keeps the run (items, consumer,
// record) and completes it once a worker shows up.
func TestRestartEmbeddedNATS(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	cfg := coordinator.Config{DataDir: dataDir, Host: "127.0.0.1", Logger: testLogger(t)}
	c1, err := coordinator.New(cfg)
	require.NoError(t, err)
	require.NoError(t, c1.Start(testCtx(t)))
	cl := newClient(t, c1)
	flowID := cl.storeFlow()
	lines := inputLines(25)
	r := cl.uploadJSONL(flowID, "&wait=false", lines, map[string]string{"Idempotency-Key": "k1"})
	require.Equal(t, http.StatusOK, r.Status)
	runID := r.JSON(t)["runId"].(string)
	require.NoError(t, c1.Stop(context.Background()))

	c2, err := coordinator.New(cfg)
	require.NoError(t, err)
	require.NoError(t, c2.Start(testCtx(t)))
	t.Cleanup(func() { require.NoError(t, c2.Stop(context.Background())) })
	cl2 := newClient(t, c2)
	require.Equal(t, "running", cl2.get("/runs/" + runID).JSON(t)["status"])
	// The idempotency key survived too.
	again := cl2.uploadJSONL(flowID, "&wait=false", lines, map[string]string{"Idempotency-Key": "k1"})
	require.Equal(t, runID, again.JSON(t)["runId"])

	startWorker(t, c2.NATSURL(), nil)
	cl2.waitStatus(runID, "completed")
	got := cl2.itemsJSONL(runID)
	require.Len(t, got, 25)
	for i, line := range got {
		require.JSONEq(t, echoResult(lines[i]), line)
	}
}

// Items published by an upload that a stopped coordinator never turned
// into a run (no record) are purged by the next coordinator.
func TestInterruptedUploadIsDiscarded(t *testing.T) {
	t.Parallel()
	srv := queue.NewEmbedded(queue.EmbeddedConfig{StoreDir: t.TempDir(), Logger: testLogger(t)})
	require.NoError(t, srv.Start(testCtx(t)))
	t.Cleanup(srv.Shutdown)
	js := inspectJS(t, srv)
	require.NoError(t, queue.Provision(testCtx(t), js, queue.Config{}))
	const runID = "0198c0de-0000-7000-8000-00000000abcd"
	items := func(yield func(int, []byte) bool) {
		for i := range 5 {
			if !yield(i, []byte(`{"i":1}`)) {
				return
			}
		}
	}
	_, err := queue.PublishItems(testCtx(t), js, runID, items, queue.PublishItemsOptions{})
	require.NoError(t, err)
	dataDir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dataDir, "runs", runID), 0o750))
	require.NoError(t, os.WriteFile(filepath.Join(dataDir, "runs", runID, "uploading"), nil, 0o640))

	c, err := coordinator.New(coordinator.Config{DataDir: dataDir, Host: "127.0.0.1", NATSURL: srv.ClientURL(), Logger: testLogger(t)})
	require.NoError(t, err)
	require.NoError(t, c.Start(testCtx(t)))
	t.Cleanup(func() { require.NoError(t, c.Stop(context.Background())) })
	require.Zero(t, subjectCount(t, js, queue.StreamItems, queue.ItemSubject(runID)))
	require.NoDirExists(t, filepath.Join(dataDir, "runs", runID))
}

// A run's items go onto the work queue in a window behind its results,
// not all at once; a coordinator stopped mid-run leaves the rest in its
// spool, and the next one on the same DataDir publishes them: every item
// runs and has exactly one result.
func TestPublishWindowAndResume(t *testing.T) {
	t.Parallel()
	srv := queue.NewEmbedded(queue.EmbeddedConfig{StoreDir: t.TempDir(), Logger: testLogger(t)})
	require.NoError(t, srv.Start(testCtx(t)))
	t.Cleanup(srv.Shutdown)
	const window, n = 8, 300
	dataDir := t.TempDir()
	newCoord := func() *coordinator.Coordinator {
		return coordinatorOn(t, srv, dataDir, coordinator.Config{PublishWindow: window})
	}
	c1 := newCoord()
	js := inspectJS(t, srv)

	// Items from 100 on wait until the first coordinator is gone. Every
	// execution is counted, and the queue is sampled on each one.
	gate := make(chan struct{})
	var gateOnce sync.Once
	openGate := func() { gateOnce.Do(func() { close(gate) }) }
	t.Cleanup(openGate)
	var (
		mu      sync.Mutex
		runs    = map[uint64]int{}
		peak    uint64
		subject string
	)
	startWorker(t, srv.ClientURL(), func(it *stepflowv1.Item, _ uint64) action {
		mu.Lock()
		runs[it.GetIndex()]++
		s := subject
		mu.Unlock()
		if s != "" {
			q := subjectCount(t, js, queue.StreamItems, s)
			mu.Lock()
			peak = max(peak, q)
			mu.Unlock()
		}
		if it.GetIndex() >= 100 {
			<-gate
		}
		return actEcho
	})
	cl := newClient(t, c1)
	flowID := cl.storeFlow()
	lines := inputLines(n)
	r := cl.uploadJSONL(flowID, "&wait=false&maxConcurrency=2", lines, nil)
	require.Equal(t, http.StatusOK, r.Status)
	runID := r.JSON(t)["runId"].(string)
	mu.Lock()
	subject = queue.ItemSubject(runID)
	mu.Unlock()
	waitFor(t, 30*time.Second, func() bool {
		return cl.get("/runs/" + runID).JSON(t)["items"].(map[string]any)["completed"] == 100.0
	}, "the first 100 items done")
	require.LessOrEqual(t, subjectCount(t, js, queue.StreamItems, subject), uint64(window+2))
	counts := cl.get("/runs/" + runID).JSON(t)["items"].(map[string]any)
	require.EqualValues(t, n-100, counts["queued"].(float64)+counts["running"].(float64), "unpublished items count as queued")

	require.NoError(t, c1.Stop(context.Background()))
	openGate()

	c2 := newCoord()
	cl2 := newClient(t, c2)
	details := cl2.waitStatus(runID, "completed")
	require.EqualValues(t, n, details["items"].(map[string]any)["completed"])
	got := cl2.itemsJSONL(runID)
	require.Len(t, got, n)
	for i, line := range got {
		require.JSONEq(t, echoResult(lines[i]), line, "item %d", i)
	}
	mu.Lock()
	defer mu.Unlock()
	// An item leaves the queue when its worker acks it, just after its
	// result is published: each of the run's 2 slots may hold one such.
	require.LessOrEqual(t, peak, uint64(window+2), "the queue never held more than the window")
	for i := range uint64(n) {
		require.GreaterOrEqual(t, runs[i], 1, "item %d ran", i)
	}
	// The record is written first, then the cleanup.
	waitFor(t, 10*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(dataDir, "runs", runID, "items.spool"))
		return errors.Is(err, os.ErrNotExist)
	}, "the spool goes with the finished run")
}

// Items the stream loses (memory storage across a NATS restart; here the
// stream deleted, or a run's queued items purged, behind the
// coordinator's back) are published again from the spool: the run
// completes with every index exactly once.
func TestLostItemsArePublishedAgain(t *testing.T) {
	for _, tc := range []struct {
		name string
		lose func(t *testing.T, js jetstream.JetStream, c *coordinator.Coordinator, runID string)
		// recreated: the coordinator creates the stream anew.
		recreated bool
	}{
		{name: "stream deleted", lose: func(t *testing.T, js jetstream.JetStream, _ *coordinator.Coordinator, _ string) {
			require.NoError(t, js.DeleteStream(testCtx(t), queue.StreamItems))
		}},
		{name: "queued items purged", lose: func(t *testing.T, js jetstream.JetStream, _ *coordinator.Coordinator, runID string) {
			_, err := queue.PurgeRunItems(testCtx(t), js, runID)
			require.NoError(t, err)
		}},
		// A stream that lost messages and went back to sequences it gave
		// out before, its incarnation unchanged (seen on a 3-node cluster,
		// a memory-storage stream reset by a restarted replica): here the
		// messages are purged, and the coordinator is told it read a
		// later last sequence than the stream now has.
		{name: "stream went back", recreated: true, lose: func(t *testing.T, js jetstream.JetStream, c *coordinator.Coordinator, runID string) {
			_, last, err := queue.ItemsStreamState(testCtx(t), js)
			require.NoError(t, err)
			_, err = queue.PurgeRunItems(testCtx(t), js, runID)
			require.NoError(t, err)
			c.SawItemsLastSeq(last + 1000)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := queue.NewEmbedded(queue.EmbeddedConfig{StoreDir: t.TempDir(), Logger: testLogger(t)})
			require.NoError(t, srv.Start(testCtx(t)))
			t.Cleanup(srv.Shutdown)
			c := coordinatorOn(t, srv, t.TempDir(), coordinator.Config{})

			// Items from 20 on wait until the items are lost.
			var executions sync.Map
			g := startGatedRun(t, srv, c, func(it *stepflowv1.Item) {
				n, _ := executions.LoadOrStore(it.GetIndex(), new(atomic.Int32))
				n.(*atomic.Int32).Add(1)
			})
			cl, runID, lines, openGate := g.cl, g.runID, g.lines, g.open

			js := inspectJS(t, srv)
			before, err := queue.ItemsStreamIncarnation(testCtx(t), js)
			require.NoError(t, err)
			tc.lose(t, js, c, runID)
			openGate()
			details := cl.waitStatus(runID, "completed")
			require.EqualValues(t, 60, details["items"].(map[string]any)["completed"])
			got := cl.itemsJSONL(runID)
			require.Len(t, got, 60)
			for i, line := range got {
				require.JSONEq(t, echoResult(lines[i]), line, "item %d", i)
			}
			republished, ok := metricstest.Scrape(t, c.URL()+"/metrics", "").Value("stepflow_coordinator_items_republished_total")
			require.True(t, ok)
			require.Equal(t, 1.0, republished)
			for i := range 20 {
				n, _ := executions.Load(uint64(i))
				require.EqualValues(t, 1, n.(*atomic.Int32).Load(), "item %d had a result before the loss and ran again", i)
			}
			if tc.recreated {
				after, err := queue.ItemsStreamIncarnation(testCtx(t), js)
				require.NoError(t, err)
				require.Greater(t, after.FirstSeq, before.FirstSeq+1000, "the stream created anew starts above every sequence of the old one")
			}
		})
	}
}

// gatedRun is a 60-item run of the echo flow at concurrency 4 on a fake
// worker that holds every item from index 20 on until open is called.
type gatedRun struct {
	cl    *client
	runID string
	lines []string
	open  func()
}

// startGatedRun submits a gatedRun to c (a fake worker on srv takes its
// items; onItem, if set, sees each delivery) and returns once its first 20
// items are done.
func startGatedRun(t *testing.T, srv *queue.Embedded, c *coordinator.Coordinator, onItem func(*stepflowv1.Item)) gatedRun {
	t.Helper()
	gate := make(chan struct{})
	var gateOnce sync.Once
	open := func() { gateOnce.Do(func() { close(gate) }) }
	t.Cleanup(open)
	startWorker(t, srv.ClientURL(), func(it *stepflowv1.Item, _ uint64) action {
		if onItem != nil {
			onItem(it)
		}
		if it.GetIndex() >= 20 {
			<-gate
		}
		return actEcho
	})
	cl := newClient(t, c)
	flowID := cl.storeFlow()
	lines := inputLines(60)
	r := cl.uploadJSONL(flowID, "&wait=false&maxConcurrency=4", lines, nil)
	require.Equal(t, http.StatusOK, r.Status)
	runID := r.JSON(t)["runId"].(string)
	waitFor(t, 30*time.Second, func() bool {
		return cl.get("/runs/" + runID).JSON(t)["items"].(map[string]any)["completed"] == 20.0
	}, "the first 20 items done")
	return gatedRun{cl: cl, runID: runID, lines: lines, open: open}
}
