package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// stepflow-py 0.13 workers (`type: grpc`, pkg/plugin/grpcqueue) run
// unmodified under `stepflow run` and under distributed workers: the
// venv .venv-sdk-grpc13 that `make venv` makes, the worker script
// testdata/grpc13/worker.py (components on the SDK's own server, run by
// its main).

// requireGRPC13 returns the 0.13 venv's python, failing the test when the
// venv is missing.
func requireGRPC13(t *testing.T) string {
	t.Helper()
	py := filepath.Join(repoRoot, ".venv-sdk-grpc13", "bin", "python")
	if _, err := os.Stat(py); err != nil {
		t.Fatalf(".venv-sdk-grpc13 is missing: run `make venv` first (%v)", err)
	}
	return py
}

// grpc13Dir writes a config running testdata/grpc13/worker.py as plugin
// "python" (routes "/python" and "/" as upstream 0.13 writes them) and
// returns the directory; extra is added to the plugin entry, env entries
// to its `env`.
func grpc13Dir(t *testing.T, extra string, env map[string]string) string {
	t.Helper()
	py := requireGRPC13(t)
	dir := t.TempDir()
	var envYAML strings.Builder
	for k, v := range env {
		fmt.Fprintf(&envYAML, "      %s: %q\n", k, v)
	}
	cfg := fmt.Sprintf(`plugins:
  python:
    type: grpc
    command: %s
    args: [%s]
    queueName: python
%s    env:
      GRPC13_STARTS: %q
%s  builtin:
    type: builtin
routes:
  "/python":
    - plugin: python
  "/":
    - plugin: builtin
`, py, filepath.Join(repoRoot, "test/integration/testdata/grpc13/worker.py"), extra, filepath.Join(dir, "starts"), envYAML.String())
	require.NoError(t, os.WriteFile(filepath.Join(dir, "stepflow-config.yml"), []byte(cfg), 0o644))
	return dir
}

func writeFile(t *testing.T, dir, name, text string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, []byte(text), 0o644))
	return p
}

// starts returns the pids of the worker processes the plugin launched.
func starts(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "starts"))
	require.NoError(t, err)
	return lines(string(b))
}

type result struct {
	Outcome string          `json:"outcome"`
	Result  json.RawMessage `json:"result"`
	Error   *struct {
		Code    int             `json:"code"`
		Message string          `json:"message"`
		Data    json.RawMessage `json:"data"`
	} `json:"error"`
}

func parseResults(t *testing.T, out string) []result {
	t.Helper()
	var rs []result
	for _, l := range lines(out) {
		var r result
		require.NoError(t, json.Unmarshal([]byte(l), &r), l)
		rs = append(rs, r)
	}
	return rs
}

func TestGRPC13EchoBatchOneProcess(t *testing.T) {
	skipShort(t)
	t.Parallel()
	dir := grpc13Dir(t, "", nil)
	flow := writeFile(t, dir, "flow.yaml", `schema: https://stepflow.org/schemas/v1/flow.json
steps:
  - id: e
    component: /python/echo13
    input: { x: { $input: x } }
output: { x: { $step: e, path: "$.echo.x" }, pid: { $step: e, path: pid } }
`)
	var items strings.Builder
	for i := range 40 {
		fmt.Fprintf(&items, "{\"x\": %d}\n", i)
	}
	inputs := writeFile(t, dir, "items.jsonl", items.String())
	out := runExample(t, 0, stepflowBin, "run", "--quiet", "--config", filepath.Join(dir, "stepflow-config.yml"),
		"--flow", flow, "--inputs", inputs, "--max-concurrent", "8")
	rs := parseResults(t, out)
	require.Len(t, rs, 40)
	pids := map[string]bool{}
	for i, r := range rs {
		require.Equal(t, "success", r.Outcome, "item %d", i)
		var v struct {
			X   int `json:"x"`
			PID int `json:"pid"`
		}
		require.NoError(t, json.Unmarshal(r.Result, &v))
		require.Equal(t, i, v.X, "integers come back as integers, in order")
		pids[fmt.Sprint(v.PID)] = true
	}
	st := starts(t, dir)
	require.Len(t, st, 1, "one SDK process serves the whole batch")
	require.Equal(t, map[string]bool{st[0]: true}, pids)
}

