package bench

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The component benchmark: items through a trivial Python echo component,
// with `stepflow run` and with the simplest direct client of the same
// server, in the same run, for each transport.

const echoConcurrency = 16

func repoPath(b *testing.B, rel string) string {
	b.Helper()
	p, err := filepath.Abs(filepath.Join("..", "..", rel))
	if err != nil {
		b.Fatal(err)
	}
	return p
}

func venvPython(b *testing.B, venv string) string {
	b.Helper()
	p := repoPath(b, filepath.Join(venv, "bin", "python"))
	if _, err := os.Stat(p); err != nil {
		b.Fatalf("%s is missing: run `make venv` first", p)
	}
	return p
}

func writeEchoInputs(b *testing.B, dir string, n int) string {
	b.Helper()
	var buf bytes.Buffer
	for i := range n {
		fmt.Fprintf(&buf, `{"i":%d,"text":"item %d"}`+"\n", i, i)
	}
	p := filepath.Join(dir, "echo.jsonl")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		b.Fatal(err)
	}
	return p
}

// runStepflowEcho runs the echo flow through stepflow with the given
// plugin config and returns the wall time.
func runStepflowEcho(b *testing.B, bin, dir, inputs, pluginYAML string, n int) time.Duration {
	b.Helper()
	cfg := filepath.Join(dir, "stepflow-config.yml")
	if err := os.WriteFile(cfg, []byte("plugins:\n  py:\n"+pluginYAML+"routes:\n  \"/py/{*component}\":\n    - plugin: py\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	out := filepath.Join(dir, "out.jsonl")
	cmd := exec.Command(bin, "run", "--flow", repoPath(b, "test/bench/testdata/echo.yaml"), "--config", cfg,
		"--inputs", inputs, "--max-concurrent", strconv.Itoa(echoConcurrency), "--output", out, "--quiet")
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatalf("stepflow run: %v", err)
	}
	// Wait for the exit without reaping, to read stepflow's own CPU and
	// its reaped children's (the component servers) apart.
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		b.Fatalf("waitid: %v", err)
	}
	elapsed := time.Since(start)
	own, children := procCPU(b, cmd.Process.Pid)
	if err := cmd.Wait(); err != nil {
		b.Fatalf("stepflow run: %v", err)
	}
	b.ReportMetric(own.Seconds()*1000/float64(n), "cpu-ms/item")
	b.ReportMetric(children.Seconds()*1000/float64(n), "server-cpu-ms/item")
	if got := countLines(b, out); got != n {
		b.Fatalf("got %d results, want %d", got, n)
	}
	return elapsed
}

func rpc(id int, method string, params any) []byte {
	m, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": id, "method": method, "params": params})
	return m
}

func execParams(i int) map[string]any {
	return map[string]any{"component": "/echo", "input": map[string]any{"i": i, "text": "item " + strconv.Itoa(i)}, "attempt": 1, "observability": map[string]any{}}
}

// directHTTP starts the echo server and drives it with plain POSTs from
// echoConcurrency goroutines; the time includes the server's start-up, as
// stepflow's does.
func directHTTP(b *testing.B, python string, n int) time.Duration {
	b.Helper()
	start := time.Now()
	defer reportClientCPU(b, selfCPU(b), n)
	cmd := exec.Command(python, repoPath(b, "test/bench/testdata/echo_http.py"))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		reportCPU(b, "direct-server-cpu-ms/item", cmd.ProcessState, n)
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatal(err)
	}
	var ann struct{ Port int }
	if err := json.Unmarshal([]byte(line), &ann); err != nil {
		b.Fatal(err)
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	url := fmt.Sprintf("http://127.0.0.1:%d/", ann.Port)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: echoConcurrency, IdleConnTimeout: 4 * time.Second}}
	post := func(body []byte) error {
		req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.Body.Close()
	}
	// Wait until it serves, as the runtime's health check does (a
	// bounded poll: the server gives no other signal).
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
	for {
		resp, err := client.Get(url + "health")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Since(start) > 30*time.Second {
			b.Fatal("echo server did not come up")
		}
		<-poll.C
	}
	if err := post(rpc(0, "initialize", map[string]any{"runtime_protocol_version": 1})); err != nil {
		b.Fatal(err)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range echoConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := post(rpc(i+1, "components/execute", execParams(i))); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return time.Since(start)
}

// directStdio starts the stdio echo server and keeps echoConcurrency
// requests in flight over its pipes.
func directStdio(b *testing.B, python string, n int) time.Duration {
	b.Helper()
	start := time.Now()
	defer reportClientCPU(b, selfCPU(b), n)
	cmd := exec.Command(python, repoPath(b, "test/bench/testdata/echo_stdio.py"))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		_ = stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		reportCPU(b, "direct-server-cpu-ms/item", cmd.ProcessState, n)
	}()
	w := bufio.NewWriter(stdin)
	r := bufio.NewReaderSize(stdout, 1<<20)
	send := func(m []byte) {
		_, _ = w.Write(append(m, '\n'))
		_ = w.Flush()
	}
	send(rpc(0, "initialize", map[string]any{"runtime_protocol_version": 1}))
	if _, err := r.ReadBytes('\n'); err != nil {
		b.Fatal(err)
	}
	sent := 0
	for ; sent < echoConcurrency && sent < n; sent++ {
		send(rpc(sent+1, "components/execute", execParams(sent)))
	}
	for done := 0; done < n; done++ {
		if _, err := r.ReadBytes('\n'); err != nil {
			b.Fatal(err)
		}
		if sent < n {
			send(rpc(sent+1, "components/execute", execParams(sent)))
			sent++
		}
	}
	return time.Since(start)
}

