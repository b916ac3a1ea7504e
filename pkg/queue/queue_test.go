package queue_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/value"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

func TestNames(t *testing.T) {
	t.Parallel()
	const run = "0198c0de-7a1b-7c3d-8e4f-0123456789ab"
	require.Equal(t, "stepflow.items."+run, queue.ItemSubject(run))
	require.Equal(t, "stepflow.results."+run, queue.ResultSubject(run))
	require.Equal(t, "run-"+run, queue.RunConsumer(run))
	require.Equal(t, run+".42", queue.MsgID(run, 42))
	gotRun, idx, err := queue.ParseMsgID(queue.MsgID(run, 42))
	require.NoError(t, err)
	require.Equal(t, run, gotRun)
	require.Equal(t, 42, idx)
	for _, bad := range []string{"", "nodot", "x.", "x.-1", "x.y", ".3"} {
		_, _, err := queue.ParseMsgID(bad)
		require.Error(t, err, bad)
	}
	got, ok := queue.RunIDFromConsumer(queue.RunConsumer(run))
	require.True(t, ok)
	require.Equal(t, run, got)
	_, ok = queue.RunIDFromConsumer("other")
	require.False(t, ok)

	require.NoError(t, queue.ValidateRunID(run))
	require.NoError(t, queue.ValidateRunID("run_1"))
	for _, bad := range []string{"", "a.b", "a*", "a>", "a b", "a/b", strings.Repeat("x", 201)} {
		require.ErrorIs(t, queue.ValidateRunID(bad), queue.ErrInvalidRunID, bad)
	}

	for _, good := range []string{queue.CoordinatorInboxPrefix, queue.WorkerInboxPrefix, "_INBOX", "_INBOX_stepflow_worker.w-1", "a.b.c"} {
		require.True(t, queue.ValidInboxPrefix(good), good)
	}
	for _, bad := range []string{"", "a.", ".a", "a..b", "a.*", "a.>", "a b", "a=b", "a/b", "_INBOX.é"} {
		require.False(t, queue.ValidInboxPrefix(bad), bad)
	}
	_, _, err = queue.Connect(context.Background(), "nats://127.0.0.1:1", queue.ConnectOptions{InboxPrefix: "a.>"})
	require.ErrorIs(t, err, queue.ErrInvalidConfig)

	// An inbox key signs in next to a user and password given as
	// options: nats.go sends no key next to credentials in the URL.
	key, err := queue.NewInboxKey()
	require.NoError(t, err)
	_, _, err = queue.Connect(context.Background(), "nats://worker:pw@127.0.0.1:1", queue.ConnectOptions{InboxKey: key})
	require.ErrorIs(t, err, queue.ErrInvalidConfig)
	require.ErrorContains(t, err, "not in the URL")
	_, _, err = queue.Connect(context.Background(), "nats://127.0.0.1:1", queue.ConnectOptions{InboxKey: key, NKeySeedFile: "seed"})
	require.ErrorIs(t, err, queue.ErrInvalidConfig)
	account, err := nkeys.CreateAccount()
	require.NoError(t, err)
	_, _, err = queue.Connect(context.Background(), "nats://127.0.0.1:1", queue.ConnectOptions{InboxKey: account})
	require.ErrorIs(t, err, queue.ErrInvalidConfig)
}

func TestProvisionIdempotent(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	ctx := testCtx(t)

	// Nothing exists yet: openers and publishers say so.
	_, err := queue.OpenRunStore(ctx, b.js)
	require.ErrorIs(t, err, queue.ErrNotProvisioned)
	_, err = queue.OpenFlowStore(ctx, b.js)
	require.ErrorIs(t, err, queue.ErrNotProvisioned)
	_, err = queue.OpenBlobStore(ctx, b.js)
	require.ErrorIs(t, err, queue.ErrNotProvisioned)
	_, err = queue.OpenWorkerRegistry(ctx, b.js)
	require.ErrorIs(t, err, queue.ErrNotProvisioned)
	_, err = queue.ListWorkers(ctx, b.js)
	require.ErrorIs(t, err, queue.ErrNotProvisioned)
	_, err = queue.Streams(ctx, b.js)
	require.ErrorIs(t, err, queue.ErrNotProvisioned)
	_, err = queue.CreateRunConsumer(ctx, b.js, "r1", queue.RunConsumerConfig{MaxAckPending: 1})
	require.ErrorIs(t, err, queue.ErrNotProvisioned)

	require.NoError(t, queue.Provision(ctx, b.js, queue.Config{}))
	snapshot := func() map[string]jetstream.StreamConfig {
		out := map[string]jetstream.StreamConfig{}
		for name := range b.js.StreamNames(ctx).Name() {
			s, err := b.js.Stream(ctx, name)
			require.NoError(t, err)
			out[name] = s.CachedInfo().Config
		}
		return out
	}
	first := snapshot()
	require.Len(t, first, 6) // the items stream, 4 KV buckets, 1 object store
	items := first[queue.StreamItems]
	require.Equal(t, jetstream.WorkQueuePolicy, items.Retention)
	require.Equal(t, jetstream.MemoryStorage, items.Storage, "the spools are the durable copy")
	require.Greater(t, items.FirstSeq, uint64(time.Now().Add(-time.Hour).UnixMicro()), "sequences start above any earlier incarnation's")
	require.Equal(t, []string{"stepflow.items.>"}, items.Subjects)
	require.Equal(t, jetstream.DiscardNew, items.Discard)
	require.Equal(t, queue.DefaultDuplicateWindow, items.Duplicates)
	require.Contains(t, first, "KV_"+queue.BucketRuns)
	require.Contains(t, first, "KV_"+queue.BucketFlows)
	require.Contains(t, first, "OBJ_"+queue.BucketBlobs)
	workers := first["KV_"+queue.BucketWorkers]
	require.Equal(t, queue.WorkerTTL, workers.MaxAge)
	require.Equal(t, int64(1), workers.MaxMsgsPerSubject)

	// Again, twice: nothing changes, nothing fails.
	require.NoError(t, queue.Provision(ctx, b.js, queue.Config{}))
	require.NoError(t, queue.Provision(ctx, b.js, queue.Config{Replicas: 1}))
	require.Equal(t, first, snapshot())

	// A changed setting is applied in place, data kept.
	_, err = queue.PublishItems(ctx, b.js, "keep", inputs(0, 3), queue.PublishItemsOptions{})
	require.NoError(t, err)
	require.NoError(t, queue.Provision(ctx, b.js, queue.Config{DuplicateWindow: time.Minute}))
	require.Equal(t, time.Minute, snapshot()[queue.StreamItems].Duplicates)
	require.Equal(t, uint64(3), subjectCount(t, b.js, queue.StreamItems, queue.ItemSubject("keep")))

	// Settings the server or the package rejects.
	require.ErrorIs(t, queue.Provision(ctx, b.js, queue.Config{Replicas: 7}), queue.ErrInvalidConfig)
	require.ErrorIs(t, queue.Provision(ctx, b.js, queue.Config{DuplicateWindow: -time.Second}), queue.ErrInvalidConfig)
	require.ErrorIs(t, queue.Provision(ctx, b.js, queue.Config{MaxMsgSize: 2 << 20}), queue.ErrInvalidConfig) // > 1 MiB max_payload
	err = queue.Provision(ctx, b.js, queue.Config{Replicas: 3})
	require.Error(t, err, "a single server cannot hold 3 replicas")
}

