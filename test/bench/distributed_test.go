package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// The distributed benchmarks: a coordinator process (embedded NATS, file
// store) and worker processes on this machine, driven by `stepflow
// submit`. Compare items/s with BenchmarkRawJetStream in pkg/queue, run by
// the same `make bench`.

const noopFlow = "name: noop\noutput: { $input: \"$\" }\n"

// buildBin builds one of the repository's commands.
func buildBin(b *testing.B, name string) string {
	b.Helper()
	if dir := os.Getenv("STEPFLOW_BIN_DIR"); dir != "" {
		return filepath.Join(dir, name)
	}
	out := filepath.Join(b.TempDir(), name)
	cmd := exec.Command("go", "build", "-o", out, "../../cmd/"+name)
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		b.Fatalf("build %s: %v", name, err)
	}
	return out
}

type benchCluster struct {
	apiURL, natsURL string
	coord           *exec.Cmd
	workers         []*exec.Cmd
}

func startBenchCluster(b *testing.B, coordBin, workerBin string, workers int, coordArgs ...string) *benchCluster {
	b.Helper()
	c := &benchCluster{}
	c.coord = exec.Command(coordBin, append([]string{"--port", "0", "--nats-port", "0", "--data-dir", b.TempDir(), "--log-level", "error"}, coordArgs...)...)
	c.coord.Stderr = os.Stderr
	stdout, err := c.coord.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := c.coord.Start(); err != nil {
		b.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatal(err)
	}
	var ready struct {
		Port    int    `json:"port"`
		NATSURL string `json:"natsUrl"`
	}
	if err := json.Unmarshal([]byte(line), &ready); err != nil {
		b.Fatal(err)
	}
	c.apiURL = fmt.Sprintf("http://127.0.0.1:%d/api/v1", ready.Port)
	c.natsURL = ready.NATSURL
	for range workers {
		w := exec.Command(workerBin, "--nats-url", c.natsURL, "--concurrency", "64", "--log-level", "error")
		w.Stderr = os.Stderr
		if err := w.Start(); err != nil {
			b.Fatal(err)
		}
		c.workers = append(c.workers, w)
	}
	return c
}

// stop ends the workers and the coordinator and returns the coordinator's
// peak RSS.
func (c *benchCluster) stop() int64 {
	for _, w := range c.workers {
		_ = w.Process.Signal(syscall.SIGTERM)
		_ = w.Wait()
	}
	_ = c.coord.Process.Signal(syscall.SIGTERM)
	_ = c.coord.Wait()
	if ru, ok := c.coord.ProcessState.SysUsage().(*syscall.Rusage); ok {
		return ru.Maxrss * 1024
	}
	return 0
}

func writeNoopInputs(b *testing.B, dir string, n int) string {
	b.Helper()
	p := filepath.Join(dir, "noop.jsonl")
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	for i := range n {
		fmt.Fprintf(w, `{"i":%d}`+"\n", i)
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return p
}

// submitBatch runs `stepflow submit` and returns its wall time and peak
// RSS.
func submitBatch(b *testing.B, bin, apiURL, flowPath, inputs, out string, n, concurrency int) (time.Duration, int64) {
	b.Helper()
	cmd := exec.Command(bin, "submit", "--url", apiURL, "--flow", flowPath, "--inputs", inputs,
		"--max-concurrent", strconv.Itoa(concurrency), "--output", out, "--quiet")
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		b.Fatalf("stepflow submit: %v", err)
	}
	elapsed := time.Since(start)
	if got := countLines(b, out); got != n {
		b.Fatalf("got %d results, want %d", got, n)
	}
	rss := int64(0)
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		rss = ru.Maxrss * 1024
	}
	return elapsed, rss
}

// BenchmarkDistributedThroughput submits a no-op flow over 50,000 items to
// a coordinator with 1 and with 2 worker processes, with each fsync policy
// of its embedded server.
func BenchmarkDistributedThroughput(b *testing.B) {
	n := envInt("STEPFLOW_BENCH_DIST_ITEMS", 50_000)
	stepflow, coord, worker := stepflowBin(b), buildBin(b, "coordinator"), buildBin(b, "worker")
	dir := b.TempDir()
	flowPath := filepath.Join(dir, "noop.yaml")
	if err := os.WriteFile(flowPath, []byte(noopFlow), 0o644); err != nil {
		b.Fatal(err)
	}
	inputs := writeNoopInputs(b, dir, n)
	// The embedded server's default fsync (--nats-sync always: every
	// write is on disk before it is acknowledged), and nats-server's own
	// default (every 2 minutes): compare each with BenchmarkRawJetStream's
	// sync=always and sync=2m.
	for _, sync := range []string{"always", "2m"} {
		for _, workers := range []int{1, 2} {
			b.Run(fmt.Sprintf("sync=%s/workers=%d", sync, workers), func(b *testing.B) {
				for b.Loop() {
					c := startBenchCluster(b, coord, worker, workers, "--nats-sync", sync)
					elapsed, _ := submitBatch(b, stepflow, c.apiURL, flowPath, inputs, filepath.Join(dir, "out.jsonl"), n, 256)
					c.stop()
					b.ReportMetric(float64(n)/elapsed.Seconds(), "items/s")
				}
			})
		}
	}
}