// BenchmarkComponentEcho reports stepflow's items/s through a Python echo
// component and the ratio to a direct client of the same server, for each
// SDK release and transport: 0.9.2 and 0.11.2 over HTTP, 0.13.0 over gRPC
// pull and over NATS JetStream (sdk13_test.go), 0.7.0 over stdio. The
// 0.13 paths also report x_http092, their rate over the 0.9.2 HTTP path's
// in the same run.
func BenchmarkComponentEcho(b *testing.B) {
	n := envInt("STEPFLOW_BENCH_ECHO_ITEMS", 20_000)
	bin := stepflowBin(b)
	dir := b.TempDir()
	inputs := writeEchoInputs(b, dir, n)
	var http092 float64 // items/s of the 0.9.2 HTTP path
	for _, sdk := range []struct{ name, venv string }{{"http", ".venv-sdk-http"}, {"http11", ".venv-sdk-http11"}} {
		b.Run(sdk.name, func(b *testing.B) {
			python := venvPython(b, sdk.venv)
			for b.Loop() {
				direct := directHTTP(b, python, n)
				ours := runStepflowEcho(b, bin, dir, inputs, fmt.Sprintf("    type: stepflow\n    command: %s\n    args: [%q]\n", python, repoPath(b, "test/bench/testdata/echo_http.py")), n)
				reportRatio(b, n, ours, direct)
				if sdk.name == "http" {
					http092 = float64(n) / ours.Seconds()
				}
			}
		})
	}
	b.Run("grpc13", func(b *testing.B) {
		python := venvPython(b, ".venv-sdk-grpc13")
		for b.Loop() {
			direct := directGRPC13(b, python, n)
			ours := runStepflowEcho(b, bin, dir, inputs, fmt.Sprintf("    type: grpc\n    command: %s\n    args: [\"-m\", \"stepflow_py.worker.main\"]\n%s", python, sdk13PluginEnv()), n)
			reportRatio(b, n, ours, direct)
			reportVsHTTP092(b, n, ours, http092)
		}
	})
	b.Run("nats13", func(b *testing.B) {
		python := venvPython(b, ".venv-sdk-grpc13")
		natsURL := startNATS(b)
		for b.Loop() {
			direct := directNATS13(b, python, natsURL, n)
			ours := runStepflowEcho(b, bin, dir, inputs, fmt.Sprintf("    type: nats\n    url: %q\n    stream: ECHO_TASKS\n    consumer: echo-workers\n    command: %s\n    args: [\"-m\", \"stepflow_py.worker.main\"]\n%s", natsURL, python, sdk13PluginEnv()), n)
			reportRatio(b, n, ours, direct)
			reportVsHTTP092(b, n, ours, http092)
		}
	})
	b.Run("stdio", func(b *testing.B) {
		python := venvPython(b, ".venv-sdk-stdio")
		for b.Loop() {
			direct := directStdio(b, python, n)
			ours := runStepflowEcho(b, bin, dir, inputs, fmt.Sprintf("    type: stepflow\n    transport: stdio\n    command: %s\n    args: [%q]\n", python, repoPath(b, "test/bench/testdata/echo_stdio.py")), n)
			reportRatio(b, n, ours, direct)
		}
	})
}

// reportVsHTTP092 reports a path's rate over the 0.9.2 HTTP path's (when
// that ran first, in the same benchmark).
func reportVsHTTP092(b *testing.B, n int, ours time.Duration, http092 float64) {
	if http092 > 0 {
		b.ReportMetric(float64(n)/ours.Seconds()/http092, "x_http092")
	}
}

// procCPU reads a process's own CPU time (user+system) and that of the
// children it reaped from /proc/<pid>/stat (clock ticks of 1/100 s, the
// Linux USER_HZ).
func procCPU(b *testing.B, pid int) (own, children time.Duration) {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name, which is in parentheses: state is
	// field 3, utime 14, stime 15, cutime 16, cstime 17.
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	tick := func(i int) time.Duration {
		v, err := strconv.ParseInt(f[i-3], 10, 64)
		if err != nil {
			b.Fatalf("/proc/%d/stat field %d: %v", pid, i, err)
		}
		return time.Duration(v) * 10 * time.Millisecond
	}
	return tick(14) + tick(15), tick(16) + tick(17)
}

// selfCPU is this process's user+system CPU so far.
func selfCPU(b *testing.B) time.Duration {
	b.Helper()
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the user+system CPU of an exited process (and of the
// children it reaped) per item.
func reportCPU(b *testing.B, unit string, ps *os.ProcessState, n int) {
	if ps != nil {
		b.ReportMetric(float64((ps.UserTime()+ps.SystemTime()).Microseconds())/1000/float64(n), unit)
	}
}

// reportClientCPU reports this process's CPU since before (the direct
// client's, and for nats13 the in-process NATS server's) per item.
func reportClientCPU(b *testing.B, before time.Duration, n int) {
	b.ReportMetric((selfCPU(b)-before).Seconds()*1000/float64(n), "direct-client-cpu-ms/item")
}

func reportRatio(b *testing.B, n int, ours, direct time.Duration) {
	rate := float64(n) / ours.Seconds()
	directRate := float64(n) / direct.Seconds()
	b.ReportMetric(rate, "items/s")
	b.ReportMetric(directRate, "direct-items/s")
	b.ReportMetric(rate/directRate, "ratio-to-direct")
}
