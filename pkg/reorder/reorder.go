// Package reorder writes the results of batch items in input order while
// they complete in any order, using bounded memory.
//
// A batch runner executes items 0..n-1 concurrently, so results arrive out of
// order, but the output file must list them in input order as JSON Lines.
// [Writer] accepts results in any order through [Writer.Put] and writes each
// one as soon as every result before it has been written, so output streams
// while the batch runs.
//
// # Memory bound
//
// A result that arrives before its turn must be kept until the gap in front
// of it is filled. Such early results are kept in memory up to a byte budget
// ([WithMaxBufferedBytes], 16 MiB by default). Once the budget is used, further
// early results are appended to a temporary spill file (in [WithSpillDir]) and
// only their offset and length stay in memory. When the turn of a spilled
// result comes, it is read back from the file and written out. Whenever no
// spilled result is pending anymore, the spill file is truncated, so that a
// long batch with occasional stragglers does not accumulate a large file.
// The file is removed by [Writer.Close].
//
// The budget counts the bytes of the results themselves. Each pending result
// additionally costs a small, constant amount of bookkeeping (a map entry of
// a few dozen bytes), whether it is held in memory or spilled.
//
// Results are written with a trailing '\n' to a buffered writer; call
// [Writer.Flush] to push out what has been written so far. [Writer.Close]
// flushes too.
//
// # Errors
//
// Putting a result for an index that was already put, or that has already
// been written, fails with [ErrDuplicate]. Closing the Writer while results
// are still waiting for a missing one fails with [ErrGap]. An I/O error on the
// output or the spill file leaves the Writer broken: the error is returned by
// that call and by all later calls of Put, Flush and Close.
package reorder

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// DefaultMaxBufferedBytes is the default in-memory budget for results that
// arrive before their turn.
const DefaultMaxBufferedBytes = 16 << 20 // 16 MiB

// Sentinel errors. Errors returned by the Writer wrap them; test with
// [errors.Is].
var (
	// ErrDuplicate reports a result for an index that was already put.
	ErrDuplicate = errors.New("duplicate result")
	// ErrGap reports, on Close, results that could not be written because
	// the result for an earlier index never arrived.
	ErrGap = errors.New("missing result")
	// ErrNegativeIndex reports a negative item index.
	ErrNegativeIndex = errors.New("negative index")
	// ErrClosed reports use of a Writer after Close.
	ErrClosed = errors.New("writer closed")
)

// Option configures a [Writer].
type Option func(*config)

type config struct {
	maxBuffered int
	spillDir    string
}

// WithMaxBufferedBytes sets the in-memory budget, in bytes, for results that
// arrive before their turn. Early results beyond the budget go to the spill
// file. A budget of 0 (or less) spills every early result.
func WithMaxBufferedBytes(n int) Option {
	return func(c *config) { c.maxBuffered = max(n, 0) }
}

// WithSpillDir sets the directory for the temporary spill file. The file is
// created only when needed. The default, "", means [os.TempDir].
func WithSpillDir(dir string) Option {
	return func(c *config) { c.spillDir = dir }
}

// pending is a result waiting for its turn: either data held in memory or,
// when spilled is true, n bytes at offset off in the spill file.
type pending struct {
	data    []byte
	off     int64
	n       int
	spilled bool
}

// Writer writes results in index order. It is safe for concurrent use.
type Writer struct {
	mu sync.Mutex

	out         *bufio.Writer
	maxBuffered int
	spillDir    string

	next     int             // index of the next result to write
	pending  map[int]pending // results that arrived early
	memBytes int             // bytes of in-memory pending data

	spill        *os.File      // created on first use
	spillW       *bufio.Writer // buffers appends to spill
	spillSize    int64         // bytes appended to spill, including buffered ones
	spillPending int           // pending results that live in spill
	scratch      []byte        // buffer for reading spilled results back

	err      error // sticky I/O error
	closed   bool
	closeErr error
}

// NewWriter returns a Writer that writes results to w as JSON Lines. The
// Writer does not close w.
func NewWriter(w io.Writer, opts ...Option) *Writer {
	c := config{maxBuffered: DefaultMaxBufferedBytes}
	for _, o := range opts {
		o(&c)
	}
	return &Writer{
		out:         bufio.NewWriterSize(w, 64<<10),
		maxBuffered: c.maxBuffered,
		spillDir:    c.spillDir,
		pending:     make(map[int]pending),
	}
}

// Put records the encoded result for the item at index. The result must be
// one JSON value without a trailing newline; Put appends '\n' when writing
// it. Put writes the result, and every pending result that follows it
// without a gap, as soon as all results before it have been written;
// otherwise it keeps the result in memory or in the spill file. Put does not
// retain result after it returns.
//
// Put fails with [ErrDuplicate] if a result for index was already put, with
// [ErrNegativeIndex] for a negative index and with [ErrClosed] after Close.
func (w *Writer) Put(index int, result []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.closed:
		return fmt.Errorf("reorder: put result %d: %w", index, ErrClosed)
	case w.err != nil:
		return w.err
	case index < 0:
		return fmt.Errorf("reorder: put result %d: %w", index, ErrNegativeIndex)
	case index < w.next:
		return fmt.Errorf("reorder: put result %d: %w (already written)", index, ErrDuplicate)
	}
	if _, ok := w.pending[index]; ok {
		return fmt.Errorf("reorder: put result %d: %w", index, ErrDuplicate)
	}

	if index > w.next {
		return w.hold(index, result)
	}
	if err := w.write(result); err != nil {
		return err
	}
	return w.drain()
}

