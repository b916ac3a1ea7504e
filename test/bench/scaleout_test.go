package bench

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// BenchmarkAddWorkerMidBatch runs a batch whose items each wait 20 ms in
// a Python component, on one worker with 4 slots, adds a second worker
// half way, and reports the completion rate with one worker and, once the
// second has started (its component server up) and announced itself, with
// two.
func BenchmarkAddWorkerMidBatch(b *testing.B) {
	const n = 2000
	stepflow, coord, worker := stepflowBin(b), buildBin(b, "coordinator"), buildBin(b, "worker")
	python := venvPython(b, ".venv-sdk-http")
	dir := b.TempDir()
	cfg := filepath.Join(dir, "stepflow-config.yml")
	cfgText := fmt.Sprintf("plugins:\n  py:\n    type: stepflow\n    command: %s\n    args: [%q]\nroutes:\n  \"/py/{*component}\":\n    - plugin: py\n",
		python, repoPath(b, "test/bench/testdata/sleep_http.py"))
	if err := os.WriteFile(cfg, []byte(cfgText), 0o644); err != nil {
		b.Fatal(err)
	}
	flowPath := filepath.Join(dir, "nap.yaml")
	if err := os.WriteFile(flowPath, []byte("name: nap\nsteps: [{ id: nap, component: /py/nap, input: { $input: \"$\" } }]\noutput: { $step: nap }\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	inputs := writeNoopInputs(b, dir, n)
	for b.Loop() {
		c := startBenchCluster(b, coord, worker, 0)
		addWorker := func() {
			w := exec.Command(worker, "--nats-url", c.natsURL, "--concurrency", "4", "--config", cfg, "--log-level", "error")
			w.Stderr = os.Stderr
			if err := w.Start(); err != nil {
				b.Fatal(err)
			}
			c.workers = append(c.workers, w)
		}
		addWorker()
		out, err := exec.Command(stepflow, "submit", "--url", c.apiURL, "--flow", flowPath, "--inputs", inputs,
			"--max-concurrent", "64", "--no-wait").Output()
		if err != nil {
			b.Fatalf("submit: %v", err)
		}
		before, after := measureScaleOut(b, c.apiURL, strings.TrimSpace(string(out)), n, func() {
			addWorker()
			waitWorkers(b, c.apiURL, 2)
		})
		c.stop()
		b.ReportMetric(before, "items/s-1-worker")
		b.ReportMetric(after, "items/s-2-workers")
		b.ReportMetric(after/before, "speedup")
	}
}

// waitWorkers polls the coordinator's cluster view until n workers have
// announced themselves (a bounded poll: this is a benchmark). A worker
// announces itself once its component servers are up.
func waitWorkers(b *testing.B, apiURL string, n int) {
	b.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		resp, err := http.Get(apiURL + "/cluster")
		if err != nil {
			b.Fatal(err)
		}
		var view struct{ Workers []json.RawMessage }
		err = json.NewDecoder(resp.Body).Decode(&view)
		resp.Body.Close()
		if err != nil {
			b.Fatal(err)
		}
		if len(view.Workers) >= n {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.Fatalf("fewer than %d workers after a minute", n)
}

// measureScaleOut samples a run's completed items (a bounded poll: this
// is a benchmark), calls addWorker once half the items are done, and
// returns the completion rates before it was called and after it
// returned (the second worker started and announced itself).
func measureScaleOut(b *testing.B, apiURL, runID string, n int, addWorker func()) (before, after float64) {
	b.Helper()
	runURL := apiURL + "/runs/" + runID
	done := func() int {
		resp, err := http.Get(runURL)
		if err != nil {
			b.Fatal(err)
		}
		defer resp.Body.Close()
		var st struct {
			Items struct{ Completed, Failed int }
		}
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
			b.Fatal(err)
		}
		return st.Items.Completed + st.Items.Failed
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(5 * time.Minute)
	var t0, tHalf time.Time
	nHalf := 0
	for time.Now().Before(deadline) {
		<-tick.C
		d := done()
		switch {
		case d >= n:
			return before, float64(n-nHalf) / time.Since(tHalf).Seconds()
		case tHalf.IsZero() && d >= n/2:
			before = float64(d) / time.Since(t0).Seconds()
			addWorker()
			tHalf, nHalf = time.Now(), done()
		case t0.IsZero() && d > 0:
			t0 = time.Now()
		}
	}
	b.Fatal("the run did not finish in 5 minutes")
	return 0, 0
}
