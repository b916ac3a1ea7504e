package worker

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/queue"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// Results that finish while earlier ones wait for their answer go
// together in one batch; a lone one goes alone; each gets its own answer.
func TestResultSenderBatches(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testCtx(t)
	// A coordinator that holds its first two answers until released and
	// records the shape of every request.
	release := make(chan struct{})
	var mu sync.Mutex
	var sizes []int
	nc, err := nats.Connect(b.url)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	coordinator, err := nc.QueueSubscribe(queue.ResultSubjects, "test-coordinator", func(m *nats.Msg) {
		mu.Lock()
		n := len(sizes)
		if m.Subject == queue.ResultBatchSubject {
			results, err := queue.DecodeResultBatch(m.Data)
			require.NoError(t, err)
			sizes = append(sizes, len(results))
			mu.Unlock()
			outs := make([]queue.ResultBatchOutcome, len(results))
			for i, data := range results {
				r, err := queue.DecodeResult(data)
				require.NoError(t, err)
				if r.GetIndex()%2 == 0 {
					outs[i].Answer = queue.ResultAnswer{Status: queue.ResultStored, ItemAcked: true}
				} else {
					outs[i].Err = fmt.Errorf("disk full for %d", r.GetIndex())
				}
			}
			reply, err := queue.ResultBatchReply(outs)
			require.NoError(t, err)
			_ = m.RespondMsg(reply)
			return
		}
		sizes = append(sizes, 1)
		mu.Unlock()
		if n < 2 {
			// Held apart: a subscription's callbacks run one at a time.
			go func() {
				<-release
				_ = m.RespondMsg(queue.ResultReply(queue.ResultStored, nil))
			}()
			return
		}
		_ = m.RespondMsg(queue.ResultReply(queue.ResultStored, nil))
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = coordinator.Unsubscribe() })
	require.NoError(t, nc.Flush())
	// The bundle's result sink answers too: take it out.
	require.NoError(t, b.sinkSub.Unsubscribe())

	s := newResultSender(ctx, b.nc, newConnEpoch())
	type outcome struct {
		index uint64
		a     queue.ResultAnswer
		err   error
	}
	outs := make(chan outcome, 10)
	send := func(i uint64) {
		subject, data, err := queue.EncodeResult(ctx, b.nc, &stepflowv1.ItemResult{RunId: "0198c0de-0000-7000-8000-000000000001", Index: i, Result: []byte(`{"outcome":"success","result":1}`)}, queue.ResultOptions{})
		require.NoError(t, err)
		a, err := s.send(ctx, subject, data)
		outs <- outcome{i, a, err}
	}
	// Two alone, one after the other (they take both requests), then
	// eight that queue.
	requests := func(n int) func() bool {
		return func() bool { mu.Lock(); defer mu.Unlock(); return len(sizes) == n }
	}
	go send(100)
	require.Eventually(t, requests(1), 10*time.Second, time.Millisecond)
	go send(101)
	require.Eventually(t, requests(2), 10*time.Second, time.Millisecond)
	for i := range uint64(8) {
		go send(i)
	}
	require.Eventually(t, func() bool { s.mu.Lock(); defer s.mu.Unlock(); return len(s.queue) == 8 }, 10*time.Second, time.Millisecond)
	close(release)
	got := map[uint64]outcome{}
	for range 10 {
		o := <-outs
		got[o.index] = o
	}
	s.wait()
	mu.Lock()
	require.Equal(t, []int{1, 1, 8}, sizes, "two alone, then the eight queued meanwhile as one batch")
	mu.Unlock()
	for i := range uint64(8) {
		if i%2 == 0 {
			require.NoError(t, got[i].err)
			require.Equal(t, queue.ResultAnswer{Status: queue.ResultStored, ItemAcked: true}, got[i].a)
		} else {
			require.ErrorIs(t, got[i].err, queue.ErrResultRefused)
			require.ErrorContains(t, got[i].err, fmt.Sprintf("disk full for %d", i))
		}
	}
	require.Equal(t, queue.ResultStored, got[100].a.Status)

	// A coordinator of an earlier release takes a batch for a malformed
	// result: that answer is no batch answer.
	require.NoError(t, coordinator.Unsubscribe())
	old, err := nc.QueueSubscribe(queue.ResultSubjects, "test-coordinator", func(m *nats.Msg) {
		_ = m.RespondMsg(queue.ResultReply(queue.ResultDropped, nil))
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = old.Unsubscribe() })
	require.NoError(t, nc.Flush())
	_, err = queue.SendResultBatch(ctx, b.nc, [][]byte{{1}, {2}})
	require.ErrorIs(t, err, queue.ErrNoBatchAnswer)
}
