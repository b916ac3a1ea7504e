package reorder

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// result returns the encoded result used for item i.
func result(i int) []byte {
	return []byte(`{"i":` + strconv.Itoa(i) + `,"pad":"` + strings.Repeat("x", i%7) + `"}`)
}

// expected returns the output for items 0..n-1.
func expected(n int) string {
	var b strings.Builder
	for i := range n {
		b.Write(result(i))
		b.WriteByte('\n')
	}
	return b.String()
}

// putAll puts the results for order, in that order.
func putAll(t testing.TB, w *Writer, order []int) {
	t.Helper()
	for _, i := range order {
		require.NoError(t, w.Put(i, result(i)))
	}
}

// dirEntries returns the names of the files in dir.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestInOrder(t *testing.T) {
	var out bytes.Buffer
	dir := t.TempDir()
	w := NewWriter(&out, WithMaxBufferedBytes(0), WithSpillDir(dir))
	for i := range 100 {
		require.NoError(t, w.Put(i, result(i)))
		require.Equal(t, i+1, w.Written())
		require.Equal(t, 0, w.Pending())
	}
	require.NoError(t, w.Close())
	require.Equal(t, expected(100), out.String())
	require.Empty(t, dirEntries(t, dir), "in-order results never spill")
}

func TestEmpty(t *testing.T) {
	var out bytes.Buffer
	w := NewWriter(&out)
	require.Equal(t, 0, w.Written())
	require.NoError(t, w.Close())
	require.Empty(t, out.String())
}

func TestReverseOrderSpills(t *testing.T) {
	const n = 1000
	var out bytes.Buffer
	dir := t.TempDir()
	w := NewWriter(&out, WithMaxBufferedBytes(100), WithSpillDir(dir))
	for i := n - 1; i > 0; i-- {
		require.NoError(t, w.Put(i, result(i)))
	}
	require.Equal(t, 0, w.Written())
	require.Equal(t, n-1, w.Pending())
	require.Len(t, dirEntries(t, dir), 1, "results beyond the budget are spilled")
	require.LessOrEqual(t, w.memBytes, 100)

	require.NoError(t, w.Put(0, result(0)))
	require.Equal(t, n, w.Written())
	require.Equal(t, 0, w.Pending())
	require.Zero(t, w.spillSize, "drained spill file is truncated")

	require.NoError(t, w.Close())
	require.Equal(t, expected(n), out.String())
	require.Empty(t, dirEntries(t, dir), "spill file removed")
}

func TestStreamsContiguousResults(t *testing.T) {
	var out bytes.Buffer
	w := NewWriter(&out)
	require.NoError(t, w.Put(1, result(1)))
	require.NoError(t, w.Put(2, result(2)))
	require.NoError(t, w.Flush())
	require.Empty(t, out.String(), "nothing before 0 arrived")

	require.NoError(t, w.Put(0, result(0)))
	require.Equal(t, 3, w.Written())
	require.NoError(t, w.Put(4, result(4)))
	require.NoError(t, w.Flush())
	require.Equal(t, expected(3), out.String(), "0..2 are written, 4 waits for 3")

	require.NoError(t, w.Put(3, result(3)))
	require.NoError(t, w.Close())
	require.Equal(t, expected(5), out.String())
}

func TestRandomPermutations(t *testing.T) {
	const n = 10_000
	for _, budget := range []int{0, 64, 1000, DefaultMaxBufferedBytes} {
		for seed := range uint64(3) {
			t.Run(fmt.Sprintf("budget=%d/seed=%d", budget, seed), func(t *testing.T) {
				rng := rand.New(rand.NewPCG(seed, 42))
				order := rng.Perm(n)
				var out bytes.Buffer
				dir := t.TempDir()
				w := NewWriter(&out, WithMaxBufferedBytes(budget), WithSpillDir(dir))
				for _, i := range order {
					require.NoError(t, w.Put(i, result(i)))
					require.LessOrEqual(t, w.memBytes, budget)
				}
				require.Equal(t, n, w.Written())
				require.NoError(t, w.Close())
				require.Equal(t, expected(n), out.String())
				require.Empty(t, dirEntries(t, dir))
			})
		}
	}
}

