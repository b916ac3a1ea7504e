package coordinator

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func result(i int) *resultRecord {
	return &resultRecord{
		Index:       i,
		Failed:      i%7 == 0,
		CompletedAt: time.Unix(1700000000, int64(i)).UTC(),
		Result:      fmt.Appendf(nil, `{"outcome":"success","result":{"i":%d}}`, i),
	}
}

// The store keeps the first result per index, reads back by index and in
// completion order, and recovers from a torn tail and from a crash
// between a record and its index slot.
func TestResultStoreFirstWinsAndRecovery(t *testing.T) {
	dir := t.TempDir()
	l, counts, err := openResultLog(context.Background(), dir)
	require.NoError(t, err)
	require.Zero(t, counts)
	order := []int{5, 0, 3, 9, 1}
	for _, i := range order {
		added, err := l.add(result(i))
		require.NoError(t, err)
		require.True(t, added)
	}
	dup := result(3)
	dup.Result = []byte(`"second"`)
	added, err := l.add(dup)
	require.NoError(t, err)
	require.False(t, added, "first result per index wins")
	size := l.size
	require.NoError(t, l.sync())
	require.NoError(t, l.close())

	rd, err := openResultReader(dir, -1)
	require.NoError(t, err)
	var byIndex []int
	require.NoError(t, rd.byIndex(0, 12, func(i int, rec *resultRecord) error {
		if rec != nil {
			require.Equal(t, result(i).Result, rec.Result)
			require.Equal(t, result(i).Failed, rec.Failed)
			require.True(t, result(i).CompletedAt.Equal(rec.CompletedAt))
			byIndex = append(byIndex, i)
		}
		return nil
	}))
	require.Equal(t, []int{0, 1, 3, 5, 9}, byIndex)
	var completion []int
	end, err := rd.scan(0, func(rec *resultRecord, _ int64) error {
		completion = append(completion, rec.Index)
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, size, end)
	require.Equal(t, order, completion)
	require.NoError(t, rd.close())

	// A crash after a record was written but before its slot, then a
	// redelivery writing the index again, then a torn half record.
	logf, err := os.OpenFile(filepath.Join(dir, resultsLogName), os.O_RDWR, 0)
	require.NoError(t, err)
	orphan := appendRecord(nil, result(4))
	again := appendRecord(nil, &resultRecord{Index: 4, Result: []byte(`"again"`)})
	torn := appendRecord(nil, result(6))[:10]
	_, err = logf.WriteAt(append(append(orphan, again...), torn...), size)
	require.NoError(t, err)
	require.NoError(t, logf.Close())

	l, counts, err = openResultLog(context.Background(), dir)
	require.NoError(t, err)
	require.Equal(t, storeCounts{Succeeded: 5, Failed: 1}, counts) // 0 is a failure; 4 counted once
	require.Equal(t, size+int64(len(orphan)+len(again)), l.size, "torn tail cut")
	ok, err := l.has(4)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, l.close())
	rd, err = openResultReader(dir, -1)
	require.NoError(t, err)
	rec, err := rd.at(4)
	require.NoError(t, err)
	require.Equal(t, result(4).Result, rec.Result, "the first record of index 4 wins")
	n := 0
	_, err = rd.scan(0, func(*resultRecord, int64) error { n++; return nil })
	require.NoError(t, err)
	require.Equal(t, 6, n, "the repeated record is not reported")

	// A power loss that kept an index slot the log lost (the index is not
	// fsynced): index 7 points past the end of the log. It reads as
	// missing, and its next result is stored and found.
	idxf, err := os.OpenFile(filepath.Join(dir, indexName), os.O_RDWR, 0)
	require.NoError(t, err)
	var slot [slotSize]byte
	slot[0] = 0xff
	slot[1] = 0x7f
	_, err = idxf.WriteAt(slot[:], 7*slotSize)
	require.NoError(t, err)
	require.NoError(t, idxf.Close())
	require.NoError(t, rd.close())
	l, counts, err = openResultLog(context.Background(), dir)
	require.NoError(t, err)
	require.Equal(t, storeCounts{Succeeded: 5, Failed: 1}, counts)
	ok, err = l.has(7)
	require.NoError(t, err)
	require.False(t, ok, "a slot without a record is no result")
	added, err = l.add(result(7))
	require.NoError(t, err)
	require.True(t, added)
	require.NoError(t, l.close())
	rd, err = openResultReader(dir, -1)
	require.NoError(t, err)
	rec, err = rd.at(7)
	require.NoError(t, err)
	require.Equal(t, result(7).Result, rec.Result)
	require.NoError(t, rd.close())

	// A store that does not exist reads as empty.
	empty, err := openResultReader(filepath.Join(dir, "nope"), -1)
	require.NoError(t, err)
	require.NoError(t, empty.byIndex(0, 3, func(_ int, rec *resultRecord) error {
		require.Nil(t, rec)
		return nil
	}))
	require.NoError(t, empty.close())
}

