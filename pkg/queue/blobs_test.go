package queue_test

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/value"
)

const blobStream = "OBJ_" + queue.BucketBlobs

// blobState returns the state of the blob object store's stream.
func blobState(t testing.TB, js jetstream.JetStream) jetstream.StreamState {
	t.Helper()
	s, err := js.Stream(testCtx(t), blobStream)
	require.NoError(t, err)
	info, err := s.Info(testCtx(t))
	require.NoError(t, err)
	return info.State
}

// apiCalls returns how many JetStream API requests the account has served
// (consumer creations among them; direct gets are not API requests).
func apiCalls(t testing.TB, js jetstream.JetStream) uint64 {
	t.Helper()
	info, err := js.AccountInfo(testCtx(t))
	require.NoError(t, err)
	return info.API.Total
}

// tracedJS is a JetStream context on nc that counts its direct gets.
func tracedJS(t testing.TB, nc *nats.Conn) (jetstream.JetStream, *atomic.Int64) {
	t.Helper()
	var gets atomic.Int64
	js, err := jetstream.New(nc, jetstream.WithClientTrace(&jetstream.ClientTrace{
		RequestSent: func(subj string, _ []byte) {
			if strings.Contains(subj, ".DIRECT.GET.") {
				gets.Add(1)
			}
		},
	}))
	require.NoError(t, err)
	return js, &gets
}

// blobOfSize returns a JSON string value whose encoding is n bytes.
func blobOfSize(n int, fill string) value.Value {
	return strings.Repeat(fill, (n-2)/len(fill)+1)[:n-2]
}

// The hot paths: a put is one pipelined publish, a get reads by direct
// get without creating a consumer; small blobs are one chunk on a subject
// named by their id, larger ones are chunked; the object store reads both.
func TestBlobStoreRoundTrip(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	store, err := queue.OpenBlobStore(ctx, b.js)
	require.NoError(t, err)
	require.Nil(t, store.Cache())
	obs, err := b.js.ObjectStore(ctx, queue.BucketBlobs)
	require.NoError(t, err)

	cases := []struct {
		name   string
		v      value.Value
		chunks uint32
	}{
		{"small", value.MustParse(`{"b":1.0,"a":[true,null,"ü"]}`), 1},
		{"one full chunk", blobOfSize(128<<10, "abc"), 1},
		{"just over a chunk", blobOfSize(128<<10+1, "abc"), 2},
		{"chunks beyond max_payload", blobOfSize(2<<20+5, "0123456789"), 17},
	}
	ids := make([]string, len(cases))
	calls := apiCalls(t, b.js)
	calls = apiCalls(t, b.js) - calls // what counting costs
	before := apiCalls(t, b.js)
	for i, c := range cases {
		id, err := store.Put(ctx, blob.KindData, c.v)
		require.NoError(t, err, c.name)
		require.Equal(t, blob.ID(c.v), id)
		ids[i] = id
		got, err := store.Get(ctx, id)
		require.NoError(t, err, c.name)
		require.Equal(t, blob.KindData, got.Kind)
		require.Equal(t, value.Marshal(c.v), value.Marshal(got.Data), c.name)
	}
	// Puts of larger blobs look them up first, by direct get too: no
	// JetStream API request at all, so no consumer was created.
	require.Equal(t, calls, apiCalls(t, b.js)-before)
	require.Zero(t, blobState(t, b.js).Consumers)

	for i, c := range cases {
		info, err := obs.GetInfo(ctx, ids[i])
		require.NoError(t, err, c.name)
		require.Equal(t, c.chunks, info.Chunks, c.name)
		require.Equal(t, string(blob.KindData), info.Metadata[queue.MetaBlobKind])
		if c.chunks == 1 {
			require.Equal(t, ids[i], info.NUID, "a one-chunk blob's chunk subject is named by its id")
		}
		data, err := obs.GetBytes(ctx, ids[i])
		require.NoError(t, err, c.name)
		require.Equal(t, value.Marshal(c.v), data, c.name)
	}
}

