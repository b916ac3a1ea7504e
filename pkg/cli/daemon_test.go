package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/coordinator"
)

// daemon is `coordinator` or `worker` (or stepflow running one of them)
// running in-process until stop.
type daemon struct {
	stdout *bufio.Reader
	stderr *syncBuffer
	cancel context.CancelFunc
	done   chan int
}

// startDaemon runs execute (Execute, ExecuteCoordinator or ExecuteWorker)
// with args and the environment env.
func startDaemon(t *testing.T, execute func(context.Context, []string, IO) int, env map[string]string, args ...string) *daemon {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	d := &daemon{stdout: bufio.NewReader(pr), stderr: &syncBuffer{}, cancel: cancel, done: make(chan int, 1)}
	go func() {
		d.done <- execute(ctx, args, envIO(env, strings.NewReader(""), pw, d.stderr))
		_ = pw.Close()
	}()
	t.Cleanup(func() {
		cancel()
		go func() { _, _ = io.Copy(io.Discard, pr) }()
		select {
		case <-d.done:
		case <-time.After(60 * time.Second):
			t.Error("daemon did not stop")
		}
	})
	return d
}

// ready reads the coordinator's ready line, then discards stdout.
func (d *daemon) ready(t *testing.T) coordinator.Ready {
	t.Helper()
	line, err := d.stdout.ReadString('\n')
	require.NoError(t, err, d.stderr.String())
	go func() { _, _ = io.Copy(io.Discard, d.stdout) }()
	var ready coordinator.Ready
	require.NoError(t, json.Unmarshal([]byte(line), &ready), line)
	require.Equal(t, fmt.Sprintf(`{"port":%d,"natsUrl":%q}`+"\n", ready.Port, ready.NATSURL), line)
	return ready
}

// stop ends the daemon as SIGTERM does and returns its exit code.
func (d *daemon) stop(t *testing.T) int {
	t.Helper()
	d.cancel()
	select {
	case code := <-d.done:
		d.done <- code // for the cleanup
		return code
	case <-time.After(60 * time.Second):
		t.Fatal("daemon did not stop")
		return -1
	}
}

func envIO(env map[string]string, stdin io.Reader, stdout, stderr io.Writer) IO {
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	return IO{
		Stdin:     stdin,
		Stdout:    stdout,
		Stderr:    stderr,
		Getenv:    func(k string) string { v, _ := lookup(k); return v },
		LookupEnv: lookup,
		Environ:   func() []string { return nil },
	}
}

// runStandalone runs bin/coordinator (ExecuteCoordinator) or bin/worker
// (ExecuteWorker) in-process to the end.
func runStandalone(t *testing.T, execute func(context.Context, []string, IO) int, env map[string]string, args ...string) result {
	t.Helper()
	var out, errOut syncBuffer
	code := execute(context.Background(), args, envIO(env, strings.NewReader(""), &out, &errOut))
	return result{out.String(), errOut.String(), code}
}

// The three ways to run the daemons: `stepflow coordinator|worker` and
// bin/coordinator, bin/worker (Execute as a command of its own).
var daemonCommands = []struct {
	name    string
	execute func(context.Context, []string, IO) int
	prefix  []string
}{
	{"stepflow coordinator", Execute, []string{"coordinator"}},
	{"stepflow worker", Execute, []string{"worker"}},
	{"bin/coordinator", ExecuteCoordinator, nil},
	{"bin/worker", ExecuteWorker, nil},
}

// normalizeSpace collapses runs of white space: pflag aligns the usage
// column of each flag section on its longest flag.
func normalizeSpace(s string) string { return strings.Join(strings.Fields(s), " ") }