func TestGRPC13ErrorBlobsNestedAtOneSlot(t *testing.T) {
	skipShort(t)
	t.Parallel()
	dir := grpc13Dir(t, "", nil)
	flow := writeFile(t, dir, "flow.yaml", `schema: https://stepflow.org/schemas/v1/flow.json
steps:
  - id: c
    component: /python/check
    input: { i: { $input: i }, fail: { $input: fail } }
    onError: { action: useDefault, defaultValue: { ok: "default" } }
  - id: b
    component: /python/blobs
    input: { data: { $input: "$" } }
  - id: g
    component: /get_blob
    input: { blob_id: { $step: b, path: blob_id } }
  - id: n
    component: /python/nested
    input: { n: { $input: i } }
output: { c: { $step: c }, back: { $step: b, path: back }, got: { $step: g, path: data }, n: { $step: n, path: inner } }
`)
	inputs := writeFile(t, dir, "items.jsonl", "{\"i\":1,\"fail\":false}\n{\"i\":2,\"fail\":true}\n{\"i\":3,\"fail\":false}\n")
	// One slot: each item's nested run needs another while the item holds it.
	out := runExample(t, 0, stepflowBin, "run", "--quiet", "--config", filepath.Join(dir, "stepflow-config.yml"),
		"--flow", flow, "--inputs", inputs, "--max-concurrent", "1")
	require.Equal(t, []string{
		`{"outcome":"success","result":{"c":{"ok":1},"back":{"fail":false,"i":1},"got":{"fail":false,"i":1},"n":[1,10]}}`,
		`{"outcome":"success","result":{"c":{"ok":"default"},"back":{"fail":true,"i":2},"got":{"fail":true,"i":2},"n":[2,20]}}`,
		`{"outcome":"success","result":{"c":{"ok":3},"back":{"fail":false,"i":3},"got":{"fail":false,"i":3},"n":[3,30]}}`,
	}, lines(out))

	// Without onError the raise fails its item only, with the worker's
	// message and error code.
	flow2 := writeFile(t, dir, "flow2.yaml", `schema: https://stepflow.org/schemas/v1/flow.json
steps:
  - id: c
    component: /python/check
    input: { i: { $input: i }, fail: { $input: fail } }
output: { $step: c }
`)
	out = runExample(t, 3, stepflowBin, "run", "--quiet", "--config", filepath.Join(dir, "stepflow-config.yml"),
		"--flow", flow2, "--inputs", inputs, "--max-concurrent", "3")
	rs := parseResults(t, out)
	require.Len(t, rs, 3)
	require.Equal(t, "success", rs[0].Outcome)
	require.Equal(t, "failed", rs[1].Outcome)
	require.Equal(t, "item 2 is bad", rs[1].Error.Message)
	require.Contains(t, string(rs[1].Error.Data), `"error_code":"TASK_ERROR_CODE_COMPONENT_FAILED"`)
	require.Contains(t, string(rs[1].Error.Data), `"exception_type":"ValueError"`)
	require.Equal(t, "success", rs[2].Outcome)
}

// More items with nested runs in flight than the SDK worker's own default
// concurrency (STEPFLOW_MAX_CONCURRENT, 4): the parents hold their tasks
// while their children's tasks need the same worker. The plugin launches
// it with room for every call this process can make, so nothing waits for
// a claim that cannot come.
func TestGRPC13NestedRunsBeyondSDKConcurrency(t *testing.T) {
	skipShort(t)
	t.Parallel()
	dir := grpc13Dir(t, "", nil)
	flow := writeFile(t, dir, "flow.yaml", `schema: https://stepflow.org/schemas/v1/flow.json
steps:
  - id: n
    component: /python/nested
    input: { n: { $input: i } }
output: { $step: n, path: inner }
`)
	var in strings.Builder
	var want []string
	for i := 1; i <= 12; i++ {
		fmt.Fprintf(&in, "{\"i\":%d}\n", i)
		want = append(want, fmt.Sprintf(`{"outcome":"success","result":[%d,%d]}`, i, 10*i))
	}
	inputs := writeFile(t, dir, "items.jsonl", in.String())
	out := runExample(t, 0, stepflowBin, "run", "--quiet", "--config", filepath.Join(dir, "stepflow-config.yml"),
		"--flow", flow, "--inputs", inputs, "--max-concurrent", "12")
	require.Equal(t, want, lines(out))
}