// Storing a blob again writes nothing, small or chunked, and keeps its
// kind.
func TestBlobStoreDuplicatePutWritesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	store, err := queue.OpenBlobStore(ctx, b.js)
	require.NoError(t, err)
	other, err := queue.OpenBlobStore(ctx, b.js)
	require.NoError(t, err)
	for _, v := range []value.Value{value.Int(7), blobOfSize(300<<10, "xyz")} {
		id, err := store.Put(ctx, blob.KindData, v)
		require.NoError(t, err)
		st := blobState(t, b.js)
		for _, s := range []*queue.ObjectBlobStore{store, other} {
			again, err := s.Put(ctx, blob.KindData, value.Clone(v))
			require.NoError(t, err)
			require.Equal(t, id, again)
		}
		after := blobState(t, b.js)
		require.Equal(t, st.LastSeq, after.LastSeq, "nothing stored")
		require.Equal(t, st.Msgs, after.Msgs)
	}
}

// KindFlow wins: a data blob stored as a flow becomes one (one info
// message rewritten), and stays one when stored as data again, also when
// both kinds are first stored concurrently.
func TestBlobStoreKindPromotion(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	store, err := queue.OpenBlobStore(ctx, b.js)
	require.NoError(t, err)
	obs, err := b.js.ObjectStore(ctx, queue.BucketBlobs)
	require.NoError(t, err)
	for _, v := range []value.Value{value.MustParse(`{"steps":[]}`), blobOfSize(200<<10, "flow")} {
		id, err := store.Put(ctx, blob.KindData, v)
		require.NoError(t, err)
		info, err := obs.GetInfo(ctx, id)
		require.NoError(t, err)
		st := blobState(t, b.js)

		_, err = store.Put(ctx, blob.KindFlow, v)
		require.NoError(t, err)
		got, err := store.Get(ctx, id)
		require.NoError(t, err)
		require.Equal(t, blob.KindFlow, got.Kind)
		after := blobState(t, b.js)
		require.Equal(t, st.LastSeq+1, after.LastSeq, "one info message")
		require.Equal(t, st.Msgs, after.Msgs, "rolled up")
		promoted, err := obs.GetInfo(ctx, id)
		require.NoError(t, err)
		require.Equal(t, info.NUID, promoted.NUID, "the chunks are kept")
		require.Equal(t, string(blob.KindFlow), promoted.Metadata[queue.MetaBlobKind])

		_, err = store.Put(ctx, blob.KindData, v)
		require.NoError(t, err)
		_, err = store.Put(ctx, blob.KindFlow, v)
		require.NoError(t, err)
		require.Equal(t, after.LastSeq, blobState(t, b.js).LastSeq, "nothing stored")
		got, err = store.Get(ctx, id)
		require.NoError(t, err)
		require.Equal(t, blob.KindFlow, got.Kind)
	}

	// Concurrent first puts of both kinds, through two connections.
	nc2, js2, err := queue.Connect(ctx, b.srv.ClientURL(), queue.ConnectOptions{})
	require.NoError(t, err)
	defer nc2.Close()
	store2, err := queue.OpenBlobStore(ctx, js2)
	require.NoError(t, err)
	for i := range 20 {
		var v value.Value = value.ObjectOf("race", value.Int(int64(i)))
		if i%4 == 3 {
			v = blobOfSize(140<<10+i, "r")
		}
		var wg sync.WaitGroup
		for w := range 6 {
			wg.Go(func() {
				s, kind := store, blob.KindData
				if w%2 == 1 {
					s = store2
				}
				if w == 5 {
					kind = blob.KindFlow
				}
				_, err := s.Put(ctx, kind, v)
				require.NoError(t, err)
			})
		}
		wg.Wait()
		got, err := store.Get(ctx, blob.ID(v))
		require.NoError(t, err)
		require.Equal(t, blob.KindFlow, got.Kind, "blob %d", i)
	}
}

