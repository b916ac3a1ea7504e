// Package bench holds the end-to-end benchmarks of `make bench`: whole
// `stepflow` processes on generated batches, reported as ratios against a
// baseline measured in the same run (these machines are noisy).
//
//	go test -run '^$' -bench . -benchtime 1x ./test/bench/
//
// STEPFLOW_BENCH_ITEMS and STEPFLOW_BENCH_RSS_ITEMS change the batch sizes
// (defaults 100,000 and 1,000,000), STEPFLOW_BENCH_ECHO_ITEMS the Python
// echo component's (BenchmarkComponentEcho, default 20,000; every SDK
// release and transport against a minimal client of its own, see
// docs/bench-upstream.md). The benchmarks against upstream
// Stepflow's server (upstream_test.go, docs/bench-upstream.md) take
// STEPFLOW_BENCH_UPSTREAM_ITEMS and need `make venv-upstream`.
package bench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stepflow-go/stepflow/pkg/jsonl"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// threeStepFlow is the flow of the target: put_blob, get_blob,
// create_messages.
const threeStepFlow = `name: bench-three-builtins
description: put_blob, get_blob, create_messages per item
steps:
  - id: archive
    component: /builtin/put_blob
    input: { data: { $input: "$" }, blob_type: data }
  - id: restore
    component: /builtin/get_blob
    input: { blob_id: { $step: archive, path: blob_id } }
  - id: prompt
    component: /builtin/create_messages
    input:
      system_instructions: "Summarise."
      user_prompt: { $step: restore, path: "$.data.text" }
output:
  id: { $input: id }
  blob: { $step: archive, path: blob_id }
  messages: { $step: prompt, path: messages }
`

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// stepflowBin builds the CLI once per benchmark binary.
func stepflowBin(b *testing.B) string {
	b.Helper()
	if p := os.Getenv("STEPFLOW_BIN"); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			b.Fatal(err)
		}
		return abs
	}
	out := filepath.Join(b.TempDir(), "stepflow")
	cmd := exec.Command("go", "build", "-o", out, "../../cmd/stepflow")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		b.Fatalf("build stepflow: %v", err)
	}
	return out
}

// writeInputs writes n distinct items of about 100 bytes.
func writeInputs(b *testing.B, dir string, n int) string {
	b.Helper()
	path := filepath.Join(dir, "items.jsonl")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	for i := range n {
		fmt.Fprintf(w, `{"id":"item-%08d","text":"document number %d needs a summary","n":%d,"score":0.%d}`+"\n", i, i, i, i%1000)
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return path
}

// ioFloor measures the floor: read every line, decode it and encode it
// again, as fast as one process can.
func ioFloor(b *testing.B, path, outPath string) time.Duration {
	b.Helper()
	start := time.Now()
	in, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(outPath)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriterSize(out, 256<<10)
	r := jsonl.NewReader(bufio.NewReaderSize(in, 1<<20))
	var buf []byte
	for {
		it, err := r.Next()
		if err != nil {
			break
		}
		v, err := value.Parse(it.Data)
		if err != nil {
			b.Fatal(err)
		}
		buf = append(value.Append(buf[:0], v), '\n')
		if _, err := w.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := out.Close(); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// runStepflow runs one local batch and returns its wall time and peak RSS.
func runStepflow(b *testing.B, bin, dir, inputs string, concurrency int) (time.Duration, int64) {
	b.Helper()
	flowPath := filepath.Join(dir, "flow.yaml")
	if err := os.WriteFile(flowPath, []byte(threeStepFlow), 0o644); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "run", "--flow", flowPath, "--inputs", inputs,
		"--output", filepath.Join(dir, "out.jsonl"), "--max-concurrent", strconv.Itoa(concurrency), "--quiet", "--spill-dir", dir)
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		b.Fatalf("stepflow run: %v", err)
	}
	elapsed := time.Since(start)
	rss := int64(0)
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		rss = ru.Maxrss * 1024 // kilobytes on Linux
	}
	return elapsed, rss
}

func countLines(b *testing.B, path string) int {
	b.Helper()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	n, err := jsonl.Validate(bufio.NewReaderSize(f, 1<<20))
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// BenchmarkLocalBatch runs 100,000 items through the three-step builtin
// flow and compares the items/s of the whole process with the I/O floor.
func BenchmarkLocalBatch(b *testing.B) {
	n := envInt("STEPFLOW_BENCH_ITEMS", 100_000)
	bin := stepflowBin(b)
	dir := b.TempDir()
	inputs := writeInputs(b, dir, n)
	for b.Loop() {
		floor := ioFloor(b, inputs, filepath.Join(dir, "floor.jsonl"))
		elapsed, rss := runStepflow(b, bin, dir, inputs, 16)
		if got := countLines(b, filepath.Join(dir, "out.jsonl")); got != n {
			b.Fatalf("got %d results, want %d", got, n)
		}
		rate := float64(n) / elapsed.Seconds()
		floorRate := float64(n) / floor.Seconds()
		b.ReportMetric(rate, "items/s")
		b.ReportMetric(floorRate, "floor-items/s")
		b.ReportMetric(rate/floorRate, "ratio-to-floor")
		b.ReportMetric(float64(rss)/(1<<20), "peak-RSS-MB")
	}
}

// BenchmarkLocalBatchRSS runs 1,000,000 items and reports the peak RSS of
// the stepflow process (target: below 150 MB).
func BenchmarkLocalBatchRSS(b *testing.B) {
	n := envInt("STEPFLOW_BENCH_RSS_ITEMS", 1_000_000)
	bin := stepflowBin(b)
	dir := b.TempDir()
	inputs := writeInputs(b, dir, n)
	for b.Loop() {
		elapsed, rss := runStepflow(b, bin, dir, inputs, 16)
		if got := countLines(b, filepath.Join(dir, "out.jsonl")); got != n {
			b.Fatalf("got %d results, want %d", got, n)
		}
		b.ReportMetric(float64(n)/elapsed.Seconds(), "items/s")
		b.ReportMetric(float64(rss)/(1<<20), "peak-RSS-MB")
	}
}
