package queue_test

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/value"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// journalServer answers blob gets the way the leading coordinator does,
// from the blobs given to it (the coordinator's side is tested in
// pkg/coordinator).
type journalServer struct {
	mu    sync.Mutex
	blobs map[string]*stepflowv1.Blob
	gets  int
}

func serveJournal(t *testing.T, nc *nats.Conn) *journalServer {
	t.Helper()
	j := &journalServer{blobs: map[string]*stepflowv1.Blob{}}
	sub, err := nc.Subscribe(queue.BlobGetSubject, func(m *nats.Msg) {
		j.mu.Lock()
		defer j.mu.Unlock()
		j.gets++
		b, ok := j.blobs[string(m.Data)]
		_ = m.RespondMsg(queue.BlobGetReply(b.GetData(), blob.Kind(b.GetKind()), ok, nil))
	})
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return j
}

func (j *journalServer) journal(blobs []*stepflowv1.Blob) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, b := range blobs {
		j.blobs[b.GetId()] = b
	}
}

// deferring opens a store with deferred puts on b, as workers do.
func deferring(t *testing.T, b *bundle) *queue.ObjectBlobStore {
	t.Helper()
	s, err := queue.OpenBlobStore(testCtx(t), b.js, queue.WithDeferredPuts(b.nc))
	require.NoError(t, err)
	return s
}

// streamOnly opens a store that reads and writes the blob stream only.
func streamOnly(t *testing.T, b *bundle) *queue.ObjectBlobStore {
	t.Helper()
	s, err := queue.OpenBlobStore(testCtx(t), b.js)
	require.NoError(t, err)
	return s
}

// A small data blob put through a deferring store is written nowhere: it
// is read back from the store, travels with what refers to it, and is
// read from the coordinator's journal by other stores once journaled.
func TestDeferredPuts(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	j := serveJournal(t, b.nc)
	worker, plain, other := deferring(t, b), streamOnly(t, b), deferring(t, b)

	id, err := worker.Put(ctx, blob.KindData, value.MustParse(`{"a":1}`))
	require.NoError(t, err)
	require.Equal(t, 1, worker.DeferredBlobs())
	got, err := worker.Get(ctx, id)
	require.NoError(t, err)
	require.JSONEq(t, `{"a":1}`, string(value.Marshal(got.Data)))
	_, err = plain.Get(ctx, id)
	require.ErrorIs(t, err, blob.ErrNotFound, "not in the blob stream")
	_, err = other.Get(ctx, id)
	require.ErrorIs(t, err, blob.ErrNotFound, "not journaled yet")

	// A result that refers to it carries it, with its data.
	carried, err := worker.UnjournaledBlobs(ctx, []byte(`{"kept":"`+id+`"}`))
	require.NoError(t, err)
	require.Len(t, carried, 1)
	require.Equal(t, `{"a":1}`, string(carried[0].GetData()))
	j.journal(carried)
	worker.BlobsJournaled(carried)
	require.Zero(t, worker.DeferredBlobs())
	got, err = other.Get(ctx, id)
	require.NoError(t, err, "served from the journal")
	require.JSONEq(t, `{"a":1}`, string(value.Marshal(got.Data)))
	_, err = plain.Get(ctx, id)
	require.ErrorIs(t, err, blob.ErrNotFound, "still not in the blob stream")

	// A flow put of a deferred data blob promotes it: written at once,
	// and read as a flow.
	promoted, err := worker.Put(ctx, blob.KindData, value.MustParse(`{"steps":[1]}`))
	require.NoError(t, err)
	require.Equal(t, 1, worker.DeferredBlobs())
	_, err = worker.Put(ctx, blob.KindFlow, value.MustParse(`{"steps":[1]}`))
	require.NoError(t, err)
	require.Zero(t, worker.DeferredBlobs())
	got, err = worker.Get(ctx, promoted)
	require.NoError(t, err)
	require.Equal(t, blob.KindFlow, got.Kind)

	// Flows, and blobs too large to carry inline, are written at once.
	flowID, err := worker.Put(ctx, blob.KindFlow, value.MustParse(`{"steps":[]}`))
	require.NoError(t, err)
	big := value.MustParse(`"` + strings.Repeat("x", 300<<10) + `"`)
	bigID, err := worker.Put(ctx, blob.KindData, big)
	require.NoError(t, err)
	require.Zero(t, worker.DeferredBlobs())
	for _, id := range []string{flowID, bigID} {
		_, err = plain.Get(ctx, id)
		require.NoError(t, err, id)
	}

	// Blobs that together are too large to carry: those past the budget
	// go to the blob stream first, and travel without their data.
	var ids []string
	for i := range 3 {
		id, err := worker.Put(ctx, blob.KindData, value.MustParse(`"`+strings.Repeat(string(rune('a'+i)), 100<<10)+`"`))
		require.NoError(t, err)
		ids = append(ids, `"`+id+`"`)
	}
	require.Equal(t, 3, worker.DeferredBlobs())
	carried, err = worker.UnjournaledBlobs(ctx, []byte(`[`+strings.Join(ids, ",")+`]`))
	require.NoError(t, err)
	require.Len(t, carried, 3)
	require.NotEmpty(t, carried[0].GetData())
	require.NotEmpty(t, carried[1].GetData())
	require.Empty(t, carried[2].GetData())
	_, err = plain.Get(ctx, carried[2].GetId())
	require.NoError(t, err, "written before it travels without its data")
	require.Equal(t, 2, worker.DeferredBlobs())

	// What is left is written to the blob stream when the worker stops.
	require.NoError(t, worker.FlushDeferred(ctx))
	require.Zero(t, worker.DeferredBlobs())
	for _, pb := range carried {
		_, err = plain.Get(ctx, pb.GetId())
		require.NoError(t, err)
	}
}

