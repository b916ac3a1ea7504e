package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/coordinator"
	"github.com/stepflow-go/stepflow/pkg/metrics/metricstest"
	"github.com/stepflow-go/stepflow/pkg/worker"
)

// startCluster starts a real coordinator (embedded NATS on free ports,
// data in t.TempDir()) and n in-process workers running the builtins; it
// returns the coordinator's base URL. Everything stops at cleanup,
// workers first.
func startCluster(t *testing.T, n int, mod func(*coordinator.Config)) string {
	t.Helper()
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	cfg := coordinator.Config{DataDir: t.TempDir(), Host: "127.0.0.1", Logger: log}
	if mod != nil {
		mod(&cfg)
	}
	c, err := coordinator.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	require.NoError(t, c.Start(ctx))
	t.Cleanup(func() { require.NoError(t, c.Stop(context.Background())) })
	for i := range n {
		w, err := worker.New(worker.Config{
			NATSURL:        c.NATSURL(),
			StepflowConfig: config.Default(),
			Concurrency:    4,
			WorkerID:       fmt.Sprintf("%s-w%d", t.Name(), i),
			FetchMaxWait:   100 * time.Millisecond,
			Logger:         log,
		})
		require.NoError(t, err)
		require.NoError(t, w.Start(ctx))
		t.Cleanup(func() {
			sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := w.Stop(sctx); err != nil {
				// Seen once in CI (an item still in flight when the drain
				// timed out, cause unknown): keep what every goroutine
				// was doing for the next occurrence.
				var stacks strings.Builder
				_ = pprof.Lookup("goroutine").WriteTo(&stacks, 1)
				t.Logf("worker %d did not stop: %v; goroutines:\n%s", i, err, stacks.String())
				t.Fail()
			}
		})
	}
	return c.URL()
}

// greetBatch writes n greetFlow inputs; every bad-th one (if bad > 0)
// misses the required name and fails.
func greetBatch(t *testing.T, dir, name string, n, bad int) string {
	t.Helper()
	var in strings.Builder
	for i := range n {
		if bad > 0 && i%bad == bad-1 {
			fmt.Fprintf(&in, `{"nom":"n%d"}`+"\n", i)
			continue
		}
		fmt.Fprintf(&in, `{"name":"n%d"}`+"\n", i)
	}
	return tempFile(t, dir, name, in.String())
}

