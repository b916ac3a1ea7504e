package queue_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/stepflow-go/stepflow/pkg/queue"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// lossMode says what lossyWriter does with the writes it is told to spoil.
type lossMode int

const (
	// writeThenTimeout makes the write, then answers nats.ErrTimeout: the
	// answer was lost.
	writeThenTimeout lossMode = iota
	// writeThenWait makes the write, then waits for the caller's context
	// to end and answers its error: the caller gave up waiting.
	writeThenWait
	// dropThenTimeout does not write, and answers nats.ErrTimeout: the
	// request was lost.
	dropThenTimeout
)

// lossyWriter passes writes to the real bucket, except the next `spoil`
// ones, which it treats as mode says.
type lossyWriter struct {
	next queue.KVWriter
	mode lossMode

	mu      sync.Mutex
	spoil   int
	spoiled int
}

func (w *lossyWriter) take() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.spoil == 0 {
		return false
	}
	w.spoil--
	w.spoiled++
	return true
}

// lose spoils the next n writes.
func (w *lossyWriter) lose(n int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.spoil = n
}

func (w *lossyWriter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.spoiled
}

func (w *lossyWriter) spoilt(ctx context.Context, write func() error) error {
	switch w.mode {
	case dropThenTimeout:
		return nats.ErrTimeout
	case writeThenWait:
		if err := write(); err != nil {
			return err
		}
		<-ctx.Done()
		return ctx.Err()
	default:
		if err := write(); err != nil {
			return err
		}
		return nats.ErrTimeout
	}
}

func (w *lossyWriter) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	if !w.take() {
		return w.next.Create(ctx, key, value, opts...)
	}
	return 0, w.spoilt(ctx, func() error {
		_, err := w.next.Create(context.WithoutCancel(ctx), key, value, opts...)
		return err
	})
}

func (w *lossyWriter) Update(ctx context.Context, key string, value []byte, revision uint64) (uint64, error) {
	if !w.take() {
		return w.next.Update(ctx, key, value, revision)
	}
	return 0, w.spoilt(ctx, func() error {
		_, err := w.next.Update(context.WithoutCancel(ctx), key, value, revision)
		return err
	})
}

func lossy(mode lossMode) (*lossyWriter, func(queue.KVWriter) queue.KVWriter) {
	w := &lossyWriter{mode: mode}
	return w, func(next queue.KVWriter) queue.KVWriter {
		w.next = next
		return w
	}
}

// shortCtx is a context that ends soon: the caller's patience.
func shortCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(testCtx(t), 300*time.Millisecond)
	t.Cleanup(cancel)
	return ctx
}

// A lease renewal whose answer is lost, but which was written, is
// recognised as this holder's own: within the call (the write is tried
// again, finds the lease moved on, reads it back and finds itself), and
// across calls (a renewal that gave up waiting, followed by the next
// one, which compares against the revision before the lost write). In
// neither case is the lease taken for lost. A true take-over still is.
func TestLeaseRenewalWhoseAnswerWasLost(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	ctx := testCtx(t)
	require.NoError(t, queue.Provision(ctx, b.js, queue.Config{LeaseTTL: 30 * time.Second}))
	kv, err := b.js.KeyValue(ctx, queue.BucketCoordinators)
	require.NoError(t, err)
	revision := func() uint64 {
		e, err := kv.Get(ctx, "leader")
		require.NoError(t, err)
		return e.Revision()
	}

	for _, tc := range []struct {
		name string
		mode lossMode
	}{{"timeout", writeThenTimeout}, {"gave up waiting", writeThenWait}, {"request lost", dropThenTimeout}} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := queue.OpenLease(ctx, b.js)
			require.NoError(t, err)
			w, wrap := lossy(tc.mode)
			queue.WrapLeaseWriter(l, wrap)
			h := queue.Holder{ID: "a", URL: "http://a"}
			won, _, err := l.Acquire(ctx, h, true)
			require.NoError(t, err)
			require.True(t, won)
			before := revision()

			w.lose(1)
			if tc.mode == writeThenWait {
				err := l.Renew(shortCtx(t), h)
				require.ErrorIs(t, err, context.DeadlineExceeded)
				require.NotErrorIs(t, err, queue.ErrLeaseLost)
				require.Greater(t, revision(), before, "the renewal was written")
			} else {
				require.NoError(t, l.Renew(ctx, h))
			}
			require.Equal(t, 1, w.count())
			require.NoError(t, l.Renew(ctx, h), "the lost renewal is taken for another holder's")
			require.NoError(t, l.Renew(ctx, h))
			cur, ok, err := l.Holder(ctx)
			require.NoError(t, err)
			require.True(t, ok)
			require.Equal(t, "a", cur.ID)

			// Another holder (even under the same id: a restart) is
			// still told from a lost answer.
			other, err := queue.OpenLease(ctx, b.js)
			require.NoError(t, err)
			won, _, err = other.Acquire(ctx, h, true)
			require.NoError(t, err)
			require.True(t, won)
			w.lose(1)
			require.ErrorIs(t, l.Renew(ctx, h), queue.ErrLeaseLost)
			require.NoError(t, other.Release(ctx))
		})
	}
}

