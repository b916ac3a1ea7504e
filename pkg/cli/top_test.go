package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/coordinator"
	"github.com/stepflow-go/stepflow/pkg/worker"
)

// topSnapshot is a fixed GET /cluster answer: a run 40% done with a
// redelivery, one stalled for two minutes, one with nothing in flight,
// a failed one; three workers, one slow and one stale.
const topSnapshot = `{
  "time": "2025-03-04T10:00:00Z",
  "streams": [
    {"name":"STEPFLOW_ITEMS","messages":160,"bytes":81920,"consumers":3,"firstSeq":41,"lastSeq":200,"oldestAt":"2025-03-04T09:58:30Z"},
    {"name":"STEPFLOW_RESULTS","messages":40,"bytes":2048,"consumers":1,"firstSeq":1,"lastSeq":40,"oldestAt":"2025-03-04T09:59:00Z"}
  ],
  "consumers": [
    {"name":"run-01a2aaaa-0000-7000-8000-00000000beef","runId":"01a2aaaa-0000-7000-8000-00000000beef","numPending":56,"numAckPending":4,"numRedelivered":1,"maxAckPending":4,"numWaiting":0,"lastDelivered":"2025-03-04T09:59:59Z"},
    {"name":"run-01a2bbbb-0000-7000-8000-00000000cafe","runId":"01a2bbbb-0000-7000-8000-00000000cafe","numPending":0,"numAckPending":2,"numRedelivered":0,"maxAckPending":2,"numWaiting":0,"lastDelivered":"2025-03-04T09:57:00Z"},
    {"name":"run-01a2cccc-0000-7000-8000-00000000f00d","runId":"01a2cccc-0000-7000-8000-00000000f00d","numPending":98,"numAckPending":0,"numRedelivered":0,"maxAckPending":8,"numWaiting":0,"lastDelivered":null}
  ],
  "workers": [
    {"id":"worker-a","host":"h1","pid":10,"version":"v1","lastHeartbeat":"2025-03-04T09:59:59.5Z","heartbeatAgeMs":500,"stale":false,"slow":false,"draining":false,
     "slots":{"total":4,"busy":4,"lent":0},"runs":{"01a2aaaa-0000-7000-8000-00000000beef":4},"items":{"completed":30,"failed":2,"returned":0},"recent":{"items":32,"meanMs":120,"p95Ms":300}},
    {"id":"worker-b-with-a-very-long-name-0123456789","host":"h2","pid":11,"version":"v1","lastHeartbeat":"2025-03-04T09:59:59Z","heartbeatAgeMs":1000,"stale":false,"slow":true,"draining":false,
     "slots":{"total":2,"busy":2,"lent":0},"runs":{"01a2bbbb-0000-7000-8000-00000000cafe":2},"items":{"completed":8,"failed":0,"returned":1},"recent":{"items":8,"meanMs":2500,"p95Ms":9100}},
    {"id":"worker-c","host":"h3","pid":12,"version":"v1","lastHeartbeat":"2025-03-04T09:59:40Z","heartbeatAgeMs":20000,"stale":true,"slow":false,"draining":false,
     "slots":{"total":4,"busy":0,"lent":0},"runs":{},"items":{"completed":0,"failed":0,"returned":0},"recent":{"items":0,"meanMs":0,"p95Ms":0}}
  ],
  "runs": [
    {"runId":"01a2aaaa-0000-7000-8000-00000000beef","flowId":"f1","flowName":"greet","status":"running","createdAt":"2025-03-04T09:59:20Z","completedAt":null,
     "items":{"total":100,"completed":38,"running":4,"failed":2,"cancelled":0,"queued":56,"redelivered":1},"maxConcurrency":4,"lastResultAt":"2025-03-04T09:59:59Z"},
    {"runId":"01a2bbbb-0000-7000-8000-00000000cafe","flowId":"f2","flowName":null,"status":"running","createdAt":"2025-03-04T09:50:00Z","completedAt":null,
     "items":{"total":10,"completed":8,"running":2,"failed":0,"cancelled":0,"queued":0,"redelivered":0},"maxConcurrency":2,"lastResultAt":"2025-03-04T09:58:00Z"},
    {"runId":"01a2cccc-0000-7000-8000-00000000f00d","flowId":"f3","flowName":"idle","status":"running","createdAt":"2025-03-04T09:59:50Z","completedAt":null,
     "items":{"total":98,"completed":0,"running":0,"failed":0,"cancelled":0,"queued":98,"redelivered":0},"maxConcurrency":8},
    {"runId":"01a2dddd-0000-7000-8000-00000000dead","flowId":"f4","flowName":"broken","status":"failed","createdAt":"2025-03-04T09:00:00Z","completedAt":"2025-03-04T09:00:20Z",
     "items":{"total":20,"completed":15,"running":0,"failed":5,"cancelled":0,"queued":0,"redelivered":0},"maxConcurrency":20}
  ]
}`

