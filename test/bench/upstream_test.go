package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// The benchmarks against upstream Stepflow: its own server, stepflow-server
// of the PyPI package stepflow-orchestrator 0.9.0 (`make venv-upstream`
// installs it into .venv-upstream), what a user would pick instead of
// ours, measured in the same run as ours on the same batches:
//
//	go test -run '^$' -bench Upstream -benchtime 1x ./test/bench/
//
// STEPFLOW_BENCH_UPSTREAM_ITEMS is the comma-separated list of batch
// sizes (default 10000,100000), STEPFLOW_BENCH_UPSTREAM_SAMPLES the
// number of synchronous one-item runs of the latency benchmark (default
// 300), STEPFLOW_UPSTREAM_SERVER another stepflow-server binary.
//
// Ours is `stepflow serve` with its default flags (only a free port and a
// temporary data dir: its in-process workers, their concurrency, the
// fsync policy are the defaults) driven by `stepflow submit`. Upstream is
// started once per benchmark process with an in-memory state store and
// its builtin plugin routed at /builtin/{*component}; the runs are sent
// the way its own `stepflow submit` sends them: POST /api/v1/flows, one
// POST /api/v1/runs with the inputs array and maxConcurrency (it blocks
// until the run is over), GET /api/v1/runs/{id}/items.

const upstreamConcurrency = 50

// upstreamBodyLimit is the largest request body upstream's server accepts
// (axum's default, 2 MiB; beyond it: 413 "length limit exceeded", and no
// flag or config changes it). A batch whose POST /runs would be larger is
// sent as consecutive runs, each as large as the limit allows.
const upstreamBodyLimit = 2 << 20

// oneStepFlow is the smallest useful flow: one builtin step per item.
const oneStepFlow = `name: bench-one-builtin
description: create_messages per item
steps:
  - id: prompt
    component: /builtin/create_messages
    input:
      system_instructions: "You are a concise assistant."
      user_prompt: { $input: topic }
output: { $step: prompt, path: messages }
`

// upstreamConfig is the stepflow-config.yml of upstream's server.
const upstreamConfig = `plugins:
  builtin:
    type: builtin
routes:
  "/builtin/{*component}":
    - plugin: builtin
stateStore:
  type: inMemory
`

func upstreamSizes(b *testing.B) []int {
	b.Helper()
	s := os.Getenv("STEPFLOW_BENCH_UPSTREAM_ITEMS")
	if s == "" {
		return []int{10_000, 100_000}
	}
	var sizes []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			b.Fatalf("STEPFLOW_BENCH_UPSTREAM_ITEMS=%q: want positive integers separated by commas", s)
		}
		sizes = append(sizes, n)
	}
	return sizes
}

// apiServer is a server process with the REST API at api (".../api/v1").
type apiServer struct {
	api     string
	natsURL string // `stepflow serve`'s embedded NATS server
	cmd     *exec.Cmd
	dir     string // removed by stop, if set
}

func (s *apiServer) stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
	if s.dir != "" {
		_ = os.RemoveAll(s.dir)
	}
}

// readyInfo is the ready line a server prints on stdout: {"port":N} (and,
// from `stepflow serve`, "natsUrl").
type readyInfo struct {
	Port    int
	NATSURL string `json:"natsUrl"`
}

// readyLine waits for the first stdout line that starts with
// `{"port":` (upstream's server may log before it), decodes it, and
// discards the rest of stdout so the server never blocks on it.
func readyLine(stdout io.Reader) (readyInfo, error) {
	type result struct {
		ready readyInfo
		err   error
	}
	ch := make(chan result, 1)
	go func() {
		r := bufio.NewReader(stdout)
		for {
			line, err := r.ReadString('\n')
			if strings.HasPrefix(line, `{"port":`) {
				var ready readyInfo
				err := json.Unmarshal([]byte(line), &ready)
				ch <- result{ready, err}
				_, _ = io.Copy(io.Discard, r)
				return
			}
			if err != nil {
				ch <- result{readyInfo{}, fmt.Errorf("no {\"port\":N} line on stdout: %w", err)}
				return
			}
		}
	}()
	select {
	case res := <-ch:
		return res.ready, res.err
	case <-time.After(60 * time.Second):
		return readyInfo{}, errors.New("no {\"port\":N} line on stdout in 60 s")
	}
}