// A lease acquisition whose answer is lost is the acquirer's.
func TestLeaseAcquireWhoseAnswerWasLost(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	ctx := testCtx(t)
	require.NoError(t, queue.Provision(ctx, b.js, queue.Config{LeaseTTL: 30 * time.Second}))
	l, err := queue.OpenLease(ctx, b.js)
	require.NoError(t, err)
	w, wrap := lossy(writeThenTimeout)
	queue.WrapLeaseWriter(l, wrap)
	w.lose(1)
	h := queue.Holder{ID: "a", URL: "http://a"}
	won, _, err := l.Acquire(ctx, h, false)
	require.NoError(t, err)
	require.True(t, won)
	require.Equal(t, 1, w.count())
	require.NoError(t, l.Renew(ctx, h))
}

// Run-record writes whose answer was lost are recognised: an Update, a
// Create and a Modify each succeed once, with the record they wrote, and
// Modify does not apply its function again to its own write.
func TestRunRecordWritesWhoseAnswerWasLost(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	store, err := queue.OpenRunStore(ctx, b.js)
	require.NoError(t, err)
	w, wrap := lossy(writeThenTimeout)
	queue.WrapRunStoreWriter(store, wrap)

	// Create: not ErrRunExists.
	w.lose(1)
	rev, err := store.Create(ctx, &stepflowv1.RunRecord{RunId: "run-1", ItemTotal: 10})
	require.NoError(t, err)
	rec, got, err := store.Get(ctx, "run-1")
	require.NoError(t, err)
	require.Equal(t, rev, got)
	require.EqualValues(t, 10, rec.GetItemTotal())

	// Update: within the call.
	rec.ItemsPublished = 5
	w.lose(1)
	rev2, err := store.Update(ctx, rec, rev)
	require.NoError(t, err)
	require.Greater(t, rev2, rev)
	stored, got, err := store.Get(ctx, "run-1")
	require.NoError(t, err)
	require.Equal(t, rev2, got)
	require.True(t, proto.Equal(rec, stored))

	// Update: the caller gave up waiting. Its write was made; trying
	// again against the revision it knew is a mismatch (it cannot tell
	// the record from another writer's equal one), and Modify, which
	// re-reads, carries on from it.
	lost := &lossyWriter{mode: writeThenWait}
	queue.WrapRunStoreWriter(store, func(next queue.KVWriter) queue.KVWriter { lost.next = next; return lost })
	rec.ItemsPublished = 7
	lost.lose(1)
	_, err = store.Update(shortCtx(t), rec, rev2)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.NotErrorIs(t, err, queue.ErrRevisionMismatch)
	_, err = store.Update(ctx, rec, rev2)
	require.ErrorIs(t, err, queue.ErrRevisionMismatch)
	stored, rev3, err := store.Get(ctx, "run-1")
	require.NoError(t, err)
	require.Greater(t, rev3, rev2)
	require.EqualValues(t, 7, stored.GetItemsPublished())

	// Another writer's change is still a mismatch.
	other, err := queue.OpenRunStore(ctx, b.js)
	require.NoError(t, err)
	_, err = other.Update(ctx, &stepflowv1.RunRecord{RunId: "run-1", ItemTotal: 10, ItemsPublished: 9}, rev3)
	require.NoError(t, err)
	_, err = store.Update(ctx, rec, rev3)
	require.ErrorIs(t, err, queue.ErrRevisionMismatch)

	// Modify: the function runs once; the write is its.
	lost.mode = writeThenTimeout
	lost.lose(1)
	calls := 0
	out, rev4, err := store.Modify(ctx, "run-1", func(r *stepflowv1.RunRecord) error {
		calls++
		r.ItemsPublished++
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, 1, calls)
	require.EqualValues(t, 10, out.GetItemsPublished())
	stored, got, err = store.Get(ctx, "run-1")
	require.NoError(t, err)
	require.Equal(t, rev4, got)
	require.EqualValues(t, 10, stored.GetItemsPublished())
	require.Equal(t, 2, lost.count())
}