func TestGRPC13CrashMidBatchRestarts(t *testing.T) {
	skipShort(t)
	t.Parallel()
	dir := t.TempDir()
	marker := filepath.Join(dir, "crashed")
	dir = grpc13Dir(t, "", map[string]string{"GRPC13_CRASH_MARKER": marker})
	flow := writeFile(t, dir, "flow.yaml", `schema: https://stepflow.org/schemas/v1/flow.json
steps:
  - id: c
    component: /python/crash
    input: { i: { $input: i }, crash: { $input: crash } }
    onError: { action: useDefault, defaultValue: { i: -1 } }
output: { i: { $step: c, path: i } }
`)
	var items strings.Builder
	for i := range 12 {
		fmt.Fprintf(&items, "{\"i\": %d, \"crash\": %v}\n", i, i == 5)
	}
	inputs := writeFile(t, dir, "items.jsonl", items.String())
	out := runExample(t, 0, stepflowBin, "run", "--quiet", "--config", filepath.Join(dir, "stepflow-config.yml"),
		"--flow", flow, "--inputs", inputs, "--max-concurrent", "2")
	rs := parseResults(t, out)
	require.Len(t, rs, 12)
	defaults := 0
	for i, r := range rs {
		require.Equal(t, "success", r.Outcome, "item %d follows its onError", i)
		var v struct{ I int }
		require.NoError(t, json.Unmarshal(r.Result, &v))
		if v.I == -1 {
			defaults++
		} else {
			require.Equal(t, i, v.I)
		}
	}
	// Item 5 killed the worker: it and whatever else was in flight on
	// that process took the default; the rest ran on the restarted one.
	var crashed struct{ I int }
	require.NoError(t, json.Unmarshal(rs[5].Result, &crashed))
	require.Equal(t, -1, crashed.I)
	require.LessOrEqual(t, defaults, 3)
	require.FileExists(t, marker)
	require.Len(t, starts(t, dir), 2, "the worker was restarted once")
}

// kill -9 of the SDK process mid-batch: the items it held follow their
// onError, the plugin restarts it, the rest of the batch runs there.
func TestGRPC13KilledMidBatch(t *testing.T) {
	skipShort(t)
	t.Parallel()
	hold := t.TempDir()
	dir := grpc13Dir(t, "", map[string]string{"GRPC13_HOLD_DIR": hold})
	flow := writeFile(t, dir, "flow.yaml", `schema: https://stepflow.org/schemas/v1/flow.json
steps:
  - id: h
    component: /python/hold
    input: { i: { $input: i }, hold: { $input: hold } }
    onError: { action: useDefault, defaultValue: { i: -1 } }
output: { i: { $step: h, path: i } }
`)
	var items strings.Builder
	for i := range 10 {
		fmt.Fprintf(&items, "{\"i\": %d, \"hold\": %v}\n", i, i < 2)
	}
	inputs := writeFile(t, dir, "items.jsonl", items.String())
	cmd := exec.Command(stepflowBin, "run", "--quiet", "--config", filepath.Join(dir, "stepflow-config.yml"),
		"--flow", flow, "--inputs", inputs, "--max-concurrent", "2")
	var stdout strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, testWriter{t}
	require.NoError(t, cmd.Start())
	// Items 0 and 1 are held by the worker (max-concurrent 2).
	waitFile(t, filepath.Join(hold, "started-0"))
	waitFile(t, filepath.Join(hold, "started-1"))
	pid, err := strconv.Atoi(starts(t, dir)[0])
	require.NoError(t, err)
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	require.NoError(t, cmd.Wait(), stdout.String())
	want := []string{`{"outcome":"success","result":{"i":-1}}`, `{"outcome":"success","result":{"i":-1}}`}
	for i := 2; i < 10; i++ {
		want = append(want, fmt.Sprintf(`{"outcome":"success","result":{"i":%d}}`, i))
	}
	require.Equal(t, want, lines(stdout.String()))
	require.Len(t, starts(t, dir), 2, "the worker was restarted once")
}

// waitFile waits for a file the worker creates.
func waitFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		require.True(t, time.Now().Before(deadline), "%s never appeared", path)
		time.Sleep(10 * time.Millisecond)
	}
}

