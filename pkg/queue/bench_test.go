package queue_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/stepflow-go/stepflow/pkg/queue"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// BenchmarkRawJetStream measures the transport alone, the baseline for
// the end-to-end batch benchmark: publish b.N items to STEPFLOW_ITEMS
// (PublishItems), and meanwhile consume each through its run consumer, send
// one result per item as a request to a responder that plays the
// coordinator without storing anything (SendResult), and then ack the
// item — exactly a worker's protocol with an empty flow. The server is
// embedded, over TCP on loopback, with nats-server's default fsync (every
// 2 minutes) and with fsync on every write (sync=always, the embedded
// default of the coordinator; see docs/reliability.md).
func BenchmarkRawJetStream(b *testing.B) {
	for _, fsync := range []struct {
		name   string
		policy queue.SyncPolicy
	}{{"2m", queue.SyncPolicy{}}, {"always", queue.SyncAlways}} {
		for _, workers := range []int{1, 16, 64} {
			b.Run(fmt.Sprintf("sync=%s/workers=%d", fsync.name, workers), func(b *testing.B) {
				benchRaw(b, workers, fsync.policy)
			})
		}
	}
}

func benchRaw(b *testing.B, workers int, fsync queue.SyncPolicy) {
	bb := setupSync(b, true, fsync)
	ctx := testCtx(b)
	runID := fmt.Sprintf("bench-%d-%d", workers, b.N)
	cons, err := queue.CreateRunConsumer(ctx, bb.js, runID, queue.RunConsumerConfig{MaxAckPending: 4 * workers})
	require.NoError(b, err)

	var answered atomic.Int64
	sub, err := queue.SubscribeResults(bb.nc, func(m *nats.Msg) {
		answered.Add(1)
		_ = m.RespondMsg(queue.ResultReply(queue.ResultStored, nil))
	})
	require.NoError(b, err)
	defer func() { _ = sub.Unsubscribe() }()
	var processed, redelivered atomic.Int64
	allDone := make(chan struct{})
	msgs := make(chan jetstream.Msg, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			worker := fmt.Sprintf("w%d", w)
			for m := range msgs {
				it, err := queue.DecodeItem(m.Data())
				if err != nil {
					b.Error(err)
					return
				}
				md, _ := m.Metadata()
				if md.NumDelivered > 1 {
					redelivered.Add(1)
				}
				res := &stepflowv1.ItemResult{
					RunId: it.GetRunId(), Index: it.GetIndex(), Result: []byte(`{"outcome":"success","result":null}`),
					Source: stepflowv1.ResultSource_RESULT_SOURCE_WORKER, WorkerId: worker,
					Deliveries: uint32(md.NumDelivered), FinishedAt: timestamppb.Now(), ItemStreamSeq: md.Sequence.Stream,
				}
				subject, data, err := queue.EncodeResult(ctx, bb.nc, res, queue.ResultOptions{Subject: it.GetReplySubject()})
				if err == nil {
					_, err = queue.SendResult(ctx, bb.nc, subject, data)
				}
				if err != nil {
					b.Error(err)
					return
				}
				if err := m.Ack(); err != nil {
					b.Error(err)
					return
				}
				if processed.Add(1) == int64(b.N) {
					close(allDone)
				}
			}
		})
	}

	b.ResetTimer()
	start := time.Now()
	cc, err := cons.Consume(func(m jetstream.Msg) { msgs <- m }, jetstream.PullMaxMessages(4*workers))
	require.NoError(b, err)
	pubErr := make(chan error, 1)
	go func() {
		_, err := queue.PublishItems(ctx, bb.js, runID, inputs(0, b.N), queue.PublishItemsOptions{})
		pubErr <- err
	}()
	select {
	case <-allDone:
	case <-ctx.Done():
		b.Fatalf("processed %d of %d items", processed.Load(), b.N)
	}
	elapsed := time.Since(start)
	b.StopTimer()

	require.NoError(b, <-pubErr)
	cc.Drain()
	<-cc.Closed()
	close(msgs)
	wg.Wait()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "items/s")
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(redelivered.Load()), "redeliveries")
	require.GreaterOrEqual(b, answered.Load(), int64(b.N))
}
