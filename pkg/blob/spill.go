package blob

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/stepflow-go/stepflow/pkg/value"
)

// Spill is a Store with bounded memory for very large local batches.
//
// Blobs are kept in memory (as values, sharing the caller's data) until
// their estimated size reaches the memory budget. Every blob after that is
// appended, as compact JSON, to a temporary file, and only an 8-byte index
// entry per spilled blob stays in memory: an open-addressing hash table of
// uint64 slots, each packing the record's file offset (40 bits) with a
// 24-bit tag taken from the blob's SHA-256. A tag match is confirmed by
// reading the record back and comparing its full digest, so tag
// collisions are harmless. One million spilled blobs need a 2^21-slot
// table: 16 MiB of heap.
//
// File records are `digest[32] kind[1] uvarint(len) json[len]`; writes go
// through a 64 KiB buffer, and reads of flushed records happen outside the
// lock. The file is unlinked right after creation where the OS allows it,
// so it disappears even if the process dies; Close releases it.
type Spill struct {
	mu sync.Mutex

	budget int // bytes of estimated in-memory blob size
	used   int
	mem    map[[sha256.Size]byte]Blob

	f       *os.File
	path    string
	flushed int64  // bytes of f that are written
	buf     []byte // pending bytes, logically at offset flushed
	slots   []uint64
	bits    uint // len(slots) == 1<<bits
	count   int  // spilled blobs in the index
	closed  bool

	// tagIndexBits is the largest table size (in bits) whose slot indexes
	// can be recomputed from the stored tags alone; larger tables are
	// rebuilt by scanning the file. A field so tests can lower it.
	tagIndexBits uint
}

var _ Store = (*Spill)(nil)

const (
	tagBits       = 24
	tagMask       = 1<<tagBits - 1
	maxOffset     = 1<<(64-tagBits) - 2 // offset+1 must fit in 40 bits
	initialBits   = 10
	flushSize     = 64 << 10
	headerMax     = sha256.Size + 1 + binary.MaxVarintLen64
	firstRead     = 512
	memEntryCost  = 128 // estimated overhead of one in-memory blob
	memValueRatio = 2   // estimated heap bytes of a value per JSON byte
	kindByteData  = 'd'
	kindByteFlow  = 'f'
)

// SpillStats describes a Spill store's contents.
type SpillStats struct {
	// InMemory is the number of blobs kept in memory.
	InMemory int
	// Spilled is the number of blobs in the file.
	Spilled int
	// MemoryBytes is the estimated size of the in-memory blobs.
	MemoryBytes int
	// FileBytes is the size of the spill file, including buffered bytes.
	FileBytes int64
	// IndexBytes is the size of the in-memory index of spilled blobs.
	IndexBytes int
}

// NewSpill returns a Spill store that keeps up to memBudgetBytes of blobs
// (estimated at twice their JSON size plus a fixed overhead) in memory and
// spills the rest to a temporary file created in dir ("" means
// os.TempDir()). A budget <= 0 spills every blob. Close the store to
// remove the file.
func NewSpill(dir string, memBudgetBytes int) (*Spill, error) {
	f, err := os.CreateTemp(dir, "stepflow-blobs-*.bin")
	if err != nil {
		return nil, fmt.Errorf("create blob spill file: %w", err)
	}
	s := &Spill{
		budget:       memBudgetBytes,
		mem:          make(map[[sha256.Size]byte]Blob),
		f:            f,
		path:         f.Name(),
		slots:        make([]uint64, 1<<initialBits),
		bits:         initialBits,
		tagIndexBits: tagBits,
	}
	// Unlink now so a crash leaves nothing behind; on systems that refuse
	// to remove open files, Close removes it.
	if err := os.Remove(s.path); err == nil {
		s.path = ""
	}
	return s, nil
}

