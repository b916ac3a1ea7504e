package coordinator

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/value"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// blobJournal is the coordinator's blob store: it keeps the blobs that
// acknowledged results (and nested runs' inputs, and the coordinator's
// own puts) refer to, fsynced with the results, and serves them to
// workers (queue.BlobGetSubject) and to the coordinator itself. Workers
// put small blobs nowhere else (queue.WithDeferredPuts): a blob that no
// durable thing refers to never costs a NATS write, and one that is
// referred to costs an append to this journal, in the group commit of its
// result, instead of two JetStream messages with per-subject index
// entries each.
//
// It is a directory of segment files named by their creation time; each
// record is a length, a CRC-32C and a stepflowv1.Blob. Segments are kept
// for the retention (queue.Config.BlobsTTL; 0 keeps them), then deleted
// whole. The index (buildIndex, then append) maps a blob id's first 16
// bytes to its latest record: 24 bytes of pointer-free heap per blob, and
// a read checks the whole id. replay reads every record, stopping at a
// torn tail.
//
// append, sync and get are safe for concurrent use: the aggregator
// appends a batch and syncs once, other callers sync their own appends,
// and a sync covers everything appended before it.
type blobJournal struct {
	dir string
	// retention is how long a segment is kept after its successor
	// started; 0: for ever.
	retention time.Duration
	now       func() time.Time

	mu      sync.Mutex
	f       *os.File
	w       *bufio.Writer
	started time.Time // the current segment's creation
	size    int64
	flushed int64  // bytes of the current segment written to the file
	durable int64  // bytes of the current segment fsynced
	ord     uint32 // the current segment's ordinal (index locations)
	// index maps blob ids (their first 16 bytes) to their latest record
	// (indexLoc); nil until buildIndex.
	index map[[16]byte]uint64
	// segs are the segments the index points into, by ordinal.
	segs    map[uint32]*indexedSegment
	nextOrd uint32
	written uint64 // records appended
	synced  uint64 // records durable
	// epoch counts the segments dropped after a write error: the records
	// of a dropped segment that were not durable are lost, and a sync of
	// an earlier epoch fails (errJournalLost).
	epoch uint64

	syncMu sync.Mutex // one fsync at a time; later callers find theirs done

	// cleanStart: the last coordinator on this journal closed it (no
	// replay needed unless NATS lost data since).
	cleanStart bool
}

// Journal segments.
const (
	journalSegmentPrefix = "blobs-"
	journalSegmentSuffix = ".journal"
	// journalSegmentBytes ends a segment early when it grows this large.
	journalSegmentBytes = 64 << 20
	// journalMaxRecord bounds a record when reading (a blob's largest
	// size is far below: it rides in a NATS message or is read whole).
	journalMaxRecord = 1 << 30
	// journalCleanMarker is written by close and removed by open.
	journalCleanMarker = "closed-cleanly"
)

var journalCRC = crc32.MakeTable(crc32.Castagnoli)

// indexedSegment is a segment the index points into.
type indexedSegment struct {
	path    string
	created time.Time
	r       *os.File // opened by the first read
}

// Index locations: a segment ordinal and an offset in it.
const (
	locOffsetBits = 40
	locOffsetMask = 1<<locOffsetBits - 1
)

func indexKey(id string) ([16]byte, bool) {
	var k [16]byte
	if !blob.ValidID(id) {
		return k, false
	}
	_, err := hex.Decode(k[:], []byte(id[:32]))
	return k, err == nil
}

func openBlobJournal(dir string, retention time.Duration) (*blobJournal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("coordinator: blob journal: %w", err)
	}
	j := &blobJournal{dir: dir, retention: retention, now: time.Now, segs: map[uint32]*indexedSegment{}}
	marker := filepath.Join(dir, journalCleanMarker)
	if _, err := os.Stat(marker); err == nil {
		j.cleanStart = true
		if err := os.Remove(marker); err != nil {
			return nil, fmt.Errorf("coordinator: blob journal: %w", err)
		}
	}
	return j, nil
}

