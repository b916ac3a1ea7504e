package integration

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The chaos harness: real NATS, coordinator, worker and component server
// processes, killed and restarted while a batch runs. Every wait polls a
// signal (the run's counters over the REST API, the execution log, a
// process exit) with a deadline.

// chaosItems is the batch size of every scenario.
const chaosItems = 5000

// chaosWait bounds every wait of the chaos tests.
const chaosWait = 90 * time.Second

// proc is a process started by a chaos test; its stderr goes to the test
// log, and it is stopped (SIGTERM, then SIGKILL) at cleanup.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited and been waited for
	err  error         // Wait's error, valid after done
}

// startProc starts bin with args and env added to the test's environment.
// stdout, when not nil, receives the process's stdout.
func startProc(t *testing.T, name string, env []string, stdout io.Writer, bin string, args ...string) *proc {
	t.Helper()
	p := launch(t, name, env, stdout, bin, args...)
	t.Cleanup(func() { p.stop(t) })
	return p
}

// launch starts a process like startProc, leaving its stop to the caller.
func launch(t *testing.T, name string, env []string, stdout io.Writer, bin string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = stdout
	cmd.Stderr = prefixWriter{t: t, prefix: name + ": "}
	require.NoError(t, cmd.Start(), name)
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p
}

// prefixWriter logs each write to the test log with a prefix.
type prefixWriter struct {
	t      *testing.T
	prefix string
}

func (w prefixWriter) Write(b []byte) (int, error) {
	w.t.Log(w.prefix + strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// exitErr is Wait's error once the process has exited, nil while it
// runs: safe to read at any time, unlike err, which the goroutine waiting
// for the process writes.
func (p *proc) exitErr() error {
	select {
	case <-p.done:
		return p.err
	default:
		return nil
	}
}

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill9 kills the process with SIGKILL and waits for it.
func (p *proc) kill9(t *testing.T) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGKILL), p.name)
	<-p.done
}

// signal sends sig to the process.
func (p *proc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(sig), p.name)
}

// waitExit waits up to d for the process to exit and returns its exit
// code (-1 when a signal ended it).
func (p *proc) waitExit(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("%s did not exit within %s", p.name, d)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	require.NoError(t, p.err, p.name)
	return 0
}

// stop ends the process at cleanup: SIGTERM (workers drain), SIGKILL
// after 30s.
func (p *proc) stop(t *testing.T) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Errorf("%s ignored SIGTERM for 30s; killing it", p.name)
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// firstLine is a writer that hands its first line to a channel and
// discards the rest.
type firstLine struct {
	mu   sync.Mutex
	buf  []byte
	sent bool
	ch   chan string
}

func newFirstLine() *firstLine { return &firstLine{ch: make(chan string, 1)} }

func (f *firstLine) Write(b []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.sent {
		f.buf = append(f.buf, b...)
		if i := bytes.IndexByte(f.buf, '\n'); i >= 0 {
			f.ch <- string(f.buf[:i])
			f.sent = true
			f.buf = nil
		}
	}
	return len(b), nil
}

// freePort returns a TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// chaosOptions configures a chaos environment.
type chaosOptions struct {
	// externalNATS runs nats-server as its own process (file store,
	// sync_interval always) instead of the coordinator's embedded one.
	externalNATS bool
	// ackWait is the coordinator's --run-ack-wait (default 3s, so that a
	// killed worker's items come back quickly).
	ackWait time.Duration
	// timeoutMs is the component server plugin's timeoutMs (0 = none).
	timeoutMs int
	// coordArgs are more flags of every coordinator.
	coordArgs []string
	// natsURL is a NATS deployment the test started (a cluster: its
	// URLs, comma-separated) for the coordinator and the workers.
	natsURL string
	// launched, when set, is called once the first coordinator process
	// has started, before its ready line is awaited.
	launched func()
	// natsStore is the external nats-server's store directory (default:
	// one in the test's directory).
	natsStore string
}