func TestPublishItemsDedup(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	const run, n = "run-10k", 10_000
	tmpl := &stepflowv1.Item{FlowId: strings.Repeat("ab", 32), TraceContext: map[string]string{"traceparent": "00-abc-def-01"}}
	got, err := queue.PublishItems(ctx, b.js, run, inputs(0, n), queue.PublishItemsOptions{Template: tmpl})
	require.NoError(t, err)
	require.Equal(t, n, got)
	require.Equal(t, uint64(n), subjectCount(t, b.js, queue.StreamItems, queue.ItemSubject(run)))

	// A retried publish of a tail (a coordinator resuming, or a lost
	// PubAck) is acknowledged but not stored again.
	got, err = queue.PublishItems(ctx, b.js, run, inputs(0, n), queue.PublishItemsOptions{Template: tmpl, From: n - 100})
	require.NoError(t, err)
	require.Equal(t, 100, got)
	require.Equal(t, uint64(n), subjectCount(t, b.js, queue.StreamItems, queue.ItemSubject(run)))

	// Each message is a decodable Item with its dedup id.
	s, err := b.js.Stream(ctx, queue.StreamItems)
	require.NoError(t, err)
	raw, err := s.GetLastMsgForSubject(ctx, queue.ItemSubject(run))
	require.NoError(t, err)
	require.Equal(t, queue.MsgID(run, n-1), raw.Header.Get(jetstream.MsgIDHeader))
	it, err := queue.DecodeItem(raw.Data)
	require.NoError(t, err)
	require.Equal(t, run, it.GetRunId())
	require.Equal(t, uint64(n-1), it.GetIndex())
	require.JSONEq(t, fmt.Sprintf(`{"i":%d}`, n-1), string(it.GetInput()))
	require.Equal(t, tmpl.GetFlowId(), it.GetFlowId())
	require.Equal(t, queue.ResultSubject(run), it.GetReplySubject())
	require.Equal(t, run, it.GetRootRunId())
	require.Equal(t, "00-abc-def-01", it.GetTraceContext()["traceparent"])
	require.NotNil(t, it.GetEnqueuedAt())
	require.Empty(t, tmpl.GetRunId(), "the caller's template is not modified")

	// Indices must increase.
	bad := func(yield func(int, []byte) bool) {
		_ = yield(5, []byte(`1`)) && yield(5, []byte(`2`))
	}
	_, err = queue.PublishItems(ctx, b.js, "bad-order", bad, queue.PublishItemsOptions{})
	var pe *queue.PublishError
	require.ErrorAs(t, err, &pe)
	require.Equal(t, 5, pe.ResumeFrom)
}

func TestPublishItemsOversizedAndResume(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	big := `{"blob":"` + strings.Repeat("x", 2<<20) + `"}` // 2 MiB > max_payload
	items := func(yield func(int, []byte) bool) {
		for i := range 10 {
			in := fmt.Appendf(nil, `{"i":%d}`, i)
			if i == 5 {
				in = []byte(big)
			}
			if !yield(i, in) {
				return
			}
		}
	}
	// Without a blob store the oversized item stops the publish, and
	// everything before it is stored.
	n, err := queue.PublishItems(ctx, b.js, "big", items, queue.PublishItemsOptions{})
	require.ErrorIs(t, err, queue.ErrPayloadTooLarge)
	var pe *queue.PublishError
	require.ErrorAs(t, err, &pe)
	require.Equal(t, 5, pe.ResumeFrom)
	require.Equal(t, 5, n)
	require.Equal(t, uint64(5), subjectCount(t, b.js, queue.StreamItems, queue.ItemSubject("big")))

	// Resuming with a blob store offloads the input.
	blobs, err := queue.OpenBlobStore(ctx, b.js)
	require.NoError(t, err)
	n, err = queue.PublishItems(ctx, b.js, "big", items, queue.PublishItemsOptions{From: pe.ResumeFrom, Blobs: blobs})
	require.NoError(t, err)
	require.Equal(t, 5, n)
	require.Equal(t, uint64(10), subjectCount(t, b.js, queue.StreamItems, queue.ItemSubject("big")))

	cons, err := queue.CreateRunConsumer(ctx, b.js, "big", queue.RunConsumerConfig{MaxAckPending: 10})
	require.NoError(t, err)
	batch, err := cons.Fetch(10, jetstream.FetchMaxWait(5*time.Second))
	require.NoError(t, err)
	var seen int
	for m := range batch.Messages() {
		it, err := queue.DecodeItem(m.Data())
		require.NoError(t, err)
		in, err := queue.ItemInput(ctx, it, blobs)
		require.NoError(t, err)
		if it.GetIndex() == 5 {
			require.NotEmpty(t, it.GetInputBlobId())
			require.Empty(t, it.GetInput())
			require.Equal(t, big, string(in))
		} else {
			require.Empty(t, it.GetInputBlobId())
			require.JSONEq(t, fmt.Sprintf(`{"i":%d}`, it.GetIndex()), string(in))
		}
		require.NoError(t, m.Ack())
		seen++
	}
	require.NoError(t, batch.Error())
	require.Equal(t, 10, seen)

	// A cancelled context stops publishing with a resumable error.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = queue.PublishItems(cctx, b.js, "cancelled", inputs(0, 10), queue.PublishItemsOptions{})
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorAs(t, err, &pe)
	require.Equal(t, 0, pe.ResumeFrom)
}

