package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/stepflow-go/stepflow/pkg/queue"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// latencyFlow is a one-step builtin flow: the smallest run a synchronous
// request can make.
const latencyFlow = `{"name":"one-step","steps":[{"id":"prompt","component":"/builtin/create_messages",
"input":{"system_instructions":"Be brief.","user_prompt":{"$input":"topic"}}}],
"output":{"$step":"prompt","path":"messages"}}`

// BenchmarkSyncRunLatency starts `stepflow serve` with its defaults
// (embedded NATS, in-process workers) and sends sequential synchronous
// one-item runs (POST /api/v1/runs, which waits for the result), reporting
// the percentiles of their round trips. STEPFLOW_BENCH_LATENCY_RUNS sets
// the number of runs (default 300); extra serve arguments come from
// STEPFLOW_BENCH_SERVE_ARGS (space-separated), e.g. "--pprof-addr
// 127.0.0.1:6060" to profile it meanwhile.
//
// With STEPFLOW_BENCH_LATENCY_TRACE=1 it also watches the embedded NATS
// server's traffic (a subscriber to ">", which costs the server a little)
// and reports the median of each stage of a run, from when the messages
// that end them are published:
//
//	start-ms      request sent -> run record created (flow lookup, spool,
//	              consumer creation)
//	publish-ms    record -> item published
//	execute-ms    item -> result published (delivery, execution)
//	aggregate-ms  result -> terminal record written (the coordinator
//	              storing the result and finishing the run)
//	answer-ms     terminal record -> response received
//
//	go test -run '^$' -bench SyncRunLatency -benchtime 1x ./test/bench/
func BenchmarkSyncRunLatency(b *testing.B) {
	n := envInt("STEPFLOW_BENCH_LATENCY_RUNS", 300)
	bin := stepflowBin(b)
	srv := startServe(b, bin, strings.Fields(os.Getenv("STEPFLOW_BENCH_SERVE_ARGS"))...)
	api := srv.api
	var tr *natsTrace
	if os.Getenv("STEPFLOW_BENCH_LATENCY_TRACE") != "" {
		tr = startNATSTrace(b, srv.natsURL)
		defer tr.stop()
	}
	flowID, err := storeFlow(context.Background(), api, []byte(latencyFlow))
	if err != nil {
		b.Fatal(err)
	}
	client := &http.Client{Timeout: 30 * time.Second}
	body := []byte(fmt.Sprintf(`{"flowId":%q,"input":[{"topic":"latency"}]}`, flowID))
	post := func() (runID string, start, end time.Time) {
		start = time.Now()
		resp, err := client.Post(api+"/runs", "application/json", bytes.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		end = time.Now()
		var out struct{ RunID, Status string }
		if resp.StatusCode != http.StatusOK || json.Unmarshal(data, &out) != nil || out.Status != "completed" {
			b.Fatalf("POST /runs: %s: %s", resp.Status, data)
		}
		return out.RunID, start, end
	}
	for range 10 { // warm up: connections, flow cache, component servers
		post()
	}
	for b.Loop() {
		lat := make([]time.Duration, 0, n)
		type sample struct {
			runID      string
			start, end time.Time
		}
		samples := make([]sample, 0, n)
		for range n {
			id, start, end := post()
			lat = append(lat, end.Sub(start))
			samples = append(samples, sample{id, start, end})
		}
		slices.Sort(lat)
		pct := func(d []time.Duration, p float64) float64 {
			return float64(d[int(p*float64(len(d)-1))].Microseconds()) / 1000
		}
		b.ReportMetric(pct(lat, 0.50), "p50-ms")
		b.ReportMetric(pct(lat, 0.99), "p99-ms")
		b.ReportMetric(pct(lat, 1), "max-ms")
		if tr == nil {
			continue
		}
		// The trace subscriber may still be reading the last run's
		// terminal record.
		tr.waitFinal(samples[len(samples)-1].runID, 5*time.Second)
		stages := map[string][]time.Duration{}
		for _, s := range samples {
			m := tr.milestones(s.runID)
			points := []struct {
				name string
				at   time.Time
			}{{"", s.start}, {"start-ms", m.record}, {"publish-ms", m.item}, {"execute-ms", m.result}, {"aggregate-ms", m.final}, {"answer-ms", s.end}}
			for i := 1; i < len(points); i++ {
				if points[i-1].at.IsZero() || points[i].at.IsZero() {
					continue
				}
				stages[points[i].name] = append(stages[points[i].name], points[i].at.Sub(points[i-1].at))
			}
		}
		for name, d := range stages {
			slices.Sort(d)
			b.ReportMetric(pct(d, 0.50), name)
		}
	}
}

// natsTrace records when the messages of each run are first published.
type natsTrace struct {
	nc *nats.Conn
	mu sync.Mutex
	// by run id
	runs map[string]*runMilestones
	// changed is closed and replaced at each milestone recorded.
	changed chan struct{}
}

// waitFinal waits until runID's terminal record was seen, or d passed.
func (t *natsTrace) waitFinal(runID string, d time.Duration) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		t.mu.Lock()
		r, changed := t.runs[runID], t.changed
		t.mu.Unlock()
		if r != nil && !r.final.IsZero() {
			return
		}
		select {
		case <-changed:
		case <-timer.C:
			return
		}
	}
}

// runMilestones are the first publications of a run's messages.
type runMilestones struct {
	record time.Time // its record (created)
	item   time.Time // an item
	result time.Time // a result
	final  time.Time // its record, terminal
}

var runIDInSubject = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)

func startNATSTrace(b *testing.B, url string) *natsTrace {
	b.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		b.Fatal(err)
	}
	t := &natsTrace{nc: nc, runs: map[string]*runMilestones{}, changed: make(chan struct{})}
	_, err = nc.Subscribe(">", func(m *nats.Msg) {
		now := time.Now()
		id := runIDInSubject.FindString(m.Subject)
		if id == "" {
			// A result request whose subject does not name the run.
			if !strings.Contains(m.Subject, "result") {
				return
			}
			if id = runIDInSubject.FindString(string(m.Data)); id == "" {
				return
			}
		}
		t.mu.Lock()
		defer t.mu.Unlock()
		r := t.runs[id]
		if r == nil {
			r = &runMilestones{}
			t.runs[id] = r
		}
		first := func(at *time.Time) {
			if at.IsZero() {
				*at = now
				close(t.changed)
				t.changed = make(chan struct{})
			}
		}
		switch {
		case strings.HasPrefix(m.Subject, "$KV.STEPFLOW_RUNS."):
			first(&r.record)
			rec := &stepflowv1.RunRecord{}
			if proto.Unmarshal(m.Data, rec) == nil && queue.Terminal(rec.GetStatus()) {
				first(&r.final)
			}
		case strings.HasPrefix(m.Subject, "stepflow.items."):
			first(&r.item)
		case strings.Contains(m.Subject, "result"):
			first(&r.result)
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		b.Fatal(err)
	}
	return t
}

func (t *natsTrace) milestones(runID string) runMilestones {
	t.mu.Lock()
	defer t.mu.Unlock()
	if r := t.runs[runID]; r != nil {
		return *r
	}
	return runMilestones{}
}

func (t *natsTrace) stop() { t.nc.Close() }
