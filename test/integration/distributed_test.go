package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// cluster is a coordinator process (with its embedded NATS server, file
// store in a temp dir) and worker processes.
type cluster struct {
	t       *testing.T
	apiURL  string
	natsURL string
	procs   []*exec.Cmd
}

// startProcess starts a process whose output goes to the test log.
func startProcess(t *testing.T, env []string, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = testWriter{t}
	require.NoError(t, cmd.Start())
	return cmd
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	c := &cluster{t: t}
	cmd := exec.Command(coordinatorBin, "--port", "0", "--nats-port", "0", "--data-dir", t.TempDir(), "--log-level", "warn")
	cmd.Dir = repoRoot
	cmd.Stderr = testWriter{t}
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	c.procs = append(c.procs, cmd)
	t.Cleanup(c.stop)
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err)
	var ready struct {
		Port    int    `json:"port"`
		NATSURL string `json:"natsUrl"`
	}
	require.NoError(t, json.Unmarshal([]byte(line), &ready))
	c.apiURL = fmt.Sprintf("http://127.0.0.1:%d/api/v1", ready.Port)
	c.natsURL = ready.NATSURL
	return c
}

// addWorker starts a worker process.
func (c *cluster) addWorker(concurrency int, config string, env ...string) {
	args := []string{"--nats-url", c.natsURL, "--concurrency", fmt.Sprint(concurrency), "--log-level", "warn"}
	if config != "" {
		args = append(args, "--config", config)
	}
	c.procs = append(c.procs, startProcess(c.t, env, workerBin, args...))
}

// stopWorkers stops every worker process (SIGTERM: they drain and exit).
func (c *cluster) stopWorkers() {
	kept := c.procs[:1]
	for _, p := range c.procs[1:] {
		_ = p.Process.Signal(syscall.SIGTERM)
		_ = p.Wait()
	}
	c.procs = kept
}

// stop sends SIGTERM to every process, workers first, and waits.
func (c *cluster) stop() {
	for i := len(c.procs) - 1; i >= 0; i-- {
		_ = c.procs[i].Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = c.procs[i].Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			_ = c.procs[i].Process.Kill()
			<-done
		}
	}
	c.procs = nil
}

func (c *cluster) submit(t *testing.T, wantCode int, args ...string) string {
	t.Helper()
	return runExample(t, wantCode, stepflowBin, append([]string{"submit", "--url", c.apiURL, "--quiet"}, args...)...)
}

func TestDistributedMatchesLocalRun(t *testing.T) {
	skipShort(t)
	t.Parallel()
	requireVenvs(t)
	c := newCluster(t)
	c.addWorker(4, "examples/data-pipeline/stepflow-config.yml")
	c.addWorker(4, "examples/data-pipeline/stepflow-config.yml")
	args := []string{"--flow", "examples/data-pipeline/data-pipeline.yaml", "--inputs", "examples/data-pipeline/items.jsonl", "--max-concurrent", "20"}
	local := runExample(t, 0, stepflowBin, append([]string{"run", "--quiet"}, args...)...)
	remote := c.submit(t, 0, args...)
	require.Equal(t, local, remote)

	// Failed items give the same lines and the same exit code.
	local = runExample(t, 3, stepflowBin, "run", "--quiet", "--flow", "examples/hello/flow.yaml", "--inputs", "examples/hello/items-with-failures.jsonl")
	remote = c.submit(t, 3, "--flow", "examples/hello/flow.yaml", "--inputs", "examples/hello/items-with-failures.jsonl")
	require.Equal(t, local, remote)
}

// tracker counts, per tag, how many items run at once.
type tracker struct {
	mu       sync.Mutex
	cur, max map[string]int
	total    map[string]int
}

func (tr *tracker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	tr.mu.Lock()
	defer tr.mu.Unlock()
	switch parts[0] {
	case "enter":
		tr.cur[parts[1]]++
		tr.total[parts[1]]++
		tr.max[parts[1]] = max(tr.max[parts[1]], tr.cur[parts[1]])
	case "exit":
		tr.cur[parts[1]]--
	}
}

func TestDistributedConcurrencyLimitsAcrossWorkers(t *testing.T) {
	skipShort(t)
	t.Parallel()
	requireVenvs(t)
	tr := &tracker{cur: map[string]int{}, max: map[string]int{}, total: map[string]int{}}
	srv := httptest.NewServer(tr)
	defer srv.Close()
	c := newCluster(t)
	env := "TRACKER_URL=" + srv.URL
	c.addWorker(8, "test/integration/testdata/track-config.yml", env)
	c.addWorker(8, "test/integration/testdata/track-config.yml", env)

	dir := t.TempDir()
	write := func(tag string, n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, `{"tag":%q,"i":%d}`+"\n", tag, i)
		}
		p := filepath.Join(dir, tag+".jsonl")
		require.NoError(t, os.WriteFile(p, []byte(b.String()), 0o644))
		return p
	}
	// Two runs at once, each with its own limit, on 16 worker slots.
	var wg sync.WaitGroup
	for tag, limit := range map[string]int{"three": 3, "five": 5} {
		inputs := write(tag, 60)
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := c.submit(t, 0, "--flow", "test/integration/testdata/track.yaml", "--inputs", inputs, "--max-concurrent", fmt.Sprint(limit))
			require.Len(t, lines(out), 60)
		}()
	}
	wg.Wait()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	require.Equal(t, 3, tr.max["three"], "the limit is never exceeded, and reached under load")
	require.Equal(t, 5, tr.max["five"])
	require.Equal(t, 60, tr.total["three"])
	require.Equal(t, 60, tr.total["five"])
}

func TestDistributedNestedRunsOnOneSlot(t *testing.T) {
	skipShort(t)
	t.Parallel()
	requireVenvs(t)
	c := newCluster(t)
	// One worker with one slot: every nested batch must borrow it.
	c.addWorker(1, "examples/batch-processor/stepflow-config.yml")
	out := c.submit(t, 0, "--flow", "examples/batch-processor/main-workflow.yaml", "--inputs", "examples/batch-processor/inputs.jsonl")
	require.Equal(t, batchProcessorWant, lines(out))
}
