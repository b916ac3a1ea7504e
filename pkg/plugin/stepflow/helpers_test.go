package stepflow_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/plugin"
	"github.com/stepflow-go/stepflow/pkg/plugin/stepflow"
	"github.com/stepflow-go/stepflow/pkg/protocol"
	"github.com/stepflow-go/stepflow/pkg/runs"
	"github.com/stepflow-go/stepflow/pkg/value"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testTimeout bounds every single operation of a test.
const testTimeout = 90 * time.Second

// sdk is one of the stepflow-py installations the tests run against.
type sdk struct {
	name    string // "http", "http11" or "stdio"
	envVar  string
	venvDir string // default, relative to the repository root
	check   string // python statement that must succeed
	script  string // fixture in testdata
	plugin  string // plugin name used in the config and routes
	// execCode is the code of an exception in a component.
	execCode int64
}

var (
	sdkHTTP = sdk{
		name: "http", envVar: "STEPFLOW_TEST_VENV_HTTP", venvDir: ".venv-sdk-http",
		check: "import stepflow_py.worker", script: "http_server.py", plugin: "python",
		execCode: protocol.CodeComponentExecution,
	}
	// stepflow-py 0.11.2 (the protocol of 0.10 and 0.11): the same
	// fixture, blobs through the blob API.
	sdkHTTP11 = sdk{
		name: "http11", envVar: "STEPFLOW_TEST_VENV_HTTP11", venvDir: ".venv-sdk-http11",
		check: "import stepflow_py.worker.blob_store, fastapi", script: "http_server.py", plugin: "python",
		execCode: protocol.CodeComponentExecutionFailed,
	}
	sdkStdio = sdk{
		name: "stdio", envVar: "STEPFLOW_TEST_VENV_STDIO", venvDir: ".venv-sdk-stdio",
		check: "from stepflow_py import StepflowStdioServer", script: "stdio_server.py", plugin: "legacy",
		execCode: protocol.CodeComponentExecution,
	}
	pythonChecked sync.Map // venv python path -> error
)

// python returns the venv interpreter of s, failing the test (not
// skipping it) when the venv is missing. Under go test -short (make
// check) the test skips: it runs a real SDK server process.
func (s sdk) python(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("short: runs a real stepflow-py server")
	}
	dir := os.Getenv(s.envVar)
	if dir == "" {
		dir = filepath.Join(repoRoot(t), s.venvDir)
	}
	py := filepath.Join(dir, "bin", "python")
	res, _ := pythonChecked.LoadOrStore(py, sync.OnceValue(func() error {
		if _, err := os.Stat(py); err != nil {
			return err
		}
		out, err := exec.Command(py, "-c", s.check).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %w: %s", s.check, err, out)
		}
		return nil
	}))
	if err := res.(func() error)(); err != nil {
		t.Fatalf("stepflow-py venv for the %s transport is not usable (%v); run make venv (or set %s)", s.name, err, s.envVar)
	}
	return py
}

func repoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	require.NoError(t, err)
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		require.NotEqual(t, parent, dir, "no go.mod above the test directory")
		dir = parent
	}
}

func testdataDir(t testing.TB) string {
	t.Helper()
	dir, err := filepath.Abs("testdata")
	require.NoError(t, err)
	return dir
}

// fastOptions keep the tests quick: a short grace period and back-off.
var fastOptions = stepflow.Options{
	GracePeriod:     2 * time.Second,
	RestartMinDelay: 10 * time.Millisecond,
	RestartMaxDelay: 200 * time.Millisecond,
}

// env is a runtime wired as `stepflow run` wires it: blob store →
// runs.Local → plugins (with Runs) → executor → local.SetExecutor.
type env struct {
	t       *testing.T
	sdk     sdk
	blobs   *blob.Memory
	local   *runs.Local
	plugins *plugin.Plugins
	exec    *executor.Executor
	sp      *stepflow.Plugin
	starts  string // file the fixture appends its pid to at each start
	logs    *observer.ObservedLogs
}

type envOptions struct {
	// pluginYAML is added to the plugin's config entry (e.g. "timeoutMs: 500").
	pluginYAML string
	// noRuns leaves Host.Runs nil.
	noRuns bool
	opts   *stepflow.Options
	// extraEnv is added to the child's environment.
	extraEnv map[string]string
	// lookupEnv is the runtime's environment (plugin.Options.LookupEnv).
	lookupEnv func(string) (string, bool)
}