// segmentSpan is how long one segment is written to.
func (j *blobJournal) segmentSpan() time.Duration {
	if j.retention <= 0 {
		return time.Hour
	}
	return max(j.retention/4, time.Second)
}

// append writes blobs to the journal (not yet durable: see sync). A blob
// the index has a record of with its data is not written again, unless
// that record's segment is within half the retention of its deletion.
func (j *blobJournal) append(blobs []*stepflowv1.Blob) (epoch uint64, err error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	now := j.now()
	if j.f == nil || now.Sub(j.started) >= j.segmentSpan() || j.size >= journalSegmentBytes {
		if err := j.rotateLocked(now); err != nil {
			j.dropLocked()
			return j.epoch, err
		}
	}
	var hdr [8]byte
	for _, b := range blobs {
		key, keyed := indexKey(b.GetId())
		if keyed && j.index != nil && len(b.GetData()) > 0 && b.GetKind() != string(blob.KindFlow) {
			// (A flow is always appended: the record it would skip may
			// hold the same data as a data blob, and a flow wins.)
			if loc, ok := j.index[key]; ok && j.freshLocked(loc, now) {
				continue
			}
		}
		data, err := proto.Marshal(b)
		if err != nil {
			return j.epoch, fmt.Errorf("coordinator: blob journal: encode %s: %w", b.GetId(), err)
		}
		binary.LittleEndian.PutUint32(hdr[:4], uint32(len(data)))
		binary.LittleEndian.PutUint32(hdr[4:], crc32.Checksum(data, journalCRC))
		_, err = j.w.Write(hdr[:])
		if err == nil {
			_, err = j.w.Write(data)
		}
		if err != nil {
			j.dropLocked()
			return j.epoch, fmt.Errorf("coordinator: blob journal: %w", err)
		}
		if keyed && j.index != nil && len(b.GetData()) > 0 {
			j.index[key] = uint64(j.ord)<<locOffsetBits | uint64(j.size)
		}
		j.size += int64(len(hdr) + len(data))
		j.written++
	}
	return j.epoch, nil
}

// freshLocked reports whether the record at loc is in a segment that is
// not close to its deletion.
func (j *blobJournal) freshLocked(loc uint64, now time.Time) bool {
	seg := j.segs[uint32(loc>>locOffsetBits)]
	return seg != nil && (j.retention <= 0 || now.Sub(seg.created) < j.retention/2)
}

// errJournalLost fails a sync whose records were in a segment dropped
// after a write error: they are to be journaled again.
var errJournalLost = errors.New("coordinator: blob journal: a write failed; the blobs are to be journaled again")

// dropLocked gives up the current segment after a write error (a full
// disk): what it holds that is not durable is lost, syncs of the records
// appended so far fail, and the next append starts a new segment. A
// record torn in it ends its replay, so it reads no further.
func (j *blobJournal) dropLocked() {
	dropped := j.f != nil
	if dropped {
		_ = j.f.Close()
	}
	j.f, j.w = nil, nil
	j.synced = j.written
	j.epoch++
	if dropped {
		// What the index has of it past its durable part is lost: forget
		// it (those blobs are journaled again with their results'
		// retries).
		j.forgetLocked(j.ord, j.durable)
	}
}

// forgetLocked drops the index entries into segment ord from offset
// from on, and the segment itself when from is 0.
func (j *blobJournal) forgetLocked(ord uint32, from int64) {
	seg := j.segs[ord]
	if seg == nil {
		return
	}
	if from == 0 {
		delete(j.segs, ord)
		if seg.r != nil {
			_ = seg.r.Close()
		}
	}
	for k, loc := range j.index {
		if uint32(loc>>locOffsetBits) == ord && int64(loc&locOffsetMask) >= from {
			delete(j.index, k)
		}
	}
}