// heapInUse returns the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// writeAndStream stores n results of about resultBytes each in random
// order, then streams them back in index order to w; it returns the
// largest live heap growth seen.
func writeAndStream(tb testing.TB, dir string, n, resultBytes int, w io.Writer) uint64 {
	base := heapInUse()
	var peak uint64
	sample := func() {
		if h := heapInUse(); h > base && h-base > peak {
			peak = h - base
		}
	}
	l, _, err := openResultLog(context.Background(), dir)
	require.NoError(tb, err)
	pad := make([]byte, resultBytes)
	for i := range pad {
		pad[i] = 'x'
	}
	rec := &resultRecord{}
	perm := rand.Perm(n)
	for k, i := range perm {
		rec.Index, rec.CompletedAt = i, time.Now()
		rec.Result = fmt.Appendf(rec.Result[:0], `{"outcome":"success","result":{"i":%d,"pad":"%s"}}`, i, pad)
		added, err := l.add(rec)
		require.NoError(tb, err)
		require.True(tb, added)
		if k%(n/4) == 0 {
			sample()
		}
	}
	size := l.size
	require.NoError(tb, l.close())
	sample()

	rd, err := openResultReader(dir, size)
	require.NoError(tb, err)
	defer rd.close()
	next := 0
	require.NoError(tb, rd.byIndex(0, n, func(i int, r *resultRecord) error {
		require.Equal(tb, next, i)
		next++
		if i%(n/4) == 0 {
			sample()
		}
		if _, err := w.Write(r.Result); err != nil {
			return err
		}
		_, err := w.Write([]byte{'\n'})
		return err
	}))
	require.Equal(tb, n, next)
	sample()
	return peak
}

// countingWriter counts bytes.
type countingWriter struct{ n int64 }

func (c *countingWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// The results of 100,000 items (about 27 MB) are written and streamed
// back in index order with a live heap that stays in the kilobytes to
// low megabytes: nothing proportional to the batch is held.
func TestResultStoreBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("short: writes 27 MB")
	}
	const n, size = 100_000, 200
	var out countingWriter
	peak := writeAndStream(t, t.TempDir(), n, size, &out)
	require.Greater(t, out.n, int64(n*size))
	t.Logf("streamed %d bytes; peak live heap growth %d bytes", out.n, peak)
	require.Less(t, peak, uint64(4<<20), "live heap must not grow with the batch (%d bytes of results)", out.n)
}

// BenchmarkResultStore100k writes 100,000 results in random order and
// streams them back in index order; peak-heap-bytes is the largest live
// heap growth seen (compare with the ~27 MB of results).
func BenchmarkResultStore100k(b *testing.B) {
	b.ReportAllocs()
	var peak uint64
	for b.Loop() {
		var out countingWriter
		peak = max(peak, writeAndStream(b, b.TempDir(), 100_000, 200, &out))
		b.SetBytes(out.n)
	}
	b.ReportMetric(float64(peak), "peak-heap-bytes")
}

