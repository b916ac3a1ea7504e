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
	"time"
)

// The result store of one run: two files in the run's directory.
//
//	results.log  append-only records, one per accepted result, in the order
//	             the coordinator accepted them (completion order)
//	index        8 bytes per item index: the offset+1 of the index's record
//	             in results.log (little endian), 0 = no result yet; a sparse
//	             file written at 8*index, so it needs no size up front
//
// A record is
//
//	index u64 | flags u8 | source u8 | completedAt i64 (unix ns) | len u32 | result [len] | crc32c u32
//
// all little endian, the CRC (Castagnoli) covering everything before it.
// With flagSteps, the len bytes are `resultLen u32 | result | steps`: the
// FlowResult JSON followed by the JSON of the item's step outcomes
// (ItemResult.steps, single-item runs only), so that they are as durable
// as the result at no extra write or fsync. The
// CRC lets recovery tell a torn tail (a power loss in the middle of a write)
// from a record, and readers double-check every record they are pointed to.
//
// Why files and not a stream: reading a 1,000,000-item run back in index
// order needs a lookup by index, which a stream keyed by sequence does not
// have; an index file gives it with one pread per item and constant
// memory. And the log is where a result becomes durable: workers send
// results to the coordinator, which answers once they are fsynced here.
const (
	resultsLogName = "results.log"
	indexName      = "index"
	slotSize       = 8
	recordHeader   = 8 + 1 + 1 + 8 + 4
	recordTrailer  = 4

	flagFailed = 1 << 0
	flagSteps  = 1 << 1
)

// maxResultBytes bounds a stored result (larger ones are refused by NATS
// anyway, or offloaded to blobs and inlined here).
const maxResultBytes = 1 << 30

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// errCorrupt is wrapped by errors about records that do not check out.
var errCorrupt = errors.New("corrupt result record")

// resultRecord is one stored result.
type resultRecord struct {
	Index       int
	Failed      bool
	Source      uint8 // stepflowv1.ResultSource
	CompletedAt time.Time
	Result      []byte // the FlowResult JSON
	// Steps is the JSON of the item's step outcomes (ItemResult.steps);
	// nil when the worker sent none.
	Steps []byte
}

// payloadLen is the length of the record's payload: the result, and with
// steps their length prefix and the steps.
func (r *resultRecord) payloadLen() int {
	if len(r.Steps) == 0 {
		return len(r.Result)
	}
	return 4 + len(r.Result) + len(r.Steps)
}

// size is the record's size on disk.
func (r *resultRecord) size() int64 { return int64(recordHeader + r.payloadLen() + recordTrailer) }

// appendRecord appends the encoding of r to dst.
func appendRecord(dst []byte, r *resultRecord) []byte {
	start := len(dst)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(r.Index))
	var flags uint8
	if r.Failed {
		flags |= flagFailed
	}
	if len(r.Steps) > 0 {
		flags |= flagSteps
	}
	dst = append(dst, flags, r.Source)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(r.CompletedAt.UnixNano()))
	dst = binary.LittleEndian.AppendUint32(dst, uint32(r.payloadLen()))
	if len(r.Steps) > 0 {
		dst = binary.LittleEndian.AppendUint32(dst, uint32(len(r.Result)))
	}
	dst = append(dst, r.Result...)
	dst = append(dst, r.Steps...)
	return binary.LittleEndian.AppendUint32(dst, crc32.Checksum(dst[start:], crcTable))
}

// parseHeader decodes a record header; n is the length of the payload
// (see setPayload).
func parseHeader(h []byte) (r resultRecord, n int) {
	r.Index = int(binary.LittleEndian.Uint64(h[0:8]))
	r.Failed = h[8]&flagFailed != 0
	if h[8]&flagSteps != 0 {
		r.Steps = []byte{} // set by setPayload
	}
	r.Source = h[9]
	r.CompletedAt = time.Unix(0, int64(binary.LittleEndian.Uint64(h[10:18]))).UTC()
	return r, int(binary.LittleEndian.Uint32(h[18:22]))
}

