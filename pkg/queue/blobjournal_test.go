package queue_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/value"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

func TestBlobIDsIn(t *testing.T) {
	t.Parallel()
	a, b := strings.Repeat("a", 64), strings.Repeat("0123456789abcdef", 4)
	var got []string
	queue.BlobIDsIn([]byte(`{"x":"`+a+`","y":["`+b+`",{"`+a+`":1}],"z":"`+strings.Repeat("A", 64)+`","w":"`+a+`0","v":"`+a[:63]+`"}`),
		func(id string) { got = append(got, id) })
	require.Equal(t, []string{a, b, a}, got, "ids anywhere, keys included; not upper case, longer or shorter strings")
	queue.BlobIDsIn([]byte(`"`+a+`"`), func(id string) { got = append(got, id) })
	require.Len(t, got, 4, "a document that is only an id")
}

func TestBlobStreamPersistsAsynchronouslyOnOneServer(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	s, err := b.js.Stream(testCtx(t), "OBJ_"+queue.BucketBlobs)
	require.NoError(t, err)
	require.Equal(t, jetstream.AsyncPersistMode, s.CachedInfo().Config.PersistMode)
	// Provisioning again keeps it (the server does not let it change).
	require.NoError(t, queue.Provision(testCtx(t), b.js, queue.Config{}))
	// The object store API still reads the bucket.
	_, err = b.js.ObjectStore(testCtx(t), queue.BucketBlobs)
	require.NoError(t, err)
}

func TestUnjournaledBlobs(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	tracking, err := queue.OpenBlobStore(ctx, b.js, queue.WithPutTracking(time.Minute))
	require.NoError(t, err)
	plain, err := queue.OpenBlobStore(ctx, b.js)
	require.NoError(t, err)
	now := time.Now()
	queue.SetPutTrackerClock(tracking, func() time.Time { return now })

	put := func(s *queue.ObjectBlobStore, json string) string {
		id, err := s.Put(ctx, blob.KindData, value.MustParse(json))
		require.NoError(t, err)
		return id
	}
	other := put(plain, `{"put":"elsewhere"}`)
	inner := put(tracking, `{"inner":1}`)
	outer := put(tracking, fmt.Sprintf(`{"ref":%q}`, inner))
	unrelated := put(tracking, `{"unrelated":1}`)
	big := put(tracking, `"`+strings.Repeat("x", 300<<10)+`"`)

	result := []byte(fmt.Sprintf(`{"outcome":"success","result":{"a":%q,"b":%q,"c":%q}}`, outer, other, big))
	blobs, err := tracking.UnjournaledBlobs(ctx, result)
	require.NoError(t, err)
	byID := map[string]*stepflowv1.Blob{}
	for _, bl := range blobs {
		byID[bl.GetId()] = bl
	}
	require.Len(t, byID, 3, "the referenced blobs put here and the one they refer to; not a blob put elsewhere, nor an unreferenced one")
	require.Contains(t, byID, outer)
	require.Contains(t, byID, inner)
	require.Contains(t, byID, big)
	require.NotContains(t, byID, unrelated)
	require.JSONEq(t, fmt.Sprintf(`{"ref":%q}`, inner), string(byID[outer].GetData()))
	require.Equal(t, "data", byID[inner].GetKind())
	require.Empty(t, byID[big].GetData(), "a blob beyond the inline budget goes without its data")

	nothing, err := plain.UnjournaledBlobs(ctx, result)
	require.NoError(t, err)
	require.Empty(t, nothing, "a store without tracking carries nothing")

	tracking.BlobsJournaled(blobs)
	again, err := tracking.UnjournaledBlobs(ctx, result)
	require.NoError(t, err)
	require.Empty(t, again, "journaled blobs are not carried again")

	// A blob older than the window: the stream has synced it itself.
	late := put(tracking, `{"late":1}`)
	now = now.Add(2 * time.Minute)
	old, err := tracking.UnjournaledBlobs(ctx, []byte(fmt.Sprintf(`[%q]`, late)))
	require.NoError(t, err)
	require.Empty(t, old)
	require.Zero(t, tracking.TrackedPutsDropped())
}

func TestJournalBlobsRequest(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	ctx := testCtx(t)
	got := make(chan *stepflowv1.BlobJournal, 1)
	sub, err := queue.SubscribeResults(b.nc, func(m *nats.Msg) {
		require.Equal(t, queue.BlobJournalSubject, m.Subject)
		j, err := queue.DecodeBlobJournal(m.Data)
		require.NoError(t, err)
		got <- j
		_ = m.RespondMsg(queue.ResultReply(queue.ResultStored, nil))
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	blobs := []*stepflowv1.Blob{{Id: strings.Repeat("b", 64), Kind: "data", Data: []byte(`1`)}}
	require.NoError(t, queue.JournalBlobs(ctx, b.nc, blobs))
	require.Equal(t, strings.Repeat("b", 64), (<-got).GetBlobs()[0].GetId())

	// A refusal is an error.
	require.NoError(t, sub.Unsubscribe())
	sub2, err := queue.SubscribeResults(b.nc, func(m *nats.Msg) {
		_ = m.RespondMsg(queue.ResultReply("", fmt.Errorf("disk full")))
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub2.Unsubscribe() })
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	require.ErrorIs(t, queue.JournalBlobs(cctx, b.nc, blobs), queue.ErrResultRefused)

	// A coordinator of an earlier release drops the request as a
	// malformed result: that is no journaling either.
	require.NoError(t, sub2.Unsubscribe())
	sub3, err := queue.SubscribeResults(b.nc, func(m *nats.Msg) {
		_ = m.RespondMsg(queue.ResultReply(queue.ResultDropped, nil))
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub3.Unsubscribe() })
	require.ErrorIs(t, queue.JournalBlobs(cctx, b.nc, blobs), queue.ErrResultRefused)
}

func TestResultBatchAnswers(t *testing.T) {
	t.Parallel()
	reply, err := queue.ResultBatchReply([]queue.ResultBatchOutcome{
		{Answer: queue.ResultAnswer{Status: queue.ResultStored, ItemAcked: true}},
		{Err: fmt.Errorf("no space left on device")},
		{Answer: queue.ResultAnswer{Status: queue.ResultDuplicate}},
	})
	require.NoError(t, err)
	outs, err := queue.ParseResultBatchReply(reply, 3)
	require.NoError(t, err)
	require.Equal(t, queue.ResultAnswer{Status: queue.ResultStored, ItemAcked: true}, outs[0].Answer)
	require.ErrorIs(t, outs[1].Err, queue.ErrResultRefused)
	require.ErrorContains(t, outs[1].Err, "no space left on device")
	require.Equal(t, queue.ResultDuplicate, outs[2].Answer.Status)

	_, err = queue.ParseResultBatchReply(reply, 2)
	require.ErrorIs(t, err, queue.ErrNoBatchAnswer, "an answer for another number of results")
	_, err = queue.ParseResultBatchReply(queue.ResultReply(queue.ResultDropped, nil), 2)
	require.ErrorIs(t, err, queue.ErrNoBatchAnswer, "a coordinator of an earlier release")
	_, err = queue.ParseResultBatchReply(queue.ResultReply("", fmt.Errorf("stopping")), 2)
	require.ErrorIs(t, err, queue.ErrResultRefused, "refused as a whole")
	bad := queue.ResultReplyAcked(queue.ResultStored)
	bad.Header.Set(queue.ResultBatchHeader, "2")
	bad.Data = []byte{0xff}
	_, err = queue.ParseResultBatchReply(bad, 2)
	require.ErrorIs(t, err, queue.ErrBadMessage)
}