// A run's result log is locked while a coordinator has it open: a second
// one (another coordinator on a shared DataDir) waits until it is closed.
func TestResultLogLock(t *testing.T) {
	dir := t.TempDir()
	l, _, err := openResultLog(context.Background(), dir)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, _, err = openResultLog(ctx, dir)
	require.ErrorContains(t, err, "locked by another coordinator")
	require.ErrorIs(t, err, context.DeadlineExceeded)

	got := make(chan error, 1)
	go func() {
		l2, _, err := openResultLog(context.Background(), dir)
		if err == nil {
			err = l2.close()
		}
		got <- err
	}()
	require.NoError(t, l.close())
	require.NoError(t, <-got)
}

// A record with step outcomes keeps them apart from its result, through
// reads by index, scans and recovery; records without keep none.
func TestResultStoreSteps(t *testing.T) {
	dir := t.TempDir()
	l, _, err := openResultLog(context.Background(), dir)
	require.NoError(t, err)
	withSteps := result(0)
	withSteps.Steps = []byte(`{"a":{"stepId":"a","component":"/x","status":"completed"}}`)
	for _, r := range []*resultRecord{withSteps, result(1)} {
		added, err := l.add(r)
		require.NoError(t, err)
		require.True(t, added)
	}
	size := l.size
	require.Equal(t, withSteps.size()+result(1).size(), size)
	require.NoError(t, l.sync())
	require.NoError(t, l.close())

	l, counts, err := openResultLog(context.Background(), dir)
	require.NoError(t, err)
	require.Equal(t, storeCounts{Failed: 1, Succeeded: 1}, counts)
	require.Equal(t, size, l.size, "nothing cut by recovery")
	require.NoError(t, l.close())

	rd, err := openResultReader(dir, -1)
	require.NoError(t, err)
	defer rd.close()
	rec, err := rd.at(0)
	require.NoError(t, err)
	require.Equal(t, withSteps.Result, rec.Result)
	require.Equal(t, withSteps.Steps, rec.Steps)
	rec, err = rd.at(1)
	require.NoError(t, err)
	require.Equal(t, result(1).Result, rec.Result)
	require.Nil(t, rec.Steps)
	var seen []int
	end, err := rd.scan(0, func(r *resultRecord, _ int64) error {
		seen = append(seen, r.Index)
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, size, end)
	require.Equal(t, []int{0, 1}, seen)
}

// Results are written a batch at a time (flush); when the write fails,
// the batch's results are forgotten, so that sending them again stores
// them rather than counting as duplicates; what was written before stays.
func TestResultStoreFailedWriteForgetsTheBatch(t *testing.T) {
	dir := t.TempDir()
	l, _, err := openResultLog(context.Background(), dir)
	require.NoError(t, err)
	for _, i := range []int{0, 1} {
		added, err := l.add(result(i))
		require.NoError(t, err)
		require.True(t, added)
	}
	forgotten, logErr, slotErr := l.flush()
	require.NoError(t, logErr)
	require.NoError(t, slotErr)
	require.Empty(t, forgotten)
	written := l.size

	for _, i := range []int{2, 3} {
		added, err := l.add(result(i))
		require.NoError(t, err)
		require.True(t, added)
	}
	dup, err := l.add(result(3))
	require.NoError(t, err)
	require.False(t, dup, "a duplicate within the batch")
	// The disk refuses the write (here: a read-only descriptor).
	good := l.log
	ro, err := os.Open(good.Name())
	require.NoError(t, err)
	l.log = ro
	forgotten, logErr, _ = l.flush()
	require.Error(t, logErr)
	require.ElementsMatch(t, []int{2, 3}, forgotten)
	require.Equal(t, written, l.size)
	for i, want := range []bool{true, true, false, false} {
		has, err := l.has(i)
		require.NoError(t, err)
		require.Equal(t, want, has, "index %d", i)
	}
	require.NoError(t, ro.Close())
	l.log = good
	added, err := l.add(result(3))
	require.NoError(t, err)
	require.True(t, added, "sent again, it is stored")
	require.NoError(t, l.sync())
	require.NoError(t, l.close())

	l2, counts, err := openResultLog(context.Background(), dir)
	require.NoError(t, err)
	require.Equal(t, 3, counts.Succeeded+counts.Failed)
	require.NoError(t, l2.close())
}

// scan reads the log in chunks and the index through a window: records
// that straddle a chunk, records larger than a chunk, indices far apart
// (outside one window), a repeated index, and a live reader whose limit
// is raised between scans all come out as a pread per record would.
func TestResultScanChunksAndWindows(t *testing.T) {
	dir := t.TempDir()
	l, _, err := openResultLog(context.Background(), dir)
	require.NoError(t, err)
	rd, err := openResultReader(dir, 0)
	require.NoError(t, err)
	defer rd.close()

	var want, got []int
	var from int64
	scan := func() {
		t.Helper()
		next, err := rd.scan(from, func(rec *resultRecord, next int64) error {
			require.Equal(t, payloadFor(rec.Index), rec.Result, "item %d", rec.Index)
			got = append(got, rec.Index)
			return nil
		})
		require.NoError(t, err)
		from = next
	}
	add := func(i int) {
		t.Helper()
		added, err := l.add(&resultRecord{Index: i, Result: payloadFor(i), CompletedAt: time.Unix(1, 0)})
		require.NoError(t, err)
		require.True(t, added)
		want = append(want, i)
	}
	// Three commits, each scanned by the live reader after it.
	batches := [][]int{
		{3, 2, 1, 0, 7 * slotWindow, 5, slotWindow - 1, slotWindow, 4},
		{100, 6, 2 * slotWindow, 9, 8},
		{scanChunk / 100, 10, 11}, // the first one is larger than a chunk
	}
	for b, batch := range batches {
		for _, i := range batch {
			add(i)
		}
		if b == 1 {
			// Records straddle chunk boundaries: many mid-sized ones.
			for i := 200; i < 260; i++ {
				add(i)
			}
		}
		require.NoError(t, l.sync())
		rd.setLimit(l.size)
		scan()
	}
	require.Equal(t, want, got)
	require.Equal(t, l.size, from)

	// A record that repeats an index (its slot points at the first one)
	// is skipped, in the same window and in another.
	size := l.size
	require.NoError(t, l.close())
	logf, err := os.OpenFile(filepath.Join(dir, resultsLogName), os.O_RDWR, 0)
	require.NoError(t, err)
	var extra []byte
	for _, i := range []int{5, 7 * slotWindow, 2 * slotWindow} {
		extra = appendRecord(extra, &resultRecord{Index: i, Result: payloadFor(i)})
	}
	_, err = logf.WriteAt(extra, size)
	require.NoError(t, err)
	require.NoError(t, logf.Close())
	rd.setLimit(size + int64(len(extra)))
	scan()
	require.Equal(t, want, got, "repeats are not reported")
	require.Equal(t, size+int64(len(extra)), from)

	// From the start, in one call, with a fresh reader.
	rd2, err := openResultReader(dir, -1)
	require.NoError(t, err)
	defer rd2.close()
	got = nil
	_, err = rd2.scan(0, func(rec *resultRecord, _ int64) error {
		got = append(got, rec.Index)
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, want, got)
}

// payloadFor is a JSON string result whose size varies with i: from a few
// bytes to a few KiB, and for i = scanChunk/100 more than a scan chunk.
func payloadFor(i int) []byte {
	n := (i * 37) % 3000
	if i == scanChunk/100 {
		n = scanChunk + 1000
	}
	return []byte(`"` + strings.Repeat("x", n) + `"`)
}