// readRecordAt reads the record at off from f, whose committed size is
// limit, reusing buf. The returned record's Result aliases buf.
func readRecordAt(f io.ReaderAt, off, limit int64, buf []byte) (resultRecord, []byte, error) {
	if off < 0 || off+recordHeader+recordTrailer > limit {
		return resultRecord{}, buf, fmt.Errorf("%w: offset %d beyond the log (%d bytes)", errCorrupt, off, limit)
	}
	buf = grow(buf, recordHeader)
	if _, err := f.ReadAt(buf[:recordHeader], off); err != nil {
		return resultRecord{}, buf, fmt.Errorf("read result record at %d: %w", off, err)
	}
	_, n := parseHeader(buf[:recordHeader])
	if n > maxResultBytes || off+int64(recordHeader+n+recordTrailer) > limit {
		return resultRecord{}, buf, fmt.Errorf("%w: record at %d runs past the log", errCorrupt, off)
	}
	total := recordHeader + n + recordTrailer
	buf = grow(buf, total)
	if _, err := f.ReadAt(buf[recordHeader:total], off+recordHeader); err != nil {
		return resultRecord{}, buf, fmt.Errorf("read result record at %d: %w", off, err)
	}
	rec, _, err := decodeRecord(buf[:total], off)
	return rec, buf, err
}

// decodeRecord decodes the record at the start of b, which was read from
// log offset off. total is the record's size; when b holds less than the
// whole record, rec is empty, err nil and total the size b must have.
// The returned record's Result aliases b.
func decodeRecord(b []byte, off int64) (rec resultRecord, total int, err error) {
	if len(b) < recordHeader {
		return resultRecord{}, recordHeader, nil
	}
	rec, n := parseHeader(b[:recordHeader])
	if n > maxResultBytes {
		return resultRecord{}, 0, fmt.Errorf("%w: record at %d runs past the log", errCorrupt, off)
	}
	total = recordHeader + n + recordTrailer
	if len(b) < total {
		return resultRecord{}, total, nil
	}
	if crc32.Checksum(b[:total-recordTrailer], crcTable) != binary.LittleEndian.Uint32(b[total-recordTrailer:total]) {
		return resultRecord{}, 0, fmt.Errorf("%w: checksum mismatch at %d", errCorrupt, off)
	}
	if err := rec.setPayload(b[recordHeader : recordHeader+n]); err != nil {
		return resultRecord{}, 0, fmt.Errorf("%w at %d", err, off)
	}
	return rec, total, nil
}

// setPayload points Result (and Steps, for a record parseHeader found
// steps in) into the record's payload.
func (r *resultRecord) setPayload(p []byte) error {
	if r.Steps == nil {
		r.Result = p
		return nil
	}
	if len(p) < 4 {
		return fmt.Errorf("%w: record with steps too short", errCorrupt)
	}
	rl := int(binary.LittleEndian.Uint32(p))
	if rl > len(p)-4 {
		return fmt.Errorf("%w: result length %d runs past the record", errCorrupt, rl)
	}
	r.Result, r.Steps = p[4:4+rl], p[4+rl:]
	return nil
}

// grow returns b resized to n bytes, keeping its content.
func grow(b []byte, n int) []byte {
	if cap(b) < n {
		nb := make([]byte, n, max(n, 2*cap(b)))
		copy(nb, b)
		return nb
	}
	return b[:n]
}

// resultLog is the writer of a run's result store. It is not safe for
// concurrent use: the run's mutex guards it.
type resultLog struct {
	dir  string
	log  *os.File
	idx  *os.File
	size int64  // bytes of complete records in the log
	buf  []byte // encoding buffer
	slot [slotSize]byte
	// seen has a bit per index with a record in the log: the authority on
	// "has a result", built by the scan at open. The index file is only
	// for lookups and is not fsynced (the log is): a slot the index lost,
	// or one it kept for a record the log lost, is repaired at open or
	// rewritten by the index's next result.
	seen []uint64
	// dirty says records were written since the last sync.
	dirty bool
	// flushGen counts the flushes that wrote records, syncedGen the last
	// of them an fsync covered.
	flushGen, syncedGen uint64
	// Records added and not yet written (flush): their bytes, from offset
	// pendingAt (size counts them already), their indices (marked in
	// seen) and index slots.
	pending   []byte
	pendingAt int64
	slots     []pendingSlot
	// lost and lostErr: records forgotten by a write add made early
	// (pending grew past maxPendingBytes) that failed; flush reports them.
	lost    []int
	lostErr error
}