func newEnv(t *testing.T, s sdk, eo envOptions) *env {
	t.Helper()
	py := s.python(t)
	e := &env{t: t, sdk: s, blobs: blob.NewMemory(), starts: filepath.Join(t.TempDir(), "starts")}

	var b strings.Builder
	fmt.Fprintf(&b, "plugins:\n  %s:\n    type: stepflow\n", s.plugin)
	if s.name == "stdio" {
		b.WriteString("    transport: stdio\n")
	}
	fmt.Fprintf(&b, "    command: %q\n    args: [%q]\n", py, s.script)
	fmt.Fprintf(&b, "    env:\n      STARTS_FILE: %q\n", e.starts)
	for k, v := range eo.extraEnv {
		fmt.Fprintf(&b, "      %s: %q\n", k, v)
	}
	if eo.pluginYAML != "" {
		fmt.Fprintf(&b, "    %s\n", eo.pluginYAML)
	}
	// The builtins share the blob store with the server's blobs.
	b.WriteString("  builtin:\n    type: builtin\n")
	fmt.Fprintf(&b, "routes:\n  \"/%s/{*component}\":\n    - plugin: %s\n", s.plugin, s.plugin)
	b.WriteString("  \"/builtin/{*component}\":\n    - plugin: builtin\n")
	cfg, err := config.Parse([]byte(b.String()), filepath.Join(testdataDir(t), "stepflow-config.yml"))
	require.NoError(t, err, b.String())

	core, logs := observer.New(zapcore.InfoLevel)
	e.logs = logs
	log := zap.New(zapcore.NewTee(core, zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel)).Core()))

	opts := fastOptions
	if eo.opts != nil {
		opts = *eo.opts
	}
	po := plugin.Options{
		Blobs: e.blobs, WorkingDir: testdataDir(t), Logger: log, LookupEnv: eo.lookupEnv,
		Factories: map[config.PluginType]plugin.Factory{config.TypeStepflow: stepflow.NewFactory(opts)},
	}
	if !eo.noRuns {
		e.local = runs.NewLocal(e.blobs, log)
		po.Runs = e.local
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	e.plugins, err = plugin.New(ctx, cfg, po)
	require.NoError(t, err)
	e.exec = executor.New(executor.Config{Router: e.plugins, Logger: log})
	if e.local != nil {
		e.local.SetExecutor(e.exec)
	}
	t.Cleanup(func() {
		if e.local != nil {
			require.NoError(t, e.local.Close())
		}
		require.NoError(t, e.plugins.Close())
	})
	sp, ok := e.plugins.Plugin(s.plugin).(*stepflow.Plugin)
	require.True(t, ok)
	e.sp = sp
	return e
}

// call executes the plugin-local component once, as the executor would.
func (e *env) call(name string, input string) (outcome.Result, error) {
	return e.callReq(name, &executor.Request{RunID: executor.NewRunID(), StepID: "step", Input: value.MustParse(input), Attempt: 1})
}

func (e *env) callReq(name string, req *executor.Request) (outcome.Result, error) {
	e.t.Helper()
	c, err := e.sp.Component(name)
	require.NoError(e.t, err)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	return c.Execute(ctx, req)
}

// mustCall executes and requires a success; it returns the output.
func (e *env) mustCall(name, input string) value.Value {
	e.t.Helper()
	res, err := e.call(name, input)
	require.NoError(e.t, err)
	require.False(e.t, res.Failed(), "%s failed: %s", name, value.String(res.JSON()))
	return res.Value
}

// startCount reads how many server processes the fixture saw start.
func (e *env) startCount() int {
	e.t.Helper()
	data, err := os.ReadFile(e.starts)
	if os.IsNotExist(err) {
		return 0
	}
	require.NoError(e.t, err)
	return strings.Count(string(data), "\n")
}

// runFlow parses a flow written in YAML and runs one item through the
// executor (not through runs.Local).
func (e *env) runFlow(flowYAML string, input string) outcome.Result {
	e.t.Helper()
	f, err := flow.Parse([]byte(flowYAML), "")
	require.NoError(e.t, err)
	run, err := e.exec.NewRun(executor.NewRunID(), f, nil)
	require.NoError(e.t, err)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	return run.Execute(ctx, 0, value.MustParse(input))
}

// storeFlow parses a flow and stores it as a flow blob; it returns its id.
func (e *env) storeFlow(flowYAML string) string {
	e.t.Helper()
	f, err := flow.Parse([]byte(flowYAML), "")
	require.NoError(e.t, err)
	id, err := e.blobs.Put(context.Background(), blob.KindFlow, f.Value())
	require.NoError(e.t, err)
	require.Equal(e.t, f.ID(), id)
	return id
}

// field reads a key of an object value.
func field(t testing.TB, v value.Value, key string) value.Value {
	t.Helper()
	o, ok := v.(*value.Object)
	require.True(t, ok, "not an object: %s", value.String(v))
	f, ok := o.Get(key)
	require.True(t, ok, "no %q in %s", key, value.String(v))
	return f
}

// pidOf reads the pid a fixture component returned.
func pidOf(t testing.TB, v value.Value) int64 {
	t.Helper()
	n, err := field(t, v, "pid").(value.Number).Int64()
	require.NoError(t, err)
	return n
}

// startRemoteServer runs the HTTP fixture of s as an independent server
// and returns its base URL; it is killed at cleanup.
func startRemoteServer(t *testing.T, s sdk) string {
	t.Helper()
	py := s.python(t)
	cmd := exec.Command(py, s.script)
	cmd.Dir = testdataDir(t)
	cmd.Env = []string{}
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-time.After(testTimeout):
				return
			}
		}
	}()
	deadline := time.NewTimer(testTimeout)
	defer deadline.Stop()
	for {
		select {
		case line, ok := <-lines:
			require.True(t, ok, "remote fixture exited before announcing its port")
			v, err := value.ParseString(line)
			if err != nil {
				continue
			}
			if o, ok := v.(*value.Object); ok {
				if p, ok := o.Get("port"); ok {
					// Stop reading: the scanner goroutine ends at EOF when
					// the process is killed.
					go func() {
						for range lines {
						}
					}()
					return fmt.Sprintf("http://127.0.0.1:%s", p)
				}
			}
		case <-deadline.C:
			t.Fatal("remote fixture did not announce its port")
		}
	}
}