// Close closes and removes the spill file and drops all blobs. Further
// calls return ErrClosed.
func (s *Spill) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.mem, s.slots, s.buf = nil, nil, nil
	err := s.f.Close()
	if s.path != "" {
		if rerr := os.Remove(s.path); rerr != nil && err == nil {
			err = rerr
		}
	}
	if err != nil {
		return fmt.Errorf("close blob spill file: %w", err)
	}
	return nil
}

// Stats returns counters describing the store.
func (s *Spill) Stats() SpillStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return SpillStats{
		InMemory:    len(s.mem),
		Spilled:     s.count,
		MemoryBytes: s.used,
		FileBytes:   s.flushed + int64(len(s.buf)),
		IndexBytes:  8 * len(s.slots),
	}
}

func hashKey(d *[sha256.Size]byte) uint64 { return binary.BigEndian.Uint64(d[:8]) }

func slotOffset(slot uint64) int64 { return int64(slot>>tagBits) - 1 }

func makeSlot(off int64, h uint64) uint64 {
	return uint64(off+1)<<tagBits | h>>(64-tagBits)
}

func kindByte(k Kind) byte {
	if k == KindFlow {
		return kindByteFlow
	}
	return kindByteData
}

// Put stores data under its content id.
func (s *Spill) Put(_ context.Context, kind Kind, data value.Value) (string, error) {
	if !kind.Valid() {
		return "", fmt.Errorf("%w: %q", ErrInvalidKind, kind)
	}
	js := value.Marshal(data)
	d := sha256.Sum256(js)
	id := IDOf(js)

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return "", ErrClosed
	}
	if b, ok := s.mem[d]; ok {
		if k := mergeKind(b.Kind, kind); k != b.Kind {
			b.Kind = k
			s.mem[d] = b
		}
		return id, nil
	}
	i, slot, err := s.findLocked(&d)
	if err != nil {
		return "", err
	}
	if slot != 0 {
		prevKind, err := s.kindAtLocked(slotOffset(slot))
		if err != nil {
			return "", err
		}
		if mergeKind(prevKind, kind) == prevKind {
			return id, nil
		}
		// Upgrade to a flow: append a new record and repoint the slot.
		off, err := s.appendLocked(&d, kind, js)
		if err != nil {
			return "", err
		}
		s.slots[i] = makeSlot(off, hashKey(&d))
		return id, nil
	}
	if cost := memValueRatio*len(js) + memEntryCost; s.used+cost <= s.budget {
		s.used += cost
		s.mem[d] = Blob{ID: id, Kind: kind, Data: data}
		return id, nil
	}
	if grown, err := s.growIfNeededLocked(); err != nil {
		return "", err
	} else if grown {
		if i, _, err = s.findLocked(&d); err != nil {
			return "", err
		}
	}
	off, err := s.appendLocked(&d, kind, js)
	if err != nil {
		return "", err
	}
	s.slots[i] = makeSlot(off, hashKey(&d))
	s.count++
	return id, nil
}