// `stepflow coordinator --help`, `bin/worker --help` and the like list
// double-dash flags with their env variables, on stdout, and the global
// logging flags of `stepflow run --help` with the same defaults.
func TestDaemonHelp(t *testing.T) {
	t.Parallel()
	run := stepflow(t, nil, "", "run", "--help")
	require.Equal(t, ExitOK, run.code)
	_, global, ok := strings.Cut(run.stdout, "Global Flags:\n")
	require.True(t, ok, run.stdout)
	global, _, _ = strings.Cut(global, "\n\n")
	globalLines := strings.Split(strings.TrimSpace(global), "\n")
	require.Len(t, globalLines, 3, global)
	require.Contains(t, global, `--log-level string`)
	require.Contains(t, global, `(env STEPFLOW_LOG_LEVEL) (default "warn")`)
	require.Contains(t, global, `(env STEPFLOW_LOG_FORMAT) (default "text")`)
	singleDash := regexp.MustCompile(`(?m)^ +-[a-z][a-z-]+`)
	for _, c := range daemonCommands {
		r := runStandalone(t, c.execute, nil, append(c.prefix, "--help")...)
		require.Equal(t, ExitOK, r.code, c.name)
		require.Empty(t, r.stderr, c.name)
		require.Contains(t, r.stdout, "      --nats-url string ", c.name)
		require.Contains(t, r.stdout, "(env STEPFLOW_NATS_URL)", c.name)
		require.Contains(t, r.stdout, "(env STEPFLOW_NATS_PASSWORD)", c.name)
		require.NotRegexp(t, singleDash, r.stdout, c.name)
		for _, l := range globalLines {
			require.Contains(t, normalizeSpace(r.stdout), normalizeSpace(l), c.name)
		}
	}
	// The flag package's single-dash forms still work for the binaries.
	for _, execute := range []func(context.Context, []string, IO) int{ExecuteCoordinator, ExecuteWorker} {
		r := runStandalone(t, execute, nil, "-help")
		require.Equal(t, ExitOK, r.code, r.stderr)
		require.Contains(t, r.stdout, "      --nats-url string ")
	}
	stepflowHelp := stepflow(t, nil, "", "--help")
	require.Regexp(t, `(?m)^  coordinator +Run the coordinator`, stepflowHelp.stdout)
	require.Regexp(t, `(?m)^  worker +Run a worker`, stepflowHelp.stdout)
	serve := stepflow(t, nil, "", "serve", "--help")
	require.NotContains(t, serve.stdout, "stepflow-worker")
	require.Contains(t, serve.stdout, "'stepflow worker --nats-url …'")
}

// The coordinator's request limits are flags with environment defaults,
// named in --help; secrets from the environment are never shown there.
func TestCoordinatorHelpDefaults(t *testing.T) {
	t.Parallel()
	r := runStandalone(t, ExecuteCoordinator, nil, "--help")
	require.Equal(t, ExitOK, r.code)
	for _, want := range []string{
		"--max-body-bytes int", "(env STEPFLOW_MAX_BODY_BYTES) (default 33554432)",
		"--max-flow-bytes int", "(env STEPFLOW_MAX_FLOW_BYTES) (default 4194304)",
		"--max-items-per-run int", "(env STEPFLOW_MAX_ITEMS_PER_RUN) (default 10000000)",
		"--max-active-runs int", "(env STEPFLOW_MAX_ACTIVE_RUNS) (default 64)",
		"--max-run-concurrency int", "(env STEPFLOW_MAX_RUN_CONCURRENCY) (default 10000)",
		"(env STEPFLOW_AUTH_TOKEN)", "--nats-server-config string",
	} {
		require.Contains(t, r.stdout, want)
	}
	env := map[string]string{"STEPFLOW_MAX_FLOW_BYTES": "1234", "STEPFLOW_AUTH_TOKEN": "env-tok-93", "STEPFLOW_NATS_PASSWORD": "env-nats-pw-93"}
	r = runStandalone(t, ExecuteCoordinator, env, "--help")
	require.Equal(t, ExitOK, r.code)
	require.Contains(t, r.stdout, "(env STEPFLOW_MAX_FLOW_BYTES) (default 1234)")
	require.NotContains(t, r.stdout, "env-tok-93")
	require.NotContains(t, r.stdout, "env-nats-pw-93")
}

