package coordinator

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// spoolFileName holds a run's encoded items (DataDir/runs/<id>/items.spool)
// until every one of them is on the work queue.
const spoolFileName = "items.spool"

// maxSpoolRecord bounds one spooled item: larger items are offloaded to
// the blob store before they are spooled, so a record is at most one
// message.
const maxSpoolRecord = 64 << 20

// spoolWriter appends encoded items to a spool file: a sequence of
// records, each a uvarint length and that many bytes, in index order.
type spoolWriter struct {
	f   *os.File
	w   *bufio.Writer
	n   int
	hdr [binary.MaxVarintLen64]byte
}

func createSpool(path string) (*spoolWriter, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return nil, fmt.Errorf("coordinator: item spool: %w", err)
	}
	return &spoolWriter{f: f, w: bufio.NewWriterSize(f, 256<<10)}, nil
}

// add appends the next item.
func (s *spoolWriter) add(data []byte) error {
	k := binary.PutUvarint(s.hdr[:], uint64(len(data)))
	if _, err := s.w.Write(s.hdr[:k]); err != nil {
		return fmt.Errorf("coordinator: item spool: %w", err)
	}
	if _, err := s.w.Write(data); err != nil {
		return fmt.Errorf("coordinator: item spool: %w", err)
	}
	s.n++
	return nil
}

// finish flushes the spool to stable storage and closes it: the run's
// record, which promises its items, is created only after.
func (s *spoolWriter) finish() error {
	err := s.w.Flush()
	if err == nil {
		err = s.f.Sync()
	}
	if cerr := s.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("coordinator: item spool: %w", err)
	}
	return nil
}

// abort closes the spool after a failed upload; the run directory goes.
func (s *spoolWriter) abort() { _ = s.f.Close() }

// errSpoolCorrupt is a spool that does not parse: it was written
// completely and synced before its run existed, so this is a damaged disk.
var errSpoolCorrupt = errors.New("coordinator: item spool is corrupt")

// readSpool calls fn with every item of the spool at path from index
// from on, in order, until fn returns false or an error.
func readSpool(path string, from int, fn func(index int, data []byte) (bool, error)) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("coordinator: item spool: %w", err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 256<<10)
	var buf []byte
	for index := 0; ; index++ {
		n, err := binary.ReadUvarint(r)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil || n > maxSpoolRecord {
			return fmt.Errorf("%w: record %d: %v", errSpoolCorrupt, index, err)
		}
		if index < from {
			if _, err := r.Discard(int(n)); err != nil {
				return fmt.Errorf("%w: record %d: %v", errSpoolCorrupt, index, err)
			}
			continue
		}
		buf = grow(buf, int(n))
		if _, err := io.ReadFull(r, buf); err != nil {
			return fmt.Errorf("%w: record %d: %v", errSpoolCorrupt, index, err)
		}
		more, err := fn(index, buf)
		if err != nil || !more {
			return err
		}
	}
}