// rotateLocked finishes the current segment (durably) and starts another,
// then deletes the segments nothing can need any more.
func (j *blobJournal) rotateLocked(now time.Time) error {
	if j.f != nil {
		if err := j.flushSyncLocked(); err != nil {
			return err
		}
		err := j.f.Close()
		j.f, j.w = nil, nil // synced: nothing is lost with it
		if err != nil {
			return fmt.Errorf("coordinator: blob journal: %w", err)
		}
	}
	name := filepath.Join(j.dir, journalSegmentPrefix+strconv.FormatInt(now.UnixNano(), 10)+journalSegmentSuffix)
	f, err := os.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("coordinator: blob journal: %w", err)
	}
	j.f, j.w, j.started, j.size, j.flushed, j.durable = f, bufio.NewWriterSize(f, 64<<10), now, 0, 0, 0
	j.ord = j.nextOrd
	j.nextOrd++
	j.segs[j.ord] = &indexedSegment{path: name, created: now}
	if d, err := os.Open(j.dir); err == nil {
		_ = d.Sync() // the new name
		_ = d.Close()
	}
	j.pruneLocked(now)
	return nil
}

// pruneLocked deletes every segment whose successor started more than the
// retention ago: its last record is older than that. Without a retention
// it deletes nothing.
func (j *blobJournal) pruneLocked(now time.Time) {
	if j.retention <= 0 {
		return
	}
	segs, err := j.segments()
	if err != nil {
		return
	}
	for i := 0; i+1 < len(segs); i++ {
		if now.Sub(time.Unix(0, segs[i+1].created)) > j.retention {
			_ = os.Remove(segs[i].path)
			for ord, seg := range j.segs {
				if seg.path == segs[i].path {
					j.forgetLocked(ord, 0)
				}
			}
		}
	}
}

// flushSyncLocked makes everything appended so far durable.
func (j *blobJournal) flushSyncLocked() error {
	if j.f == nil || j.synced == j.written {
		return nil
	}
	if err := j.w.Flush(); err != nil {
		return fmt.Errorf("coordinator: blob journal: %w", err)
	}
	j.flushed = j.size
	if err := j.f.Sync(); err != nil {
		return fmt.Errorf("coordinator: blob journal: %w", err)
	}
	j.synced, j.durable = j.written, j.size
	return nil
}

// sync makes every record appended before it in epoch (append's) durable
// (written to the kernel only, without durable). Concurrent callers share
// one fsync. It fails with errJournalLost when the segment of those
// records was dropped.
func (j *blobJournal) sync(epoch uint64, durable bool) error {
	j.mu.Lock()
	if epoch != j.epoch {
		j.mu.Unlock()
		return errJournalLost
	}
	want := j.written
	if j.synced >= want {
		j.mu.Unlock()
		return nil
	}
	if err := j.w.Flush(); err != nil {
		j.dropLocked()
		j.mu.Unlock()
		return fmt.Errorf("coordinator: blob journal: %w", err)
	}
	j.flushed = j.size
	f, flushed, size := j.f, j.written, j.size
	j.mu.Unlock()
	if !durable {
		return nil
	}

	j.syncMu.Lock()
	defer j.syncMu.Unlock()
	j.mu.Lock()
	switch {
	case epoch != j.epoch:
		j.mu.Unlock()
		return errJournalLost
	case j.synced >= want:
		j.mu.Unlock()
		return nil
	}
	j.mu.Unlock()
	err := f.Sync()
	j.mu.Lock()
	defer j.mu.Unlock()
	switch {
	case epoch != j.epoch:
		return errJournalLost
	case err != nil && !errors.Is(err, os.ErrClosed):
		// A rotation closes f only after syncing it (ErrClosed then).
		if j.f == f {
			j.dropLocked()
		}
		return fmt.Errorf("coordinator: blob journal: %w", err)
	}
	if j.synced < flushed {
		j.synced = flushed
	}
	if j.f == f && j.durable < size {
		j.durable = size
	}
	return nil
}

// close syncs and closes the current segment, and marks the journal
// closed cleanly.
func (j *blobJournal) close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	var err error
	if j.f != nil {
		err = j.flushSyncLocked()
		if cerr := j.f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("coordinator: blob journal: %w", cerr)
		}
		j.f, j.w = nil, nil
	}
	for _, seg := range j.segs {
		if seg.r != nil {
			_ = seg.r.Close()
			seg.r = nil
		}
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(j.dir, journalCleanMarker), nil, 0o600)
	}
	return err
}

