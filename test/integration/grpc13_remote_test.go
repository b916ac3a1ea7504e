package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// stepflow-py 0.13 NATS workers scaled on their own: the `type: nats`
// plugin has no `command` and serves its gRPC services on TCP
// (`listen`); the test starts the SDK workers itself, as their own
// Deployment would, on the plugin's stream and consumer.

// startNATSServer runs a nats-server with JetStream and returns its URL.
func startNATSServer(t *testing.T) string {
	t.Helper()
	port := freePort(t)
	nats := startProc(t, "nats-server", nil, nil, natsServerBin, "-js", "-a", "127.0.0.1", "-p", fmt.Sprint(port), "-sd", t.TempDir())
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			_ = c.Close()
			break
		}
		require.False(t, nats.exited(), "nats-server exited: %v", nats.exitErr())
		require.True(t, time.Now().Before(deadline), "nats-server does not accept connections: %v", err)
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Sprintf("nats://127.0.0.1:%d", port)
}

// remoteNATSConfig writes a config whose plugin "python" publishes to
// stream PYTHON_TASKS of natsURL and listens on TCP at listen; it returns
// the config's path.
func remoteNATSConfig(t *testing.T, dir, natsURL, listen string) string {
	t.Helper()
	return writeFile(t, dir, "stepflow-config.yml", fmt.Sprintf(`plugins:
  python:
    type: nats
    url: %q
    stream: PYTHON_TASKS
    consumer: python-workers
    listen: %q
  builtin:
    type: builtin
routes:
  "/python":
    - plugin: python
  "/":
    - plugin: builtin
`, natsURL, listen))
}

// startSDKNATSWorker starts testdata/grpc13/worker.py on the SDK's NATS
// transport (stream PYTHON_TASKS, consumer python-workers); it completes
// to each task's orchestrator_service_url and puts blobs at blobURL.
func startSDKNATSWorker(t *testing.T, name, natsURL, blobURL string, env ...string) *proc {
	t.Helper()
	py := requireGRPC13(t)
	env = append([]string{"PYTHONUNBUFFERED=1", "STEPFLOW_TRANSPORT=nats", "STEPFLOW_NATS_URL=" + natsURL,
		"STEPFLOW_NATS_STREAM=PYTHON_TASKS", "STEPFLOW_NATS_CONSUMER=python-workers", "STEPFLOW_BLOB_URL=" + blobURL}, env...)
	p := startProc(t, name, env, testWriter{t}, py, filepath.Join(repoRoot, "test/integration/testdata/grpc13/worker.py"))
	// The SDK worker leaves on SIGTERM only between tasks: end it at once.
	t.Cleanup(func() {
		if !p.exited() {
			p.kill9(t)
		}
	})
	return p
}

// `stepflow run` with two SDK NATS workers started apart: both get tasks
// (two slots each, four held items); one killed mid-batch leaves its two
// items to time out by heartbeat and follow onError, the other finishes
// the batch.
func TestGRPC13NATSRemoteWorkersStepflowRun(t *testing.T) {
	skipShort(t)
	t.Parallel()
	natsURL := startNATSServer(t)
	dir := t.TempDir()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := remoteNATSConfig(t, dir, natsURL, addr)
	flow := writeFile(t, dir, "flow.yaml", `schema: https://stepflow.org/schemas/v1/flow.json
steps:
  - id: h
    component: /python/hold
    input: { i: { $input: i }, hold: { $input: hold } }
    onError: { action: useDefault, defaultValue: { i: -1, pid: 0 } }
output: { $step: h }
`)
	var items strings.Builder
	for i := range 12 {
		fmt.Fprintf(&items, "{\"i\": %d, \"hold\": %v}\n", i, i < 4)
	}
	inputs := writeFile(t, dir, "items.jsonl", items.String())
	var stdout strings.Builder
	run := startProc(t, "stepflow run", nil, &stdout, stepflowBin, "run", "--quiet", "--config", cfg,
		"--flow", flow, "--inputs", inputs, "--max-concurrent", "4")
	hold := t.TempDir()
	env := []string{"GRPC13_HOLD_DIR=" + hold, "STEPFLOW_MAX_CONCURRENT=2"}
	a := startSDKNATSWorker(t, "sdk-a", natsURL, addr, env...)
	b := startSDKNATSWorker(t, "sdk-b", natsURL, addr, env...)
	for i := range 4 {
		waitFile(t, filepath.Join(hold, fmt.Sprintf("started-%d", i)))
	}
	a.kill9(t)
	require.NoError(t, os.WriteFile(filepath.Join(hold, "release"), nil, 0o644))
	require.Equal(t, 0, run.waitExit(t, 2*time.Minute), stdout.String())

	rs := parseResults(t, stdout.String())
	require.Len(t, rs, 12)
	lost := 0
	for i, r := range rs {
		require.Equal(t, "success", r.Outcome, "item %d", i)
		var v struct{ I, PID int }
		require.NoError(t, json.Unmarshal(r.Result, &v))
		if v.I == -1 {
			require.Less(t, i, 4, "only held items were on the killed worker")
			lost++
			continue
		}
		require.Equal(t, i, v.I)
		require.Equal(t, b.cmd.Process.Pid, v.PID, "item %d ran on the surviving worker", i)
	}
	require.Equal(t, 2, lost, "the killed worker held two items")
}

// A distributed worker (pkg/worker) hosts the nats plugin: two SDK NATS
// workers started apart serve a batch, with component errors, blobs and
// nested runs over the TCP endpoint.
func TestGRPC13NATSRemoteWorkersDistributed(t *testing.T) {
	skipShort(t)
	t.Parallel()
	c := newCluster(t)
	dir := t.TempDir()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := remoteNATSConfig(t, dir, c.natsURL, addr)
	startSDKNATSWorker(t, "sdk-a", c.natsURL, addr)
	startSDKNATSWorker(t, "sdk-b", c.natsURL, addr)
	// One slot, as TestGRPC13DistributedWorker: each item's nested run
	// borrows it while the item waits.
	c.addWorker(1, cfg)
	flow := writeFile(t, dir, "flow.yaml", `schema: https://stepflow.org/schemas/v1/flow.json
steps:
  - id: c
    component: /python/check
    input: { i: { $input: i }, fail: { $input: fail } }
    onError: { action: useDefault, defaultValue: { ok: "default" } }
  - id: b
    component: /python/blobs
    input: { data: { $input: "$" } }
  - id: n
    component: /python/nested
    input: { n: { $input: i } }
output: { c: { $step: c }, back: { $step: b, path: "$.back.i" }, n: { $step: n, path: inner } }
`)
	var items strings.Builder
	var want []string
	for i := 1; i <= 4; i++ {
		fmt.Fprintf(&items, "{\"i\": %d, \"fail\": %v}\n", i, i%4 == 0)
		ok := fmt.Sprint(i)
		if i%4 == 0 {
			ok = `"default"`
		}
		want = append(want, fmt.Sprintf(`{"outcome":"success","result":{"c":{"ok":%s},"back":%d,"n":[%d,%d]}}`, ok, i, i, 10*i))
	}
	inputs := writeFile(t, dir, "items.jsonl", items.String())
	out := c.submit(t, 0, "--flow", flow, "--inputs", inputs)
	require.Equal(t, want, lines(out))
}