// upstreamServerBin is the stepflow-server binary of .venv-upstream.
func upstreamServerBin(b *testing.B) string {
	b.Helper()
	if p := os.Getenv("STEPFLOW_UPSTREAM_SERVER"); p != "" {
		return p
	}
	p := repoPath(b, filepath.Join(".venv-upstream", "bin", "stepflow-server"))
	if _, err := os.Stat(p); err != nil {
		b.Fatalf("%s is missing: run `make venv-upstream` first (pip install stepflow-orchestrator==0.9.0, upstream Stepflow's server)", p)
	}
	return p
}

// upstream is upstream's server, started once per benchmark process by
// the first benchmark that needs it and stopped by TestMain.
var upstream struct {
	sync.Mutex
	srv *apiServer
}

func upstreamServer(b *testing.B) *apiServer {
	b.Helper()
	upstream.Lock()
	defer upstream.Unlock()
	if upstream.srv != nil {
		return upstream.srv
	}
	bin := upstreamServerBin(b)
	dir, err := os.MkdirTemp("", "stepflow-upstream-")
	if err != nil {
		b.Fatal(err)
	}
	cfg := filepath.Join(dir, "stepflow-config.yml")
	if err := os.WriteFile(cfg, []byte(upstreamConfig), 0o644); err != nil {
		b.Fatal(err)
	}
	// --log-level warn, like ours by default: at upstream's default (info)
	// it logs a line per step of every item on stdout.
	cmd := exec.Command(bin, "--port", "0", "--config", cfg, "--log-level", "warn")
	cmd.Dir = dir
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatalf("start %s: %v", bin, err)
	}
	srv := &apiServer{cmd: cmd, dir: dir}
	ready, err := readyLine(stdout)
	if err != nil {
		srv.stop()
		b.Fatalf("upstream stepflow-server: %v", err)
	}
	srv.api = fmt.Sprintf("http://127.0.0.1:%d/api/v1", ready.Port)
	if err := waitHealthy(srv.api + "/health"); err != nil {
		srv.stop()
		b.Fatalf("upstream stepflow-server: %v", err)
	}
	upstream.srv = srv
	return srv
}

func stopUpstream() {
	upstream.Lock()
	defer upstream.Unlock()
	if upstream.srv != nil {
		upstream.srv.stop()
		upstream.srv = nil
	}
}