// maxPendingBytes bounds the records add keeps before it writes them.
const maxPendingBytes = 1 << 20

// pendingSlot is an index slot to write: index's record is at off.
type pendingSlot struct {
	index int
	off   int64
}

// unmark forgets that index has a result (a write that failed).
func (l *resultLog) unmark(index int) {
	if w := index / 64; w < len(l.seen) {
		l.seen[w] &^= 1 << (index % 64)
	}
}

// mark records that index has a result.
func (l *resultLog) mark(index int) {
	w := index / 64
	if w >= len(l.seen) {
		l.seen = append(l.seen, make([]uint64, w+1-len(l.seen)+len(l.seen)/4)...)
	}
	l.seen[w] |= 1 << (index % 64)
}

// marked reports whether index has a result.
func (l *resultLog) marked(index int) bool {
	w := index / 64
	return w < len(l.seen) && l.seen[w]&(1<<(index%64)) != 0
}

// storeCounts are the outcome counts of the records a store holds,
// first record per index only.
type storeCounts struct {
	Succeeded, Failed int
}

// openResultLog opens (creating) the result store in dir. It scans the log
// to recover from a crash: a torn tail is cut off, index slots missing for
// complete records are filled in (the crash fell between the two writes),
// and the outcomes of the first record of each index are counted, which
// is the truth the run record's counters are repaired from.
func openResultLog(ctx context.Context, dir string) (*resultLog, storeCounts, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, storeCounts{}, fmt.Errorf("coordinator: result store: %w", err)
	}
	logf, err := os.OpenFile(filepath.Join(dir, resultsLogName), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, storeCounts{}, fmt.Errorf("coordinator: result store: %w", err)
	}
	if err := lockResultLog(ctx, logf); err != nil {
		_ = logf.Close()
		return nil, storeCounts{}, err
	}
	idxf, err := os.OpenFile(filepath.Join(dir, indexName), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		_ = logf.Close()
		return nil, storeCounts{}, fmt.Errorf("coordinator: result store: %w", err)
	}
	l := &resultLog{dir: dir, log: logf, idx: idxf}
	counts, err := l.recover()
	if err != nil {
		_ = l.close()
		return nil, storeCounts{}, err
	}
	return l, counts, nil
}

// lockResultLog waits for the lock of a run's result log: held by the
// coordinator that has the run attached, so that a leader that stalled
// past its lease cannot write a run its successor took (the successor
// waits until the stalled one notices and lets go, or dies).
func lockResultLog(ctx context.Context, f *os.File) error {
	delay := 10 * time.Millisecond
	for {
		ok, err := tryLock(f)
		if err != nil {
			return fmt.Errorf("coordinator: lock result store: %w", err)
		}
		if ok {
			return nil
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("coordinator: result store %s is locked by another coordinator: %w", f.Name(), context.Cause(ctx))
		case <-t.C:
		}
		delay = min(2*delay, time.Second)
	}
}

// recover scans the log; see openResultLog.
func (l *resultLog) recover() (storeCounts, error) {
	var counts storeCounts
	st, err := l.log.Stat()
	if err != nil {
		return counts, fmt.Errorf("coordinator: result store: %w", err)
	}
	end := st.Size()
	br := bufio.NewReaderSize(io.NewSectionReader(l.log, 0, end), 1<<20)
	var off int64
	hdr := make([]byte, recordHeader)
	var body []byte
	for off < end {
		if _, err := io.ReadFull(br, hdr); err != nil {
			break // torn header
		}
		rec, n := parseHeader(hdr)
		if n > maxResultBytes || off+int64(recordHeader+n+recordTrailer) > end {
			break // torn record
		}
		body = grow(body, n+recordTrailer)
		if _, err := io.ReadFull(br, body); err != nil {
			break
		}
		crc := crc32.Update(crc32.Checksum(hdr, crcTable), crcTable, body[:n])
		if crc != binary.LittleEndian.Uint32(body[n:]) {
			break
		}
		// The first record of an index in the log is its result (adds
		// happen in log order); its slot may be missing or stale.
		if first := !l.marked(rec.Index); first {
			l.mark(rec.Index)
			slot, err := l.slotOf(rec.Index)
			if err != nil {
				return counts, err
			}
			if slot != off+1 {
				if err := l.setSlot(rec.Index, off); err != nil {
					return counts, err
				}
			}
			if rec.Failed {
				counts.Failed++
			} else {
				counts.Succeeded++
			}
		}
		off += int64(recordHeader + n + recordTrailer)
	}
	if off < end {
		if err := l.log.Truncate(off); err != nil {
			return counts, fmt.Errorf("coordinator: result store: cut torn tail: %w", err)
		}
	}
	l.size = off
	return counts, nil
}