// Get returns the blob with the id.
func (s *Spill) Get(_ context.Context, id string) (Blob, error) {
	d, ok := parseID(id)
	if !ok {
		return Blob{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return Blob{}, ErrClosed
	}
	if b, ok := s.mem[d]; ok {
		s.mu.Unlock()
		return b, nil
	}
	_, slot, err := s.findLocked(&d)
	s.mu.Unlock()
	if err != nil {
		return Blob{}, err
	}
	if slot == 0 {
		return Blob{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	rec, err := s.readRecord(slotOffset(slot))
	if err != nil {
		return Blob{}, err
	}
	if rec.digest != d || sha256.Sum256(rec.json) != d {
		return Blob{}, fmt.Errorf("blob %s: spill record fails its digest check", id)
	}
	v, err := value.Parse(rec.json)
	if err != nil {
		return Blob{}, fmt.Errorf("blob %s: corrupt spill record: %w", id, err)
	}
	return Blob{ID: id, Kind: rec.kind, Data: v}, nil
}

// findLocked looks d up in the index. It returns the slot position and
// the slot (0 when absent; the position is then where to insert).
func (s *Spill) findLocked(d *[sha256.Size]byte) (int, uint64, error) {
	h := hashKey(d)
	tag := h >> (64 - tagBits)
	mask := len(s.slots) - 1
	for i := int(h >> (64 - s.bits)); ; i = (i + 1) & mask {
		slot := s.slots[i]
		if slot == 0 {
			return i, 0, nil
		}
		if slot&tagMask != tag {
			continue
		}
		got, err := s.digestAtLocked(slotOffset(slot))
		if err != nil {
			return 0, 0, err
		}
		if got == *d {
			return i, slot, nil
		}
	}
}

// reinsertByTagLocked puts an existing slot into a fresh table, taking
// its home position from its tag (the top bits of the hash); valid while
// s.bits <= tagBits.
func (s *Spill) reinsertByTagLocked(slot uint64) {
	mask := len(s.slots) - 1
	i := int((slot & tagMask) >> (tagBits - s.bits))
	for s.slots[i] != 0 {
		i = (i + 1) & mask
	}
	s.slots[i] = slot
}

// growIfNeededLocked doubles the table when one more entry would pass a
// load factor of 3/4, and reports whether it did.
func (s *Spill) growIfNeededLocked() (bool, error) {
	if (s.count+1)*4 <= len(s.slots)*3 {
		return false, nil
	}
	newBits := s.bits + 1
	old := s.slots
	s.slots = make([]uint64, 1<<newBits)
	s.bits = newBits
	if newBits <= min(s.tagIndexBits, tagBits) {
		for _, slot := range old {
			if slot != 0 {
				s.reinsertByTagLocked(slot)
			}
		}
		return true, nil
	}
	// The tags no longer determine the home positions: rebuild from the
	// records themselves.
	if err := s.rebuildFromFileLocked(); err != nil {
		s.slots, s.bits = old, newBits-1
		return false, err
	}
	return true, nil
}

// rebuildFromFileLocked re-indexes every record of the file in order, so
// that a later record for the same digest (a kind upgrade) wins.
func (s *Spill) rebuildFromFileLocked() error {
	end := s.flushed + int64(len(s.buf))
	count := 0
	for off := int64(0); off < end; {
		rec, err := s.readRecordLocked(off)
		if err != nil {
			return err
		}
		i, slot, err := s.findLocked(&rec.digest)
		if err != nil {
			return err
		}
		if slot == 0 {
			count++
		}
		s.slots[i] = makeSlot(off, hashKey(&rec.digest))
		off += rec.size
	}
	s.count = count
	return nil
}

// appendLocked appends a record and returns its offset.
func (s *Spill) appendLocked(d *[sha256.Size]byte, kind Kind, js []byte) (int64, error) {
	off := s.flushed + int64(len(s.buf))
	if off > maxOffset {
		return 0, fmt.Errorf("blob spill file exceeds %d bytes", int64(maxOffset))
	}
	s.buf = append(s.buf, d[:]...)
	s.buf = append(s.buf, kindByte(kind))
	s.buf = binary.AppendUvarint(s.buf, uint64(len(js)))
	s.buf = append(s.buf, js...)
	if len(s.buf) >= flushSize {
		if err := s.flushLocked(); err != nil {
			return 0, err
		}
	}
	return off, nil
}

func (s *Spill) flushLocked() error {
	if len(s.buf) == 0 {
		return nil
	}
	n, err := s.f.WriteAt(s.buf, s.flushed)
	s.flushed += int64(n)
	s.buf = s.buf[n:]
	if err != nil {
		return fmt.Errorf("write blob spill file: %w", err)
	}
	s.buf = s.buf[:0:0]
	return nil
}

func (s *Spill) digestAtLocked(off int64) ([sha256.Size]byte, error) {
	var d [sha256.Size]byte
	if err := s.readAtLocked(d[:], off); err != nil {
		return d, err
	}
	return d, nil
}

func (s *Spill) kindAtLocked(off int64) (Kind, error) {
	var b [1]byte
	if err := s.readAtLocked(b[:], off+sha256.Size); err != nil {
		return "", err
	}
	return decodeKind(b[0])
}

// readAtLocked reads len(p) bytes at off from the file and the buffer.
func (s *Spill) readAtLocked(p []byte, off int64) error {
	end := s.flushed + int64(len(s.buf))
	if off < 0 || off+int64(len(p)) > end {
		return fmt.Errorf("blob spill file: read past end at offset %d", off)
	}
	if off < s.flushed {
		n := min(int64(len(p)), s.flushed-off)
		if _, err := s.f.ReadAt(p[:n], off); err != nil {
			return fmt.Errorf("read blob spill file: %w", err)
		}
		p, off = p[n:], off+n
	}
	if len(p) > 0 {
		copy(p, s.buf[off-s.flushed:])
	}
	return nil
}

type record struct {
	digest [sha256.Size]byte
	kind   Kind
	json   []byte
	size   int64 // bytes of the whole record
}

func decodeKind(b byte) (Kind, error) {
	switch b {
	case kindByteData:
		return KindData, nil
	case kindByteFlow:
		return KindFlow, nil
	}
	return "", fmt.Errorf("blob spill file: corrupt kind byte %#x", b)
}

// readRecordLocked reads the record at off with the lock held.
func (s *Spill) readRecordLocked(off int64) (record, error) {
	end := s.flushed + int64(len(s.buf))
	head := make([]byte, min(int64(headerMax), end-off))
	if err := s.readAtLocked(head, off); err != nil {
		return record{}, err
	}
	rec, hlen, n, err := parseHeader(head)
	if err != nil {
		return record{}, err
	}
	rec.json = make([]byte, n)
	if err := s.readAtLocked(rec.json, off+int64(hlen)); err != nil {
		return record{}, err
	}
	rec.size = int64(hlen) + int64(n)
	return rec, nil
}

// readRecord reads the record at off. Flushed records are read without
// holding the lock: they never change.
func (s *Spill) readRecord(off int64) (record, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return record{}, ErrClosed
	}
	if off >= s.flushed {
		defer s.mu.Unlock()
		return s.readRecordLocked(off)
	}
	flushed := s.flushed
	s.mu.Unlock()

	first := make([]byte, min(int64(firstRead), flushed-off))
	if _, err := s.f.ReadAt(first, off); err != nil && !errors.Is(err, io.EOF) {
		if errors.Is(err, os.ErrClosed) {
			return record{}, ErrClosed
		}
		return record{}, fmt.Errorf("read blob spill file: %w", err)
	}
	rec, hlen, n, err := parseHeader(first)
	if err != nil {
		return record{}, err
	}
	rec.size = int64(hlen) + int64(n)
	if avail := len(first) - hlen; avail >= n {
		rec.json = first[hlen : hlen+n]
	} else {
		rec.json = make([]byte, n)
		copy(rec.json, first[hlen:])
		if _, err := s.f.ReadAt(rec.json[avail:], off+int64(len(first))); err != nil {
			if errors.Is(err, os.ErrClosed) {
				return record{}, ErrClosed
			}
			return record{}, fmt.Errorf("read blob spill file: %w", err)
		}
	}
	return rec, nil
}

// parseHeader decodes a record header from the start of p, returning the
// header length and the JSON length.
func parseHeader(p []byte) (record, int, int, error) {
	var rec record
	if len(p) < sha256.Size+2 {
		return rec, 0, 0, fmt.Errorf("blob spill file: truncated record header")
	}
	copy(rec.digest[:], p)
	kind, err := decodeKind(p[sha256.Size])
	if err != nil {
		return rec, 0, 0, err
	}
	rec.kind = kind
	n, w := binary.Uvarint(p[sha256.Size+1:])
	if w <= 0 || n > 1<<40 {
		return rec, 0, 0, fmt.Errorf("blob spill file: corrupt record length")
	}
	return rec, sha256.Size + 1 + w, int(n), nil
}