// fetchers pulls from a consumer with several concurrent "workers" that
// never ack, counting what they receive.
type fetchers struct {
	received atomic.Int64
	rounds   atomic.Int64 // completed fetch calls
	maxDeliv atomic.Int64 // highest NumDelivered seen
	stop     chan struct{}
	wg       sync.WaitGroup
	mu       sync.Mutex
	msgs     []jetstream.Msg
}

func startFetchers(t *testing.T, cons jetstream.Consumer, workers int) *fetchers {
	f := &fetchers{stop: make(chan struct{})}
	for range workers {
		f.wg.Go(func() {
			for {
				select {
				case <-f.stop:
					return
				default:
				}
				batch, err := cons.Fetch(5, jetstream.FetchMaxWait(50*time.Millisecond))
				if err != nil {
					t.Errorf("fetch: %v", err)
					return
				}
				for m := range batch.Messages() {
					md, err := m.Metadata()
					if err == nil && int64(md.NumDelivered) > f.maxDeliv.Load() {
						f.maxDeliv.Store(int64(md.NumDelivered))
					}
					f.mu.Lock()
					f.msgs = append(f.msgs, m)
					f.mu.Unlock()
					f.received.Add(1)
				}
				f.rounds.Add(1)
			}
		})
	}
	return f
}

func (f *fetchers) halt() {
	close(f.stop)
	f.wg.Wait()
}

// settle waits until the fetchers have received want messages and then
// completed at least extra more fetch rounds each (so that any message the
// server would still hand out has had every chance to arrive).
func (f *fetchers) settle(t *testing.T, want int64, extra int64) {
	t.Helper()
	require.Eventually(t, func() bool { return f.received.Load() >= want }, 10*time.Second, 5*time.Millisecond,
		"received %d of %d", f.received.Load(), want)
	base := f.rounds.Load()
	require.Eventually(t, func() bool { return f.rounds.Load() >= base+extra }, 10*time.Second, 5*time.Millisecond)
}

func TestRunConsumersEnforceMaxAckPending(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	limits := map[string]int{"run-a": 3, "run-b": 7}
	const perRun = 50
	all := map[string]*fetchers{}
	for run, limit := range limits {
		_, err := queue.PublishItems(ctx, b.js, run, inputs(0, perRun), queue.PublishItemsOptions{})
		require.NoError(t, err)
		cons, err := queue.CreateRunConsumer(ctx, b.js, run, queue.RunConsumerConfig{MaxAckPending: limit, AckWait: time.Minute})
		require.NoError(t, err)
		info := cons.CachedInfo()
		require.Equal(t, queue.ItemSubject(run), info.Config.FilterSubject)
		require.Equal(t, jetstream.AckExplicitPolicy, info.Config.AckPolicy)
		require.Equal(t, limit, info.Config.MaxAckPending)
		all[run] = startFetchers(t, cons, 4)
	}
	for run, limit := range limits {
		// 4 workers x 20 more rounds: 80 more chances to exceed the limit.
		all[run].settle(t, int64(limit), 20)
	}
	for run, limit := range limits {
		f := all[run]
		f.halt()
		require.EqualValues(t, limit, f.received.Load(), "run %s handed out more than MaxAckPending", run)
		require.EqualValues(t, 1, f.maxDeliv.Load(), "no redelivery within AckWait")
		cons, err := queue.RunConsumerHandle(ctx, b.js, run)
		require.NoError(t, err)
		info, err := cons.Info(ctx)
		require.NoError(t, err)
		require.Equal(t, limit, info.NumAckPending)
		require.EqualValues(t, perRun-limit, info.NumPending)
		for _, m := range f.msgs {
			it, err := queue.DecodeItem(m.Data())
			require.NoError(t, err)
			require.Equal(t, run, it.GetRunId(), "a run's consumer only sees its own items")
		}
	}

	// Acking one item frees exactly one slot.
	f := all["run-a"]
	require.NoError(t, f.msgs[0].DoubleAck(ctx))
	cons, err := queue.RunConsumerHandle(ctx, b.js, "run-a")
	require.NoError(t, err)
	batch, err := cons.FetchNoWait(10)
	require.NoError(t, err)
	require.Len(t, collect(t, batch), 1)
}

func collect(t *testing.T, batch jetstream.MessageBatch) []jetstream.Msg {
	t.Helper()
	var out []jetstream.Msg
	for m := range batch.Messages() {
		out = append(out, m)
	}
	if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
		require.NoError(t, err)
	}
	return out
}

// fetchAll pulls until a fetch returns nothing within its wait.
func fetchAll(t *testing.T, cons jetstream.Consumer) []jetstream.Msg {
	t.Helper()
	var out []jetstream.Msg
	for {
		batch, err := cons.Fetch(100, jetstream.FetchMaxWait(200*time.Millisecond))
		require.NoError(t, err)
		got := collect(t, batch)
		if len(got) == 0 {
			return out
		}
		out = append(out, got...)
	}
}

func TestUpdateRunConcurrency(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	const run = "conc"
	_, err := queue.PublishItems(ctx, b.js, run, inputs(0, 20), queue.PublishItemsOptions{})
	require.NoError(t, err)
	cons, err := queue.CreateRunConsumer(ctx, b.js, run, queue.RunConsumerConfig{MaxAckPending: 3, AckWait: time.Minute, MaxDeliver: 4})
	require.NoError(t, err)

	inFlight := fetchAll(t, cons)
	require.Len(t, inFlight, 3)

	// Raise: two more are handed out at once, other settings are kept.
	require.NoError(t, queue.UpdateRunConcurrency(ctx, b.js, run, 5))
	info, err := cons.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, 5, info.Config.MaxAckPending)
	require.Equal(t, 4, info.Config.MaxDeliver)
	require.Equal(t, time.Minute, info.Config.AckWait)
	inFlight = append(inFlight, fetchAll(t, cons)...)
	require.Len(t, inFlight, 5)

	// Lower below what is in flight: nothing new until fewer than 2 remain.
	require.NoError(t, queue.UpdateRunConcurrency(ctx, b.js, run, 2))
	for _, m := range inFlight[:3] {
		require.NoError(t, m.DoubleAck(ctx))
	}
	require.Empty(t, fetchAll(t, cons), "2 in flight = the new limit")
	require.NoError(t, inFlight[3].DoubleAck(ctx))
	require.Len(t, fetchAll(t, cons), 1)

	require.ErrorIs(t, queue.UpdateRunConcurrency(ctx, b.js, run, 0), queue.ErrInvalidConfig)
	require.ErrorIs(t, queue.UpdateRunConcurrency(ctx, b.js, "no-such-run", 4), queue.ErrConsumerNotFound)

	// Creating the consumer again (a restarted coordinator) is an update.
	_, err = queue.CreateRunConsumer(ctx, b.js, run, queue.RunConsumerConfig{MaxAckPending: 8, AckWait: time.Minute, MaxDeliver: 4})
	require.NoError(t, err)
	info, err = cons.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, 8, info.Config.MaxAckPending)

	// Delete is idempotent; the items stay until purged.
	require.NoError(t, queue.DeleteRunConsumer(ctx, b.js, run))
	require.NoError(t, queue.DeleteRunConsumer(ctx, b.js, run))
	_, err = queue.RunConsumerHandle(ctx, b.js, run)
	require.ErrorIs(t, err, queue.ErrConsumerNotFound)
	n, err := queue.PurgeRunItems(ctx, b.js, run)
	require.NoError(t, err)
	require.EqualValues(t, 16, n) // 20 published, 4 acked
	require.Zero(t, subjectCount(t, b.js, queue.StreamItems, queue.ItemSubject(run)))
}