// Without a coordinator to ask, a blob the blob stream does not have is
// not reported missing (it may be in the journal): the error is
// transient, and the item waits.
func TestDeferredPutsWithoutCoordinator(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	s := deferring(t, b)
	_, err := s.Get(ctx, blob.ID(value.MustParse(`{"nowhere":1}`)))
	require.Error(t, err)
	require.NotErrorIs(t, err, blob.ErrNotFound)
	require.True(t, queue.Transient(err), "%v", err)
	require.ErrorIs(t, err, nats.ErrNoResponders)

	// With one that does not have it either, it is missing.
	serveJournal(t, b.nc)
	_, err = s.Get(ctx, blob.ID(value.MustParse(`{"nowhere":1}`)))
	require.ErrorIs(t, err, blob.ErrNotFound)
}

// A deferred blob nothing carried for half the put-tracking window is
// written to the blob stream by the next put; a result that refers to it
// later still carries it (the tracker keeps it for the whole window).
func TestDeferredPutsExpire(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	serveJournal(t, b.nc)
	s, plain := deferring(t, b), streamOnly(t, b)
	now := time.Now()
	queue.SetDeferredClock(s, func() time.Time { return now })

	old, err := s.Put(ctx, blob.KindData, value.MustParse(`"old"`))
	require.NoError(t, err)
	now = now.Add(queue.DefaultBlobSyncWindow/2 - time.Second)
	_, err = s.Put(ctx, blob.KindData, value.MustParse(`"new"`))
	require.NoError(t, err)
	require.Equal(t, 2, s.DeferredBlobs(), "not old enough yet")
	now = now.Add(2 * time.Second)
	_, err = s.Put(ctx, blob.KindData, value.MustParse(`"newer"`))
	require.NoError(t, err)
	require.Equal(t, 2, s.DeferredBlobs())
	got, err := plain.Get(ctx, old)
	require.NoError(t, err, "written to the blob stream")
	require.JSONEq(t, `"old"`, string(value.Marshal(got.Data)))
	carried, err := s.UnjournaledBlobs(ctx, []byte(`["`+old+`"]`))
	require.NoError(t, err)
	require.Len(t, carried, 1, "still carried to the journal")
}

// Reading without the cache asks for a blob's latest kind: the blob
// stream, where flows are, is read before the coordinator's journal.
func TestDeferredPutsBypassReadsTheStreamFirst(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	j := serveJournal(t, b.nc)
	s, plain := deferring(t, b), streamOnly(t, b)
	data := value.MustParse(`{"steps":[],"output":1}`)
	id := blob.ID(data)
	j.journal([]*stepflowv1.Blob{{Id: id, Kind: string(blob.KindData), Data: value.Marshal(data)}})
	got, err := s.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, blob.KindData, got.Kind, "journaled as data")

	_, err = plain.Put(ctx, blob.KindFlow, data) // stored as a flow elsewhere since
	require.NoError(t, err)
	got, err = s.Get(blob.WithoutCache(ctx), id)
	require.NoError(t, err)
	require.Equal(t, blob.KindFlow, got.Kind)

	// A blob only the journal has is still found without the cache.
	other := value.MustParse(`"journal only"`)
	j.journal([]*stepflowv1.Blob{{Id: blob.ID(other), Kind: string(blob.KindData), Data: value.Marshal(other)}})
	got, err = s.Get(blob.WithoutCache(ctx), blob.ID(other))
	require.NoError(t, err)
	require.JSONEq(t, `"journal only"`, string(value.Marshal(got.Data)))
}