func TestBlobStoreNotFound(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	store, err := queue.OpenBlobStore(ctx, b.js, queue.WithBlobCache(blob.NewCache(1<<20)))
	require.NoError(t, err)
	_, err = store.Get(ctx, blob.ID("missing"))
	require.ErrorIs(t, err, blob.ErrNotFound)
	_, err = store.Get(ctx, "not-an-id")
	require.ErrorIs(t, err, blob.ErrNotFound)
	_, err = store.Put(ctx, blob.Kind("other"), nil)
	require.ErrorIs(t, err, blob.ErrInvalidKind)

	// Deleted through the object store API (nats obj rm): not found, and
	// stored anew by the next put.
	obs, err := b.js.ObjectStore(ctx, queue.BucketBlobs)
	require.NoError(t, err)
	for _, v := range []value.Value{value.Int(42), blobOfSize(300<<10, "del")} {
		id, err := store.Put(ctx, blob.KindData, v)
		require.NoError(t, err)
		require.NoError(t, obs.Delete(ctx, id))
		_, err = store.Get(blob.WithoutCache(ctx), id)
		require.ErrorIs(t, err, blob.ErrNotFound)
		_, err = store.Put(ctx, blob.KindData, v)
		require.NoError(t, err)
		got, err := store.Get(blob.WithoutCache(ctx), id)
		require.NoError(t, err)
		require.Equal(t, value.Marshal(v), value.Marshal(got.Data))
		data, err := obs.GetBytes(ctx, id)
		require.NoError(t, err)
		require.Equal(t, value.Marshal(v), data)
	}

	// Getting from the store's leader (for lagging replicas) reads the same.
	v := value.ObjectOf("leader", true)
	id, err := store.Put(ctx, blob.KindFlow, v)
	require.NoError(t, err)
	raw, kind, err := queue.ReadBlobFromLeader(ctx, store, id)
	require.NoError(t, err)
	require.Equal(t, blob.KindFlow, kind)
	require.Equal(t, value.Marshal(v), raw)
	_, _, err = queue.ReadBlobFromLeader(ctx, store, blob.ID("missing"))
	require.ErrorIs(t, err, blob.ErrNotFound)

	// An object whose chunk is gone is an error, not a blob, and not a
	// wait.
	st, err := b.js.Stream(ctx, blobStream)
	require.NoError(t, err)
	require.NoError(t, st.Purge(ctx, jetstream.WithPurgeSubject("$O."+queue.BucketBlobs+".C."+id)))
	_, err = store.Get(blob.WithoutCache(ctx), id)
	require.Error(t, err)
	require.NotErrorIs(t, err, blob.ErrNotFound)
	require.ErrorContains(t, err, "chunk 1 of 1 not found")
}

// putObjectStoreObject stores an object as jetstream.ObjectStore.Put does
// (a random nuid, no headers on the chunks), as earlier versions did.
func putObjectStoreObject(t *testing.T, js jetstream.JetStream, v value.Value) string {
	t.Helper()
	ctx := testCtx(t)
	raw := value.Marshal(v)
	id, nid := blob.ID(v), nuid.Next()
	const chunk = 128 << 10
	n := 0
	for off := 0; off < len(raw); off += chunk {
		_, err := js.Publish(ctx, "$O."+queue.BucketBlobs+".C."+nid, raw[off:min(off+chunk, len(raw))])
		require.NoError(t, err)
		n++
	}
	h := sha256.Sum256(raw)
	data, err := json.Marshal(jetstream.ObjectInfo{
		ObjectMeta: jetstream.ObjectMeta{Name: id, Metadata: map[string]string{queue.MetaBlobKind: "data"}},
		Bucket:     queue.BucketBlobs, NUID: nid, Size: uint64(len(raw)), Chunks: uint32(n),
		Digest: "SHA-256=" + base64.URLEncoding.EncodeToString(h[:]),
	})
	require.NoError(t, err)
	m := nats.NewMsg("$O." + queue.BucketBlobs + ".M." + base64.URLEncoding.EncodeToString([]byte(id)))
	m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	m.Data = data
	_, err = js.PublishMsg(ctx, m)
	require.NoError(t, err)
	return nid
}

// Objects stored by the object store API (and earlier versions) are read,
// found by puts (not rewritten) and promoted in place.
func TestBlobStoreReadsObjectStoreObjects(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	store, err := queue.OpenBlobStore(ctx, b.js)
	require.NoError(t, err)
	obs, err := b.js.ObjectStore(ctx, queue.BucketBlobs)
	require.NoError(t, err)
	for _, v := range []value.Value{value.ObjectOf("old", true), blobOfSize(260<<10, "old")} {
		nid := putObjectStoreObject(t, b.js, v)
		id := blob.ID(v)
		got, err := store.Get(ctx, id)
		require.NoError(t, err)
		require.Equal(t, value.Marshal(v), value.Marshal(got.Data))
		require.Equal(t, blob.KindData, got.Kind)

		_, err = store.Put(ctx, blob.KindData, v)
		require.NoError(t, err)
		_, err = store.Put(ctx, blob.KindFlow, v)
		require.NoError(t, err)
		info, err := obs.GetInfo(ctx, id)
		require.NoError(t, err)
		require.Equal(t, nid, info.NUID)
		require.Equal(t, string(blob.KindFlow), info.Metadata[queue.MetaBlobKind])
		got, err = store.Get(ctx, id)
		require.NoError(t, err)
		require.Equal(t, blob.KindFlow, got.Kind)
		require.Equal(t, value.Marshal(v), value.Marshal(got.Data))
	}
}

