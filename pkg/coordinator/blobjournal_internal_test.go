package coordinator

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/value"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

func journalBlob(i int) *stepflowv1.Blob {
	return &stepflowv1.Blob{Id: fmt.Sprintf("%064x", i), Kind: "data", Data: fmt.Appendf(nil, `{"i":%d}`, i)}
}

func replayed(t *testing.T, j *blobJournal) []string {
	t.Helper()
	var got []string
	require.NoError(t, j.replay(func(b *stepflowv1.Blob) error {
		got = append(got, string(b.GetData()))
		return nil
	}))
	return got
}

func TestBlobJournalReplaysWhatWasSynced(t *testing.T) {
	dir := t.TempDir()
	j, err := openBlobJournal(dir, time.Minute)
	require.NoError(t, err)
	require.False(t, j.cleanStart)
	ep, err := j.append([]*stepflowv1.Blob{journalBlob(1), journalBlob(2)})
	require.NoError(t, err)
	require.NoError(t, j.sync(ep, true))
	require.NoError(t, j.sync(ep, true)) // nothing new: no fsync
	_, err = j.append([]*stepflowv1.Blob{journalBlob(3)})
	require.NoError(t, err)
	require.Equal(t, []string{`{"i":1}`, `{"i":2}`, `{"i":3}`}, replayed(t, j))
	require.NoError(t, j.close())

	// A torn record at the end (a crash during a write that was never
	// acknowledged) ends the replay; the records before it are kept.
	segs, err := j.segments()
	require.NoError(t, err)
	require.Len(t, segs, 1)
	f, err := os.OpenFile(segs[0].path, os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.Write([]byte{200, 0, 0, 0, 1, 2, 3, 4, 5})
	require.NoError(t, err)
	require.NoError(t, f.Close())

	j2, err := openBlobJournal(dir, time.Minute)
	require.NoError(t, err)
	require.True(t, j2.cleanStart, "close marks the journal closed cleanly")
	require.Equal(t, []string{`{"i":1}`, `{"i":2}`, `{"i":3}`}, replayed(t, j2))
	ep, err = j2.append([]*stepflowv1.Blob{journalBlob(4)})
	require.NoError(t, err)
	require.NoError(t, j2.sync(ep, true))
	require.Equal(t, []string{`{"i":1}`, `{"i":2}`, `{"i":3}`, `{"i":4}`}, replayed(t, j2))

	// Not closed (a crash): the next open knows it.
	j3, err := openBlobJournal(dir, time.Minute)
	require.NoError(t, err)
	require.False(t, j3.cleanStart)
	require.NoError(t, j2.close())
}

func TestBlobJournalCorruptRecordEndsItsSegment(t *testing.T) {
	dir := t.TempDir()
	j, err := openBlobJournal(dir, time.Minute)
	require.NoError(t, err)
	_, err = j.append([]*stepflowv1.Blob{journalBlob(1), journalBlob(2)})
	require.NoError(t, err)
	require.NoError(t, j.close())
	segs, err := j.segments()
	require.NoError(t, err)
	data, err := os.ReadFile(segs[0].path)
	require.NoError(t, err)
	data[len(data)-2] ^= 0xff // in the second record's payload
	require.NoError(t, os.WriteFile(segs[0].path, data, 0o600))
	require.Equal(t, []string{`{"i":1}`}, replayed(t, j))
}

func TestBlobJournalRotatesAndForgetsOldSegments(t *testing.T) {
	dir := t.TempDir()
	now := time.Unix(1_800_000_000, 0)
	j, err := openBlobJournal(dir, 4*time.Minute) // segments of a minute
	require.NoError(t, err)
	j.now = func() time.Time { return now }
	for i := range 8 {
		ep, err := j.append([]*stepflowv1.Blob{journalBlob(i)})
		require.NoError(t, err)
		require.NoError(t, j.sync(ep, true))
		now = now.Add(time.Minute)
	}
	// Eight segments were started a minute apart; when the last started
	// (minute 7), those whose successor started more than four minutes
	// before were deleted (minutes 0 and 1): their records are older than
	// the window. Minute 2's successor started exactly four minutes ago.
	segs, err := j.segments()
	require.NoError(t, err)
	require.Len(t, segs, 6)
	require.Equal(t, []string{`{"i":2}`, `{"i":3}`, `{"i":4}`, `{"i":5}`, `{"i":6}`, `{"i":7}`}, replayed(t, j))
	require.NoError(t, j.close())
	_, err = os.Stat(filepath.Join(dir, journalCleanMarker))
	require.NoError(t, err)
}

// A write error (a full disk) drops the segment: syncs of what it held
// fail, so those blobs are journaled again by their senders, and the next
// append starts a new segment: the journal recovers without a restart.
// failWrites has the disk refuse the journal's next writes (here: a
// read-only descriptor in place of its segment's); it returns the
// segment's own descriptor, for the test to close.
func failWrites(t *testing.T, j *blobJournal) *os.File {
	t.Helper()
	ro, err := os.Open(j.f.Name())
	require.NoError(t, err)
	j.mu.Lock()
	defer j.mu.Unlock()
	good := j.f
	j.f = ro
	j.w.Reset(ro)
	return good
}

func TestBlobJournalRecoversFromAWriteError(t *testing.T) {
	dir := t.TempDir()
	j, err := openBlobJournal(dir, time.Minute)
	require.NoError(t, err)
	ep, err := j.append([]*stepflowv1.Blob{journalBlob(1)})
	require.NoError(t, err)
	require.NoError(t, j.sync(ep, true))

	good := failWrites(t, j)
	ep, err = j.append([]*stepflowv1.Blob{journalBlob(2)})
	require.NoError(t, err, "buffered")
	require.Error(t, j.sync(ep, true))
	require.ErrorIs(t, j.sync(ep, true), errJournalLost, "the dropped segment's blobs stay lost")
	require.NoError(t, good.Close())

	ep2, err := j.append([]*stepflowv1.Blob{journalBlob(3)})
	require.NoError(t, err)
	require.NotEqual(t, ep, ep2)
	require.NoError(t, j.sync(ep2, true))
	require.Equal(t, []string{`{"i":1}`, `{"i":3}`}, replayed(t, j))
	require.NoError(t, j.close())
}

// hashedBlob is a journal record whose id is its data's hash, as a real
// blob's is.
func hashedBlob(data string) *stepflowv1.Blob {
	return &stepflowv1.Blob{Id: blob.ID(value.MustParse(data)), Kind: "data", Data: []byte(data)}
}

func requireJournaled(t *testing.T, j *blobJournal, b *stepflowv1.Blob) {
	t.Helper()
	raw, kind, found, err := j.get(b.GetId())
	require.NoError(t, err)
	require.True(t, found, "blob %s", b.GetData())
	require.Equal(t, string(b.GetData()), string(raw))
	require.Equal(t, blob.Kind(b.GetKind()), kind)
}

func requireNotJournaled(t *testing.T, j *blobJournal, id string) {
	t.Helper()
	_, _, found, err := j.get(id)
	require.NoError(t, err)
	require.False(t, found)
}

// The journal is the coordinator's blob store: once indexed, it serves
// every blob it has the data of, including what is still buffered, and
// an index built again after a restart finds the same.
func TestBlobJournalIndexServesBlobs(t *testing.T) {
	dir := t.TempDir()
	j, err := openBlobJournal(dir, 0)
	require.NoError(t, err)
	a, b, c := hashedBlob(`{"a":1}`), hashedBlob(`{"b":2}`), hashedBlob(`[3]`)
	_, err = j.append([]*stepflowv1.Blob{a})
	require.NoError(t, err)
	requireNotJournaled(t, j, a.GetId()) // not indexed yet
	n, err := j.buildIndex()
	require.NoError(t, err)
	require.Equal(t, 1, n)
	requireJournaled(t, j, a)

	ep, err := j.append([]*stepflowv1.Blob{b, {Id: c.GetId(), Kind: "data"}})
	require.NoError(t, err)
	requireJournaled(t, j, b) // buffered: the read flushes it
	requireNotJournaled(t, j, c.GetId())
	require.NoError(t, j.sync(ep, true))

	// A blob the journal has is not written again.
	written := j.written
	_, err = j.append([]*stepflowv1.Blob{hashedBlob(`{"a":1}`), c})
	require.NoError(t, err)
	require.Equal(t, written+1, j.written, "only c is new")
	requireJournaled(t, j, c)

	// A flow is appended even where the data is journaled as a data
	// blob: a flow wins.
	asFlow := hashedBlob(`{"a":1}`)
	asFlow.Kind = string(blob.KindFlow)
	_, err = j.append([]*stepflowv1.Blob{asFlow})
	require.NoError(t, err)
	requireJournaled(t, j, asFlow)

	// A record of another id with the same first 16 bytes is not taken
	// for the blob.
	twin := []byte(a.GetId())
	twin[63] ^= 1
	requireNotJournaled(t, j, string(twin))
	requireNotJournaled(t, j, "not an id")
	require.NoError(t, j.close())

	j2, err := openBlobJournal(dir, 0)
	require.NoError(t, err)
	n, err = j2.buildIndex()
	require.NoError(t, err)
	require.Equal(t, 4, n, "records indexed, the flow's included")
	for _, x := range []*stepflowv1.Blob{asFlow, b, c} {
		requireJournaled(t, j2, x)
	}
	require.NoError(t, j2.close())
}

// A segment dropped after a write error keeps serving what was durable in
// it; what was not is forgotten (its senders journal it again).
func TestBlobJournalIndexAfterAWriteError(t *testing.T) {
	j, err := openBlobJournal(t.TempDir(), 0)
	require.NoError(t, err)
	_, err = j.buildIndex()
	require.NoError(t, err)
	a, b := hashedBlob(`"durable"`), hashedBlob(`"lost"`)
	ep, err := j.append([]*stepflowv1.Blob{a})
	require.NoError(t, err)
	require.NoError(t, j.sync(ep, true))

	good := failWrites(t, j)
	ep, err = j.append([]*stepflowv1.Blob{b})
	require.NoError(t, err)
	require.Error(t, j.sync(ep, true))
	require.NoError(t, good.Close())
	requireJournaled(t, j, a)
	requireNotJournaled(t, j, b.GetId())

	ep, err = j.append([]*stepflowv1.Blob{b})
	require.NoError(t, err, "journaled again")
	require.NoError(t, j.sync(ep, true))
	requireJournaled(t, j, b)
	require.NoError(t, j.close())
}

// With a retention, deleted segments take their index entries with them,
// and a blob whose record is old is written again rather than trusted to
// a segment about to go.
func TestBlobJournalIndexRetention(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	j, err := openBlobJournal(t.TempDir(), 4*time.Minute) // segments of a minute
	require.NoError(t, err)
	j.now = func() time.Time { return now }
	_, err = j.buildIndex()
	require.NoError(t, err)
	a, b := hashedBlob(`"a"`), hashedBlob(`"b"`)
	ep, err := j.append([]*stepflowv1.Blob{a, b})
	require.NoError(t, err)
	require.NoError(t, j.sync(ep, true))
	now = now.Add(time.Minute)
	ep, err = j.append([]*stepflowv1.Blob{a})
	require.NoError(t, err)
	require.NoError(t, j.sync(ep, true))
	now = now.Add(90 * time.Second)
	written := j.written
	ep, err = j.append([]*stepflowv1.Blob{a}) // its record is 2.5 minutes old: written again
	require.NoError(t, err)
	require.NoError(t, j.sync(ep, true))
	require.Equal(t, written+1, j.written)
	for range 4 {
		now = now.Add(time.Minute)
		ep, err = j.append([]*stepflowv1.Blob{hashedBlob(fmt.Sprintf(`"%d"`, now.Unix()))})
		require.NoError(t, err)
		require.NoError(t, j.sync(ep, true))
	}
	requireNotJournaled(t, j, b.GetId()) // its segment is gone
	requireJournaled(t, j, a)
	require.NoError(t, j.close())
}