// runsJSON lists the runs of a coordinator.
func runsJSON(t *testing.T, env map[string]string, url string, args ...string) []runSummary {
	t.Helper()
	r := stepflow(t, env, "", append([]string{"runs", "list", "--url", url, "--format", "json"}, args...)...)
	require.Equal(t, ExitOK, r.code, r.stderr)
	var out struct {
		Runs []runSummary `json:"runs"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &out), r.stdout)
	return out.Runs
}

// TestSubmitMatchesRun: a batch (and a single input) submitted to a
// coordinator gives byte for byte what `stepflow run` gives, on stdout
// and in --output, with --url given with or without /api/v1.
func TestSubmitMatchesRun(t *testing.T) {
	t.Parallel()
	url := startCluster(t, 2, nil)
	dir := t.TempDir()
	f := tempFile(t, dir, "flow.yaml", greetFlow)
	items := greetBatch(t, dir, "items.jsonl", 300, 0)

	local := stepflow(t, nil, "", "run", "--flow", f, "--inputs", items, "-q")
	require.Equal(t, ExitOK, local.code, local.stderr)
	remote := stepflow(t, nil, "", "submit", "--url", url, "--flow", f, "--inputs", items, "-q", "--max-concurrent", "16")
	require.Equal(t, ExitOK, remote.code, remote.stderr)
	require.Empty(t, remote.stderr)
	require.Equal(t, local.stdout, remote.stdout)

	// The same submission again (default key) follows the same run.
	out := filepath.Join(dir, "out.jsonl")
	remote = stepflow(t, nil, "", "submit", "--url", url+"/api/v1/", "--flow", f, "--inputs", items, "--output", out, "--progress", "plain")
	require.Equal(t, ExitOK, remote.code, remote.stderr)
	require.Empty(t, remote.stdout)
	require.Contains(t, remote.stderr, "The same submission was made before")
	require.Contains(t, remote.stderr, "300 succeeded, 0 failed")
	require.Contains(t, remote.stderr, "Results written to "+out)
	data, err := os.ReadFile(out)
	require.NoError(t, err)
	require.Equal(t, local.stdout, string(data))
	require.Len(t, runsJSON(t, nil, url), 1)

	// Single mode prints the FlowResult like run.
	local = stepflow(t, nil, `{"name":"Ada"}`, "run", "--flow", f)
	remote = stepflow(t, nil, `{"name":"Ada"}`, "submit", "--url", url, "--flow", f)
	require.Equal(t, ExitOK, remote.code, remote.stderr)
	require.Equal(t, local.stdout, remote.stdout)

	// Variables (sent, unlike upstream) and overrides apply as in run.
	vf := tempFile(t, dir, "vars.yaml", `
schemas:
  type: object
  properties:
    variables:
      type: object
      properties:
        region: { type: string, default: us }
        retries: { type: integer }
steps:
  - id: msgs
    component: /builtin/create_messages
    input: { system_instructions: "Be brief", user_prompt: { $input: question } }
output:
  region: { $variable: region }
  retries: { $variable: retries }
  all: { $step: msgs }
`)
	env := map[string]string{"STEPFLOW_VAR_RETRIES": "5"}
	args := []string{"--flow", vf, "--input-json", `{"question":"Hi"}`, "--env-variables", "--variables-json", `{"region":"eu"}`,
		"--overrides-json", `{"msgs":{"value":{"input":{"system_instructions":null,"user_prompt":"patched"}}}}`}
	local = stepflow(t, env, "", append([]string{"run"}, args...)...)
	require.Equal(t, ExitOK, local.code, local.stderr)
	require.Contains(t, local.stdout, `"region":"eu","retries":5`)
	remote = stepflow(t, env, "", append([]string{"submit", "--url", url}, args...)...)
	require.Equal(t, ExitOK, remote.code, remote.stderr)
	require.Equal(t, local.stdout, remote.stdout)

	// An empty batch submits nothing.
	empty := tempFile(t, dir, "empty.jsonl", "")
	remote = stepflow(t, nil, "", "submit", "--url", url, "--flow", f, "--inputs", empty)
	require.Equal(t, ExitOK, remote.code, remote.stderr)
	require.Contains(t, remote.stderr, "No inputs provided, nothing to submit")
}

// TestSubmitFailedItems: failed items give exit 3 and the same JSONL as
// run; a failed single input exits 3; an invalid flow or input line exits
// 1 before any run; bad flags exit 2.
func TestSubmitFailedItems(t *testing.T) {
	t.Parallel()
	url := startCluster(t, 1, nil)
	dir := t.TempDir()
	f := tempFile(t, dir, "flow.yaml", greetFlow)
	items := greetBatch(t, dir, "items.jsonl", 40, 7)

	local := stepflow(t, nil, "", "run", "--flow", f, "--inputs", items, "-q")
	require.Equal(t, ExitItemsFailed, local.code, local.stderr)
	remote := stepflow(t, nil, "", "submit", "--url", url, "--flow", f, "--inputs", items, "-q")
	require.Equal(t, ExitItemsFailed, remote.code, remote.stderr)
	require.Equal(t, local.stdout, remote.stdout)

	remote = stepflow(t, nil, "", "submit", "--url", url, "--flow", f, "--input-json", `{}`)
	require.Equal(t, ExitItemsFailed, remote.code, remote.stderr)
	require.Contains(t, remote.stdout, `"outcome":"failed"`)

	broken := tempFile(t, dir, "broken.yaml", "steps:\n  - id: a\n    component: /builtin/create_messages\n    onError: { action: explode }\n")
	remote = stepflow(t, nil, "", "submit", "--url", url, "--flow", broken, "--input-json", "{}")
	require.Equal(t, ExitFailure, remote.code)
	require.Contains(t, remote.stderr, "broken.yaml:4:")

	bad := tempFile(t, dir, "malformed.jsonl", "{\"name\":\"a\"}\n{\"name\": oops}\n")
	remote = stepflow(t, nil, "", "submit", "--url", url, "--flow", f, "--inputs", bad)
	require.Equal(t, ExitFailure, remote.code)
	require.Contains(t, remote.stderr, "malformed.jsonl:2:10: invalid JSON")

	for _, args := range [][]string{
		{"submit", "--url", url, "--flow", f, "--inputs", items, "--max-concurrent", "0"},
		{"submit", "--url", url, "--inputs", items},
		{"submit", "--url", url, "--attach", "x", "--flow", f},
		{"submit", "--url", url, "--flow", f, "--inputs", items, "--new-run", "--idempotency-key", "k"},
	} {
		r := stepflow(t, nil, "", args...)
		require.Equal(t, ExitUsage, r.code, "%v: %s", args, r.stderr)
	}
	require.Empty(t, runsJSON(t, nil, url, "--status", "running"))
}

// TestSubmitNoWaitAttachIdempotent: --no-wait prints the run id; a
// repeated submission returns the same run (one run listed) unless
// --new-run; --attach writes the run's results like a waiting submit.
func TestSubmitNoWaitAttachIdempotent(t *testing.T) {
	t.Parallel()
	url := startCluster(t, 2, nil)
	dir := t.TempDir()
	f := tempFile(t, dir, "flow.yaml", greetFlow)
	items := greetBatch(t, dir, "items.jsonl", 100, 0)
	local := stepflow(t, nil, "", "run", "--flow", f, "--inputs", items, "-q")
	require.Equal(t, ExitOK, local.code, local.stderr)

	first := stepflow(t, nil, "", "submit", "--url", url, "--flow", f, "--inputs", items, "--no-wait")
	require.Equal(t, ExitOK, first.code, first.stderr)
	runID := strings.TrimSpace(first.stdout)
	require.NotEmpty(t, runID)
	require.Equal(t, runID+"\n", first.stdout)

	again := stepflow(t, nil, "", "submit", "--url", url, "--flow", f, "--inputs", items, "--no-wait")
	require.Equal(t, ExitOK, again.code, again.stderr)
	require.Equal(t, first.stdout, again.stdout)
	runs := runsJSON(t, nil, url)
	require.Len(t, runs, 1)
	require.Equal(t, runID, runs[0].RunID)

	// Through stdin too: the same bytes, the same key.
	data, err := os.ReadFile(items)
	require.NoError(t, err)
	viaStdin := stepflow(t, nil, string(data), "submit", "--url", url, "--flow", f, "--inputs", "-", "--no-wait", "--spill-dir", dir)
	require.Equal(t, ExitOK, viaStdin.code, viaStdin.stderr)
	require.Equal(t, first.stdout, viaStdin.stdout)

	attached := stepflow(t, nil, "", "submit", "--url", url, "--attach", runID, "-q")
	require.Equal(t, ExitOK, attached.code, attached.stderr)
	require.Equal(t, local.stdout, attached.stdout)

	items2 := filepath.Join(dir, "items2.jsonl")
	r := stepflow(t, nil, "", "runs", "items", runID, "--url", url, "--output", items2)
	require.Equal(t, ExitOK, r.code, r.stderr)
	got, err := os.ReadFile(items2)
	require.NoError(t, err)
	require.Equal(t, local.stdout, string(got))

	r = stepflow(t, nil, "", "runs", "get", runID, "--url", url)
	require.Equal(t, ExitOK, r.code, r.stderr)
	var sum runSummary
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &sum))
	require.Equal(t, "completed", sum.Status)
	require.Equal(t, 100, sum.Items.Completed)

	fresh := stepflow(t, nil, "", "submit", "--url", url, "--flow", f, "--inputs", items, "--no-wait", "--new-run")
	require.Equal(t, ExitOK, fresh.code, fresh.stderr)
	require.NotEqual(t, first.stdout, fresh.stdout)
	require.Len(t, runsJSON(t, nil, url), 2)
}

// TestRunsCancelAndScale: with no worker a run stays running: scale
// changes its concurrency, cancel stops it, list filters by status, and
// attaching to the cancelled run exits 1.
func TestRunsCancelAndScale(t *testing.T) {
	t.Parallel()
	url := startCluster(t, 0, nil)
	dir := t.TempDir()
	f := tempFile(t, dir, "flow.yaml", greetFlow)
	items := greetBatch(t, dir, "items.jsonl", 20, 0)

	r := stepflow(t, nil, "", "submit", "--url", url, "--flow", f, "--inputs", items, "--no-wait", "--max-concurrency", "2")
	require.Equal(t, ExitOK, r.code, r.stderr)
	runID := strings.TrimSpace(r.stdout)

	r = stepflow(t, nil, "", "runs", "scale", runID, "5", "--url", url)
	require.Equal(t, ExitOK, r.code, r.stderr)
	var sum runSummary
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &sum))
	require.Equal(t, 5, sum.MaxConcurrency)
	require.Equal(t, "running", sum.Status)

	r = stepflow(t, nil, "", "runs", "list", "--url", url, "--status", "running")
	require.Equal(t, ExitOK, r.code, r.stderr)
	require.Contains(t, r.stdout, "RUN ID")
	require.Contains(t, r.stdout, runID)

	r = stepflow(t, nil, "", "runs", "cancel", runID, "--url", url)
	require.Equal(t, ExitOK, r.code, r.stderr)
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &sum))
	require.Equal(t, "cancelled", sum.Status)

	require.Empty(t, runsJSON(t, nil, url, "--status", "running"))
	cancelled := runsJSON(t, nil, url, "--status", "cancelled")
	require.Len(t, cancelled, 1)
	require.Equal(t, 20, cancelled[0].Items.Cancelled)

	r = stepflow(t, nil, "", "submit", "--url", url, "--attach", runID, "-q")
	require.Equal(t, ExitFailure, r.code)
	require.Empty(t, r.stdout)
	require.Contains(t, r.stderr, "was cancelled (0 of 20 items have a result)")

	r = stepflow(t, nil, "", "runs", "cancel", runID, "--url", url)
	require.Equal(t, ExitFailure, r.code)
	require.Contains(t, r.stderr, "HTTP 409")

	r = stepflow(t, nil, "", "runs", "get", "0198c0de-0000-7000-8000-000000000000", "--url", url)
	require.Equal(t, ExitFailure, r.code)
	require.Contains(t, r.stderr, "HTTP 404")
	r = stepflow(t, nil, "", "runs", "get", "no-such-run", "--url", url)
	require.Equal(t, ExitFailure, r.code)
	require.Contains(t, r.stderr, "HTTP 400")
	require.Contains(t, r.stderr, "invalid run id 'no-such-run' (not a UUID")

	r = stepflow(t, nil, "", "runs", "scale", runID, "0", "--url", url)
	require.Equal(t, ExitUsage, r.code, r.stderr)
}

// TestRemoteUnreachable: nothing listening, or a malformed URL, exits 1
// with a message that says so; retries give up after --retry-timeout.
func TestRemoteUnreachable(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	url := "http://" + ln.Addr().String()
	require.NoError(t, ln.Close())
	dir := t.TempDir()
	f := tempFile(t, dir, "flow.yaml", greetFlow)

	r := stepflow(t, nil, "", "submit", "--url", url, "--flow", f, "--input-json", `{"name":"a"}`, "--retry-timeout", "0")
	require.Equal(t, ExitFailure, r.code)
	require.Contains(t, r.stderr, "cannot reach the coordinator")
	require.Contains(t, r.stderr, "connection refused")

	r = stepflow(t, nil, "", "submit", "--url", url, "--flow", f, "--input-json", `{"name":"a"}`, "--retry-timeout", "300ms")
	require.Equal(t, ExitFailure, r.code)
	require.Contains(t, r.stderr, "retrying for up to 300ms")
	require.Contains(t, r.stderr, "giving up after retrying for 300ms")

	r = stepflow(t, nil, "", "runs", "list", "--url", url, "--retry-timeout", "0")
	require.Equal(t, ExitFailure, r.code)
	require.Contains(t, r.stderr, "connection refused")

	r = stepflow(t, nil, "", "runs", "list", "--url", "ftp://example.com")
	require.Equal(t, ExitFailure, r.code)
	require.Contains(t, r.stderr, "want an http:// or https:// URL")
}

// TestRemoteAuthToken: a coordinator with a token refuses requests
// without it (exit 1, the server's message) and accepts --token and
// STEPFLOW_TOKEN.
func TestRemoteAuthToken(t *testing.T) {
	t.Parallel()
	url := startCluster(t, 1, func(c *coordinator.Config) { c.AuthToken = "s3cret" })
	dir := t.TempDir()
	f := tempFile(t, dir, "flow.yaml", greetFlow)

	r := stepflow(t, nil, "", "submit", "--url", url, "--flow", f, "--input-json", `{"name":"a"}`)
	require.Equal(t, ExitFailure, r.code)
	require.Contains(t, r.stderr, "missing or invalid bearer token (HTTP 401)")
	r = stepflow(t, nil, "", "submit", "--url", url, "--flow", f, "--input-json", `{"name":"a"}`, "--token", "wrong")
	require.Equal(t, ExitFailure, r.code)

	r = stepflow(t, nil, "", "submit", "--url", url, "--flow", f, "--input-json", `{"name":"a"}`, "--token", "s3cret")
	require.Equal(t, ExitOK, r.code, r.stderr)
	require.Equal(t, `{"outcome":"success","result":{"greeting":"a","role":"user"}}`+"\n", r.stdout)

	env := map[string]string{"STEPFLOW_TOKEN": "s3cret"}
	require.Len(t, runsJSON(t, env, url), 1)
	r = stepflow(t, nil, "", "runs", "list", "--url", url)
	require.Equal(t, ExitFailure, r.code)
	require.Contains(t, r.stderr, "HTTP 401")
}

// TestServe: serve prints the ready line, serves submissions with its
// in-process workers, and exits 0 when its context ends.
func TestServe(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	var stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- Execute(ctx, []string{"serve", "--port", "0", "--nats-port", "0", "--data-dir", filepath.Join(dir, "data"),
			"--workers", "2", "--worker-concurrency", "2", "--auth-token", "tok"},
			IO{Stdin: strings.NewReader(""), Stdout: pw, Stderr: &stderr, Getenv: func(string) string { return "" }})
		_ = pw.Close()
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	require.NoError(t, err, stderr.String())
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	var ready coordinator.Ready
	require.NoError(t, json.Unmarshal([]byte(line), &ready), line)
	require.NotZero(t, ready.Port)
	require.True(t, strings.HasPrefix(ready.NATSURL, "nats://127.0.0.1:"), ready.NATSURL)

	url := "http://127.0.0.1:" + strconv.Itoa(ready.Port)
	f := tempFile(t, dir, "flow.yaml", greetFlow)
	items := greetBatch(t, dir, "items.jsonl", 50, 0)
	local := stepflow(t, nil, "", "run", "--flow", f, "--inputs", items, "-q")
	r := stepflow(t, map[string]string{"STEPFLOW_TOKEN": "tok"}, "", "submit", "--url", url, "--flow", f, "--inputs", items, "-q")
	require.Equal(t, ExitOK, r.code, r.stderr)
	require.Equal(t, local.stdout, r.stdout)

	// One /metrics for the coordinator and both workers; /readyz covers
	// the workers and needs no token.
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Get(url + "/readyz")
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var m metricstest.Families
	require.Eventually(t, func() bool {
		m = metricstest.Scrape(t, url+"/metrics", "tok")
		return m.Sum("stepflow_worker_items_total", "outcome", "succeeded") == 50
	}, 30*time.Second, 20*time.Millisecond, "50 items settled by the workers")
	require.Len(t, m.LabelValues("stepflow_worker_slots", "worker"), 2)
	require.Equal(t, 4.0, m.Sum("stepflow_worker_slots"))
	require.Equal(t, uint64(50), m.HistogramCount("stepflow_component_call_duration_seconds", "component", "/builtin/create_messages", "outcome", "ok"))
	require.Equal(t, 50.0, m.Sum("stepflow_run_items", "state", "completed"))
	require.Equal(t, 2.0, m.Sum("stepflow_worker_nats_connected"))
	v, ok := m.Value("stepflow_coordinator_nats_connected")
	require.True(t, ok)
	require.Equal(t, 1.0, v)
	require.Len(t, m.Find("go_goroutines"), 1, "one Go collector for the process")
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "operations.md"))
	require.NoError(t, err)
	for name := range m {
		if strings.HasPrefix(name, "stepflow_") {
			require.Contains(t, string(doc), "`"+name+"`", "docs/operations.md documents every metric")
		}
	}

	cancel()
	require.Equal(t, ExitOK, <-done, stderr.String())
}

// TestServeSecuredNATS: serve's embedded NATS server requires a user and
// password (from the environment, which --help does not print), its
// in-process workers log in with them, the API token comes from a file;
// a NATS client without credentials is refused.
func TestServeSecuredNATS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tokenFile := tempFile(t, dir, "token", "file-tok\n")
	env := map[string]string{"STEPFLOW_NATS_SERVER_USER": "stepflow", "STEPFLOW_NATS_SERVER_PASSWORD": "nats-pw-77", "STEPFLOW_AUTH_TOKEN_FILE": tokenFile}
	help := stepflow(t, env, "", "serve", "--help")
	require.Equal(t, ExitOK, help.code)
	require.Contains(t, help.stdout, "(env STEPFLOW_NATS_SERVER_PASSWORD)")
	require.NotContains(t, help.stdout, "nats-pw-77", "secrets from the environment are not shown as defaults")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	var stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- Execute(ctx, []string{"serve", "--port", "0", "--nats-port", "0", "--data-dir", filepath.Join(dir, "data"),
			"--workers", "1", "--worker-concurrency", "2"},
			IO{Stdin: strings.NewReader(""), Stdout: pw, Stderr: &stderr, Getenv: func(k string) string { return env[k] }})
		_ = pw.Close()
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	require.NoError(t, err, stderr.String())
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	var ready coordinator.Ready
	require.NoError(t, json.Unmarshal([]byte(line), &ready), line)

	nc, err := nats.Connect(ready.NATSURL, nats.Timeout(5*time.Second))
	if nc != nil {
		nc.Close()
	}
	require.ErrorIs(t, err, nats.ErrAuthorization)

	url := "http://127.0.0.1:" + strconv.Itoa(ready.Port)
	f := tempFile(t, dir, "flow.yaml", greetFlow)
	items := greetBatch(t, dir, "items.jsonl", 20, 0)
	r := stepflow(t, map[string]string{"STEPFLOW_TOKEN": "file-tok"}, "", "submit", "--url", url, "--flow", f, "--inputs", items, "-q")
	require.Equal(t, ExitOK, r.code, r.stderr)
	require.Len(t, strings.Split(strings.TrimSpace(r.stdout), "\n"), 20)
	r = stepflow(t, map[string]string{"STEPFLOW_TOKEN": "wrong"}, "", "runs", "list", "--url", url)
	require.Equal(t, ExitFailure, r.code)
	require.Contains(t, r.stderr, "unauthorized: check --token / STEPFLOW_TOKEN")

	cancel()
	require.Equal(t, ExitOK, <-done, stderr.String())
	require.NotContains(t, stderr.String(), "nats-pw-77")
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
