package blob_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/value"
)

func cached(i int) blob.Blob {
	v := value.ObjectOf("i", value.Int(int64(i)))
	return blob.Blob{ID: blob.ID(v), Kind: blob.KindData, Data: v}
}

// entrySize is what a cache counts for b.
func entrySize(b blob.Blob) int64 { return blob.MemSize(b.Data) + blob.CacheEntryOverhead }

func TestCacheHitsAndEvictionByBytes(t *testing.T) {
	t.Parallel()
	b := make([]blob.Blob, 5)
	for i := range b {
		b[i] = cached(i)
	}
	entry := entrySize(b[0]) // the same for all five
	c := blob.NewCache(3 * entry)
	require.EqualValues(t, 3*entry, c.MaxBytes())
	for i := range 3 {
		c.Add(b[i])
	}
	require.Equal(t, blob.CacheStats{Entries: 3, Bytes: 3 * entry}, c.Stats())

	// Using 0 makes 1 the least recently used: it goes first.
	got, ok := c.Get(b[0].ID)
	require.True(t, ok)
	require.Equal(t, b[0], got)
	c.Add(b[3])
	_, ok = c.Get(b[1].ID)
	require.False(t, ok)
	for _, i := range []int{0, 2, 3} {
		_, ok := c.Get(b[i].ID)
		require.True(t, ok, "blob %d", i)
	}
	require.Equal(t, blob.CacheStats{Hits: 4, Misses: 1, Evictions: 1, Entries: 3, Bytes: 3 * entry}, c.Stats())

	// A blob as large as two entries evicts two; one larger than the
	// budget is not cached and evicts nothing.
	s := strings.Repeat("s", int(2*entry-blob.MemSize("")-blob.CacheEntryOverhead))
	double := blob.Blob{ID: blob.ID(s), Kind: blob.KindData, Data: s}
	require.Equal(t, 2*entry, entrySize(double))
	c.Add(double)
	st := c.Stats()
	require.EqualValues(t, 3, st.Evictions)
	require.Equal(t, 2, st.Entries)
	require.Equal(t, 3*entry, st.Bytes)
	_, ok = c.Get(b[3].ID) // the most recently used of the others
	require.True(t, ok)
	huge := strings.Repeat("h", int(3*entry))
	c.Add(blob.Blob{ID: blob.ID(huge), Kind: blob.KindData, Data: huge})
	_, ok = c.Get(blob.ID(huge))
	require.False(t, ok)
	require.Equal(t, 2, c.Stats().Entries)
}

func TestCacheKindFlowWins(t *testing.T) {
	t.Parallel()
	c := blob.NewCache(1 << 20)
	b := cached(1)
	c.Add(b)
	flow := b
	flow.Kind = blob.KindFlow
	c.Add(flow)
	got, ok := c.Get(b.ID)
	require.True(t, ok)
	require.Equal(t, blob.KindFlow, got.Kind)
	c.Add(b)
	got, _ = c.Get(b.ID)
	require.Equal(t, blob.KindFlow, got.Kind)
	require.Equal(t, 1, c.Stats().Entries)
	require.Equal(t, entrySize(b), c.Stats().Bytes, "counted once")
}

func TestCacheDisabled(t *testing.T) {
	t.Parallel()
	for _, c := range []*blob.Cache{blob.NewCache(0), blob.NewCache(-1), nil} {
		require.Nil(t, c)
		b := cached(1)
		c.Add(b)
		_, ok := c.Get(b.ID)
		require.False(t, ok)
		require.Zero(t, c.Stats())
		require.Zero(t, c.MaxBytes())
	}
}

func TestCacheConcurrent(t *testing.T) {
	t.Parallel()
	budget := 50 * entrySize(cached(100))
	c := blob.NewCache(budget)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				b := cached((i * (w + 1)) % 300)
				got, ok := c.Get(b.ID)
				if !ok {
					c.Add(b)
					continue
				}
				if got.ID != b.ID || string(value.Marshal(got.Data)) != string(value.Marshal(b.Data)) {
					errs <- fmt.Errorf("cache returned %s for %s", got.ID, b.ID)
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
	st := c.Stats()
	require.EqualValues(t, 8*2000, st.Hits+st.Misses)
	require.LessOrEqual(t, st.Bytes, budget)
	require.NotZero(t, st.Hits)
	require.NotZero(t, st.Evictions)
}

func TestWithoutCache(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	require.False(t, blob.CacheBypassed(ctx))
	require.True(t, blob.CacheBypassed(blob.WithoutCache(ctx)))
}

// MemSize is close to what parsed values take on the heap.
func TestMemSize(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocations; make test runs it again without -race")
	}
	for _, shape := range []func(i int) string{
		func(i int) string { return fmt.Sprintf(`{"i":%d,"pad":"%085d"}`, i, i) },
		func(i int) string {
			return fmt.Sprintf(`{"id":%d,"name":"item %d","tags":["a","b","c"],"score":%d.5,"nested":{"x":1,"y":[1,2,3,4,5]}}`, i, i, i)
		},
		func(i int) string { return fmt.Sprintf(`[%q,true,null,[],{}]`, strings.Repeat("x", i%300)) },
	} {
		const n = 20000
		keep := make([]value.Value, n)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		var est int64
		for i := range n {
			keep[i] = value.MustParse(shape(i))
			est += blob.MemSize(keep[i])
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		heap := int64(after.HeapAlloc - before.HeapAlloc)
		runtime.KeepAlive(keep)
		ratio := float64(est) / float64(heap)
		t.Logf("%s: estimated %d, heap %d (%.2f)", shape(1), est, heap, ratio)
		require.InDelta(t, 1, ratio, 0.35, shape(1))
	}
}
