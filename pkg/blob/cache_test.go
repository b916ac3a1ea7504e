package blob_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/value"
)

func cached(i int) (blob.Blob, int) {
	v := value.ObjectOf("i", value.Int(int64(i)))
	return blob.Blob{ID: blob.ID(v), Kind: blob.KindData, Data: v}, len(value.Marshal(v))
}

func TestCacheHitsAndEvictionByBytes(t *testing.T) {
	t.Parallel()
	const size = 100
	entry := int64(size + blob.CacheEntryOverhead)
	c := blob.NewCache(3 * entry)
	require.EqualValues(t, 3*entry, c.MaxBytes())
	b := make([]blob.Blob, 5)
	for i := range b {
		b[i], _ = cached(i)
	}
	for i := range 3 {
		c.Add(b[i], size)
	}
	require.Equal(t, blob.CacheStats{Entries: 3, Bytes: 3 * entry}, c.Stats())

	// Using 0 makes 1 the least recently used: it goes first.
	got, ok := c.Get(b[0].ID)
	require.True(t, ok)
	require.Equal(t, b[0], got)
	c.Add(b[3], size)
	_, ok = c.Get(b[1].ID)
	require.False(t, ok)
	for _, i := range []int{0, 2, 3} {
		_, ok := c.Get(b[i].ID)
		require.True(t, ok, "blob %d", i)
	}
	require.Equal(t, blob.CacheStats{Hits: 4, Misses: 1, Evictions: 1, Entries: 3, Bytes: 3 * entry}, c.Stats())

	// A blob as large as two evicts two; one larger than the budget is
	// not cached and evicts nothing.
	c.Add(b[4], 2*size+blob.CacheEntryOverhead)
	st := c.Stats()
	require.EqualValues(t, 3, st.Evictions)
	require.Equal(t, 2, st.Entries)
	require.Equal(t, 3*entry, st.Bytes)
	_, ok = c.Get(b[3].ID) // the most recently used of the others
	require.True(t, ok)
	huge, _ := cached(99)
	c.Add(huge, int(3*entry))
	_, ok = c.Get(huge.ID)
	require.False(t, ok)
	require.Equal(t, 2, c.Stats().Entries)
}

func TestCacheKindFlowWins(t *testing.T) {
	t.Parallel()
	c := blob.NewCache(1 << 20)
	b, n := cached(1)
	c.Add(b, n)
	flow := b
	flow.Kind = blob.KindFlow
	c.Add(flow, n)
	got, ok := c.Get(b.ID)
	require.True(t, ok)
	require.Equal(t, blob.KindFlow, got.Kind)
	c.Add(b, n)
	got, _ = c.Get(b.ID)
	require.Equal(t, blob.KindFlow, got.Kind)
	require.Equal(t, 1, c.Stats().Entries)
	require.EqualValues(t, n+blob.CacheEntryOverhead, c.Stats().Bytes, "counted once")
}

func TestCacheDisabled(t *testing.T) {
	t.Parallel()
	for _, c := range []*blob.Cache{blob.NewCache(0), blob.NewCache(-1), nil} {
		require.Nil(t, c)
		b, n := cached(1)
		c.Add(b, n)
		_, ok := c.Get(b.ID)
		require.False(t, ok)
		require.Zero(t, c.Stats())
		require.Zero(t, c.MaxBytes())
	}
}

func TestCacheConcurrent(t *testing.T) {
	t.Parallel()
	const budget = 50 * (16 + blob.CacheEntryOverhead)
	c := blob.NewCache(budget)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				b, size := cached((i * (w + 1)) % 300)
				got, ok := c.Get(b.ID)
				if !ok {
					c.Add(b, size)
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
	require.LessOrEqual(t, st.Bytes, int64(budget))
	require.NotZero(t, st.Hits)
	require.NotZero(t, st.Evictions)
}

func TestWithoutCache(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	require.False(t, blob.CacheBypassed(ctx))
	require.True(t, blob.CacheBypassed(blob.WithoutCache(ctx)))
}