// slotOf returns the slot of index: the record offset+1, or 0.
func (l *resultLog) slotOf(index int) (int64, error) {
	n, err := l.idx.ReadAt(l.slot[:], int64(index)*slotSize)
	if n < slotSize {
		if err == nil || errors.Is(err, io.EOF) {
			return 0, nil // beyond the end: no result
		}
		return 0, fmt.Errorf("coordinator: result index: %w", err)
	}
	return int64(binary.LittleEndian.Uint64(l.slot[:])), nil
}

// setSlot points index at the record at off.
func (l *resultLog) setSlot(index int, off int64) error {
	binary.LittleEndian.PutUint64(l.slot[:], uint64(off+1))
	if _, err := l.idx.WriteAt(l.slot[:], int64(index)*slotSize); err != nil {
		return fmt.Errorf("coordinator: result index: %w", err)
	}
	return nil
}

// has reports whether index has a result.
func (l *resultLog) has(index int) (bool, error) {
	return l.marked(index), nil
}

// add stores r unless its index already has a result (first result per
// index wins); added reports whether it was stored. The record is written
// before its index slot, so a slot never points at a missing record.
func (l *resultLog) add(r *resultRecord) (added bool, err error) {
	if r.Index < 0 {
		return false, fmt.Errorf("coordinator: negative item index %d", r.Index)
	}
	if r.payloadLen() > maxResultBytes {
		return false, fmt.Errorf("coordinator: result of item %d is %d bytes, more than %d", r.Index, len(r.Result), maxResultBytes)
	}
	dup, err := l.has(r.Index)
	if err != nil || dup {
		return false, err
	}
	if len(l.pending) >= maxPendingBytes {
		if forgotten, err, _ := l.flush(); err != nil {
			l.lost, l.lostErr = append(l.lost, forgotten...), err
			return false, err
		}
	}
	if len(l.pending) == 0 {
		l.pendingAt = l.size
	}
	off := l.size
	l.pending = appendRecord(l.pending, r)
	l.size = l.pendingAt + int64(len(l.pending))
	l.mark(r.Index)
	l.slots = append(l.slots, pendingSlot{r.Index, off})
	return true, nil
}

// flush writes the records added since the last flush: one write for
// the log, one per run of consecutive index slots. When the log write
// fails (logErr), the records are forgotten (unmarked, size back): their
// results were not stored, and are sent again; forgotten says which. A
// failed slot write (slotErr) loses no result: the index is not fsynced
// and is repaired from the log at open.
func (l *resultLog) flush() (forgotten []int, logErr, slotErr error) {
	forgotten, logErr = l.lost, l.lostErr
	l.lost, l.lostErr = nil, nil
	if len(l.pending) == 0 {
		return forgotten, logErr, nil
	}
	if _, err := l.log.WriteAt(l.pending, l.pendingAt); err != nil {
		for _, s := range l.slots {
			l.unmark(s.index)
			forgotten = append(forgotten, s.index)
		}
		l.size = l.pendingAt
		l.pending, l.slots = l.pending[:0], l.slots[:0]
		return forgotten, errors.Join(logErr, fmt.Errorf("coordinator: result log: %w", err)), nil
	}
	l.pending = l.pending[:0]
	l.dirty = true
	l.flushGen++
	slotErr = l.writeSlots()
	l.slots = l.slots[:0]
	return forgotten, logErr, slotErr
}

