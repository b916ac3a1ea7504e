package coordinator_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/coordinator"
	"github.com/stepflow-go/stepflow/pkg/metrics/metricstest"
	"github.com/stepflow-go/stepflow/pkg/queue"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// plainGet GETs a path of the coordinator without a token.
func plainGet(t *testing.T, c *coordinator.Coordinator, path string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t), http.MethodGet, c.URL()+path, nil)
	require.NoError(t, err)
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// With --auth-token, the health paths answer without a token; /metrics
// and /api/v1/backlog need it. A held run shows in the backlog and the
// per-run series; a finished batch shows its final counts, the
// aggregation lag and the result counters.
func TestMetricsBacklogAndHealth(t *testing.T) {
	t.Parallel()
	const token = "s3cret"
	c := startCoordinator(t, func(cfg *coordinator.Config) { cfg.AuthToken = token })

	for _, path := range []string{"/healthz", "/readyz", "/api/v1/health"} {
		status, body := plainGet(t, c, path)
		require.Equal(t, http.StatusOK, status, "%s: %s", path, body)
	}
	status, body := plainGet(t, c, "/readyz")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, "ready\n", body)
	status, body = plainGet(t, c, "/healthz")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, "ok\n", body)
	for _, path := range []string{"/metrics", "/api/v1/backlog", "/api/v1/runs"} {
		status, body = plainGet(t, c, path)
		require.Equal(t, http.StatusUnauthorized, status, "%s: %s", path, body)
	}

	// Items whose input says "hold" stay in flight (no result, no ack).
	startWorker(t, c.NATSURL(), func(it *stepflowv1.Item, _ uint64) action {
		if strings.Contains(string(it.GetInput()), "hold") {
			return actHold
		}
		return actEcho
	})
	cl := newClient(t, c)
	cl.token = token
	flowID := cl.storeFlow()

	backlog := func() map[string]any {
		r := cl.get("/backlog")
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		require.Equal(t, "application/json", r.Header.Get("Content-Type"))
		return r.JSON(t)
	}
	require.Equal(t, map[string]any{"queued": 0.0, "inFlight": 0.0, "backlog": 0.0, "runs": 0.0}, backlog())

	// A held run: 5 items, 2 at a time.
	held := make([]string, 5)
	for i := range held {
		held[i] = `{"hold":true}`
	}
	r := cl.uploadJSONL(flowID, "&wait=false&maxConcurrency=2", held, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	heldRun := r.JSON(t)["runId"].(string)
	var last map[string]any
	waitFor(t, 30*time.Second, func() bool {
		last = backlog()
		return last["inFlight"] == 2.0
	}, "two items of the held run in flight")
	require.Equal(t, map[string]any{"queued": 3.0, "inFlight": 2.0, "backlog": 5.0, "runs": 1.0}, last)

	// A batch that completes.
	const batch = 7
	r = cl.uploadJSONL(flowID, "&wait=false", inputLines(batch), nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	doneRun := r.JSON(t)["runId"].(string)
	cl.waitStatus(doneRun, "completed")

	m := metricstest.Scrape(t, c.URL()+"/metrics", token)
	val := func(name string, labels ...string) float64 {
		t.Helper()
		v, ok := m.Value(name, labels...)
		require.True(t, ok, "no %s%v", name, labels)
		return v
	}
	// The finished batch, kept after its end with its final counts.
	require.Equal(t, float64(batch), val("stepflow_run_items", "run", doneRun, "state", "completed"))
	for _, st := range []string{"queued", "running", "failed", "cancelled"} {
		require.Zero(t, val("stepflow_run_items", "run", doneRun, "state", st), st)
	}
	require.Equal(t, 1.0, val("stepflow_run_info", "run", doneRun, "status", "completed", "flow_id", flowID, "flow_name", "echo"))
	require.Positive(t, val("stepflow_run_finished_timestamp_seconds", "run", doneRun))
	require.Zero(t, val("stepflow_run_redeliveries_total", "run", doneRun))
	// The held run, live.
	require.Equal(t, 3.0, val("stepflow_run_items", "run", heldRun, "state", "queued"))
	require.Equal(t, 2.0, val("stepflow_run_items", "run", heldRun, "state", "running"))
	require.Equal(t, 2.0, val("stepflow_run_max_concurrency", "run", heldRun))
	require.Equal(t, 1.0, val("stepflow_run_info", "run", heldRun, "status", "running"))
	_, ok := m.Value("stepflow_run_finished_timestamp_seconds", "run", heldRun)
	require.False(t, ok, "a running run has no finish time")
	require.Equal(t, 5.0, val("stepflow_backlog_items"))
	require.Equal(t, 1.0, val("stepflow_coordinator_runs_active"))
	// Aggregation.
	require.Equal(t, float64(batch), val("stepflow_coordinator_results_total", "disposition", "stored"))
	require.Zero(t, val("stepflow_coordinator_results_total", "disposition", "duplicate"))
	require.Equal(t, uint64(batch), m.HistogramCount("stepflow_result_aggregation_lag_seconds"))
	require.Equal(t, 1.0, val("stepflow_coordinator_runs_finished_total", "status", "completed"))
	require.Zero(t, val("stepflow_results_pending_messages"))
	// Process state.
	require.Equal(t, 1.0, val("stepflow_coordinator_nats_connected"))
	require.Equal(t, 1.0, val("stepflow_coordinator_ready"))
	require.NotEmpty(t, m.Find("go_goroutines"))
	require.NotEmpty(t, m.Find("process_start_time_seconds"))

	// Cancelling the held run: it leaves the backlog, and its series show
	// it cancelled.
	r = cl.post("/runs/"+heldRun+"/cancel", "")
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	require.Equal(t, map[string]any{"queued": 0.0, "inFlight": 0.0, "backlog": 0.0, "runs": 0.0}, backlog())
	m = metricstest.Scrape(t, c.URL()+"/metrics", token)
	require.Equal(t, 5.0, val("stepflow_run_items", "run", heldRun, "state", "cancelled"))
	require.Equal(t, 1.0, val("stepflow_run_info", "run", heldRun, "status", "cancelled"))
	require.Zero(t, val("stepflow_backlog_items"))
}

// Finished runs leave /metrics after MetricsRunRetention.
func TestMetricsRunRetention(t *testing.T) {
	t.Parallel()
	c := startCoordinator(t, func(cfg *coordinator.Config) { cfg.MetricsRunRetention = 200 * time.Millisecond })
	startWorker(t, c.NATSURL(), nil)
	cl := newClient(t, c)
	flowID := cl.storeFlow()
	r := cl.uploadJSONL(flowID, "&wait=true", inputLines(3), nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	runID := r.JSON(t)["runId"].(string)
	waitFor(t, 30*time.Second, func() bool {
		return len(metricstest.Scrape(t, c.URL()+"/metrics", "").Find("stepflow_run_items", "run", runID)) == 0
	}, "the finished run's series dropped")
	m := metricstest.Scrape(t, c.URL()+"/metrics", "")
	v, ok := m.Value("stepflow_coordinator_runs_finished_total", "status", "completed")
	require.True(t, ok)
	require.Equal(t, 1.0, v, "the counter stays")
}

// /readyz and stepflow_coordinator_nats_connected follow the NATS
// connection: 503 and 0 once the server is gone.
func TestReadyzFollowsNATS(t *testing.T) {
	t.Parallel()
	srv := queue.NewEmbedded(queue.EmbeddedConfig{StoreDir: t.TempDir(), Logger: testLogger(t)})
	require.NoError(t, srv.Start(testCtx(t)))
	t.Cleanup(srv.Shutdown)
	c := startCoordinator(t, func(cfg *coordinator.Config) { cfg.NATSURL = srv.ClientURL() })
	status, body := plainGet(t, c, "/readyz")
	require.Equal(t, http.StatusOK, status, body)
	require.NoError(t, c.Ready())

	srv.Shutdown()
	waitFor(t, 30*time.Second, func() bool {
		status, body = plainGet(t, c, "/readyz")
		return status == http.StatusServiceUnavailable
	}, "/readyz 503 once NATS is gone")
	require.Contains(t, body, "not ready: not connected to NATS")
	require.Error(t, c.Ready())
	status, _ = plainGet(t, c, "/healthz")
	require.Equal(t, http.StatusOK, status, "alive all the same")
	m := metricstest.Scrape(t, c.URL()+"/metrics", "")
	v, ok := m.Value("stepflow_coordinator_nats_connected")
	require.True(t, ok)
	require.Zero(t, v)
	v, _ = m.Value("stepflow_coordinator_ready")
	require.Zero(t, v)
}

// ReadyCheck adds a condition to /readyz.
func TestReadyCheck(t *testing.T) {
	t.Parallel()
	var notReady = context.DeadlineExceeded
	c := startCoordinator(t, func(cfg *coordinator.Config) { cfg.ReadyCheck = func() error { return notReady } })
	status, body := plainGet(t, c, "/readyz")
	require.Equal(t, http.StatusServiceUnavailable, status)
	require.Equal(t, "not ready: "+notReady.Error()+"\n", body)
}

// The API server serves the Go profiles behind the token; --pprof-addr
// serves them on a listener of its own without one.
func TestPprof(t *testing.T) {
	t.Parallel()
	const token = "s3cret"
	c := startCoordinator(t, func(cfg *coordinator.Config) {
		cfg.AuthToken = token
		cfg.PprofAddr = "127.0.0.1:0"
	})
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	fetch := func(url, tok string) (int, []byte) {
		t.Helper()
		req, err := http.NewRequestWithContext(testCtx(t), http.MethodGet, url, nil)
		require.NoError(t, err)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := hc.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, b
	}
	requireProfile := func(b []byte) {
		t.Helper()
		zr, err := gzip.NewReader(bytes.NewReader(b))
		require.NoError(t, err, "a pprof profile is gzipped protobuf")
		raw, err := io.ReadAll(zr)
		require.NoError(t, err)
		require.NotEmpty(t, raw)
	}

	for _, path := range []string{"/debug/pprof/", "/debug/pprof/profile?seconds=1", "/debug/pprof/heap", "/debug/pprof/goroutine?debug=2"} {
		status, body := fetch(c.URL()+path, "")
		require.Equal(t, http.StatusUnauthorized, status, "%s: %s", path, body)
		status, body = fetch(c.URL()+path, "wrong")
		require.Equal(t, http.StatusUnauthorized, status, "%s: %s", path, body)
	}
	status, body := fetch(c.URL()+"/debug/pprof/", token)
	require.Equal(t, http.StatusOK, status)
	require.Contains(t, string(body), "goroutine")
	status, body = fetch(c.URL()+"/debug/pprof/profile?seconds=1", token)
	require.Equal(t, http.StatusOK, status, "%s", body)
	requireProfile(body)
	status, body = fetch(c.URL()+"/debug/pprof/heap", token)
	require.Equal(t, http.StatusOK, status)
	requireProfile(body)
	status, _ = fetch(c.URL()+"/debug/pprof/cmdline", token)
	require.Equal(t, http.StatusNotFound, status, "the command line may hold secrets")

	// --pprof-addr: no token needed (bind it to loopback).
	require.NotEmpty(t, c.PprofAddr())
	status, body = fetch("http://"+c.PprofAddr()+"/debug/pprof/heap", "")
	require.Equal(t, http.StatusOK, status)
	requireProfile(body)
	status, body = fetch("http://"+c.PprofAddr()+"/metrics", "")
	require.Equal(t, http.StatusNotFound, status, "only the profiles: %s", body)

	// Without --pprof-addr there is no such listener.
	require.Empty(t, startCoordinator(t, nil).PprofAddr())
}