// Usage errors of the coordinator and the worker exit with stepflow's
// usage code, without starting anything, whichever way they are run.
func TestDaemonUsageErrors(t *testing.T) {
	t.Parallel()
	stepflowUsage := stepflow(t, nil, "", "run", "--bogus")
	require.Equal(t, ExitUsage, stepflowUsage.code)
	dir := t.TempDir()
	empty := tempFile(t, dir, "empty", "")
	cases := map[string][][]string{
		"coordinator": {
			{"--bogus"},
			{"-bogus"},
			{"--log-level", "loud"},
			{"--log-format", "xml"},
			{"--port", "-5", "--data-dir", dir},
			{"--data-dir", ""},
			{"--nats-replicas", "7", "--data-dir", dir},
			{"extra-arg"},
			{"--nats-sync", "sometimes", "--data-dir", dir},
			{"--nats-items-storage", "tape", "--data-dir", dir},
			{"--run-ack-wait", "100ms", "--data-dir", dir},
			{"--run-max-deliver", "-2", "--data-dir", dir},
			{"--auth-token", "tok", "--auth-token-file", empty, "--data-dir", dir},
			{"--auth-token-file", empty, "--data-dir", dir},
		},
		"worker": {
			{"--bogus"},
			{"--log-level", "loud"},
			{"--log-format", "xml"},
			{"--concurrency", "-1"},
			{"extra"},
		},
	}
	for _, c := range daemonCommands {
		name := strings.TrimPrefix(c.name, "bin/")
		name = strings.TrimPrefix(name, "stepflow ")
		for _, args := range cases[name] {
			r := runStandalone(t, c.execute, nil, append(c.prefix, args...)...)
			require.Equal(t, stepflowUsage.code, r.code, "%s %v: %s", c.name, args, r.stderr)
			require.Empty(t, r.stdout, "%s %v", c.name, args)
			require.True(t, strings.HasPrefix(r.stderr, "Error: "), "%s %v: %s", c.name, args, r.stderr)
		}
	}
	require.Equal(t, "Error: unknown flag: --bogus\n", stepflowUsage.stderr)
	r := runStandalone(t, ExecuteWorker, nil, "--bogus")
	require.Equal(t, stepflowUsage.stderr, r.stderr)
	r = stepflow(t, nil, "", "worker", "--bogus")
	require.Equal(t, stepflowUsage.stderr, r.stderr)

	// A malformed variable is a usage error naming it.
	for _, c := range daemonCommands {
		env := map[string]string{"STEPFLOW_MAX_ITEMS_PER_RUN": "lots", "STEPFLOW_WORKER_CONCURRENCY": "lots"}
		r := runStandalone(t, c.execute, env, append(c.prefix, "--data-dir", dir)...)
		if strings.HasSuffix(c.name, "worker") {
			r = runStandalone(t, c.execute, env, c.prefix...)
		}
		require.Equal(t, ExitUsage, r.code, c.name)
		require.Regexp(t, `^Error: STEPFLOW_(MAX_ITEMS_PER_RUN|WORKER_CONCURRENCY)="lots" is not an integer\n$`, r.stderr, c.name)
	}
	r = runStandalone(t, ExecuteCoordinator, nil, "--data-dir", dir, "--max-flow-bytes", "-1")
	require.Equal(t, ExitUsage, r.code)
	require.Equal(t, "Error: coordinator: invalid configuration: MaxFlowBytes (--max-flow-bytes) must be positive\n", r.stderr)
	r = runStandalone(t, ExecuteCoordinator, map[string]string{"STEPFLOW_AUTH_TOKEN": "env-tok-93"}, "--data-dir", dir, "--auth-token-file", empty)
	require.Equal(t, ExitUsage, r.code)
	require.Contains(t, r.stderr, "not both")
	require.NotContains(t, r.stderr, "env-tok-93")
	r = runStandalone(t, ExecuteCoordinator, nil, "--data-dir", dir, "--auth-token-file", empty)
	require.Contains(t, r.stderr, "is empty")

	// The auth callout needs an account seed and the workers' password.
	r = runStandalone(t, ExecuteCoordinator, map[string]string{"STEPFLOW_NATS_AUTH_CALLOUT_ISSUER_SEED": "SUnot-a-seed"}, "--data-dir", dir)
	require.Equal(t, ExitUsage, r.code)
	require.Contains(t, r.stderr, "Error: --nats-auth-callout-issuer-seed: natsauth: invalid configuration: issuer seed")
	require.NotContains(t, r.stderr, "SUnot-a-seed")
	account, err := nkeys.CreateAccount()
	require.NoError(t, err)
	accountSeed, err := account.Seed()
	require.NoError(t, err)
	r = runStandalone(t, ExecuteCoordinator, map[string]string{"STEPFLOW_NATS_AUTH_CALLOUT_ISSUER_SEED": string(accountSeed)}, "--data-dir", dir)
	require.Equal(t, ExitUsage, r.code)
	require.Equal(t, "Error: --nats-auth-callout-issuer-seed needs the workers' password (STEPFLOW_NATS_AUTH_CALLOUT_WORKER_PASSWORD)\n", r.stderr)
}