// Upstream 0.13's example configs run once `command: uv` is swapped for
// the venv's python (their plugins then launch the SDK's own worker).
func TestGRPC13UpstreamExampleConfigs(t *testing.T) {
	skipShort(t)
	t.Parallel()
	py := requireGRPC13(t)
	for _, name := range []string{"basic", "custom-python-components", "data-pipeline"} {
		src, err := os.ReadFile(filepath.Join(repoRoot, "pkg/config/testdata/upstream013", name, "stepflow-config.yml"))
		require.NoError(t, err)
		dir := t.TempDir()
		cfg := strings.ReplaceAll(string(src), "command: uv", "command: "+py)
		// Their args run `uv --project ... run <worker>`: the SDK's worker
		// module takes their place (custom_server.py is not in the
		// reference; the SDK's own server has an `echo` component).
		cfg = regexpArgs(cfg)
		writeFile(t, dir, "stepflow-config.yml", cfg)
		prefix := "/python"
		if name == "custom-python-components" {
			prefix = "/custom"
		}
		flow := writeFile(t, dir, "flow.yaml", fmt.Sprintf(`schema: https://stepflow.org/schemas/v1/flow.json
steps:
  - id: e
    component: %s/echo
    input: { $input: "$" }
  # Builtins as upstream 0.13's examples write them, whether the config
  # routes "/builtin" or "/" to the builtin plugin.
  - id: p
    component: /builtin/put_blob
    input: { data: { $step: e }, blob_type: data }
  - id: g
    component: /builtin/get_blob
    input: { blob_id: { $step: p, path: blob_id } }
output: { $step: g, path: data }
`, prefix))
		out := runExample(t, 0, stepflowBin, "run", "--quiet", "--config", filepath.Join(dir, "stepflow-config.yml"),
			"--flow", flow, "--input-json", `{"a": 1}`)
		require.Equal(t, `{"outcome":"success","result":{"a":1}}`, strings.TrimSpace(out), name)
	}
}

// regexpArgs replaces every `args: [...]` line with the SDK's worker
// module.
func regexpArgs(cfg string) string {
	var out []string
	for _, l := range strings.Split(cfg, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "args:") {
			l = l[:strings.Index(l, "args:")] + `args: ["-m", "stepflow_py.worker.main"]`
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

func TestGRPC13DistributedWorker(t *testing.T) {
	skipShort(t)
	t.Parallel()
	dir := grpc13Dir(t, "", nil)
	flow := writeFile(t, dir, "flow.yaml", `schema: https://stepflow.org/schemas/v1/flow.json
steps:
  - id: c
    component: /python/check
    input: { i: { $input: i }, fail: { $input: fail } }
    onError: { action: useDefault, defaultValue: { ok: "default" } }
  - id: n
    component: /python/nested
    input: { n: { $input: i } }
output: { c: { $step: c }, n: { $step: n, path: inner } }
`)
	inputs := writeFile(t, dir, "items.jsonl", "{\"i\":1,\"fail\":false}\n{\"i\":2,\"fail\":true}\n")
	c := newCluster(t)
	c.addWorker(1, filepath.Join(dir, "stepflow-config.yml"))
	out := c.submit(t, 0, "--flow", flow, "--inputs", inputs)
	require.Equal(t, []string{
		`{"outcome":"success","result":{"c":{"ok":1},"n":[1,10]}}`,
		`{"outcome":"success","result":{"c":{"ok":"default"},"n":[2,20]}}`,
	}, lines(out))
}

// `type: nats` under `stepflow run`: tasks travel through a nats-server's
// JetStream stream to an unmodified stepflow-py 0.13 NATS worker; a raise
// fails its item only; nested runs complete at one slot.
func TestGRPC13NATSStepflowRun(t *testing.T) {
	skipShort(t)
	t.Parallel()
	py := requireGRPC13(t)
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
	dir := t.TempDir()
	writeFile(t, dir, "stepflow-config.yml", fmt.Sprintf(`plugins:
  python:
    type: nats
    url: "nats://127.0.0.1:%d"
    stream: PYTHON_TASKS
    consumer: python-workers
    command: %s
    args: [%s]
  builtin:
    type: builtin
routes:
  "/python":
    - plugin: python
  "/":
    - plugin: builtin
`, port, py, filepath.Join(repoRoot, "test/integration/testdata/grpc13/worker.py")))
	flow := writeFile(t, dir, "flow.yaml", `schema: https://stepflow.org/schemas/v1/flow.json
steps:
  - id: c
    component: /python/check
    input: { i: { $input: i }, fail: { $input: fail } }
    onError: { action: useDefault, defaultValue: { ok: "default" } }
  - id: n
    component: /python/nested
    input: { n: { $input: i } }
output: { c: { $step: c }, n: { $step: n, path: inner } }
`)
	inputs := writeFile(t, dir, "items.jsonl", "{\"i\":1,\"fail\":false}\n{\"i\":2,\"fail\":true}\n")
	out := runExample(t, 0, stepflowBin, "run", "--quiet", "--config", filepath.Join(dir, "stepflow-config.yml"),
		"--flow", flow, "--inputs", inputs, "--max-concurrent", "1")
	require.Equal(t, []string{
		`{"outcome":"success","result":{"c":{"ok":1},"n":[1,10]}}`,
		`{"outcome":"success","result":{"c":{"ok":"default"},"n":[2,20]}}`,
	}, lines(out))
}