func TestWorkQueueConsumerFilters(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	// Many runs: disjoint filters on one work-queue stream are accepted.
	for i := range 20 {
		_, err := queue.CreateRunConsumer(ctx, b.js, fmt.Sprintf("r%d", i), queue.RunConsumerConfig{MaxAckPending: i + 1})
		require.NoError(t, err)
	}
	// A second consumer on a run's subject, or a catch-all one, is not.
	_, err := b.js.CreateConsumer(ctx, queue.StreamItems, jetstream.ConsumerConfig{
		Durable: "spy", FilterSubject: queue.ItemSubject("r3"), AckPolicy: jetstream.AckExplicitPolicy,
	})
	require.Error(t, err)
	_, err = b.js.CreateConsumer(ctx, queue.StreamItems, jetstream.ConsumerConfig{
		Durable: "all", FilterSubject: queue.ItemSubjects, AckPolicy: jetstream.AckExplicitPolicy,
	})
	require.Error(t, err)
	// The same conflicts through the package's names map to ErrFilterConflict:
	// a run id whose subject another consumer already covers.
	_, err = b.js.CreateConsumer(ctx, queue.StreamItems, jetstream.ConsumerConfig{
		Durable: "squatter", FilterSubject: queue.ItemSubject("taken"), AckPolicy: jetstream.AckExplicitPolicy,
	})
	require.NoError(t, err)
	_, err = queue.CreateRunConsumer(ctx, b.js, "taken", queue.RunConsumerConfig{MaxAckPending: 1})
	require.ErrorIs(t, err, queue.ErrFilterConflict)

	// Bad settings.
	for _, cfg := range []queue.RunConsumerConfig{
		{MaxAckPending: 0},
		{MaxAckPending: 1, AckWait: time.Millisecond},
		{MaxAckPending: 1, MaxDeliver: 2, BackOff: []time.Duration{time.Second, time.Second, time.Second}},
	} {
		_, err := queue.CreateRunConsumer(ctx, b.js, "bad", cfg)
		require.ErrorIs(t, err, queue.ErrInvalidConfig)
	}
	_, err = queue.CreateRunConsumer(ctx, b.js, "bad.id", queue.RunConsumerConfig{MaxAckPending: 1})
	require.ErrorIs(t, err, queue.ErrInvalidRunID)
}

func TestBackOffAndNakDelaySemantics(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)

	// BackOff replaces AckWait: the server stores AckWait = BackOff[0].
	cfg := queue.RunConsumerConfig{MaxAckPending: 1, AckWait: time.Minute, BackOff: []time.Duration{5 * time.Second, 20 * time.Second}}
	cons, err := queue.CreateRunConsumer(ctx, b.js, "backoff", cfg)
	require.NoError(t, err)
	require.Equal(t, 5*time.Second, cons.CachedInfo().Config.AckWait)
	require.Equal(t, 5*time.Second/3, cfg.HeartbeatInterval())
	require.Equal(t, queue.DefaultAckWait/3, queue.RunConsumerConfig{}.HeartbeatInterval())

	// An item nak'ed with a delay keeps its MaxAckPending slot meanwhile.
	const run = "nakdelay"
	_, err = queue.PublishItems(ctx, b.js, run, inputs(0, 2), queue.PublishItemsOptions{})
	require.NoError(t, err)
	cons, err = queue.CreateRunConsumer(ctx, b.js, run, queue.RunConsumerConfig{MaxAckPending: 1, AckWait: time.Minute})
	require.NoError(t, err)
	got := fetchAll(t, cons)
	require.Len(t, got, 1)
	require.NoError(t, got[0].NakWithDelay(time.Hour))
	require.Eventually(t, func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.NumRedelivered == 0 && info.NumAckPending == 1
	}, 5*time.Second, 5*time.Millisecond)
	require.Empty(t, fetchAll(t, cons), "the delayed item still holds the only slot")
	info, err := cons.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, info.NumAckPending)
}