// With a cache, a get after a put, or a second get, does not go to NATS;
// a kind that went stale (promoted through another store) is re-read
// with blob.WithoutCache.
func TestBlobStoreCache(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	js, gets := tracedJS(t, b.nc)
	cache := blob.NewCache(1 << 20)
	store, err := queue.OpenBlobStore(ctx, js, queue.WithBlobCache(cache))
	require.NoError(t, err)
	require.Same(t, cache, store.Cache())
	other, err := queue.OpenBlobStore(ctx, b.js)
	require.NoError(t, err)

	v := value.ObjectOf("cached", value.Int(1))
	id, err := store.Put(ctx, blob.KindData, v)
	require.NoError(t, err)
	require.Zero(t, gets.Load(), "a first put reads nothing")
	got, err := store.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, blob.KindData, got.Kind)
	require.Zero(t, gets.Load())
	require.Equal(t, blob.CacheStats{Hits: 1, Entries: 1, Bytes: cache.Stats().Bytes}, cache.Stats())

	// Put elsewhere: read from NATS once (info and chunk), then cached.
	w := value.ObjectOf("elsewhere", value.Int(2))
	wid, err := other.Put(ctx, blob.KindData, w)
	require.NoError(t, err)
	for range 3 {
		got, err = store.Get(ctx, wid)
		require.NoError(t, err)
		require.Equal(t, value.Marshal(w), value.Marshal(got.Data))
	}
	require.EqualValues(t, 2, gets.Load())
	st := cache.Stats()
	require.EqualValues(t, 3, st.Hits)
	require.EqualValues(t, 1, st.Misses)
	require.Equal(t, 2, st.Entries)

	// Promoted to a flow through the other store: the cached kind is
	// stale until read past the cache, which refreshes it.
	_, err = other.Put(ctx, blob.KindFlow, w)
	require.NoError(t, err)
	got, err = store.Get(ctx, wid)
	require.NoError(t, err)
	require.Equal(t, blob.KindData, got.Kind)
	got, err = store.Get(blob.WithoutCache(ctx), wid)
	require.NoError(t, err)
	require.Equal(t, blob.KindFlow, got.Kind)
	gets.Store(0)
	got, err = store.Get(ctx, wid)
	require.NoError(t, err)
	require.Equal(t, blob.KindFlow, got.Kind)
	require.Zero(t, gets.Load())

	// Storing as a flow through the cached store updates the cache too.
	_, err = store.Put(ctx, blob.KindFlow, v)
	require.NoError(t, err)
	gets.Store(0)
	got, err = store.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, blob.KindFlow, got.Kind)
	require.Zero(t, gets.Load())
}

// Puts and gets from many goroutines on two connections, some blobs
// chunked, with and without a cache.
func TestBlobStoreConcurrent(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	nc2, js2, err := queue.Connect(ctx, b.srv.ClientURL(), queue.ConnectOptions{})
	require.NoError(t, err)
	defer nc2.Close()
	s1, err := queue.OpenBlobStore(ctx, b.js, queue.WithBlobCache(blob.NewCache(256<<10)))
	require.NoError(t, err)
	s2, err := queue.OpenBlobStore(ctx, js2)
	require.NoError(t, err)
	item := func(i int) value.Value {
		if i%50 == 0 {
			return blobOfSize(130<<10+i, "big")
		}
		return value.ObjectOf("n", value.Int(int64(i)))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Go(func() {
			put, get := s1, s2
			if w%2 == 1 {
				put, get = s2, s1
			}
			for i := range 150 {
				v := item(i + 40*w) // overlapping: workers store the same blobs
				kind := blob.KindData
				if i%7 == 0 {
					kind = blob.KindFlow
				}
				id, err := put.Put(ctx, kind, v)
				if err == nil {
					var got blob.Blob
					if got, err = get.Get(ctx, id); err == nil && string(value.Marshal(got.Data)) != string(value.Marshal(v)) {
						err = fmt.Errorf("blob %s: wrong data", id)
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Zero(t, blobState(t, b.js).Consumers)
	st := s1.Cache().Stats()
	require.LessOrEqual(t, st.Bytes, int64(256<<10))
	require.NotZero(t, st.Evictions)
}
