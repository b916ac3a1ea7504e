package queue_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// BenchmarkBlobPutGet measures put_blob followed by get_blob of a
// distinct 100-byte blob, by 1 and 16 concurrent callers, on an embedded
// server with file storage, with fsync on every write (sync=always, the
// coordinator's embedded default) and with nats-server's default (every
// 2 minutes); with the worker's read cache (the Get is served from
// memory) and without (the Get goes to NATS, as on another worker).
func BenchmarkBlobPutGet(b *testing.B) {
	for _, fsync := range []struct {
		name   string
		policy queue.SyncPolicy
	}{{"always", queue.SyncAlways}, {"2m", queue.SyncPolicy{}}} {
		for _, cached := range []bool{false, true} {
			for _, callers := range []int{1, 16} {
				b.Run(fmt.Sprintf("sync=%s/cache=%t/callers=%d", fsync.name, cached, callers), func(b *testing.B) {
					benchBlobPutGet(b, fsync.policy, callers, cached)
				})
			}
		}
	}
}

func benchBlobPutGet(b *testing.B, fsync queue.SyncPolicy, callers int, cached bool) {
	bb := setupSync(b, true, fsync)
	ctx := testCtx(b)
	var opts []queue.BlobStoreOption
	if cached {
		opts = append(opts, queue.WithBlobCache(blob.NewCache(blob.DefaultCacheBytes)))
	}
	store, err := queue.OpenBlobStore(ctx, bb.js, opts...)
	require.NoError(b, err)
	pad := strings.Repeat("x", 85)
	blob100 := func(i int) value.Value {
		return value.ObjectOf("i", value.Int(int64(i)), "pad", pad[:85-len(fmt.Sprint(i))])
	}
	require.Len(b, value.Marshal(blob100(12345)), 100)

	var mu sync.Mutex
	next := 0
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= b.N {
					return
				}
				id, err := store.Put(ctx, blob.KindData, blob100(i))
				if err != nil {
					b.Error(err)
					return
				}
				got, err := store.Get(ctx, id)
				if err != nil {
					b.Error(err)
					return
				}
				if got.ID != id {
					b.Errorf("got blob %s, want %s", got.ID, id)
					return
				}
			}
		})
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "blobs/s")
	b.StopTimer()
	if cached {
		st := store.Cache().Stats()
		b.ReportMetric(float64(st.Hits)/float64(b.N), "cache-hits/op")
	}
}