func TestResultRequests(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	const run = "results"
	res := &stepflowv1.ItemResult{
		RunId: run, Index: 7, Result: []byte(`{"outcome":"success","result":{"a":1}}`),
		Source: stepflowv1.ResultSource_RESULT_SOURCE_WORKER, WorkerId: "w1", Deliveries: 1,
		StartedAt: timestamppb.Now(), FinishedAt: timestamppb.Now(),
	}
	subject, data, err := queue.EncodeResult(ctx, b.nc, res, queue.ResultOptions{})
	require.NoError(t, err)
	require.Equal(t, queue.ResultSubject(run), subject)

	// Nobody leads: no responders, at once.
	_, err = queue.SendResult(ctx, b.nc, subject, data)
	require.ErrorIs(t, err, nats.ErrNoResponders)

	// A coordinator keeps the first result per index.
	var mu sync.Mutex
	stored := map[uint64]*stepflowv1.ItemResult{}
	refuse := true
	sub, err := queue.SubscribeResults(b.nc, func(m *nats.Msg) {
		r, err := queue.DecodeResult(m.Data)
		require.NoError(t, err)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case refuse:
			refuse = false
			_ = m.RespondMsg(queue.ResultReply("", errors.New("no space\nleft on device")))
		case stored[r.GetIndex()] != nil:
			_ = m.RespondMsg(queue.ResultReply(queue.ResultDuplicate, nil))
		default:
			stored[r.GetIndex()] = r
			_ = m.RespondMsg(queue.ResultReply(queue.ResultStored, nil))
		}
	})
	require.NoError(t, err)
	defer func() { require.NoError(t, sub.Unsubscribe()) }()

	_, err = queue.SendResult(ctx, b.nc, subject, data)
	require.ErrorIs(t, err, queue.ErrResultRefused)
	require.ErrorContains(t, err, "no space left on device")
	status, err := queue.SendResult(ctx, b.nc, subject, data)
	require.NoError(t, err)
	require.Equal(t, queue.ResultAnswer{Status: queue.ResultStored}, status)
	// The same item re-executed elsewhere: its result is a duplicate.
	second := &stepflowv1.ItemResult{RunId: run, Index: 7, Result: []byte(`{"outcome":"success","result":{"a":2}}`), WorkerId: "w2", Deliveries: 2}
	subject, data, err = queue.EncodeResult(ctx, b.nc, second, queue.ResultOptions{Subject: queue.ResultSubject(run)})
	require.NoError(t, err)
	status, err = queue.SendResult(ctx, b.nc, subject, data)
	require.NoError(t, err)
	require.Equal(t, queue.ResultAnswer{Status: queue.ResultDuplicate}, status)
	mu.Lock()
	require.Equal(t, "w1", stored[7].GetWorkerId(), "the first result wins")
	mu.Unlock()

	// Oversized results are offloaded when a blob store is given.
	big := []byte(`{"outcome":"success","result":"` + strings.Repeat("y", 1<<20) + `"}`)
	_, _, err = queue.EncodeResult(ctx, b.nc, &stepflowv1.ItemResult{RunId: run, Index: 9, Result: big}, queue.ResultOptions{})
	require.ErrorIs(t, err, queue.ErrPayloadTooLarge)
	blobs, err := queue.OpenBlobStore(ctx, b.js)
	require.NoError(t, err)
	orig := &stepflowv1.ItemResult{RunId: run, Index: 9, Result: big}
	subject, data, err = queue.EncodeResult(ctx, b.nc, orig, queue.ResultOptions{Blobs: blobs})
	require.NoError(t, err)
	require.Equal(t, big, orig.GetResult(), "the caller's result is not modified")
	_, err = queue.SendResult(ctx, b.nc, subject, data)
	require.NoError(t, err)
	mu.Lock()
	got := stored[9]
	mu.Unlock()
	require.NotEmpty(t, got.GetResultBlobId())
	j, err := queue.ResultJSON(ctx, got, blobs)
	require.NoError(t, err)
	require.Equal(t, big, j)

	// Subjects outside the results are refused.
	_, _, err = queue.EncodeResult(ctx, b.nc, res, queue.ResultOptions{Subject: "elsewhere." + run})
	require.ErrorIs(t, err, queue.ErrInvalidConfig)

	// An answer without a status is malformed.
	_, err = queue.ParseResultReply(nats.NewMsg("x"))
	require.ErrorIs(t, err, queue.ErrBadMessage)
	answer, err := queue.ParseResultReply(queue.ResultReplyAcked(queue.ResultStored))
	require.NoError(t, err)
	require.Equal(t, queue.ResultAnswer{Status: queue.ResultStored, ItemAcked: true}, answer)

	// Only item ack subjects are acked on a worker's behalf.
	require.True(t, queue.ValidItemAckSubject("$JS.ACK.STEPFLOW_ITEMS.run-x.1.5.5.1700000000000000000.0"))
	for _, bad := range []string{"", "$JS.ACK.STEPFLOW_ITEMS.", "$JS.ACK.OTHER.c.1.1.1.1.0", "$JS.API.STREAM.DELETE.STEPFLOW_ITEMS",
		"$JS.ACK.STEPFLOW_ITEMS.>", "$JS.ACK.STEPFLOW_ITEMS.*.1", "$JS.ACK.STEPFLOW_ITEMS.a b", "stepflow.results.x"} {
		require.False(t, queue.ValidItemAckSubject(bad), "%q", bad)
	}
}

// A stream created anew starts its sequences above the old incarnation's,
// so an ack a worker still holds from before (a NATS restart) can never
// remove a different item.
func TestItemsStreamIncarnations(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	first, err := queue.ItemsStreamIncarnation(ctx, b.js)
	require.NoError(t, err)
	_, err = queue.CreateRunConsumer(ctx, b.js, "inc", queue.RunConsumerConfig{MaxAckPending: 10})
	require.NoError(t, err)
	_, err = queue.PublishItems(ctx, b.js, "inc", inputs(0, 5), queue.PublishItemsOptions{})
	require.NoError(t, err)
	cons, err := queue.RunConsumerHandle(ctx, b.js, "inc")
	require.NoError(t, err)
	old := fetchAll(t, cons)
	require.Len(t, old, 5)

	// The stream is lost (a NATS restart with memory storage) and created
	// again: a new incarnation, whose items have other sequences.
	require.NoError(t, b.js.DeleteStream(ctx, queue.StreamItems))
	_, err = queue.ItemsStreamIncarnation(ctx, b.js)
	require.ErrorIs(t, err, queue.ErrNotProvisioned)
	second, created, err := queue.EnsureItemsStream(ctx, b.js, queue.Config{})
	require.NoError(t, err)
	require.True(t, created)
	require.NotEqual(t, first, second)
	require.Greater(t, second.FirstSeq, first.FirstSeq+5)
	_, err = queue.CreateRunConsumer(ctx, b.js, "inc", queue.RunConsumerConfig{MaxAckPending: 10})
	require.NoError(t, err)
	_, err = queue.PublishItems(ctx, b.js, "inc", inputs(0, 5), queue.PublishItemsOptions{})
	require.NoError(t, err)
	cons, err = queue.RunConsumerHandle(ctx, b.js, "inc")
	require.NoError(t, err)
	fresh := fetchAll(t, cons)
	require.Len(t, fresh, 5)

	// The old acks reach the new consumer (same names) and remove nothing.
	for _, m := range old {
		require.NoError(t, m.DoubleAck(ctx))
	}
	require.Equal(t, uint64(5), subjectCount(t, b.js, queue.StreamItems, queue.ItemSubject("inc")))
	for _, m := range fresh {
		require.NoError(t, m.DoubleAck(ctx))
	}
	require.Zero(t, subjectCount(t, b.js, queue.StreamItems, queue.ItemSubject("inc")))

	// Provisioning again keeps the incarnation.
	third, created, err := queue.EnsureItemsStream(ctx, b.js, queue.Config{})
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, second, third)
	// File storage replaces a memory stream (its items are in the spools).
	fourth, created, err := queue.EnsureItemsStream(ctx, b.js, queue.Config{ItemsFileStorage: true})
	require.NoError(t, err)
	require.True(t, created)
	require.Greater(t, fourth.FirstSeq, third.FirstSeq)
}