// --nats-replicas reaches the provisioning of the streams: a single
// embedded server refuses replicated streams, so R3 fails the start with
// the server's reason (exit 1, nothing on stdout).
func TestCoordinatorNATSReplicas(t *testing.T) {
	t.Parallel()
	r := runStandalone(t, ExecuteCoordinator, nil, "--port", "0", "--nats-port", "0", "--host", "127.0.0.1",
		"--data-dir", t.TempDir(), "--log-level", "error", "--nats-replicas", "3")
	require.Equal(t, ExitFailure, r.code, r.stderr)
	require.Empty(t, r.stdout)
	require.Contains(t, r.stderr, "replicas")
}

// bin/coordinator and bin/worker run a batch that `stepflow submit` sends
// and stop with 0 on SIGTERM; they log in the format of --log-format
// (or STEPFLOW_LOG_FORMAT), the embedded NATS server without its banner;
// the single-dash flags of their former flag package still work.
func TestCoordinatorAndWorkerCommands(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	coord := startDaemon(t, ExecuteCoordinator, map[string]string{"STEPFLOW_LOG_FORMAT": "json"},
		"--port", "0", "--nats-port", "0", "--host", "127.0.0.1", "--data-dir", filepath.Join(dir, "data"),
		"--log-level", "info", "--auth-token", "tok")
	ready := coord.ready(t)
	require.True(t, strings.HasPrefix(ready.NATSURL, "nats://127.0.0.1:"), ready.NATSURL)
	url := fmt.Sprintf("http://127.0.0.1:%d", ready.Port)
	tr := &http.Transport{DisableKeepAlives: true}
	for path, want := range map[string]int{"/api/v1/health": http.StatusOK, "/api/v1/runs": http.StatusUnauthorized} {
		resp, err := (&http.Client{Transport: tr}).Get(url + path)
		require.NoError(t, err)
		_ = resp.Body.Close()
		require.Equal(t, want, resp.StatusCode, path)
	}
	wk := startDaemon(t, ExecuteWorker, nil, "-nats-url="+ready.NATSURL, "-concurrency", "2", "--worker-id", "w-main",
		"--log-level", "info", "--log-format", "text")
	go func() { _, _ = io.Copy(io.Discard, wk.stdout) }()

	f := tempFile(t, dir, "flow.yaml", greetFlow)
	items := greetBatch(t, dir, "items.jsonl", 20, 0)
	local := stepflow(t, nil, "", "run", "--flow", f, "--inputs", items, "-q")
	r := stepflow(t, map[string]string{"STEPFLOW_TOKEN": "tok"}, "", "submit", "--url", url, "--flow", f, "--inputs", items, "-q")
	require.Equal(t, ExitOK, r.code, r.stderr)
	require.Equal(t, local.stdout, r.stdout)

	require.Equal(t, ExitOK, wk.stop(t), wk.stderr.String())
	require.Equal(t, ExitOK, coord.stop(t), coord.stderr.String())

	// The coordinator logs JSON, one object a line, at info level and up;
	// the embedded server's notices (its banner) are debug: one line
	// says it is ready.
	coordLog := strings.TrimSpace(coord.stderr.String())
	require.NotEmpty(t, coordLog)
	var started bool
	for _, line := range strings.Split(coordLog, "\n") {
		var rec struct{ Level, Logger, Msg string }
		require.NoError(t, json.Unmarshal([]byte(line), &rec), line)
		require.Contains(t, []string{"info", "warn", "error"}, rec.Level, line)
		if rec.Logger == "nats-server" && rec.Level == "info" {
			require.Equal(t, "embedded NATS server ready", rec.Msg, line)
		}
		started = started || rec.Msg == "coordinator started"
	}
	require.Equal(t, 1, strings.Count(coordLog, `"logger":"nats-server","msg":"embedded NATS server ready"`), coordLog)
	require.True(t, started, coordLog)
	require.NotContains(t, coordLog, "Starting nats-server")
	// The worker logs text lines.
	wkLog := strings.TrimSpace(wk.stderr.String())
	require.NotEmpty(t, wkLog)
	for _, line := range strings.Split(wkLog, "\n") {
		require.Regexp(t, `^\d{4}-\d\d-\d\dT[0-9:.]+Z\t(INFO|WARN|ERROR)\t`, line)
	}
}