func TestInterleavedSpillAndReuse(t *testing.T) {
	// Several rounds that spill and drain, so the spill file is truncated
	// and reused while other results are still buffered in memory.
	var out bytes.Buffer
	w := NewWriter(&out, WithMaxBufferedBytes(30), WithSpillDir(t.TempDir()))
	next := 0
	for round := range 20 {
		size := 5 + round%7
		// Put a block in reverse order, then the first of it.
		for i := next + size - 1; i > next; i-- {
			require.NoError(t, w.Put(i, result(i)))
		}
		require.NoError(t, w.Put(next, result(next)))
		next += size
		require.Equal(t, next, w.Written())
	}
	require.NoError(t, w.Close())
	require.Equal(t, expected(next), out.String())
}

func TestResultNotRetained(t *testing.T) {
	var out bytes.Buffer
	w := NewWriter(&out, WithMaxBufferedBytes(1<<20))
	buf := []byte(`"one"`)
	require.NoError(t, w.Put(1, buf))
	copy(buf, `"two"`)
	require.NoError(t, w.Put(0, []byte(`"zero"`)))
	require.NoError(t, w.Close())
	require.Equal(t, "\"zero\"\n\"one\"\n", out.String())
}

func TestDuplicate(t *testing.T) {
	var out bytes.Buffer
	w := NewWriter(&out, WithMaxBufferedBytes(5), WithSpillDir(t.TempDir()))
	require.NoError(t, w.Put(0, result(0)))
	require.NoError(t, w.Put(2, []byte("2"))) // in memory
	require.NoError(t, w.Put(3, result(3)))   // spilled

	for _, i := range []int{0, 2, 3} {
		err := w.Put(i, result(i))
		require.ErrorIs(t, err, ErrDuplicate, "index %d", i)
	}
	require.EqualError(t, w.Put(0, nil), "reorder: put result 0: duplicate result (already written)")
	require.ErrorIs(t, w.Put(-1, nil), ErrNegativeIndex)

	// Errors do not disturb the writer.
	require.NoError(t, w.Put(1, result(1)))
	require.NoError(t, w.Close())
	require.Equal(t, string(result(0))+"\n"+string(result(1))+"\n2\n"+string(result(3))+"\n", out.String())
}

func TestGapAtClose(t *testing.T) {
	var out bytes.Buffer
	dir := t.TempDir()
	w := NewWriter(&out, WithMaxBufferedBytes(0), WithSpillDir(dir))
	putAll(t, w, []int{0, 1, 2, 4, 7, 5})
	require.Len(t, dirEntries(t, dir), 1)

	err := w.Close()
	require.ErrorIs(t, err, ErrGap)
	require.EqualError(t, err, "reorder: missing result for index 3: 3 later results (from index 4 on) were not written")
	require.Equal(t, expected(3), out.String(), "everything before the gap is flushed")
	require.Empty(t, dirEntries(t, dir), "spill file removed despite the gap")

	// Idempotent: same result again, no panic.
	require.Equal(t, err, w.Close())
	require.ErrorIs(t, w.Put(3, result(3)), ErrClosed)
	require.ErrorIs(t, w.Flush(), ErrClosed)
}

func TestCloseIdempotent(t *testing.T) {
	w := NewWriter(&bytes.Buffer{})
	require.NoError(t, w.Close())
	require.NoError(t, w.Close())
}

// failWriter fails every write after the first ok bytes.
type failWriter struct {
	ok  int
	err error
}

func (f *failWriter) Write(p []byte) (int, error) {
	if len(p) <= f.ok {
		f.ok -= len(p)
		return len(p), nil
	}
	n := f.ok
	f.ok = 0
	return n, f.err
}

func TestOutputErrorIsSticky(t *testing.T) {
	boom := errors.New("disk full")
	w := NewWriter(&failWriter{err: boom})
	require.NoError(t, w.Put(0, result(0))) // buffered
	err := w.Flush()
	require.ErrorIs(t, err, boom)
	require.EqualError(t, err, "reorder: flush output: disk full")
	require.ErrorIs(t, w.Put(1, result(1)), boom)
	require.ErrorIs(t, w.Close(), boom)
}