func waitHealthy(url string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not healthy in 30 s (last: %v)", url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startServe starts `stepflow serve` with its default flags (plus args)
// but a free port for the API and for the embedded NATS server and a
// temporary data dir, in a directory without a stepflow-config.yml
// (builtins only), and waits until it is ready (its workers included).
// It is stopped when b's benchmark ends.
func startServe(b *testing.B, bin string, args ...string) *apiServer {
	b.Helper()
	dir := b.TempDir()
	args = append([]string{"serve", "--port", "0", "--nats-port", "0", "--data-dir", filepath.Join(dir, "data")}, args...)
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	srv := &apiServer{cmd: cmd}
	b.Cleanup(srv.stop)
	ready, err := readyLine(stdout)
	if err != nil {
		b.Fatalf("stepflow serve: %v", err)
	}
	srv.api, srv.natsURL = fmt.Sprintf("http://127.0.0.1:%d/api/v1", ready.Port), ready.NATSURL
	if err := waitHealthy(fmt.Sprintf("http://127.0.0.1:%d/readyz", ready.Port)); err != nil {
		b.Fatalf("stepflow serve: %v", err)
	}
	return srv
}

// writeHelloInputs writes n inputs of examples/hello (name, topic), each
// different.
func writeHelloInputs(b *testing.B, dir string, n int) string {
	b.Helper()
	names := []string{"Ada", "Grace", "Edsger", "Barbara", "Ken"}
	topics := []string{"Explain the Analytical Engine", "Why do compilers matter?", "Is goto harmful?",
		"What is data abstraction?", "What is a Unix pipe?"}
	p := filepath.Join(dir, fmt.Sprintf("hello-%d.jsonl", n))
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	for i := range n {
		fmt.Fprintf(w, `{"name": "%s %d", "topic": "%s (question %d)"}`+"\n", names[i%len(names)], i, topics[(i/len(names))%len(topics)], i)
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return p
}

// writeOneStepFlow writes oneStepFlow into dir and returns its path and
// its JSON.
func writeOneStepFlow(b *testing.B, dir string) (string, []byte) {
	b.Helper()
	path := filepath.Join(dir, "one-step.yaml")
	if err := os.WriteFile(path, []byte(oneStepFlow), 0o644); err != nil {
		b.Fatal(err)
	}
	return path, flowJSON(b, path)
}

// flowJSON reads a flow file into the JSON that POST /flows takes.
func flowJSON(b *testing.B, path string) []byte {
	b.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	f, err := flow.Parse(data, path)
	if err != nil {
		b.Fatal(err)
	}
	return value.Marshal(f.Value())
}

// postJSON posts body and decodes a 200 response into out.
func postJSON(ctx context.Context, url string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("POST %s: %s: %s", url, resp.Status, bytes.TrimSpace(msg))
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// storeFlow stores a flow (POST /flows) and returns its id.
func storeFlow(ctx context.Context, api string, flowJSON []byte) (string, error) {
	var stored struct {
		FlowID string `json:"flowId"`
		Stored *bool  `json:"stored"`
	}
	if err := postJSON(ctx, api+"/flows", fmt.Appendf(nil, `{"flow":%s}`, flowJSON), &stored); err != nil {
		return "", err
	}
	if stored.FlowID == "" || (stored.Stored != nil && !*stored.Stored) {
		return "", fmt.Errorf("POST %s/flows: flow not stored", api)
	}
	return stored.FlowID, nil
}

// upstreamBatch runs a JSONL batch on upstream's server as its `stepflow
// submit` does and checks every item succeeded: store the flow, POST
// /runs with the inputs and maxConcurrency (it answers when the run is
// over), GET /runs/{id}/items. Batches beyond upstreamBodyLimit go as
// consecutive runs. It returns the wall time (reading the inputs
// included, like submit's) and the number of runs.
func upstreamBatch(b *testing.B, api string, flowJSON []byte, inputs string, n int) (time.Duration, int) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	data, err := os.ReadFile(inputs)
	if err != nil {
		b.Fatal(err)
	}
	flowID, err := storeFlow(ctx, api, flowJSON)
	if err != nil {
		b.Fatal(err)
	}
	head := fmt.Appendf(nil, `{"flowId":%q,"maxConcurrency":%d,"input":[`, flowID, upstreamConcurrency)
	body := slices.Clone(head)
	runs, done, inRun := 0, 0, 0
	flush := func() {
		body = append(body, "]}"...)
		done += upstreamRun(b, ctx, api, body, inRun)
		runs++
		body, inRun = append(body[:0], head...), 0
	}
	for line := range bytes.Lines(data) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		if inRun > 0 && len(body)+1+len(line)+2 > upstreamBodyLimit {
			flush()
		}
		if inRun > 0 {
			body = append(body, ',')
		}
		body = append(body, line...)
		inRun++
	}
	if inRun > 0 {
		flush()
	}
	elapsed := time.Since(start)
	if done != n {
		b.Fatalf("upstream: %d successful items, want %d", done, n)
	}
	return elapsed, runs
}

// upstreamRun posts one run of n items, fetches its items and returns how
// many succeeded (it fails the benchmark on any other outcome).
func upstreamRun(b *testing.B, ctx context.Context, api string, body []byte, n int) int {
	b.Helper()
	var run struct {
		RunID     string `json:"runId"`
		ItemCount int    `json:"itemCount"`
		Status    string `json:"status"`
	}
	if err := postJSON(ctx, api+"/runs", body, &run); err != nil {
		b.Fatalf("upstream: %v", err)
	}
	if run.ItemCount != n || run.Status != "completed" {
		b.Fatalf("upstream run %s: %d items, status %q; want %d, completed", run.RunID, run.ItemCount, run.Status, n)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, api+"/runs/"+run.RunID+"/items", nil)
	if err != nil {
		b.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Fatalf("upstream GET items of run %s: %s", run.RunID, resp.Status)
	}
	var items struct {
		ItemCount int `json:"itemCount"`
		Items     []struct {
			ItemIndex int    `json:"itemIndex"`
			Status    string `json:"status"`
			Result    struct {
				Outcome string `json:"outcome"`
			} `json:"result"`
		} `json:"items"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&items); err != nil {
		b.Fatal(err)
	}
	ok := 0
	for i, it := range items.Items {
		if it.ItemIndex != i || it.Status != "completed" || it.Result.Outcome != "success" {
			b.Fatalf("upstream run %s item %d: index %d, status %q, outcome %q", run.RunID, i, it.ItemIndex, it.Status, it.Result.Outcome)
		}
		ok++
	}
	return ok
}

// checkSucceeded checks that a JSONL output holds n results, all
// successes.
func checkSucceeded(b *testing.B, path string, n int) {
	b.Helper()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	got := 0
	for sc.Scan() {
		var res struct {
			Outcome string `json:"outcome"`
		}
		if err := json.Unmarshal(sc.Bytes(), &res); err != nil {
			b.Fatalf("%s line %d: %v", path, got+1, err)
		}
		if res.Outcome != "success" {
			b.Fatalf("%s line %d: outcome %q: %s", path, got+1, res.Outcome, sc.Bytes())
		}
		got++
	}
	if err := sc.Err(); err != nil {
		b.Fatal(err)
	}
	if got != n {
		b.Fatalf("%s: %d results, want %d", path, got, n)
	}
}

// runLocal runs a batch with `stepflow run` (in-process, no coordinator)
// and returns its wall time.
func runLocal(b *testing.B, bin, flowPath, inputs, out string, n int) time.Duration {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "run", "--flow", flowPath, "--inputs", inputs, "--output", out,
		"--max-concurrent", strconv.Itoa(upstreamConcurrency), "--quiet", "--spill-dir", filepath.Dir(out))
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		b.Fatalf("stepflow run: %v", err)
	}
	elapsed := time.Since(start)
	checkSucceeded(b, out, n)
	return elapsed
}

// BenchmarkVsUpstreamHello runs examples/hello (put_blob, get_blob,
// create_messages) over each batch size on upstream's server, then on
// `stepflow serve` with `stepflow submit`, maxConcurrency 50 for both.
// x_upstream is ours/upstream in items/s.
func BenchmarkVsUpstreamHello(b *testing.B) {
	bin := stepflowBin(b)
	up := upstreamServer(b)
	ours := startServe(b, bin)
	flowPath := repoPath(b, "examples/hello/flow.yaml")
	fj := flowJSON(b, flowPath)
	dir := b.TempDir()
	for _, n := range upstreamSizes(b) {
		inputs := writeHelloInputs(b, dir, n)
		b.Run(fmt.Sprintf("items=%d", n), func(b *testing.B) {
			for b.Loop() {
				upElapsed, upRuns := upstreamBatch(b, up.api, fj, inputs, n)
				out := filepath.Join(dir, "out.jsonl")
				elapsed, _ := submitBatch(b, bin, ours.api, flowPath, inputs, out, n, upstreamConcurrency)
				checkSucceeded(b, out, n)
				rate, upRate := float64(n)/elapsed.Seconds(), float64(n)/upElapsed.Seconds()
				b.ReportMetric(rate, "items/s")
				b.ReportMetric(upRate, "upstream-items/s")
				b.ReportMetric(rate/upRate, "x_upstream")
				b.ReportMetric(float64(upRuns), "upstream-runs")
			}
		})
	}
}

// BenchmarkVsUpstreamOneStep runs a one-step builtin flow over each batch
// size with `stepflow run` (in-process), `stepflow serve` + `stepflow
// submit`, and upstream's server. x_run is serve+submit / run, x_upstream
// serve+submit / upstream, in items/s.
func BenchmarkVsUpstreamOneStep(b *testing.B) {
	bin := stepflowBin(b)
	up := upstreamServer(b)
	ours := startServe(b, bin)
	dir := b.TempDir()
	flowPath, fj := writeOneStepFlow(b, dir)
	for _, n := range upstreamSizes(b) {
		inputs := writeHelloInputs(b, dir, n)
		b.Run(fmt.Sprintf("items=%d", n), func(b *testing.B) {
			for b.Loop() {
				out := filepath.Join(dir, "out.jsonl")
				runElapsed := runLocal(b, bin, flowPath, inputs, out, n)
				elapsed, _ := submitBatch(b, bin, ours.api, flowPath, inputs, out, n, upstreamConcurrency)
				checkSucceeded(b, out, n)
				upElapsed, upRuns := upstreamBatch(b, up.api, fj, inputs, n)
				rate := float64(n) / elapsed.Seconds()
				runRate, upRate := float64(n)/runElapsed.Seconds(), float64(n)/upElapsed.Seconds()
				b.ReportMetric(rate, "items/s")
				b.ReportMetric(runRate, "run-items/s")
				b.ReportMetric(rate/runRate, "x_run")
				b.ReportMetric(upRate, "upstream-items/s")
				b.ReportMetric(rate/upRate, "x_upstream")
				b.ReportMetric(float64(upRuns), "upstream-runs")
			}
		})
	}
}

// BenchmarkVsUpstreamLatency measures synchronous one-item runs of the
// one-step builtin flow: POST /api/v1/runs {"flowId", "input": [one
// input]}, which on both servers answers when the run is over, with the
// result. The requests alternate between `stepflow serve` and upstream's
// server, one at a time.
func BenchmarkVsUpstreamLatency(b *testing.B) {
	samples := envInt("STEPFLOW_BENCH_UPSTREAM_SAMPLES", 300)
	bin := stepflowBin(b)
	up := upstreamServer(b)
	ours := startServe(b, bin)
	dir := b.TempDir()
	_, fj := writeOneStepFlow(b, dir)
	ctx := context.Background()
	type target struct {
		api, flowID string
		lat         []time.Duration
	}
	targets := []*target{{api: ours.api}, {api: up.api}}
	for _, t := range targets {
		id, err := storeFlow(ctx, t.api, fj)
		if err != nil {
			b.Fatal(err)
		}
		t.flowID = id
	}
	call := func(t *target, i int) time.Duration {
		body := fmt.Appendf(nil, `{"flowId":%q,"input":[{"name":"user %d","topic":"question %d"}]}`, t.flowID, i, i)
		var run struct {
			RunID  string `json:"runId"`
			Status string `json:"status"`
			Result struct {
				Outcome string `json:"outcome"`
			} `json:"result"`
		}
		start := time.Now()
		if err := postJSON(ctx, t.api+"/runs", body, &run); err != nil {
			b.Fatal(err)
		}
		elapsed := time.Since(start)
		if run.Status != "completed" || run.Result.Outcome != "success" {
			b.Fatalf("%s run %s: status %q, outcome %q", t.api, run.RunID, run.Status, run.Result.Outcome)
		}
		return elapsed
	}
	for b.Loop() {
		for _, t := range targets {
			t.lat = t.lat[:0]
		}
		for i := range 10 { // warm-up: connections, first-run paths
			for _, t := range targets {
				call(t, -1-i)
			}
		}
		for i := range samples {
			for _, t := range targets {
				t.lat = append(t.lat, call(t, i))
			}
		}
		pct := func(d []time.Duration, p float64) float64 {
			return float64(d[int(p*float64(len(d)-1))].Microseconds()) / 1000
		}
		for _, t := range targets {
			slices.Sort(t.lat)
		}
		b.ReportMetric(pct(targets[0].lat, 0.50), "p50-ms")
		b.ReportMetric(pct(targets[0].lat, 0.99), "p99-ms")
		b.ReportMetric(pct(targets[1].lat, 0.50), "upstream-p50-ms")
		b.ReportMetric(pct(targets[1].lat, 0.99), "upstream-p99-ms")
	}
}