// BenchmarkDistributedMemory submits 1,000,000 items and reports the peak
// RSS of the coordinator (target < 200 MB) and of `stepflow submit`
// (target < 100 MB).
func BenchmarkDistributedMemory(b *testing.B) {
	n := envInt("STEPFLOW_BENCH_DIST_RSS_ITEMS", 1_000_000)
	stepflow, coord, worker := stepflowBin(b), buildBin(b, "coordinator"), buildBin(b, "worker")
	dir := b.TempDir()
	flowPath := filepath.Join(dir, "noop.yaml")
	if err := os.WriteFile(flowPath, []byte(noopFlow), 0o644); err != nil {
		b.Fatal(err)
	}
	inputs := writeNoopInputs(b, dir, n)
	for b.Loop() {
		// The coordinator's defaults (durable: --nats-sync always,
		// --sync-results): since results no longer go through JetStream
		// and items are in memory storage, they are also the fastest.
		c := startBenchCluster(b, coord, worker, 2)
		elapsed, submitRSS := submitBatch(b, stepflow, c.apiURL, flowPath, inputs, filepath.Join(dir, "out.jsonl"), n, 256)
		coordRSS := c.stop()
		b.ReportMetric(float64(n)/elapsed.Seconds(), "items/s")
		b.ReportMetric(float64(coordRSS)/(1<<20), "coordinator-peak-RSS-MB")
		b.ReportMetric(float64(submitRSS)/(1<<20), "submit-peak-RSS-MB")
	}
}

// BenchmarkDistributedLatency measures one-item synchronous runs
// (POST /runs, which waits for the result) at low load, against executing
// the same item directly in-process.
func BenchmarkDistributedLatency(b *testing.B) {
	const samples = 200
	coord, worker := buildBin(b, "coordinator"), buildBin(b, "worker")
	c := startBenchCluster(b, coord, worker, 1)
	defer c.stop()
	f, err := flow.Parse([]byte(noopFlow), "noop.yaml")
	if err != nil {
		b.Fatal(err)
	}
	body, _ := json.Marshal(map[string]any{"flow": json.RawMessage(value.Marshal(f.Value()))})
	resp, err := http.Post(c.apiURL+"/flows", "application/json", bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	var stored struct{ FlowID string }
	if err := json.NewDecoder(resp.Body).Decode(&stored); err != nil {
		b.Fatal(err)
	}
	resp.Body.Close()
	run, err := executor.New(executor.Config{}).NewRun("direct", f, nil)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		var remote, direct []time.Duration
		for i := range samples {
			req, _ := json.Marshal(map[string]any{"flowId": stored.FlowID, "input": []any{map[string]any{"i": i}}})
			start := time.Now()
			resp, err := http.Post(c.apiURL+"/runs", "application/json", bytes.NewReader(req))
			if err != nil {
				b.Fatal(err)
			}
			_, _ = bufio.NewReader(resp.Body).ReadString(0)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Fatalf("POST /runs: %s", resp.Status)
			}
			remote = append(remote, time.Since(start))
			start = time.Now()
			run.Execute(context.Background(), 0, value.ObjectOf("i", value.Int(int64(i))))
			direct = append(direct, time.Since(start))
		}
		slices.Sort(remote)
		slices.Sort(direct)
		pct := func(d []time.Duration, p float64) float64 {
			return float64(d[int(p*float64(len(d)-1))].Microseconds()) / 1000
		}
		b.ReportMetric(pct(remote, 0.50), "p50-ms")
		b.ReportMetric(pct(remote, 0.99), "p99-ms")
		b.ReportMetric(pct(direct, 0.50), "direct-p50-ms")
		b.ReportMetric(pct(direct, 0.99), "direct-p99-ms")
	}
}
