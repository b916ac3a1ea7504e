package coordinator_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/queue"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// cluster reads GET /cluster.
func (c *client) cluster() map[string]any {
	c.t.Helper()
	r := c.get("/cluster")
	require.Equal(c.t, http.StatusOK, r.Status, "%s", r.Body)
	return r.JSON(c.t)
}

func byKey(list any, key, want string) map[string]any {
	for _, e := range list.([]any) {
		m := e.(map[string]any)
		if m[key] == want {
			return m
		}
	}
	return nil
}

// TestClusterView: GET /cluster shows the stream backlog, the run's
// consumer (queued, in flight, its concurrency), the worker with its busy
// slots on the run, and the run's counts; after the run, the worker's
// items done and an empty work queue.
func TestClusterView(t *testing.T) {
	t.Parallel()
	c := startCoordinator(t, nil)
	cl := newClient(t, c)
	g := newGates()
	startRealWorker(t, c, "cluster-w1", 4, g)
	flowID := cl.storeFlowJSON(heldFlow)
	run := cl.submitGated(flowID, "cv", 5, 2)
	g.waitStarted(t, "cv", 2)

	var view map[string]any
	waitFor(t, 10*time.Second, func() bool {
		view = cl.cluster()
		w := byKey(view["workers"], "id", "cluster-w1")
		return w != nil && w["slots"].(map[string]any)["busy"] == 2.0
	}, "the worker never reported 2 busy slots")
	require.NotContains(t, view, "errors")
	require.NotEmpty(t, view["time"])

	items := byKey(view["streams"], "name", queue.StreamItems)
	require.NotNil(t, items, "%v", view["streams"])
	require.Equal(t, 5.0, items["messages"]) // acked items leave the work queue
	require.Equal(t, 1.0, items["consumers"])
	require.Positive(t, items["bytes"])
	require.NotNil(t, items["oldestAt"])

	cons := byKey(view["consumers"], "runId", run)
	require.NotNil(t, cons, "%v", view["consumers"])
	require.Equal(t, queue.RunConsumer(run), cons["name"])
	require.Equal(t, 3.0, cons["numPending"])
	require.Equal(t, 2.0, cons["numAckPending"])
	require.Equal(t, 2.0, cons["maxAckPending"])
	require.Equal(t, 0.0, cons["numRedelivered"])

	w := byKey(view["workers"], "id", "cluster-w1")
	require.Equal(t, 4.0, w["slots"].(map[string]any)["total"])
	require.Equal(t, map[string]any{run: 2.0}, w["runs"])
	require.Equal(t, false, w["stale"])
	require.Equal(t, false, w["slow"])
	require.Equal(t, "test", w["version"])
	require.Equal(t, 100.0, w["heartbeatIntervalMs"])
	require.NotEmpty(t, w["lastHeartbeat"])

	r := byKey(view["runs"], "runId", run)
	require.NotNil(t, r, "%v", view["runs"])
	require.Equal(t, "running", r["status"])
	counts := r["items"].(map[string]any)
	require.Equal(t, 5.0, counts["total"])
	require.Equal(t, 2.0, counts["running"])
	require.Equal(t, 3.0, counts["queued"])
	require.Equal(t, 2.0, r["maxConcurrency"])
	require.Contains(t, r, "lastResultAt")

	g.openAll("cv")
	cl.waitStatus(run, "completed")
	waitFor(t, 10*time.Second, func() bool {
		view = cl.cluster()
		w := byKey(view["workers"], "id", "cluster-w1")
		return w != nil && w["items"].(map[string]any)["completed"] == 5.0 && w["slots"].(map[string]any)["busy"] == 0.0
	}, "the worker never reported its 5 items")
	w = byKey(view["workers"], "id", "cluster-w1")
	recent := w["recent"].(map[string]any)
	require.Equal(t, 5.0, recent["items"])
	require.Positive(t, recent["meanMs"])
	require.GreaterOrEqual(t, recent["p95Ms"], recent["meanMs"])
	require.Equal(t, 0.0, byKey(view["streams"], "name", queue.StreamItems)["messages"])
	require.Nil(t, byKey(view["consumers"], "runId", run), "a finished run's consumer is deleted")
	r = byKey(view["runs"], "runId", run)
	require.Equal(t, "completed", r["status"])
	require.Equal(t, 5.0, r["items"].(map[string]any)["completed"])

	// ?recent= bounds the finished runs listed.
	resp := cl.get("/cluster?recent=0")
	require.Equal(t, http.StatusOK, resp.Status)
	require.Empty(t, resp.JSON(t)["runs"])
	require.Equal(t, http.StatusBadRequest, cl.get("/cluster?recent=x").Status)
}

// TestItemsStatusFilter: ?status= answers only the items with that
// status, and ?limit= then bounds the matches.
func TestItemsStatusFilter(t *testing.T) {
	t.Parallel()
	c := startCoordinator(t, nil)
	cl := newClient(t, c)
	startWorker(t, c.NATSURL(), func(it *stepflowv1.Item, _ uint64) action {
		if it.GetIndex()%3 == 0 {
			return actFail
		}
		return actEcho
	})
	flowID := cl.storeFlow()
	r := cl.uploadJSONL(flowID, "&wait=true", inputLines(10), nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	run := r.JSON(t)["runId"].(string)
	cl.waitStatus(run, "failed")

	indices := func(path string) []float64 {
		t.Helper()
		resp := cl.get(path)
		require.Equal(t, http.StatusOK, resp.Status, "%s", resp.Body)
		m := resp.JSON(t)
		require.Equal(t, 10.0, m["itemCount"])
		out := []float64{}
		for _, it := range m["items"].([]any) {
			out = append(out, it.(map[string]any)["itemIndex"].(float64))
		}
		return out
	}
	require.Equal(t, []float64{0, 3, 6, 9}, indices("/runs/"+run+"/items?status=failed"))
	require.Equal(t, []float64{0, 3}, indices("/runs/"+run+"/items?status=failed&limit=2"))
	require.Equal(t, []float64{6, 9}, indices("/runs/"+run+"/items?status=failed&offset=4"))
	require.Equal(t, []float64{1, 2, 4}, indices("/runs/"+run+"/items?status=completed&limit=3"))
	require.Equal(t, []float64{}, indices("/runs/"+run+"/items?status=running"))
	require.Equal(t, []float64{2, 3}, indices("/runs/"+run+"/items?offset=2&limit=2"))
	resp := cl.get("/runs/" + run + "/items?status=failed&format=jsonl")
	require.Equal(t, http.StatusOK, resp.Status)
	require.Equal(t, 4, countLines(resp.Body))
	require.Equal(t, http.StatusBadRequest, cl.get("/runs/"+run+"/items?status=weird").Status)
}

func countLines(b []byte) int {
	n := 0
	for _, c := range b {
		if c == '\n' {
			n++
		}
	}
	return n
}