// writeSlots writes the pending index slots, consecutive indices in one
// write.
func (l *resultLog) writeSlots() error {
	slots := l.slots
	for len(slots) > 0 {
		n := 1
		for n < len(slots) && slots[n].index == slots[n-1].index+1 {
			n++
		}
		buf := l.buf[:0]
		for _, s := range slots[:n] {
			buf = binary.LittleEndian.AppendUint64(buf, uint64(s.off+1))
		}
		l.buf = buf
		if _, err := l.idx.WriteAt(buf, int64(slots[0].index)*slotSize); err != nil {
			return fmt.Errorf("coordinator: result index: %w", err)
		}
		slots = slots[n:]
	}
	return nil
}

// sync flushes the log to stable storage: what a result's answer waits
// for. The index is derived from the log (see seen).
func (l *resultLog) sync() error {
	if _, err, _ := l.flush(); err != nil {
		return err
	}
	if !l.dirty {
		return nil // a run's last commit synced it; finishing it needs no second fsync
	}
	gen := l.flushGen
	if err := l.log.Sync(); err != nil {
		return fmt.Errorf("coordinator: sync result log: %w", err)
	}
	l.synced(gen)
	return nil
}

// synced records an fsync of the log that started after flush gen.
func (l *resultLog) synced(gen uint64) {
	l.syncedGen = max(l.syncedGen, gen)
	if l.syncedGen == l.flushGen {
		l.dirty = false
	}
}

func (l *resultLog) close() error {
	_, logErr, slotErr := l.flush()
	return errors.Join(logErr, slotErr, l.log.Close(), l.idx.Close())
}

// resultReader reads a run's result store while it is written (up to the
// committed size it was opened with, or later raised) or after.
type resultReader struct {
	log   *os.File
	idx   *os.File
	limit int64 // committed log size
	buf   []byte
	slot  [slotSize]byte
	// scan's buffers: a chunk of the log, and a window of index slots
	// from slot winStart (winLen of them valid).
	chunk    []byte
	win      []byte
	winStart int64
	winLen   int
}