// chaosEnv is one chaos scenario's processes and files.
type chaosEnv struct {
	t    *testing.T
	dir  string
	opts chaosOptions

	logPath string // the component server's execution log
	config  string // stepflow-config.yml of the workers

	natsConf  string
	natsPort  int
	nats      *proc   // the current nats-server
	natsProcs []*proc // every nats-server started

	coordArgs []string
	coord     *proc   // the current coordinator
	coords    []*proc // every coordinator started
	apiURL    string
	natsURL   string

	workers map[string]*proc
	// stalled, when set, logs what the test knows of a wait that timed
	// out (what names the wait), before it fails.
	stalled func(what string)
}

// newChaosEnv writes the config and starts NATS (when external) and the
// coordinator; workers are added with addWorker.
func newChaosEnv(t *testing.T, opts chaosOptions) *chaosEnv {
	t.Helper()
	requireVenvs(t)
	if opts.ackWait == 0 {
		opts.ackWait = 3 * time.Second
	}
	e := &chaosEnv{t: t, dir: t.TempDir(), opts: opts, workers: map[string]*proc{}}
	t.Cleanup(e.stopAll)
	e.logPath = filepath.Join(e.dir, "executions.log")
	var cfg strings.Builder
	fmt.Fprintf(&cfg, `plugins:
  py:
    type: stepflow
    command: %q
    args: [%q]
    env:
      CHAOS_LOG: %q
      CHAOS_DIR: %q
      CHAOS_WORKER: "${CHAOS_WORKER}"
`, filepath.Join(repoRoot, ".venv-sdk-http", "bin", "python"), filepath.Join(repoRoot, "test", "integration", "testdata", "chaos_server.py"), e.logPath, e.dir)
	if opts.timeoutMs > 0 {
		fmt.Fprintf(&cfg, "    timeoutMs: %d\n", opts.timeoutMs)
	}
	cfg.WriteString("  builtin:\n    type: builtin\n")
	cfg.WriteString("routes:\n  \"/py/{*component}\":\n    - plugin: py\n  \"/builtin/{*component}\":\n    - plugin: builtin\n")
	e.config = filepath.Join(e.dir, "stepflow-config.yml")
	require.NoError(t, os.WriteFile(e.config, []byte(cfg.String()), 0o644))

	if opts.externalNATS {
		e.natsPort = freePort(t)
		e.natsConf = filepath.Join(e.dir, "nats.conf")
		conf := fmt.Sprintf("listen: 127.0.0.1:%d\nserver_name: chaos\nlog_file: %q\njetstream {\n  store_dir: %q\n  sync_interval: always\n}\n",
			e.natsPort, filepath.Join(e.dir, "nats.log"), cmp.Or(opts.natsStore, filepath.Join(e.dir, "nats")))
		require.NoError(t, os.WriteFile(e.natsConf, []byte(conf), 0o644))
		e.startNATS()
		e.natsURL = fmt.Sprintf("nats://127.0.0.1:%d", e.natsPort)
	}
	e.coordArgs = []string{"--data-dir", filepath.Join(e.dir, "coordinator"), "--log-level", "warn",
		"--run-ack-wait", opts.ackWait.String()}
	if opts.natsURL != "" {
		e.natsURL = opts.natsURL
		opts.externalNATS = true
		e.opts.externalNATS = true
	}
	if opts.externalNATS {
		e.coordArgs = append(e.coordArgs, "--nats-url", e.natsURL)
	}
	e.coordArgs = append(e.coordArgs, opts.coordArgs...)
	e.startCoordinator(0, 0)
	return e
}

// stopAll stops the processes in dependency order: the workers (at
// once, they drain), then the coordinator, then NATS, so that nothing
// waits for a server that is already gone.
func (e *chaosEnv) stopAll() {
	var wg sync.WaitGroup
	for _, w := range e.workers {
		wg.Go(func() { w.stop(e.t) })
	}
	wg.Wait()
	for _, p := range e.coords {
		p.stop(e.t)
	}
	for _, p := range e.natsProcs {
		p.stop(e.t)
	}
	if e.t.Failed() && e.natsConf != "" {
		if log, err := os.ReadFile(filepath.Join(e.dir, "nats.log")); err == nil {
			e.t.Logf("nats-server log:\n%s", log)
		}
	}
}