func TestRunStore(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	runs, err := queue.OpenRunStore(ctx, b.js)
	require.NoError(t, err)

	w, err := runs.Watch(ctx, queue.WatchOptions{})
	require.NoError(t, err)
	defer func() { require.NoError(t, w.Stop()) }()
	next := func() queue.RunEvent {
		t.Helper()
		select {
		case ev, ok := <-w.Events():
			require.True(t, ok)
			return ev
		case <-ctx.Done():
			t.Fatal("no run event")
		}
		return queue.RunEvent{}
	}
	require.True(t, next().Ready, "empty bucket: ready at once")

	rec := &stepflowv1.RunRecord{
		RunId: "run-1", FlowId: strings.Repeat("0", 64), FlowName: "f", Status: stepflowv1.RunStatus_RUN_STATUS_RUNNING,
		MaxConcurrency: 4, ItemTotal: 10, RootRunId: "run-1", CreatedAt: timestamppb.Now(),
		Overrides: []byte(`{"s":{"value":{"input":{"t":0.2}}}}`), Variables: []byte(`{"region":"eu"}`),
	}
	rev, err := runs.Create(ctx, rec)
	require.NoError(t, err)
	_, err = runs.Create(ctx, rec)
	require.ErrorIs(t, err, queue.ErrRunExists)
	ev := next()
	require.Equal(t, "run-1", ev.RunID)
	require.Equal(t, rev, ev.Revision)
	require.Equal(t, "f", ev.Record.GetFlowName())

	got, gotRev, err := runs.Get(ctx, "run-1")
	require.NoError(t, err)
	require.Equal(t, rev, gotRev)
	require.Equal(t, `{"region":"eu"}`, string(got.GetVariables()))

	// CAS: an update at the current revision wins, a stale one loses.
	got.Items = &stepflowv1.ItemCounts{Completed: 1, Running: 9}
	rev2, err := runs.Update(ctx, got, gotRev)
	require.NoError(t, err)
	require.Greater(t, rev2, rev)
	got.Items.Completed = 99
	_, err = runs.Update(ctx, got, gotRev)
	require.ErrorIs(t, err, queue.ErrRevisionMismatch)
	require.EqualValues(t, 1, next().Record.GetItems().GetCompleted())

	// Modify retries on conflicts: 20 concurrent increments all land.
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			_, _, err := runs.Modify(ctx, "run-1", func(r *stepflowv1.RunRecord) error {
				r.Items.Completed++
				r.Items.Running--
				return nil
			})
			require.NoError(t, err)
		})
	}
	wg.Wait()
	final, _, err := runs.Get(ctx, "run-1")
	require.NoError(t, err)
	require.EqualValues(t, 21, final.GetItems().GetCompleted())
	sentinel := errors.New("stop")
	_, _, err = runs.Modify(ctx, "run-1", func(*stepflowv1.RunRecord) error { return sentinel })
	require.ErrorIs(t, err, sentinel)
	_, _, err = runs.Modify(ctx, "nope", func(*stepflowv1.RunRecord) error { return nil })
	require.ErrorIs(t, err, queue.ErrRunNotFound)
	_, _, err = runs.Get(ctx, "nope")
	require.ErrorIs(t, err, queue.ErrRunNotFound)

	// Drain the 20 modify events; the watcher sees the last value.
	var last queue.RunEvent
	for last.Record.GetItems().GetCompleted() != 21 {
		last = next()
	}

	// A watcher of one run, updates only.
	w1, err := runs.Watch(ctx, queue.WatchOptions{RunID: "run-2", UpdatesOnly: true})
	require.NoError(t, err)
	require.True(t, (<-w1.Events()).Ready)
	_, err = runs.Put(ctx, &stepflowv1.RunRecord{RunId: "run-2", CancelRequested: true})
	require.NoError(t, err)
	ev = <-w1.Events()
	require.Equal(t, "run-2", ev.RunID)
	require.True(t, ev.Record.GetCancelRequested())
	require.NoError(t, w1.Stop())
	require.NoError(t, w1.Stop())
	_, open := <-w1.Events()
	require.False(t, open)

	require.NoError(t, runs.Delete(ctx, "run-2"))
	require.NoError(t, runs.Delete(ctx, "run-2"))
	for ev = next(); ev.RunID != "run-2" || !ev.Deleted; ev = next() {
	}
	// Create after delete is allowed.
	_, err = runs.Create(ctx, &stepflowv1.RunRecord{RunId: "run-2"})
	require.NoError(t, err)

	_, err = runs.Create(ctx, &stepflowv1.RunRecord{RunId: "bad.id"})
	require.ErrorIs(t, err, queue.ErrInvalidRunID)

	require.Equal(t, "running", queue.StatusName(stepflowv1.RunStatus_RUN_STATUS_RUNNING))
	s, ok := queue.ParseStatus("cancelled")
	require.True(t, ok)
	require.True(t, queue.Terminal(s))
	_, ok = queue.ParseStatus("bogus")
	require.False(t, ok)
}

func TestFlowStore(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	flows, err := queue.OpenFlowStore(ctx, b.js)
	require.NoError(t, err)
	f := value.Marshal(value.MustParse(`{"schema":"https://stepflow.org/schemas/v1/flow.json","name":"f","steps":[]}`))
	id, err := flows.Put(ctx, f)
	require.NoError(t, err)
	require.Equal(t, blob.IDOf(f), id)
	again, err := flows.Put(ctx, f)
	require.NoError(t, err)
	require.Equal(t, id, again)
	got, err := flows.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, f, got)
	_, err = flows.Get(ctx, strings.Repeat("1", 64))
	require.ErrorIs(t, err, queue.ErrFlowNotFound)
	_, err = flows.Get(ctx, "not-an-id")
	require.ErrorIs(t, err, queue.ErrFlowNotFound)
	_, err = flows.Put(ctx, []byte(`"`+strings.Repeat("z", 2<<20)+`"`))
	require.ErrorIs(t, err, queue.ErrPayloadTooLarge)
}