type journalSegment struct {
	path    string
	created int64
}

// segments lists the segment files, oldest first.
func (j *blobJournal) segments() ([]journalSegment, error) {
	entries, err := os.ReadDir(j.dir)
	if err != nil {
		return nil, fmt.Errorf("coordinator: blob journal: %w", err)
	}
	var segs []journalSegment
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, journalSegmentPrefix) || !strings.HasSuffix(name, journalSegmentSuffix) {
			continue
		}
		ns, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(name, journalSegmentPrefix), journalSegmentSuffix), 10, 64)
		if err != nil {
			continue
		}
		segs = append(segs, journalSegment{path: filepath.Join(j.dir, name), created: ns})
	}
	slices.SortFunc(segs, func(a, b journalSegment) int { return int(a.created - b.created) })
	return segs, nil
}

// replay calls fn with every blob in the journal, oldest first. A torn or
// corrupt record ends its segment (it was never acknowledged: a record
// is acknowledged only after the sync that covers it). It reads what was
// appended before it started (flushed first).
func (j *blobJournal) replay(fn func(*stepflowv1.Blob) error) error {
	j.mu.Lock()
	if err := j.flushLocked(); err != nil {
		j.mu.Unlock()
		return err
	}
	j.mu.Unlock()
	segs, err := j.segments()
	if err != nil {
		return err
	}
	for _, s := range segs {
		if err := replaySegment(s.path, func(_ int64, b *stepflowv1.Blob) error { return fn(b) }); err != nil {
			return err
		}
	}
	return nil
}

// flushLocked writes what is buffered to the current segment's file.
func (j *blobJournal) flushLocked() error {
	if j.w == nil || j.flushed == j.size {
		return nil
	}
	if err := j.w.Flush(); err != nil {
		j.dropLocked()
		return fmt.Errorf("coordinator: blob journal: %w", err)
	}
	j.flushed = j.size
	return nil
}