// topGolden is the --once rendering of topSnapshot; regenerate it with
// STEPFLOW_UPDATE_GOLDEN=1 go test -run TestRenderTop ./pkg/cli/ (and
// read the diff).
const topGolden = "testdata/top.golden"

func decodeSnapshot(t *testing.T, s string) *clusterView {
	t.Helper()
	var v clusterView
	require.NoError(t, json.Unmarshal([]byte(s), &v))
	return &v
}

// TestRenderTop: the --once rendering of a fixed snapshot, golden, within
// 80 columns and free of terminal codes; the live rendering colours the
// flags and keeps the columns aligned.
func TestRenderTop(t *testing.T) {
	t.Parallel()
	v := decodeSnapshot(t, topSnapshot)
	var buf bytes.Buffer
	renderTop(&buf, v, topOptions{URL: "http://coord:7840/api/v1", Rates: elapsedRates(v)})
	if os.Getenv("STEPFLOW_UPDATE_GOLDEN") != "" {
		require.NoError(t, os.WriteFile(topGolden, buf.Bytes(), 0o644))
	}
	golden, err := os.ReadFile(topGolden)
	require.NoError(t, err)
	require.Equal(t, string(golden), buf.String())
	for _, line := range strings.Split(buf.String(), "\n") {
		require.LessOrEqual(t, visibleLen(line), 80, "%q", line)
		require.NotContains(t, line, "\x1b")
	}

	buf.Reset()
	renderTop(&buf, v, topOptions{URL: "http://coord:7840/api/v1", Rates: elapsedRates(v), Color: true, Footer: "every 1s", Fault: "connection refused"})
	out := buf.String()
	require.Contains(t, out, ansiBold+"WORKERS"+ansiReset)
	require.Contains(t, out, ansiYellow+"SLOW"+ansiReset)
	require.Contains(t, out, ansiRed+"STALE"+ansiReset)
	require.Contains(t, out, "showing the last view: connection refused")
	require.True(t, strings.HasSuffix(out, "\nevery 1s\n"), out)
	// Without the codes, the colour frame has the golden's tables.
	plain := stripANSI(out)
	require.Contains(t, plain, strings.Split(string(golden), "\nRUNS\n")[1][:200])

	// Wide mode keeps full ids.
	buf.Reset()
	renderTop(&buf, v, topOptions{Rates: elapsedRates(v), Wide: true})
	require.Contains(t, buf.String(), "01a2aaaa-0000-7000-8000-00000000beef")
	require.Contains(t, buf.String(), "worker-b-with-a-very-long-name-0123456789")

	// An empty cluster says so.
	buf.Reset()
	renderTop(&buf, &clusterView{Time: "2025-03-04T10:00:00Z"}, topOptions{})
	require.Contains(t, buf.String(), "no runs")
	require.Contains(t, buf.String(), "no worker has announced itself")
	require.Contains(t, buf.String(), "backlog: 0 queued, 0 in flight, 0 free worker slots\n")
}