// openResultReader opens the store in dir for reading, seeing records up
// to limit bytes of the log (-1 = the file's current size). A run with no
// store yet (no result) reads as empty.
func openResultReader(dir string, limit int64) (*resultReader, error) {
	logf, err := os.Open(filepath.Join(dir, resultsLogName))
	if errors.Is(err, os.ErrNotExist) {
		return &resultReader{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("coordinator: open results: %w", err)
	}
	idxf, err := os.Open(filepath.Join(dir, indexName))
	if err != nil {
		_ = logf.Close()
		return nil, fmt.Errorf("coordinator: open result index: %w", err)
	}
	if limit < 0 {
		st, err := logf.Stat()
		if err != nil {
			_ = logf.Close()
			_ = idxf.Close()
			return nil, fmt.Errorf("coordinator: open results: %w", err)
		}
		limit = st.Size()
	}
	return &resultReader{log: logf, idx: idxf, limit: limit}, nil
}

// setLimit raises the committed size (a live run's log grew).
func (r *resultReader) setLimit(limit int64) {
	if limit > r.limit {
		r.limit = limit
	}
}

// close releases the files.
func (r *resultReader) close() error {
	if r.log == nil {
		return nil
	}
	return errors.Join(r.log.Close(), r.idx.Close())
}

// byIndex calls fn for every index in [from, to) in order, with the
// index's record or nil when it has none. The record is valid only during
// the call. Memory use is constant: the index is read sequentially
// through a small buffer and each record with one pread.
func (r *resultReader) byIndex(from, to int, fn func(index int, rec *resultRecord) error) error {
	if from >= to {
		return nil
	}
	var br *bufio.Reader
	if r.idx != nil {
		br = bufio.NewReaderSize(io.NewSectionReader(r.idx, int64(from)*slotSize, int64(to-from)*slotSize), 64<<10)
	}
	for i := from; i < to; i++ {
		var slot int64
		if br != nil {
			n, err := io.ReadFull(br, r.slot[:])
			switch {
			case n == slotSize:
				slot = int64(binary.LittleEndian.Uint64(r.slot[:]))
			case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
				br = nil // past the end of the index: no more results
			default:
				return fmt.Errorf("coordinator: read result index: %w", err)
			}
		}
		if slot == 0 || slot-1 >= r.limit {
			if err := fn(i, nil); err != nil {
				return err
			}
			continue
		}
		rec, buf, err := readRecordAt(r.log, slot-1, r.limit, r.buf)
		r.buf = buf
		if err != nil {
			return fmt.Errorf("coordinator: result of item %d: %w", i, err)
		}
		if rec.Index != i {
			return fmt.Errorf("coordinator: result of item %d: %w: record is for item %d", i, errCorrupt, rec.Index)
		}
		if err := fn(i, &rec); err != nil {
			return err
		}
	}
	return nil
}

// at returns index's record (valid until the next call), or nil.
func (r *resultReader) at(index int) (*resultRecord, error) {
	var out *resultRecord
	err := r.byIndex(index, index+1, func(_ int, rec *resultRecord) error {
		if rec != nil {
			c := *rec
			c.Result = append([]byte(nil), rec.Result...)
			if rec.Steps != nil {
				c.Steps = append([]byte{}, rec.Steps...)
			}
			out = &c
		}
		return nil
	})
	return out, err
}

// scanChunk is how much of the log scan reads at a time: a live run's
// event stream scans what each commit added, and reading it in one call
// rather than a pread or two per record is what keeps the stream cheap.
const scanChunk = 256 << 10

// slotWindow is how many index slots scan reads at a time to check that a
// record is its index's: records come in completion order, which stays
// close to index order, so one read serves many records.
const slotWindow = 4096

// scan calls fn for every record from byte offset from up to the
// committed size, in log (completion) order, with the offset after the
// record. Records that repeat an index already seen earlier in the log
// (a crash between the record and its slot, then a redelivery) are
// skipped: only a record its slot points to is reported. The record is
// valid only during the call.
func (r *resultReader) scan(from int64, fn func(rec *resultRecord, next int64) error) (int64, error) {
	if r.log == nil {
		return from, nil
	}
	// The slots of every record below limit were written before limit
	// was raised to cover them, so a window read during this call holds
	// theirs; one read before this call may not, hence the reset.
	r.winLen = 0
	off := from
	for off < r.limit {
		chunk := int(min(r.limit-off, scanChunk))
		r.chunk = grow(r.chunk, chunk)
		if _, err := r.log.ReadAt(r.chunk, off); err != nil {
			return off, fmt.Errorf("read result records at %d: %w", off, err)
		}
		pos := 0
		for pos < chunk {
			rec, total, err := decodeRecord(r.chunk[pos:chunk], off+int64(pos))
			if err != nil {
				return off + int64(pos), err
			}
			if pos+total > chunk {
				if pos > 0 {
					break // read again from this record
				}
				// A record larger than the chunk: on its own.
				rec, r.buf, err = readRecordAt(r.log, off, r.limit, r.buf)
				if err != nil {
					return off, err
				}
				total = int(rec.size())
			}
			at := off + int64(pos)
			mine, err := r.slotIs(rec.Index, at)
			if err != nil {
				return at, err
			}
			if mine {
				if err := fn(&rec, at+int64(total)); err != nil {
					return at, err
				}
			}
			pos += total
		}
		off += int64(pos)
	}
	return off, nil
}

// slotIs reports whether index's slot points at the record at off. It
// reads slots through a window; a slot that does not match is read again
// on its own before the record is taken for a repeat.
func (r *resultReader) slotIs(index int, off int64) (bool, error) {
	if index < 0 {
		return false, nil
	}
	i := int64(index)
	if i < r.winStart || i >= r.winStart+int64(r.winLen) {
		r.winStart = i &^ (slotWindow - 1)
		r.win = grow(r.win, slotWindow*slotSize)
		n, err := r.idx.ReadAt(r.win, r.winStart*slotSize)
		if n < len(r.win) && err != nil && !errors.Is(err, io.EOF) {
			r.winLen = 0
			return false, fmt.Errorf("coordinator: read result index: %w", err)
		}
		r.winLen = n / slotSize
	}
	if i < r.winStart+int64(r.winLen) {
		k := (i - r.winStart) * slotSize
		if int64(binary.LittleEndian.Uint64(r.win[k:k+slotSize])) == off+1 {
			return true, nil
		}
	}
	n, err := r.idx.ReadAt(r.slot[:], i*slotSize)
	if n < slotSize && err != nil && !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("coordinator: read result index: %w", err)
	}
	return n == slotSize && int64(binary.LittleEndian.Uint64(r.slot[:])) == off+1, nil
}