// buildIndex indexes every record of the journal that holds its blob's
// data; a coordinator does it as it starts to lead, before it serves
// blobs. It returns how many records it indexed.
func (j *blobJournal) buildIndex() (int, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.flushLocked(); err != nil {
		return 0, err
	}
	segs, err := j.segments()
	if err != nil {
		return 0, err
	}
	byPath := make(map[string]uint32, len(j.segs))
	for ord, seg := range j.segs {
		byPath[seg.path] = ord
	}
	index := map[[16]byte]uint64{}
	n := 0
	for _, sg := range segs {
		ord, ok := byPath[sg.path]
		if !ok {
			ord = j.nextOrd
			j.nextOrd++
			j.segs[ord] = &indexedSegment{path: sg.path, created: time.Unix(0, sg.created)}
		}
		err := replaySegment(sg.path, func(off int64, b *stepflowv1.Blob) error {
			if k, ok := indexKey(b.GetId()); ok && len(b.GetData()) > 0 {
				index[k] = uint64(ord)<<locOffsetBits | uint64(off)
				n++
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
	}
	j.index = index
	return n, nil
}

// get reads a blob from the journal: its JSON and kind, and whether the
// index has it (false also before buildIndex).
func (j *blobJournal) get(id string) ([]byte, blob.Kind, bool, error) {
	k, ok := indexKey(id)
	if !ok {
		return nil, "", false, nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	loc, ok := j.index[k]
	if !ok {
		return nil, "", false, nil
	}
	ord, off := uint32(loc>>locOffsetBits), int64(loc&locOffsetMask)
	seg := j.segs[ord]
	if seg == nil {
		return nil, "", false, nil
	}
	if ord == j.ord && j.f != nil && off >= j.flushed {
		if err := j.flushLocked(); err != nil {
			return nil, "", false, err
		}
	}
	if seg.r == nil {
		r, err := os.Open(seg.path)
		if errors.Is(err, os.ErrNotExist) {
			return nil, "", false, nil // deleted by another coordinator's retention
		}
		if err != nil {
			return nil, "", false, fmt.Errorf("coordinator: blob journal: %w", err)
		}
		seg.r = r
	}
	var hdr [8]byte
	if _, err := seg.r.ReadAt(hdr[:], off); err != nil {
		return nil, "", false, fmt.Errorf("coordinator: blob journal: read %s: %w", id, err)
	}
	n := binary.LittleEndian.Uint32(hdr[:4])
	if n > journalMaxRecord {
		return nil, "", false, fmt.Errorf("coordinator: blob journal: read %s: a record of %d bytes", id, n)
	}
	data := make([]byte, n)
	if _, err := seg.r.ReadAt(data, off+int64(len(hdr))); err != nil {
		return nil, "", false, fmt.Errorf("coordinator: blob journal: read %s: %w", id, err)
	}
	if crc32.Checksum(data, journalCRC) != binary.LittleEndian.Uint32(hdr[4:]) {
		return nil, "", false, fmt.Errorf("coordinator: blob journal: read %s: checksum mismatch", id)
	}
	b := &stepflowv1.Blob{}
	if err := proto.Unmarshal(data, b); err != nil {
		return nil, "", false, fmt.Errorf("coordinator: blob journal: read %s: %w", id, err)
	}
	if b.GetId() != id {
		return nil, "", false, nil // another id with the same first 16 bytes
	}
	kind := blob.Kind(b.GetKind())
	if !kind.Valid() {
		kind = blob.KindData
	}
	return b.GetData(), kind, true, nil
}

func replaySegment(path string, fn func(off int64, b *stepflowv1.Blob) error) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil // pruned meanwhile
	}
	if err != nil {
		return fmt.Errorf("coordinator: blob journal: %w", err)
	}
	defer func() { _ = f.Close() }()
	r := bufio.NewReaderSize(f, 64<<10)
	var hdr [8]byte
	for off := int64(0); ; {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return nil // the end, or a torn header
		}
		n := binary.LittleEndian.Uint32(hdr[:4])
		if n > journalMaxRecord {
			return nil
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(r, data); err != nil {
			return nil
		}
		if crc32.Checksum(data, journalCRC) != binary.LittleEndian.Uint32(hdr[4:]) {
			return nil
		}
		b := &stepflowv1.Blob{}
		if err := proto.Unmarshal(data, b); err != nil {
			return nil
		}
		if err := fn(off, b); err != nil {
			return err
		}
		off += int64(len(hdr)) + int64(n)
	}
}

// journaledBlobs is the blob store of the coordinator's own puts (flows
// uploaded, item inputs too large for a message): each blob is journaled
// before Put returns, since something durable is about to refer to it.
type journaledBlobs struct{ c *Coordinator }

var _ blob.Store = journaledBlobs{}

func (b journaledBlobs) Put(ctx context.Context, kind blob.Kind, data value.Value) (string, error) {
	id, err := b.c.blobs.Put(ctx, kind, data)
	if err != nil {
		return "", err
	}
	if err := b.c.journalBlobs([]*stepflowv1.Blob{{Id: id, Kind: string(kind), Data: value.Marshal(data)}}); err != nil {
		return "", err
	}
	return id, nil
}

// Get reads the journal first (where the blobs workers put are), then
// the blob stream.
func (b journaledBlobs) Get(ctx context.Context, id string) (blob.Blob, error) {
	raw, kind, found, err := b.c.journal.get(id)
	if err != nil {
		b.c.log.Warn("cannot read a journaled blob; trying the blob stream", zap.String("blob", id), zap.Error(err))
	}
	if found {
		v, err := value.Parse(raw)
		if err != nil {
			return blob.Blob{}, fmt.Errorf("coordinator: journaled blob %s is not JSON: %w", id, err)
		}
		return blob.Blob{ID: id, Kind: kind, Data: v}, nil
	}
	return b.c.blobs.Get(ctx, id)
}

// journalBlobs journals blobs and, with SyncResults, makes them durable.
func (c *Coordinator) journalBlobs(blobs []*stepflowv1.Blob) error {
	epoch, err := c.journal.append(blobs)
	if err != nil {
		return err
	}
	return c.journal.sync(epoch, c.cfg.SyncResults)
}