// startNATS starts (or restarts) the external nats-server on its port and
// store, and waits until it accepts connections.
func (e *chaosEnv) startNATS() {
	t := e.t
	t.Helper()
	e.nats = launch(t, "nats-server", nil, nil, natsServerBin, "-c", e.natsConf)
	e.natsProcs = append(e.natsProcs, e.nats)
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", e.natsPort), time.Second)
		if err == nil {
			_ = c.Close()
			return
		}
		require.False(t, e.nats.exited(), "nats-server exited: %v", e.nats.exitErr())
		require.True(t, time.Now().Before(deadline), "nats-server does not accept connections: %v", err)
		time.Sleep(20 * time.Millisecond)
	}
}

// startCoordinator starts (or restarts) the coordinator; port 0 picks free
// ports the first time, and a restart passes the same ones again.
func (e *chaosEnv) startCoordinator(port, natsPort int) {
	t := e.t
	t.Helper()
	args := append([]string{"--port", strconv.Itoa(port), "--nats-port", strconv.Itoa(natsPort)}, e.coordArgs...)
	ready := newFirstLine()
	e.coord = launch(t, "coordinator", nil, ready, coordinatorBin, args...)
	e.coords = append(e.coords, e.coord)
	if e.opts.launched != nil && len(e.coords) == 1 {
		e.opts.launched()
	}
	select {
	case line := <-ready.ch:
		var r struct {
			Port    int    `json:"port"`
			NATSURL string `json:"natsUrl"`
		}
		require.NoError(t, json.Unmarshal([]byte(line), &r), line)
		e.apiURL = fmt.Sprintf("http://127.0.0.1:%d/api/v1", r.Port)
		if !e.opts.externalNATS {
			e.natsURL = r.NATSURL
		}
	case <-e.coord.done:
		t.Fatalf("coordinator exited before it was ready: %v", e.coord.err)
	case <-time.After(chaosWait):
		t.Fatal("coordinator not ready")
	}
}

// restartCoordinator starts a coordinator on the same data dir and ports
// as the one before (which must have exited).
func (e *chaosEnv) restartCoordinator() {
	e.t.Helper()
	require.True(e.t, e.coord.exited())
	var port, natsPort int
	_, err := fmt.Sscanf(e.apiURL, "http://127.0.0.1:%d/api/v1", &port)
	require.NoError(e.t, err)
	if !e.opts.externalNATS {
		_, err = fmt.Sscanf(e.natsURL, "nats://127.0.0.1:%d", &natsPort)
		require.NoError(e.t, err)
	}
	e.startCoordinator(port, natsPort)
}

// addWorker starts a worker process named name (its CHAOS_WORKER and
// --worker-id) with the given slots.
func (e *chaosEnv) addWorker(name string, concurrency int, args ...string) *proc {
	e.t.Helper()
	args = append([]string{"--nats-url", e.natsURL, "--concurrency", strconv.Itoa(concurrency), "--config", e.config,
		"--worker-id", name, "--log-level", "warn"}, args...)
	p := launch(e.t, name, []string{"CHAOS_WORKER=" + name}, nil, workerBin, args...)
	e.workers[name] = p
	return p
}

// writeFlow writes a one-step flow calling /py/work with onError (YAML,
// "" for the default) and returns its path.
func (e *chaosEnv) writeFlow(name, onError string) string {
	e.t.Helper()
	f := "name: " + name + "\nsteps:\n  - id: work\n    component: /py/work\n    input: { $input: \"$\" }\n"
	if onError != "" {
		f += "    onError: " + onError + "\n"
	}
	f += "output: { $step: work }\n"
	p := filepath.Join(e.dir, name+".yaml")
	require.NoError(e.t, os.WriteFile(p, []byte(f), 0o644))
	return p
}

