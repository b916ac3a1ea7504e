package blob_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/value"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestIDVector(t *testing.T) {
	t.Parallel()
	// flow-language.md §11, tests/builtins/blob_test.yaml.
	v := value.MustParse(`{"message":"Hello, blobs!","number":42,"nested":{"array":[1,2,3],"boolean":true}}`)
	require.Equal(t, "868591347a854ba1d0f4875b2dd44e1e8335052af03725a9819f89e0142318b0", blob.ID(v))
	v2 := value.MustParse(`{"simple":"test","complex":{"deeply":{"nested":{"value":"works"}}}}`)
	require.Equal(t, "aa05cc227a02bd66a2a91fde7500be122d28e87c45832d1aa9cb0b432eef7e04", blob.ID(v2))
	require.Equal(t, blob.ID(v), blob.IDOf(value.Marshal(v)))
	// Key order matters.
	require.NotEqual(t, blob.ID(value.MustParse(`{"a":1,"b":2}`)), blob.ID(value.MustParse(`{"b":2,"a":1}`)))
}

func TestValidID(t *testing.T) {
	t.Parallel()
	id := blob.ID(nil)
	require.True(t, blob.ValidID(id))
	require.False(t, blob.ValidID(strings.ToUpper(id)))
	require.False(t, blob.ValidID(id[:63]))
	require.False(t, blob.ValidID("sha256:"+id))
	require.False(t, blob.ValidID(""))
}

type storeCase struct {
	name string
	open func(t *testing.T) blob.Store
}

func stores() []storeCase {
	spill := func(budget int, tagBits uint) func(t *testing.T) blob.Store {
		return func(t *testing.T) blob.Store {
			s, err := blob.NewSpill(t.TempDir(), budget)
			require.NoError(t, err)
			if tagBits > 0 {
				blob.SetTagIndexBits(s, tagBits)
			}
			t.Cleanup(func() { require.NoError(t, s.Close()) })
			return s
		}
	}
	return []storeCase{
		{"memory", func(*testing.T) blob.Store { return blob.NewMemory() }},
		{"spill-all", spill(0, 0)},
		{"spill-mixed", spill(4096, 0)},
		{"spill-all-in-memory", spill(1<<30, 0)},
		{"spill-rescan", spill(0, 11)},
	}
}