// --log-format (and STEPFLOW_LOG_FORMAT) selects the log format of
// `stepflow` commands too.
func TestLogFormatFlag(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := tempFile(t, dir, "flow.yaml", greetFlow)
	items := greetBatch(t, dir, "items.jsonl", 2, 0)
	r := stepflow(t, nil, "", "--log-level", "info", "--log-format", "json", "run", "--flow", f, "--inputs", items, "-q")
	require.Equal(t, ExitOK, r.code, r.stderr)
	var rec struct{ Level, Msg string }
	require.NoError(t, json.Unmarshal([]byte(strings.TrimSpace(r.stderr)), &rec), r.stderr)
	require.Equal(t, "batch finished", rec.Msg)
	r = stepflow(t, map[string]string{"STEPFLOW_LOG_LEVEL": "info"}, "", "run", "--flow", f, "--inputs", items, "-q")
	require.Equal(t, ExitOK, r.code, r.stderr)
	require.Regexp(t, `^\S+\tINFO\tbatch finished\t`, r.stderr)
	r = stepflow(t, nil, "", "--log-format", "xml", "run", "--flow", f, "--inputs", items, "-q")
	require.Equal(t, ExitUsage, r.code)
	require.Contains(t, r.stderr, `--log-format "xml": want text or json`)
}

// doubleDashes rewrites the single-dash long flags of the command only.
func TestDoubleDashes(t *testing.T) {
	t.Parallel()
	a := &app{}
	a.io.defaults()
	cmd := a.standalone(a.workerCommand())
	require.Equal(t,
		[]string{"--nats-url", "x", "--concurrency=2", "-h", "--log-level", "warn", "--drain-timeout", "-10s", "-bogus", "--", "-config"},
		doubleDashes(cmd, []string{"-nats-url", "x", "-concurrency=2", "-h", "-log-level", "warn", "--drain-timeout", "-10s", "-bogus", "--", "-config"}))
}