func TestObjectBlobStore(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	store, err := queue.OpenBlobStore(ctx, b.js)
	require.NoError(t, err)

	// The upstream id vector (flow-language.md §11).
	v := value.MustParse(`{"message":"Hello, blobs!","number":42,"nested":{"array":[1,2,3],"boolean":true}}`)
	id, err := store.Put(ctx, blob.KindData, v)
	require.NoError(t, err)
	require.Equal(t, "868591347a854ba1d0f4875b2dd44e1e8335052af03725a9819f89e0142318b0", id)
	got, err := store.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, blob.KindData, got.Kind)
	require.Equal(t, value.Marshal(v), value.Marshal(got.Data))

	// Idempotent: the same data writes nothing new.
	obs, err := b.js.ObjectStore(ctx, queue.BucketBlobs)
	require.NoError(t, err)
	before, err := obs.GetInfo(ctx, id)
	require.NoError(t, err)
	id2, err := store.Put(ctx, blob.KindData, v)
	require.NoError(t, err)
	require.Equal(t, id, id2)
	after, err := obs.GetInfo(ctx, id)
	require.NoError(t, err)
	require.Equal(t, before.NUID, after.NUID)

	// Stored again as a flow, it becomes a flow (flow wins); not back.
	_, err = store.Put(ctx, blob.KindFlow, v)
	require.NoError(t, err)
	got, err = store.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, blob.KindFlow, got.Kind)
	_, err = store.Put(ctx, blob.KindData, v)
	require.NoError(t, err)
	got, err = store.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, blob.KindFlow, got.Kind)
	info, err := obs.GetInfo(ctx, id)
	require.NoError(t, err)
	require.Equal(t, string(blob.KindFlow), info.Metadata[queue.MetaBlobKind])

	// 10 MB round trip, key order kept.
	bigObj := value.NewObject(2)
	bigObj.Set("z", strings.Repeat("0123456789", 1<<20))
	bigObj.Set("a", value.Int(1))
	bigID, err := store.Put(ctx, blob.KindData, bigObj)
	require.NoError(t, err)
	got, err = store.Get(ctx, bigID)
	require.NoError(t, err)
	require.Equal(t, bigID, got.ID)
	require.Equal(t, value.Marshal(bigObj), value.Marshal(got.Data))
	require.Equal(t, []string{"z", "a"}, got.Data.(*value.Object).Keys())

	// Unknown, malformed, bad kind.
	_, err = store.Get(ctx, strings.Repeat("f", 64))
	require.ErrorIs(t, err, blob.ErrNotFound)
	_, err = store.Get(ctx, "nope")
	require.ErrorIs(t, err, blob.ErrNotFound)
	_, err = store.Put(ctx, blob.Kind("other"), v)
	require.ErrorIs(t, err, blob.ErrInvalidKind)

	// Another connection (another worker) sees the same blobs.
	nc2, js2, err := queue.Connect(ctx, b.srv.ClientURL(), queue.ConnectOptions{})
	require.NoError(t, err)
	defer nc2.Close()
	store2, err := queue.OpenBlobStore(ctx, js2)
	require.NoError(t, err)
	got, err = store2.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, blob.KindFlow, got.Kind)
}

func TestMaxDeliveriesAdvisory(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	const run = "poison"
	events := make(chan queue.MaxDeliveriesEvent, 4)
	w, err := queue.WatchMaxDeliveries(ctx, b.js, func(_ context.Context, ev queue.MaxDeliveriesEvent) { events <- ev },
		queue.AdvisoryOptions{Logger: b.log})
	require.NoError(t, err)
	defer w.Stop()

	_, err = queue.PublishItems(ctx, b.js, run, inputs(0, 2), queue.PublishItemsOptions{})
	require.NoError(t, err)
	cons, err := queue.CreateRunConsumer(ctx, b.js, run, queue.RunConsumerConfig{MaxAckPending: 2, AckWait: time.Minute, MaxDeliver: 3})
	require.NoError(t, err)

	// A worker that fails item 0 every time (nak) and does item 1.
	var ev queue.MaxDeliveriesEvent
	naks := 0
	for done := false; !done; {
		batch, err := cons.Fetch(2, jetstream.FetchMaxWait(100*time.Millisecond))
		require.NoError(t, err)
		for _, m := range collect(t, batch) {
			it, err := queue.DecodeItem(m.Data())
			require.NoError(t, err)
			if it.GetIndex() == 0 {
				naks++
				require.NoError(t, m.Nak())
			} else {
				require.NoError(t, m.DoubleAck(ctx))
			}
		}
		select {
		case ev = <-events:
			done = true
		case <-ctx.Done():
			t.Fatal("no max-deliveries advisory")
		default:
		}
	}
	require.Equal(t, 3, naks)
	require.Equal(t, run, ev.RunID)
	require.Equal(t, 0, ev.Index)
	require.EqualValues(t, 3, ev.Deliveries)
	require.NoError(t, ev.Err)
	require.NotNil(t, ev.Item)
	require.JSONEq(t, `{"i":0}`, string(ev.Item.GetInput()))
	require.False(t, ev.Time.IsZero())

	// The work queue keeps the message; the consumer never delivers it again.
	require.Empty(t, fetchAll(t, cons))
	require.Equal(t, uint64(1), subjectCount(t, b.js, queue.StreamItems, queue.ItemSubject(run)))
	info, err := cons.Info(ctx)
	require.NoError(t, err)
	require.Zero(t, info.NumAckPending)
	require.Zero(t, info.NumPending)

	require.NoError(t, queue.DeleteItemMsg(ctx, b.js, ev.StreamSeq))
	require.Zero(t, subjectCount(t, b.js, queue.StreamItems, queue.ItemSubject(run)))
	require.NoError(t, queue.DeleteItemMsg(ctx, b.js, ev.StreamSeq), "deleting again is fine")
	w.Stop()
	w.Stop()
}