func TestLargeResultGoesThroughBuffers(t *testing.T) {
	// A result bigger than the output buffer and than the budget.
	big := []byte(`"` + strings.Repeat("z", 200<<10) + `"`)
	var out bytes.Buffer
	w := NewWriter(&out, WithMaxBufferedBytes(1024), WithSpillDir(t.TempDir()))
	require.NoError(t, w.Put(1, big))
	require.NoError(t, w.Put(2, []byte("2")))
	require.NoError(t, w.Put(0, []byte("0")))
	require.NoError(t, w.Close())
	require.Equal(t, "0\n"+string(big)+"\n2\n", out.String())
}

func TestSpillDirError(t *testing.T) {
	missing := t.TempDir() + "/does-not-exist"
	w := NewWriter(&bytes.Buffer{}, WithMaxBufferedBytes(0), WithSpillDir(missing))
	err := w.Put(1, result(1))
	require.ErrorIs(t, err, os.ErrNotExist)
	require.ErrorContains(t, err, "reorder: create spill file")
	require.ErrorIs(t, w.Close(), os.ErrNotExist)
}

func TestConcurrentPut(t *testing.T) {
	const (
		n       = 20_000
		workers = 16
	)
	var out bytes.Buffer
	dir := t.TempDir()
	w := NewWriter(&out, WithMaxBufferedBytes(2048), WithSpillDir(dir))

	// Workers take indexes from a shared queue, like an executor's pool,
	// so results complete roughly but not exactly in order.
	queue := make(chan int)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range queue {
				if err := w.Put(i, result(i)); err != nil {
					errs <- err
					return
				}
				_ = w.Written()
			}
		})
	}
	for i := range n {
		queue <- i
	}
	close(queue)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	require.Equal(t, n, w.Written())
	require.NoError(t, w.Close())
	require.Equal(t, expected(n), out.String())
	require.Empty(t, dirEntries(t, dir))
}

func TestConcurrentRandomOrder(t *testing.T) {
	// Each goroutine owns a random subset of indexes and puts them in
	// random order, forcing heavy spilling under -race.
	const (
		n       = 5000
		workers = 8
	)
	rng := rand.New(rand.NewPCG(7, 7))
	order := rng.Perm(n)
	var out bytes.Buffer
	w := NewWriter(&out, WithMaxBufferedBytes(64), WithSpillDir(t.TempDir()))
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for g := range workers {
		wg.Go(func() {
			for k := g; k < n; k += workers {
				if err := w.Put(order[k], result(order[k])); err != nil {
					errs[g] = err
					return
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	require.NoError(t, w.Close())
	require.Equal(t, expected(n), out.String())
}

// discard is io.Discard without the ReaderFrom fast path.
type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func BenchmarkWindowed(b *testing.B) {
	// 1,000,000 results, each arriving at most ~64 positions from its
	// place: the normal case for a worker pool of 64.
	const (
		n      = 1_000_000
		window = 64
	)
	rng := rand.New(rand.NewPCG(1, 2))
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	for start := 0; start < n; start += window {
		end := min(start+window, n)
		rng.Shuffle(end-start, func(i, j int) {
			order[start+i], order[start+j] = order[start+j], order[start+i]
		})
	}
	res := []byte(`{"status":"ok","output":{"value":12345,"text":"some result text"}}`)
	b.SetBytes(int64(n * (len(res) + 1)))
	b.ReportAllocs()
	for b.Loop() {
		w := NewWriter(discard{})
		for _, i := range order {
			if err := w.Put(i, res); err != nil {
				b.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/result")
}

func BenchmarkReversedSpill(b *testing.B) {
	// 100,000 results in reverse order with a 64 KiB budget: almost all of
	// them go through the spill file.
	const n = 100_000
	res := []byte(`{"status":"ok","output":{"value":12345,"text":"some result text"}}`)
	dir := b.TempDir()
	b.SetBytes(int64(n * (len(res) + 1)))
	b.ReportAllocs()
	for b.Loop() {
		w := NewWriter(discard{}, WithMaxBufferedBytes(64<<10), WithSpillDir(dir))
		for i := n - 1; i >= 0; i-- {
			if err := w.Put(i, res); err != nil {
				b.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/result")
}