func stripANSI(s string) string {
	var b strings.Builder
	esc := false
	for _, r := range s {
		switch {
		case esc:
			if r >= '@' && r <= '~' && r != '[' {
				esc = false
			}
		case r == '\x1b':
			esc = true
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// TestRateHistory: live rates come from successive snapshots over the
// window, not from a run's whole life.
func TestRateHistory(t *testing.T) {
	t.Parallel()
	snap := func(at string, done int) *clusterView {
		return &clusterView{Time: at, Runs: []topRun{{runSummary: runSummary{RunID: "r", Status: "running",
			CreatedAt: "2025-03-04T09:00:00Z", Items: itemStats{Total: 1000, Completed: done}}}}}
	}
	var h rateHistory
	first := snap("2025-03-04T10:00:00Z", 100)
	h.add(first)
	// One snapshot: the elapsed-time rate (100 items in an hour).
	require.InDelta(t, 100.0/3600, h.rates(first)["r"], 1e-9)
	for i := 1; i <= 20; i++ {
		h.add(snap(fmt.Sprintf("2025-03-04T10:00:%02dZ", i), 100+5*i))
	}
	last := snap("2025-03-04T10:00:20Z", 200)
	require.InDelta(t, 5.0, h.rates(last)["r"], 1e-9)
	require.LessOrEqual(t, len(h.snaps), 12, "old snapshots are dropped")
}

// TestShortDuration pins the 6-character durations.
func TestShortDuration(t *testing.T) {
	t.Parallel()
	for d, want := range map[time.Duration]string{
		420 * time.Microsecond: "420µs", 850 * time.Millisecond: "850ms", 4200 * time.Millisecond: "4.2s", 38 * time.Second: "38s",
		125 * time.Second: "2m05s", 3*time.Hour + 7*time.Minute: "3h07m", 52 * time.Hour: "2d04h",
	} {
		require.Equal(t, want, shortDuration(d))
	}
	require.Equal(t, "1.5KiB", humanBytes(1536))
	require.Equal(t, "12B", humanBytes(12))
	require.Equal(t, "###.......", progressBar(3, 10, 10))
	require.Equal(t, "##########", progressBar(0, 0, 10))
}

// startTopCluster starts a coordinator without workers.
func startTopCluster(t *testing.T) *coordinator.Coordinator {
	t.Helper()
	c, err := coordinator.New(coordinator.Config{DataDir: t.TempDir(), Host: "127.0.0.1",
		Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	require.NoError(t, c.Start(ctx))
	t.Cleanup(func() { require.NoError(t, c.Stop(context.Background())) })
	return c
}

// TestTopOnce: `stepflow top --once` against a real coordinator: a run
// submitted before any worker shows as queued with nothing in flight and
// the queue backing up; once a worker runs it, the run is done with its
// failures counted, and the worker shows its slots and items.
func TestTopOnce(t *testing.T) {
	t.Parallel()
	c := startTopCluster(t)
	url := c.URL()
	dir := t.TempDir()
	f := tempFile(t, dir, "flow.yaml", greetFlow)
	items := greetBatch(t, dir, "items.jsonl", 30, 10) // items 9, 19, 29 fail

	sub := stepflow(t, nil, "", "submit", "--url", url, "--flow", f, "--inputs", items, "--max-concurrent", "4", "--no-wait")
	require.Equal(t, ExitOK, sub.code, sub.stderr)
	runID := strings.TrimSpace(sub.stdout)
	short := abbreviate(runID, 6, 4)

	// The run exists once submit returns; its publisher puts the items on
	// the queue right after.
	// The consumer's count of pending items follows the stream's a moment
	// later.
	itemsLine := regexp.MustCompile(`(?m)^STEPFLOW_ITEMS +30 +\S+ +1 +\d+ `)
	consumerLine := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(short) + ` +30 +0 +0 +4 `)
	var r result
	queued := assert.Eventually(t, func() bool {
		r = stepflow(t, nil, "", "top", "--once", "--url", url)
		return r.code == ExitOK && itemsLine.MatchString(r.stdout) && consumerLine.MatchString(r.stdout)
	}, 10*time.Second, 20*time.Millisecond)
	require.True(t, queued, "last output:\n%s\n%s", r.stdout, r.stderr)
	out := r.stdout
	require.NotContains(t, out, "\x1b")
	require.Regexp(t, `(?m)^`+short+` running +\.{10} +0/30 +0 +0 +30 +0 `, out)
	require.Contains(t, out, short+": 30 queued, none in flight: no worker is taking this run's items")
	require.Regexp(t, `(?m)^`+short+` +30 +0 +0 +4 `, out) // the consumer: 30 pending, max 4
	require.Contains(t, out, "BACKING UP: no live worker takes items")
	require.Contains(t, out, "no worker has announced itself")

	// --json is the raw view.
	r = stepflow(t, nil, "", "top", "--once", "--json", "--url", url)
	require.Equal(t, ExitOK, r.code, r.stderr)
	v := decodeSnapshot(t, r.stdout)
	require.Len(t, v.Runs, 1)
	require.Equal(t, runID, v.Runs[0].RunID)

	w, err := worker.New(worker.Config{NATSURL: c.NATSURL(), StepflowConfig: config.Default(), Concurrency: 3,
		WorkerID: "top-worker-1", FetchMaxWait: 100 * time.Millisecond, StatusInterval: 50 * time.Millisecond,
		Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	require.NoError(t, w.Start(ctx))
	t.Cleanup(func() { require.NoError(t, w.Stop(context.Background())) })

	att := stepflow(t, nil, "", "submit", "--url", url, "--attach", runID, "-q")
	require.Equal(t, ExitItemsFailed, att.code, att.stderr)
	// The worker's heartbeat follows its items within a few intervals.
	ok := assert.Eventually(t, func() bool {
		r = stepflow(t, nil, "", "top", "--once", "--url", url)
		return r.code == ExitOK && strings.Contains(r.stdout, "top-worker-1   0/3   27      3")
	}, 10*time.Second, 50*time.Millisecond)
	require.True(t, ok, "last output:\n%s\n%s", r.stdout, r.stderr)
	out = r.stdout
	require.Regexp(t, `(?m)^`+short+` failed +#{10} +30/30 +3 +0 +0 +0 `, out)
	require.Regexp(t, `(?m)^STEPFLOW_ITEMS +0 `, out)
	require.Contains(t, out, "no run consumers")
	require.Regexp(t, `(?m)^top-worker-1 +0/3 +27 +3 +\S+ +\S+ +\S+$`, out) // no STALE or SLOW

	// Usage errors.
	r = stepflow(t, nil, "", "top", "--json", "--url", url)
	require.Equal(t, ExitUsage, r.code)
	require.Contains(t, r.stderr, "--json needs --once")
	r = stepflow(t, nil, "", "top", "--interval", "1ms", "--url", url)
	require.Equal(t, ExitUsage, r.code)
}

// TestTopLive: the live view redraws with terminal codes until its
// context ends, then restores the screen and exits 0.
func TestTopLive(t *testing.T) {
	t.Parallel()
	c := startTopCluster(t)
	ctx, cancel := context.WithCancel(context.Background())
	out := &frameWriter{frames: make(chan struct{}, 100)}
	done := make(chan int, 1)
	go func() {
		done <- Execute(ctx, []string{"top", "--url", c.URL(), "--interval", "100ms"}, IO{Stdout: out, Stderr: &bytes.Buffer{},
			Getenv: func(string) string { return "" }})
	}()
	for range 3 { // three frames: it keeps polling
		select {
		case <-out.frames:
		case <-time.After(20 * time.Second):
			t.Fatal("no frame")
		}
	}
	cancel()
	select {
	case code := <-done:
		require.Equal(t, ExitOK, code)
	case <-time.After(20 * time.Second):
		t.Fatal("top did not stop on cancel")
	}
	s := out.String()
	require.True(t, strings.HasPrefix(s, ansiAltScreen), "%q", s[:min(len(s), 40)])
	require.True(t, strings.HasSuffix(s, ansiMainScreen))
	require.Contains(t, s, ansiHomeClear+"stepflow top · "+c.URL())
	require.Contains(t, s, ansiBold+"STREAMS"+ansiReset)
	require.Contains(t, s, "every 100ms · Ctrl-C quits")
}

// frameWriter records output and signals every frame.
type frameWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	frames chan struct{}
}

func (f *frameWriter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if bytes.HasPrefix(p, []byte(ansiHomeClear)) {
		select {
		case f.frames <- struct{}{}:
		default:
		}
	}
	return f.buf.Write(p)
}

func (f *frameWriter) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.buf.String()
}