// hold stores an early result in memory or in the spill file.
func (w *Writer) hold(index int, result []byte) error {
	if w.memBytes+len(result) <= w.maxBuffered {
		w.pending[index] = pending{data: append([]byte(nil), result...)}
		w.memBytes += len(result)
		return nil
	}
	if err := w.openSpill(); err != nil {
		return err
	}
	if _, err := w.spillW.Write(result); err != nil {
		return w.fail(fmt.Errorf("reorder: write spill file: %w", err))
	}
	w.pending[index] = pending{off: w.spillSize, n: len(result), spilled: true}
	w.spillSize += int64(len(result))
	w.spillPending++
	return nil
}

// drain writes pending results that have become contiguous with the output.
func (w *Writer) drain() error {
	for {
		p, ok := w.pending[w.next]
		if !ok {
			return nil
		}
		delete(w.pending, w.next)
		data := p.data
		if p.spilled {
			var err error
			if data, err = w.readSpill(p); err != nil {
				return err
			}
		} else {
			w.memBytes -= len(p.data)
		}
		if err := w.write(data); err != nil {
			return err
		}
	}
}

// write appends one result line to the output and advances next.
func (w *Writer) write(result []byte) error {
	if _, err := w.out.Write(result); err != nil {
		return w.fail(fmt.Errorf("reorder: write result %d: %w", w.next, err))
	}
	if err := w.out.WriteByte('\n'); err != nil {
		return w.fail(fmt.Errorf("reorder: write result %d: %w", w.next, err))
	}
	w.next++
	return nil
}

// openSpill creates the spill file on first use.
func (w *Writer) openSpill() error {
	if w.spill != nil {
		return nil
	}
	f, err := os.CreateTemp(w.spillDir, "stepflow-reorder-*.spill")
	if err != nil {
		return w.fail(fmt.Errorf("reorder: create spill file: %w", err))
	}
	w.spill = f
	w.spillW = bufio.NewWriterSize(f, 64<<10)
	return nil
}

// readSpill reads a spilled result back. The returned slice is valid until
// the next call. When it was the last spilled result pending, the spill file
// is truncated so that its space is reused.
func (w *Writer) readSpill(p pending) ([]byte, error) {
	// Flush buffered appends if the result has not reached the file yet.
	if p.off+int64(p.n) > w.spillSize-int64(w.spillW.Buffered()) {
		if err := w.spillW.Flush(); err != nil {
			return nil, w.fail(fmt.Errorf("reorder: write spill file: %w", err))
		}
	}
	if cap(w.scratch) < p.n {
		w.scratch = make([]byte, p.n)
	}
	buf := w.scratch[:p.n]
	if _, err := w.spill.ReadAt(buf, p.off); err != nil {
		return nil, w.fail(fmt.Errorf("reorder: read spill file: %w", err))
	}
	w.spillPending--
	if w.spillPending == 0 {
		if err := w.resetSpill(); err != nil {
			return nil, err
		}
	}
	return buf, nil
}

// resetSpill empties the spill file; it must hold no pending result.
func (w *Writer) resetSpill() error {
	w.spillW.Reset(w.spill)
	if err := w.spill.Truncate(0); err != nil {
		return w.fail(fmt.Errorf("reorder: truncate spill file: %w", err))
	}
	if _, err := w.spill.Seek(0, io.SeekStart); err != nil {
		return w.fail(fmt.Errorf("reorder: truncate spill file: %w", err))
	}
	w.spillSize = 0
	return nil
}

// fail records err as the sticky error and returns it.
func (w *Writer) fail(err error) error {
	w.err = err
	return err
}

// Written returns the number of results written so far, which is also the
// index of the next result to be written. Written results may still sit in
// the output buffer until [Writer.Flush] or [Writer.Close].
func (w *Writer) Written() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.next
}

// Pending returns the number of results that arrived early and wait for an
// earlier one.
func (w *Writer) Pending() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.pending)
}

// Flush writes buffered output to the underlying writer.
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return fmt.Errorf("reorder: flush: %w", ErrClosed)
	}
	return w.flush()
}

func (w *Writer) flush() error {
	if w.err != nil {
		return w.err
	}
	if err := w.out.Flush(); err != nil {
		return w.fail(fmt.Errorf("reorder: flush output: %w", err))
	}
	return nil
}

// Close flushes the output and removes the spill file. If results are still
// pending because an earlier result never arrived, everything up to the gap
// is written and Close returns an error wrapping [ErrGap] that names the
// first missing index. Close removes the spill file in every case, and does
// not close the underlying writer. Calling Close again returns the result of
// the first call.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return w.closeErr
	}
	w.closed = true

	var errs []error
	if err := w.flush(); err != nil {
		errs = append(errs, err)
	}
	if n := len(w.pending); n > 0 {
		first := -1
		for i := range w.pending {
			if first < 0 || i < first {
				first = i
			}
		}
		errs = append(errs, fmt.Errorf("reorder: %w for index %d: %d later results (from index %d on) were not written",
			ErrGap, w.next, n, first))
	}
	if w.spill != nil {
		name := w.spill.Name()
		if err := w.spill.Close(); err != nil {
			errs = append(errs, fmt.Errorf("reorder: close spill file: %w", err))
		}
		if err := os.Remove(name); err != nil {
			errs = append(errs, fmt.Errorf("reorder: remove spill file: %w", err))
		}
		w.spill, w.spillW = nil, nil
	}
	w.pending, w.scratch, w.memBytes = nil, nil, 0
	w.closeErr = errors.Join(errs...)
	return w.closeErr
}