// TestStoreConformance runs the same contract against every Store.
func TestStoreConformance(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, sc := range stores() {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()

			t.Run("roundtrip and idempotence", func(t *testing.T) {
				s := sc.open(t)
				v := value.MustParse(`{"b":1.0,"a":[true,null,"ü"]}`)
				id, err := s.Put(ctx, blob.KindData, v)
				require.NoError(t, err)
				require.Equal(t, blob.ID(v), id)
				id2, err := s.Put(ctx, blob.KindData, value.Clone(v))
				require.NoError(t, err)
				require.Equal(t, id, id2)
				b, err := s.Get(ctx, id)
				require.NoError(t, err)
				require.Equal(t, id, b.ID)
				require.Equal(t, blob.KindData, b.Kind)
				require.Equal(t, string(value.Marshal(v)), string(value.Marshal(b.Data)))
			})

			t.Run("not found", func(t *testing.T) {
				s := sc.open(t)
				_, err := s.Get(ctx, blob.ID("missing"))
				require.ErrorIs(t, err, blob.ErrNotFound)
				_, err = s.Get(ctx, "not-an-id")
				require.ErrorIs(t, err, blob.ErrNotFound)
			})

			t.Run("invalid kind", func(t *testing.T) {
				s := sc.open(t)
				_, err := s.Put(ctx, blob.Kind("x"), nil)
				require.ErrorIs(t, err, blob.ErrInvalidKind)
			})

			t.Run("flow kind wins", func(t *testing.T) {
				s := sc.open(t)
				v := value.MustParse(`{"steps":[]}`)
				id, err := s.Put(ctx, blob.KindData, v)
				require.NoError(t, err)
				_, err = s.Put(ctx, blob.KindFlow, v)
				require.NoError(t, err)
				_, err = s.Put(ctx, blob.KindData, v)
				require.NoError(t, err)
				b, err := s.Get(ctx, id)
				require.NoError(t, err)
				require.Equal(t, blob.KindFlow, b.Kind)
			})

			t.Run("many blobs", func(t *testing.T) {
				s := sc.open(t)
				const n = 5000
				ids := make([]string, n)
				for i := range n {
					id, err := s.Put(ctx, blob.KindData, item(i))
					require.NoError(t, err)
					ids[i] = id
				}
				for i := range n {
					b, err := s.Get(ctx, ids[i])
					require.NoError(t, err)
					require.Equal(t, string(value.Marshal(item(i))), string(value.Marshal(b.Data)), "blob %d", i)
				}
				// Again after everything is stored: still idempotent.
				for i := 0; i < n; i += 97 {
					id, err := s.Put(ctx, blob.KindData, item(i))
					require.NoError(t, err)
					require.Equal(t, ids[i], id)
				}
			})

			t.Run("large blob", func(t *testing.T) {
				s := sc.open(t)
				v := value.ObjectOf("text", strings.Repeat("xyz", 100_000))
				id, err := s.Put(ctx, blob.KindData, v)
				require.NoError(t, err)
				b, err := s.Get(ctx, id)
				require.NoError(t, err)
				require.Equal(t, v, b.Data)
			})

			t.Run("concurrent", func(t *testing.T) {
				s := sc.open(t)
				var wg sync.WaitGroup
				errs := make(chan error, 8)
				for w := range 8 {
					wg.Go(func() {
						for i := range 400 {
							// Overlapping ranges: workers store the same blobs.
							v := item(i + 100*w)
							id, err := s.Put(ctx, blob.KindData, v)
							if err != nil {
								errs <- err
								return
							}
							b, err := s.Get(ctx, id)
							if err != nil {
								errs <- err
								return
							}
							if string(value.Marshal(b.Data)) != string(value.Marshal(v)) {
								errs <- fmt.Errorf("blob %s: wrong data", id)
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
			})
		})
	}
}

func item(i int) value.Value {
	return value.ObjectOf(
		"id", value.Int(int64(i)),
		"name", fmt.Sprintf("item-%07d", i),
		"payload", "lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor",
		"score", value.Float(float64(i)/7),
	)
}

func TestSpillStatsAndClose(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	s, err := blob.NewSpill(dir, 2000)
	require.NoError(t, err)
	var ids []string
	for i := range 100 {
		id, err := s.Put(ctx, blob.KindData, item(i))
		require.NoError(t, err)
		ids = append(ids, id)
	}
	st := s.Stats()
	require.Equal(t, 100, st.InMemory+st.Spilled)
	require.Positive(t, st.InMemory)
	require.Positive(t, st.Spilled)
	require.LessOrEqual(t, st.MemoryBytes, 2000)
	require.Positive(t, st.FileBytes)

	require.NoError(t, s.Close())
	require.NoError(t, s.Close()) // idempotent
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Empty(t, entries, "spill file must be removed")
	_, err = s.Get(ctx, ids[0])
	require.ErrorIs(t, err, blob.ErrClosed)
	_, err = s.Put(ctx, blob.KindData, item(1))
	require.ErrorIs(t, err, blob.ErrClosed)
}

func TestSpillBadDir(t *testing.T) {
	t.Parallel()
	_, err := blob.NewSpill("/nonexistent/dir/for/blobs", 0)
	require.Error(t, err)
	require.True(t, errors.Is(err, os.ErrNotExist))
}

// TestSpillHeapPerBlob checks that spilled blobs cost only their index
// entry on the heap (the 1M-blob figure is in BenchmarkSpillMillion).
func TestSpillHeapPerBlob(t *testing.T) {
	if testing.Short() {
		t.Skip("short: slow (200,000 blobs)")
	}
	if raceEnabled {
		t.Skip("the race detector changes the heap; make test runs it again without -race")
	}
	const n = 200_000
	perBlob := spillHeap(t, n) / n
	t.Logf("heap per spilled blob: %d bytes", perBlob)
	require.Less(t, perBlob, uint64(60), "heap per blob")
}

func spillHeap(tb testing.TB, n int) uint64 {
	ctx := context.Background()
	s, err := blob.NewSpill(tb.TempDir(), 0)
	require.NoError(tb, err)
	defer s.Close()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range n {
		if _, err := s.Put(ctx, blob.KindData, item(i)); err != nil {
			tb.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	st := s.Stats()
	require.Equal(tb, n, st.Spilled)
	runtime.KeepAlive(s)
	if after.HeapAlloc < before.HeapAlloc {
		return 0
	}
	return after.HeapAlloc - before.HeapAlloc
}

func BenchmarkSpillPutGet(b *testing.B) {
	ctx := context.Background()
	s, err := blob.NewSpill(b.TempDir(), 0)
	require.NoError(b, err)
	defer s.Close()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		id, err := s.Put(ctx, blob.KindData, item(i))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.Get(ctx, id); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkMemoryPutGet(b *testing.B) {
	ctx := context.Background()
	s := blob.NewMemory()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		id, err := s.Put(ctx, blob.KindData, item(i))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.Get(ctx, id); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkSpillMillion stores 1,000,000 distinct ~150-byte blobs with no
// memory budget and reports the heap they take (MB-heap) and the spill
// file size (MB-file).
func BenchmarkSpillMillion(b *testing.B) {
	if testing.Short() {
		b.Skip("short: slow")
	}
	const n = 1_000_000
	for b.Loop() {
		heap := spillHeap(b, n)
		b.ReportMetric(float64(heap)/(1<<20), "MB-heap")
	}
	b.ReportMetric(float64(len(value.Marshal(item(n/2)))), "B/blob-json")
}
