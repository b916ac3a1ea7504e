package worker

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/queue"
)

// BenchmarkWorkerEndToEnd measures the whole distributed path with an
// empty flow (output: the input), to compare with queue's
// BenchmarkRawJetStream (the transport alone): the test coordinator
// publishes benchItems items of one run (PublishItems) while in-process
// workers pull them fairly, execute the flow and send each result (alone
// or in a batch) to the test's result sink. The clock stops when the last
// result has been sent. Each worker
// has 16 slots; the run allows 64 items in flight.
func BenchmarkWorkerEndToEnd(b *testing.B) {
	if testing.Short() {
		b.Skip("short: end-to-end benchmark")
	}
	for _, workers := range []int{1, 2} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			benchWorkers(b, workers)
		})
	}
}

const benchItems = 20_000

func benchWorkers(b *testing.B, workers int) {
	bb := setup(b)
	for i := range workers {
		cfg := bb.workerConfig(fmt.Sprintf("w%d", i+1), 16, nil)
		bb.start(cfg)
	}
	flowID := bb.flowID(noopFlow)
	inputs := make([][]byte, benchItems)
	for i := range inputs {
		inputs[i] = fmt.Appendf(nil, `{"i":%d}`, i)
	}

	var total time.Duration
	b.ResetTimer()
	for range b.N {
		// Count results as they are published (a core subscription sees
		// every publish to the results subjects).
		done := make(chan struct{})
		seen := make([]bool, benchItems)
		count := 0
		see := func(data []byte) {
			r, err := queue.DecodeResult(data)
			if err != nil || seen[r.GetIndex()] {
				return
			}
			seen[r.GetIndex()] = true
			if count++; count == benchItems {
				close(done)
			}
		}
		sub, err := bb.nc.Subscribe(queue.ResultSubjects, func(m *nats.Msg) {
			if m.Subject != queue.ResultBatchSubject {
				see(m.Data)
				return
			}
			results, err := queue.DecodeResultBatch(m.Data)
			if err != nil {
				return
			}
			for _, data := range results {
				see(data)
			}
		})
		require.NoError(b, err)

		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		_, err = bb.createRunFor(ctx, flowID, inputs, 64, 0, "", 0)
		require.NoError(b, err)
		select {
		case <-done:
		case <-ctx.Done():
			b.Fatalf("%d of %d results", count, benchItems)
		}
		total += time.Since(start)
		cancel()
		require.NoError(b, sub.Unsubscribe())
	}
	b.StopTimer()
	b.ReportMetric(float64(benchItems*b.N)/total.Seconds(), "items/s")
	b.ReportMetric(0, "ns/op")
}