// writeInputs writes n inputs {"tag":tag,"i":i}, plus the JSON fields of
// special[i] (such as `"crash":true`), and returns the file's path.
func (e *chaosEnv) writeInputs(tag string, n int, special map[int]string) string {
	e.t.Helper()
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `{"tag":%q,"i":%d`, tag, i)
		if s := special[i]; s != "" {
			b.WriteString("," + s)
		}
		b.WriteString("}\n")
	}
	p := filepath.Join(e.dir, tag+".jsonl")
	require.NoError(e.t, os.WriteFile(p, []byte(b.String()), 0o644))
	return p
}

// submitNoWait submits a run with `stepflow submit --no-wait` and returns
// its id.
func (e *chaosEnv) submitNoWait(flowPath, inputs string, maxConcurrent int) string {
	e.t.Helper()
	out := runExample(e.t, 0, stepflowBin, "submit", "--url", e.apiURL, "--quiet", "--no-wait", "--new-run",
		"--flow", flowPath, "--inputs", inputs, "--max-concurrent", strconv.Itoa(maxConcurrent))
	id := strings.TrimSpace(out)
	require.NotEmpty(e.t, id)
	return id
}

// runStatus is what the tests read of GET /runs/{id}.
type runStatus struct {
	RunID  string `json:"runId"`
	Status string `json:"status"`
	Items  struct {
		Total, Completed, Failed, Running, Queued, Redelivered int
	} `json:"items"`
}

// status reads a run's status; ok is false while the coordinator cannot
// answer (restarting).
func (e *chaosEnv) status(runID string) (runStatus, bool) {
	var st runStatus
	resp, err := http.Get(e.apiURL + "/runs/" + runID)
	if err != nil {
		return st, false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, false
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, false
	}
	return st, true
}

