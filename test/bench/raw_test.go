package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/stepflow-go/stepflow/pkg/queue"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// rawWorkerEnv makes the test binary a raw worker process (TestMain):
// "<nats url> <run id> <handlers>".
const rawWorkerEnv = "STEPFLOW_BENCH_RAW_WORKER"

func TestMain(m *testing.M) {
	if spec := os.Getenv(rawWorkerEnv); spec != "" {
		if err := rawWorker(spec); err != nil {
			fmt.Fprintln(os.Stderr, "raw worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	code := m.Run()
	stopUpstream() // upstream_test.go: started once, by the first benchmark that needs it
	os.Exit(code)
}

// rawWorker is a worker's protocol with an empty flow and nothing else:
// pull an item from the run consumer, send its result as a request and
// wait for the answer, ack the item; with handlers items at once, until
// killed.
func rawWorker(spec string) error {
	f := strings.Fields(spec)
	if len(f) != 3 {
		return fmt.Errorf("bad spec %q", spec)
	}
	handlers, err := strconv.Atoi(f[2])
	if err != nil {
		return err
	}
	ctx := context.Background()
	nc, js, err := queue.Connect(ctx, f[0], queue.ConnectOptions{Name: "raw-worker"})
	if err != nil {
		return err
	}
	defer nc.Close()
	cons, err := queue.RunConsumerHandle(ctx, js, f[1])
	if err != nil {
		return err
	}
	msgs := make(chan jetstream.Msg, handlers)
	for range handlers {
		go func() {
			for m := range msgs {
				it, err := queue.DecodeItem(m.Data())
				if err != nil {
					_ = m.Term()
					continue
				}
				md, _ := m.Metadata()
				res := &stepflowv1.ItemResult{
					RunId: it.GetRunId(), Index: it.GetIndex(), Result: []byte(`{"outcome":"success","result":null}`),
					Source: stepflowv1.ResultSource_RESULT_SOURCE_WORKER, WorkerId: "raw",
					Deliveries: uint32(md.NumDelivered), FinishedAt: timestamppb.Now(), ItemStreamSeq: md.Sequence.Stream,
				}
				subject, data, err := queue.EncodeResult(ctx, nc, res, queue.ResultOptions{Subject: it.GetReplySubject()})
				if err == nil {
					_, err = queue.SendResult(ctx, nc, subject, data)
				}
				if err != nil {
					_ = m.Nak()
					continue
				}
				_ = m.Ack()
			}
		}()
	}
	cc, err := cons.Consume(func(m jetstream.Msg) { msgs <- m }, jetstream.PullMaxMessages(2*handlers))
	if err != nil {
		return err
	}
	defer cc.Stop()
	select {} // until the benchmark kills it
}

// BenchmarkRawJetStreamProcesses is the raw JetStream baseline in the
// distributed benchmark's topology: a nats-server process (file store),
// a worker process (the raw protocol with 64 handlers, like a worker with
// 64 slots) and this process publishing the items (a run consumer with
// MaxAckPending 256) and answering the results, like the coordinator
// without its result log. BenchmarkRawJetStream (pkg/queue) runs the same protocol
// in one process, which a 2-core machine serves faster than three.
func BenchmarkRawJetStreamProcesses(b *testing.B) {
	n := envInt("STEPFLOW_BENCH_DIST_ITEMS", 50_000)
	server := filepath.Join(b.TempDir(), "nats-server")
	build := exec.Command("go", "build", "-o", server, "github.com/nats-io/nats-server/v2")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		b.Fatalf("build nats-server: %v", err)
	}
	for _, fsync := range []string{"always", "2m"} {
		b.Run("sync="+fsync, func(b *testing.B) {
			for b.Loop() {
				b.ReportMetric(float64(n)/rawProcesses(b, server, fsync, n).Seconds(), "items/s")
			}
		})
	}
}

func rawProcesses(b *testing.B, server, fsync string, n int) time.Duration {
	dir := b.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	conf := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, "listen: 127.0.0.1:%d\njetstream { store_dir: %q\n sync_interval: %q }\n", port, filepath.Join(dir, "js"), fsync), 0o644); err != nil {
		b.Fatal(err)
	}
	srv := exec.Command(server, "-c", conf) // its log: not on the benchmark's output
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	nc, js, err := queue.Connect(ctx, url, queue.ConnectOptions{Name: "raw-coordinator"})
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	if err := queue.Provision(ctx, js, queue.Config{}); err != nil {
		b.Fatal(err)
	}
	const runID = "raw-bench"
	if _, err := queue.CreateRunConsumer(ctx, js, runID, queue.RunConsumerConfig{MaxAckPending: 256}); err != nil {
		b.Fatal(err)
	}
	worker := exec.Command(os.Args[0], "-test.run=^$")
	worker.Env = append(os.Environ(), rawWorkerEnv+"="+url+" "+runID+" 64")
	worker.Stderr = os.Stderr
	if err := worker.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = worker.Process.Kill(); _ = worker.Wait() }()

	var got atomic.Int64
	done := make(chan struct{})
	var once sync.Once
	start := time.Now()
	sub, err := queue.SubscribeResults(nc, func(m *nats.Msg) {
		_ = m.RespondMsg(queue.ResultReply(queue.ResultStored, nil))
		if got.Add(1) == int64(n) {
			once.Do(func() { close(done) })
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	items := func(yield func(int, []byte) bool) {
		for i := range n {
			if !yield(i, fmt.Appendf(nil, `{"i":%d}`, i)) {
				return
			}
		}
	}
	if _, err := queue.PublishItems(ctx, js, runID, items, queue.PublishItemsOptions{}); err != nil {
		b.Fatal(err)
	}
	select {
	case <-done:
	case <-ctx.Done():
		b.Fatalf("%d of %d results", got.Load(), n)
	}
	return time.Since(start)
}
