package coordinator

import (
	"bufio"
	"context"
	"encoding/binary"
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

// blobJournal keeps the blobs that acknowledged results (and nested runs'
// inputs, and the coordinator's own puts) refer to, for as long as the
// blob stream may not have fsynced them (queue.DefaultBlobSyncWindow):
// the stream persists asynchronously, and a power loss may take its last
// writes. It is a directory of segment files named by their creation
// time; each record is a length, a CRC-32C and a stepflowv1.Blob. A
// segment whose successor is older than the window is deleted when the
// next one starts. replay reads every record left, stopping at a torn
// tail.
//
// append and sync are safe for concurrent use: the aggregator appends a
// batch and syncs once, other callers sync their own appends, and a sync
// covers everything appended before it.
type blobJournal struct {
	dir    string
	window time.Duration
	now    func() time.Time

	mu      sync.Mutex
	f       *os.File
	w       *bufio.Writer
	started time.Time // the current segment's creation
	size    int64
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

func openBlobJournal(dir string, window time.Duration) (*blobJournal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("coordinator: blob journal: %w", err)
	}
	j := &blobJournal{dir: dir, window: window, now: time.Now}
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
func (j *blobJournal) segmentSpan() time.Duration { return max(j.window/4, time.Second) }

// append writes blobs to the journal (not yet durable: see sync).
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
		j.size += int64(len(hdr) + len(data))
		j.written++
	}
	return j.epoch, nil
}

// errJournalLost fails a sync whose records were in a segment dropped
// after a write error: they are to be journaled again.
var errJournalLost = errors.New("coordinator: blob journal: a write failed; the blobs are to be journaled again")

// dropLocked gives up the current segment after a write error (a full
// disk): what it holds that is not durable is lost, syncs of the records
// appended so far fail, and the next append starts a new segment. A
// record torn in it ends its replay, so it reads no further.
func (j *blobJournal) dropLocked() {
	if j.f != nil {
		_ = j.f.Close()
	}
	j.f, j.w = nil, nil
	j.synced = j.written
	j.epoch++
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
	j.f, j.w, j.started, j.size = f, bufio.NewWriterSize(f, 64<<10), now, 0
	if d, err := os.Open(j.dir); err == nil {
		_ = d.Sync() // the new name
		_ = d.Close()
	}
	j.pruneLocked(now)
	return nil
}

// pruneLocked deletes every segment whose successor started more than the
// window ago: its last record is older than that.
func (j *blobJournal) pruneLocked(now time.Time) {
	segs, err := j.segments()
	if err != nil {
		return
	}
	for i := 0; i+1 < len(segs); i++ {
		if now.Sub(time.Unix(0, segs[i+1].created)) > j.window {
			_ = os.Remove(segs[i].path)
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
	if err := j.f.Sync(); err != nil {
		return fmt.Errorf("coordinator: blob journal: %w", err)
	}
	j.synced = j.written
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
	f, flushed := j.f, j.written
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
	if j.w != nil {
		if err := j.w.Flush(); err != nil {
			j.mu.Unlock()
			return fmt.Errorf("coordinator: blob journal: %w", err)
		}
	}
	j.mu.Unlock()
	segs, err := j.segments()
	if err != nil {
		return err
	}
	for _, s := range segs {
		if err := replaySegment(s.path, fn); err != nil {
			return err
		}
	}
	return nil
}

func replaySegment(path string, fn func(*stepflowv1.Blob) error) error {
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
	for {
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
		if err := fn(b); err != nil {
			return err
		}
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

func (b journaledBlobs) Get(ctx context.Context, id string) (blob.Blob, error) {
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

// replayJournal puts every journaled blob back into the blob store (a put
// of a blob the store has writes nothing): after a start, or when NATS
// came back without its memory (a restart, maybe a power loss that took
// the blob stream's last writes). One replay runs at a time.
func (c *Coordinator) replayJournal() {
	if !c.replaying.CompareAndSwap(false, true) {
		return
	}
	defer c.replaying.Store(false)
	n := 0
	err := c.journal.replay(func(b *stepflowv1.Blob) error {
		if err := c.ctx.Err(); err != nil {
			return err
		}
		v, err := value.Parse(b.GetData())
		if err != nil {
			c.log.Warn("skipping a journaled blob that is not JSON", zap.String("blob", b.GetId()), zap.Error(err))
			return nil
		}
		kind := blob.Kind(b.GetKind())
		if !kind.Valid() {
			kind = blob.KindData
		}
		ctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
		defer cancel()
		if _, err := c.blobs.Put(ctx, kind, v); err != nil {
			return fmt.Errorf("blob %s: %w", b.GetId(), err)
		}
		n++
		return nil
	})
	switch {
	case err != nil && c.ctx.Err() == nil:
		c.log.Warn("replaying the blob journal stopped; it is replayed again at the next start", zap.Int("blobs", n), zap.Error(err))
	case err == nil && n > 0:
		c.log.Info("blob journal replayed", zap.Int("blobs", n))
	}
}