// waitUntil polls cond every 20ms until it holds, failing after chaosWait.
func (e *chaosEnv) waitUntil(what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(chaosWait)
	for !cond() {
		if time.Now().After(deadline) {
			if e.stalled != nil {
				e.stalled(what)
			}
			e.t.Fatalf("timed out after %s waiting until %s", chaosWait, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitCompleted waits until at least n items of the run have a result.
func (e *chaosEnv) waitCompleted(runID string, n int) {
	e.t.Helper()
	e.waitUntil(fmt.Sprintf("run %s has %d results", runID, n), func() bool {
		st, ok := e.status(runID)
		return ok && st.Items.Completed+st.Items.Failed >= n
	})
}

// waitFinished waits until the run is no longer running and returns its
// status.
func (e *chaosEnv) waitFinished(runID string) runStatus {
	e.t.Helper()
	var st runStatus
	e.waitUntil("run "+runID+" finishes", func() bool {
		var ok bool
		st, ok = e.status(runID)
		return ok && st.Status != "running"
	})
	return st
}

// execution is one line of the execution log.
type execution struct {
	tag    string
	index  int
	worker string
	pid    int
}

// executions reads the execution log (every call of /py/work, in order).
func (e *chaosEnv) executions() []execution {
	e.t.Helper()
	data, err := os.ReadFile(e.logPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	require.NoError(e.t, err)
	// A line being appended right now may be read in part: only complete
	// lines count (each execution writes its whole line at once).
	data = data[:bytes.LastIndexByte(data, '\n')+1]
	var out []execution
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		var x execution
		_, err := fmt.Sscanf(sc.Text(), "%s %d %s %d", &x.tag, &x.index, &x.worker, &x.pid)
		require.NoError(e.t, err, "execution log line %q", sc.Text())
		out = append(out, x)
	}
	return out
}

// byIndex groups the executions of tag's items by index, in log order.
func byIndex(xs []execution, tag string) map[int][]execution {
	m := map[int][]execution{}
	for _, x := range xs {
		if x.tag == tag {
			m[x.index] = append(m[x.index], x)
		}
	}
	return m
}

// itemsPage is GET /runs/{id}/items.
type itemsPage struct {
	ItemCount int `json:"itemCount"`
	Items     []struct {
		ItemIndex int             `json:"itemIndex"`
		Status    string          `json:"status"`
		Result    json.RawMessage `json:"result"`
	} `json:"items"`
}

// flowResult is an item's FlowResult.
type flowResult struct {
	Outcome string `json:"outcome"`
	Result  struct {
		I      *int `json:"i"`
		Double *int `json:"double"`
	} `json:"result"`
	Error struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Data    any    `json:"data"`
	} `json:"error"`
}

// chaosReport is what a scenario measured.
type chaosReport struct {
	lost, duplicates, reexecuted, executions int
	results                                  map[int]flowResult
	counts                                   map[int][]execution
}

// verify checks the finished run against the rules every scenario
// shares and returns the figures: every item has exactly one result, each
// index once, every success carries the right value, the run's counters
// agree, and it ended completed (or failed when failures are expected).
// wantFailed lists the items that must fail.
func (e *chaosEnv) verify(runID, tag string, n int, wantFailed ...int) chaosReport {
	t := e.t
	t.Helper()
	st := e.waitFinished(runID)
	failing := map[int]bool{}
	for _, i := range wantFailed {
		failing[i] = true
	}

	resp, err := http.Get(e.apiURL + "/runs/" + runID + "/items")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var page itemsPage
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&page))

	rep := chaosReport{results: map[int]flowResult{}, counts: byIndex(e.executions(), tag)}
	seen := map[int]int{}
	for _, it := range page.Items {
		seen[it.ItemIndex]++
		if len(it.Result) == 0 {
			continue
		}
		var fr flowResult
		require.NoError(t, json.Unmarshal(it.Result, &fr), "item %d: %s", it.ItemIndex, it.Result)
		rep.results[it.ItemIndex] = fr
	}
	for i := range n {
		if _, ok := rep.results[i]; !ok {
			rep.lost++
		}
	}
	for _, c := range seen {
		rep.duplicates += c - 1
	}
	rep.duplicates += max(st.Items.Completed+st.Items.Failed-n, 0)
	for _, xs := range rep.counts {
		rep.executions += len(xs)
		if len(xs) > 1 {
			rep.reexecuted++
		}
	}

	require.Equal(t, n, page.ItemCount)
	require.Len(t, page.Items, n)
	require.Zero(t, rep.lost, "items without a result")
	require.Zero(t, rep.duplicates, "duplicate results")
	for i := range n {
		fr := rep.results[i]
		require.NotEmpty(t, rep.counts[i], "item %d has a result but never executed", i)
		if failing[i] {
			require.Equal(t, "failed", fr.Outcome, "item %d", i)
			continue
		}
		require.Equal(t, "success", fr.Outcome, "item %d: %+v", i, fr.Error)
		require.NotNil(t, fr.Result.I, "item %d", i)
		require.NotNil(t, fr.Result.Double, "item %d", i)
		require.Equal(t, i, *fr.Result.I, "item %d has another item's result", i)
		require.Equal(t, 2*i, *fr.Result.Double, "item %d", i)
	}
	require.Equal(t, n, st.Items.Total)
	require.Equal(t, n-len(failing), st.Items.Completed)
	require.Equal(t, len(failing), st.Items.Failed)
	want := "completed"
	if len(failing) > 0 {
		want = "failed"
	}
	require.Equal(t, want, st.Status)
	return rep
}

// reportChaos logs the line the figures in docs/reliability.md are
// collected from: go test -v -run TestChaos ./test/integration/ | grep CHAOS
func reportChaos(t *testing.T, scenario string, n int, rep chaosReport, extra ...string) {
	t.Helper()
	line := fmt.Sprintf("CHAOS scenario=%s items=%d lost=%d duplicates=%d reexecuted=%d executions=%d",
		scenario, n, rep.lost, rep.duplicates, rep.reexecuted, rep.executions)
	if len(extra) > 0 {
		line += " " + strings.Join(extra, " ")
	}
	t.Log(line)
}

// requireAlive fails unless every worker process still runs.
func (e *chaosEnv) requireAlive(names ...string) {
	e.t.Helper()
	for _, n := range names {
		require.False(e.t, e.workers[n].exited(), "worker %s exited: %v", n, e.workers[n].exitErr())
	}
}

// processGone reports whether no process has this pid any more, or only
// a zombie that nobody reaped yet (a container's init may not).
func processGone(pid int) bool {
	if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
		return true
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	// pid (comm) state ...: the state follows the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z'
}