func TestInProgressHeartbeatsPreventRedelivery(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	const run = "heartbeat"
	cfg := queue.RunConsumerConfig{MaxAckPending: 1, AckWait: time.Second}
	_, err := queue.PublishItems(ctx, b.js, run, inputs(0, 1), queue.PublishItemsOptions{})
	require.NoError(t, err)
	cons, err := queue.CreateRunConsumer(ctx, b.js, run, cfg)
	require.NoError(t, err)
	got := fetchAll(t, cons)
	require.Len(t, got, 1)

	// A worker heartbeating every HeartbeatInterval keeps the item for
	// three AckWaits without a redelivery.
	tick := time.NewTicker(cfg.HeartbeatInterval())
	defer tick.Stop()
	until := time.Now().Add(3 * cfg.AckWait)
	for now := range tick.C {
		require.NoError(t, got[0].InProgress())
		if now.After(until) {
			break
		}
	}
	info, err := cons.Info(ctx)
	require.NoError(t, err)
	require.Zero(t, info.NumRedelivered)
	require.Equal(t, 1, info.NumAckPending)

	// Once the heartbeats stop (a crashed worker), it is redelivered after AckWait.
	m, err := cons.Next(jetstream.FetchMaxWait(5 * cfg.AckWait))
	require.NoError(t, err)
	md, err := m.Metadata()
	require.NoError(t, err)
	require.EqualValues(t, 2, md.NumDelivered)
	require.NoError(t, m.DoubleAck(ctx))
}

// Blob puts leave no goroutine behind: jetstream.ObjectStore.Put in
// nats.go v1.55.0 leaks one about every thousand calls, which a worker
// serving put_blob for weeks would accumulate. Blobs are also chunked
// like the object store's own puts (three chunks here), and readable
// through it.
func TestObjectBlobStorePutLeavesNoGoroutines(t *testing.T) {
	b := setup(t, true)
	ctx := testCtx(t)
	store, err := queue.OpenBlobStore(ctx, b.js)
	require.NoError(t, err)
	_, err = store.Put(ctx, blob.KindData, value.Int(-1)) // warm the connection up
	require.NoError(t, err)
	opts := goleak.IgnoreCurrent()
	for i := range 3000 {
		_, err := store.Put(ctx, blob.KindData, value.Int(int64(i)))
		require.NoError(t, err)
	}
	require.NoError(t, goleak.Find(opts))

	big := value.String(strings.Repeat("x", 300<<10))
	id, err := store.Put(ctx, blob.KindData, big)
	require.NoError(t, err)
	obs, err := b.js.ObjectStore(ctx, queue.BucketBlobs)
	require.NoError(t, err)
	info, err := obs.GetInfo(ctx, id)
	require.NoError(t, err)
	require.EqualValues(t, 3, info.Chunks)
	data, err := obs.GetBytes(ctx, id)
	require.NoError(t, err)
	require.Equal(t, value.Marshal(big), data)
}

// The leadership lease: one holder at a time; renewed by its holder only;
// taken over by a restarted holder (same id) or by force; free again once
// released or expired.
func TestLease(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	ctx := testCtx(t)
	require.NoError(t, queue.Provision(ctx, b.js, queue.Config{LeaseTTL: time.Second}))
	a, err := queue.OpenLease(ctx, b.js)
	require.NoError(t, err)
	c, err := queue.OpenLease(ctx, b.js)
	require.NoError(t, err)
	require.Equal(t, time.Second, a.TTL())

	ha, hc := queue.Holder{ID: "a", URL: "http://a"}, queue.Holder{ID: "c", URL: "http://c"}
	won, _, err := a.Acquire(ctx, ha, false)
	require.NoError(t, err)
	require.True(t, won)
	won, cur, err := c.Acquire(ctx, hc, false)
	require.NoError(t, err)
	require.False(t, won)
	require.Equal(t, "http://a", cur.URL)
	require.ErrorIs(t, c.Renew(ctx, hc), queue.ErrLeaseLost)
	require.NoError(t, a.Renew(ctx, ha))

	// A forced take-over (an embedded server's coordinator) wins; the old
	// holder's renewal then fails.
	won, _, err = c.Acquire(ctx, hc, true)
	require.NoError(t, err)
	require.True(t, won)
	require.ErrorIs(t, a.Renew(ctx, ha), queue.ErrLeaseLost)
	h, ok, err := a.Holder(ctx)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, "c", h.ID)

	// Released: free at once.
	require.NoError(t, c.Release(ctx))
	_, ok, err = a.Holder(ctx)
	require.NoError(t, err)
	require.False(t, ok)
	won, _, err = a.Acquire(ctx, ha, false)
	require.NoError(t, err)
	require.True(t, won)

	// Not renewed: it expires after its TTL and another takes it.
	changes, err := c.Changes(ctx)
	require.NoError(t, err)
	deadline := time.After(10 * time.Second)
	for {
		won, _, err := c.Acquire(ctx, hc, false)
		require.NoError(t, err)
		if won {
			break
		}
		select {
		case <-changes:
		case <-time.After(200 * time.Millisecond):
		case <-deadline:
			t.Fatal("the lease never expired")
		}
	}
	require.ErrorIs(t, a.Renew(ctx, ha), queue.ErrLeaseLost)
}

// List returns every record written before it, also while another
// writer keeps updating the newest records (the watcher's end marker
// alone comes early then).
func TestRunStoreListWhileWriting(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	store, err := queue.OpenRunStore(ctx, b.js)
	require.NoError(t, err)
	recs, _, err := store.List(ctx)
	require.NoError(t, err)
	require.Empty(t, recs)
	const n = 20
	for i := range n {
		_, err := store.Create(ctx, &stepflowv1.RunRecord{RunId: fmt.Sprintf("run-%02d", i), ItemTotal: 1})
		require.NoError(t, err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := uint64(0); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_, _, err := store.Modify(ctx, fmt.Sprintf("run-%02d", n-1-int(i%3)), func(r *stepflowv1.RunRecord) error {
				r.ItemsPublished = i
				return nil
			})
			if err != nil && !errors.Is(err, queue.ErrRevisionMismatch) {
				t.Error(err)
				return
			}
		}
	}()
	for range 30 {
		recs, bad, err := store.List(ctx)
		require.NoError(t, err)
		require.Empty(t, bad)
		require.Len(t, recs, n)
	}
	close(stop)
	<-done
	require.NoError(t, store.Delete(ctx, "run-00"))
	recs, _, err = store.List(ctx)
	require.NoError(t, err)
	require.Len(t, recs, n-1)
}
