package worker

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/metrics"
	"github.com/stepflow-go/stepflow/pkg/metrics/metricstest"
	"github.com/stepflow-go/stepflow/pkg/plugin"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// healthPlugin is the test plugin reporting the health a test sets, as
// a component-server plugin does (plugin.HealthReporter).
type healthPlugin struct {
	testPlugin
	down *atomic.Pointer[error]
}

func (p *healthPlugin) Health() error {
	if err := p.down.Load(); err != nil {
		return *err
	}
	return nil
}

// probe GETs a path of the worker's health server.
func probe(t *testing.T, w *Worker, path string) (int, string) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + w.HealthAddr() + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// eventually polls cond every 10ms for at most 30s.
func eventually(t *testing.T, cond func() bool, msg string) {
	t.Helper()
	require.Eventually(t, cond, 30*time.Second, 10*time.Millisecond, msg)
}

// The health server's /metrics after a few runs: items by outcome,
// component call histograms, slots, NATS; /readyz follows the component
// servers' health.
func TestMetricsAndReadiness(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var down atomic.Pointer[error]
	release := make(chan struct{})
	comps := map[string]component{
		"/echo": func(_ context.Context, req *executor.Request, _ plugin.Host) (value.Value, error) {
			return req.Input, nil
		},
		"/boom": func(context.Context, *executor.Request, plugin.Host) (value.Value, error) {
			return nil, errors.New("boom")
		},
		"/hold": func(ctx context.Context, req *executor.Request, _ plugin.Host) (value.Value, error) {
			select {
			case <-release:
				return req.Input, nil
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
		},
	}
	const concurrency = 3
	cfg := b.workerConfig("m1", concurrency, nil)
	cfg.PluginFactories = map[config.PluginType]plugin.Factory{config.TypeMock: func(_ context.Context, _ *config.Plugin, host plugin.Host) (plugin.Plugin, error) {
		return &healthPlugin{testPlugin: testPlugin{comps: comps, host: host}, down: &down}, nil
	}}
	cfg.HealthPort = -1
	w := b.start(cfg)
	eventually(t, func() bool { s, _ := probe(t, w, "/readyz"); return s == http.StatusOK }, "ready")
	scrape := func() metricstest.Families { return metricstest.Scrape(t, "http://"+w.HealthAddr()+"/metrics", "") }
	val := func(m metricstest.Families, name string, labels ...string) float64 {
		t.Helper()
		v, ok := m.Value(name, labels...)
		require.True(t, ok, "no %s%v", name, labels)
		return v
	}
	step := func(c string) string {
		return "steps:\n  - { id: s, component: /test/" + c + ", input: { $input: \"$\" } }\noutput: { $step: s }\n"
	}

	// A batch of 6 that succeeds and one item that fails.
	ok := b.createRun(runSpec{flow: step("echo"), items: 6, maxConc: concurrency})
	b.results(ok, 6)
	bad := b.createRun(runSpec{flow: step("boom"), items: 1, maxConc: 1})
	b.results(bad, 1)
	var m metricstest.Families
	eventually(t, func() bool {
		m = scrape()
		// An item is counted as it settles, a moment before its slot is
		// free again.
		free, _ := m.Value("stepflow_worker_slots", "state", "free")
		return m.Sum("stepflow_worker_items_total") == 7 && free == float64(concurrency)
	}, "7 items settled and their slots free")
	require.Equal(t, 6.0, val(m, "stepflow_worker_items_total", "worker", "m1", "outcome", "succeeded"))
	require.Equal(t, 1.0, val(m, "stepflow_worker_items_total", "worker", "m1", "outcome", "failed"))
	require.Zero(t, val(m, "stepflow_worker_items_total", "worker", "m1", "outcome", "retried"))
	require.Equal(t, uint64(6), m.HistogramCount("stepflow_worker_item_duration_seconds", "worker", "m1", "outcome", "succeeded"))
	require.Equal(t, uint64(6), m.HistogramCount("stepflow_component_call_duration_seconds", "component", "/test/echo", "outcome", "ok"))
	require.Equal(t, uint64(1), m.HistogramCount("stepflow_component_call_duration_seconds", "component", "/test/boom", "outcome", "error"))
	require.Zero(t, m.HistogramCount("stepflow_component_call_duration_seconds", "component", "/test/echo", "outcome", "error"))
	require.Equal(t, float64(concurrency), m.Sum("stepflow_worker_slots", "worker", "m1"))
	require.Equal(t, float64(concurrency), val(m, "stepflow_worker_slots", "state", "free"))
	require.Zero(t, val(m, "stepflow_worker_slots_lent"))
	require.Equal(t, 1.0, val(m, "stepflow_worker_nats_connected", "worker", "m1"))
	require.Zero(t, val(m, "stepflow_worker_nats_reconnects_total"))
	require.Equal(t, 1.0, val(m, "stepflow_worker_ready"))
	require.Equal(t, 1.0, val(m, "stepflow_worker_component_server_up", "plugin", "test"))
	require.NotEmpty(t, m.Find("go_goroutines"), "the default registry has the Go collector")

	// Two items held: two slots busy, one free.
	held := b.createRun(runSpec{flow: step("hold"), items: 2, maxConc: 2})
	eventually(t, func() bool {
		m = scrape()
		v, _ := m.Value("stepflow_worker_slots", "state", "busy")
		return v == 2
	}, "two busy slots")
	require.Equal(t, 1.0, val(m, "stepflow_worker_slots", "state", "free"))
	close(release)
	b.results(held, 2)

	// A component server down: not ready, with the reason.
	downErr := errors.New(`component server "test" failed: process exited; restarting`)
	down.Store(&downErr)
	status, body := probe(t, w, "/readyz")
	require.Equal(t, http.StatusServiceUnavailable, status)
	require.Equal(t, "not ready: "+downErr.Error()+"\n", body)
	m = scrape()
	require.Zero(t, val(m, "stepflow_worker_component_server_up", "plugin", "test"))
	require.Zero(t, val(m, "stepflow_worker_ready"))
	down.Store(nil)
	status, _ = probe(t, w, "/readyz")
	require.Equal(t, http.StatusOK, status)
}

// /readyz and stepflow_worker_nats_connected follow the NATS connection.
func TestReadyzFollowsNATS(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cfg := b.workerConfig("n1", 1, nil)
	cfg.HealthPort = -1
	w := b.start(cfg)
	eventually(t, func() bool { s, _ := probe(t, w, "/readyz"); return s == http.StatusOK }, "ready")

	b.srv.Shutdown()
	var body string
	eventually(t, func() bool {
		var s int
		s, body = probe(t, w, "/readyz")
		return s == http.StatusServiceUnavailable
	}, "not ready once NATS is gone")
	require.Contains(t, body, "not ready: not connected to NATS")
	status, _ := probe(t, w, "/healthz")
	require.Equal(t, http.StatusOK, status, "alive all the same")
	m := metricstest.Scrape(t, "http://"+w.HealthAddr()+"/metrics", "")
	v, ok := m.Value("stepflow_worker_nats_connected")
	require.True(t, ok)
	require.Zero(t, v)
}

// Workers sharing a registry (stepflow serve) register side by side
// under their own worker label, a duplicate id is refused, and a stopped
// worker's series are gone.
func TestSharedRegistry(t *testing.T) {
	t.Parallel()
	b := setup(t)
	reg := prometheus.NewRegistry()
	var ws []*Worker
	for _, id := range []string{"a", "b"} {
		cfg := b.workerConfig(id, 2, nil)
		cfg.Metrics = reg
		ws = append(ws, b.start(cfg))
	}
	run := b.createRun(runSpec{flow: noopFlow, items: 10, maxConc: 4})
	b.results(run, 10)

	srv := httptestServer(t, reg)
	var m metricstest.Families
	eventually(t, func() bool {
		m = metricstest.Scrape(t, srv, "")
		return m.Sum("stepflow_worker_items_total", "outcome", "succeeded") == 10
	}, "10 items settled")
	require.ElementsMatch(t, []string{"a", "b"}, m.LabelValues("stepflow_worker_slots", "worker"))
	require.Equal(t, 4.0, m.Sum("stepflow_worker_slots"))
	require.Empty(t, m.Find("go_goroutines"), "a given registry gets no Go collector from the worker")

	dup := b.workerConfig("a", 1, nil)
	dup.Metrics = reg
	w, err := New(dup)
	require.NoError(t, err)
	require.ErrorContains(t, w.Start(testCtx(t)), "worker ids must be unique per registry")

	require.NoError(t, ws[1].Stop(testCtx(t)))
	m = metricstest.Scrape(t, srv, "")
	require.Equal(t, []string{"a"}, m.LabelValues("stepflow_worker_slots", "worker"))
}

// httptestServer serves reg's metrics on a local port and returns the
// URL of /metrics.
func httptestServer(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	h, err := startHealth("127.0.0.1", -1, func() error { return nil }, metrics.Handler(reg, nil), zap.NewNop())
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, h.close()) })
	return "http://" + h.addr() + "/metrics"
}

// --pprof-addr serves the Go profiles on a listener of its own, closed
// with the worker.
func TestPprofAddr(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cfg := b.workerConfig("prof", 1, nil)
	cfg.PprofAddr = "127.0.0.1:0"
	w, err := New(cfg)
	require.NoError(t, err)
	require.Empty(t, w.PprofAddr(), "not started")
	require.NoError(t, w.Start(testCtx(t)))
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + w.PprofAddr() + "/debug/pprof/goroutine?debug=1")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, string(body), "goroutine profile:")
	require.NoError(t, w.Stop(testCtx(t)))
	_, err = client.Get("http://" + w.PprofAddr() + "/debug/pprof/")
	require.Error(t, err, "closed with the worker")
}
