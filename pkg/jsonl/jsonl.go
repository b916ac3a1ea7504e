// Package jsonl reads JSON Lines (https://jsonlines.org) input as a stream.
//
// It implements the batch-input format of Stepflow: the input is split into
// lines on '\n', and an optional '\r' at the end of each line is removed, so
// both Unix and Windows line endings are accepted. Every line must hold exactly
// one complete JSON value of any type (object, array, string, number, boolean
// or null); surrounding spaces and tabs are allowed. A single final newline
// terminates the last line and does not start a new one, and the last line
// may also end without a newline. An empty input contains zero items.
//
// A line that is empty or holds only whitespace is an error wherever it
// appears, including an extra empty line at the very end (input ending in
// "\n\n"). Blank lines are rejected rather than skipped so that line N of the
// input always corresponds to item N-1 of the batch.
//
// # Design
//
// [Reader] is a thin layer over a [bufio.Reader]. A line that fits in the
// bufio buffer (64 KiB) is handed out without copying; a longer line is
// assembled in a single reusable buffer that grows up to the configured
// maximum line length ([DefaultMaxLineBytes] unless changed with
// [WithMaxLineBytes]). At no time does the Reader hold more than one line in
// memory, and the bytes of a line that exceeds the maximum are discarded as
// they are read. This is why [Item.Data] is only valid until the next call to
// [Reader.Next].
//
// Validity is checked with [json.Valid], which does not allocate. Only when a
// line is invalid is it parsed a second time with [json.Unmarshal], to obtain
// the column of the syntax error from [json.SyntaxError].
//
// Problems with a single line are reported as a [*LineError]. They do not
// stop the Reader: the caller may keep calling Next to get the following
// lines, which is how a batch runner turns bad lines into failed items
// instead of aborting the whole batch. Errors from the underlying
// [io.Reader] are not LineErrors; they end the stream and are returned by
// every later call to Next.
package jsonl

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/stepflow-go/stepflow/pkg/value"
)

// DefaultMaxLineBytes is the default maximum length of a line, in bytes,
// not counting its line terminator ("\n" or "\r\n").
const DefaultMaxLineBytes = 64 << 20 // 64 MiB

// defaultBufferSize is the size of the bufio.Reader buffer. Lines up to this
// length are returned without copying.
const defaultBufferSize = 64 << 10

// Sentinel errors wrapped in [LineError.Err]. Use [errors.Is] to test for
// them.
var (
	// ErrBlankLine reports a line that is empty or contains only
	// whitespace.
	ErrBlankLine = errors.New("blank line")
	// ErrLineTooLong reports a line longer than the configured maximum.
	ErrLineTooLong = errors.New("line too long")
	// ErrInvalidJSON reports a line that is not exactly one valid JSON
	// value. The LineError's Err also wraps the [*json.SyntaxError] when
	// one is available.
	ErrInvalidJSON = errors.New("invalid JSON")
)

// Item is one line of the input.
type Item struct {
	// Index is the 0-based index of the item in the batch. Every line,
	// valid or not, occupies one index, so Index is always Line-1.
	Index int
	// Line is the 1-based line number in the input.
	Line int
	// Data is the raw JSON text of the line without its line terminator
	// (a trailing '\r' is removed). It aliases the Reader's internal
	// buffer and is only valid until the next call to [Reader.Next]; copy
	// it to keep it longer.
	Data []byte
}

// LineError describes a problem with a single line of the input.
type LineError struct {
	// Name identifies the input (for example a file path), as set with
	// [WithName]. It is empty when no name was given.
	Name string
	// Line is the 1-based line number.
	Line int
	// Col is the 1-based byte column of a JSON syntax error, as reported
	// by encoding/json, or 0 when not applicable.
	Col int
	// Index is the 0-based item index the line would have had.
	Index int
	// Err is the underlying problem. It wraps one of [ErrBlankLine],
	// [ErrLineTooLong] or [ErrInvalidJSON].
	Err error
}

// Error formats the error as "name:line:col: problem", the format used by
// compilers and understood by editors. Without a name it is
// "line L, column C: problem"; the column part is left out when Col is 0.
func (e *LineError) Error() string {
	var b []byte
	if e.Name != "" {
		b = append(b, e.Name...)
		b = append(b, ':')
		b = strconv.AppendInt(b, int64(e.Line), 10)
		if e.Col > 0 {
			b = append(b, ':')
			b = strconv.AppendInt(b, int64(e.Col), 10)
		}
	} else {
		b = append(b, "line "...)
		b = strconv.AppendInt(b, int64(e.Line), 10)
		if e.Col > 0 {
			b = append(b, ", column "...)
			b = strconv.AppendInt(b, int64(e.Col), 10)
		}
	}
	b = append(b, ": "...)
	if e.Err != nil {
		b = append(b, e.Err.Error()...)
	} else {
		b = append(b, "invalid line"...)
	}
	return string(b)
}

// Unwrap returns the underlying error.
func (e *LineError) Unwrap() error { return e.Err }

// Option configures a [Reader] or [Validate].
type Option func(*config)

type config struct {
	name    string
	maxLine int
	bufSize int
}

// WithMaxLineBytes sets the maximum length of a line in bytes, not counting
// its line terminator ("\n" or "\r\n"). Longer lines are reported as a
// [*LineError] wrapping [ErrLineTooLong]. A value of n <= 0 selects
// [DefaultMaxLineBytes].
func WithMaxLineBytes(n int) Option {
	return func(c *config) {
		if n <= 0 {
			n = DefaultMaxLineBytes
		}
		c.maxLine = n
	}
}

// WithName sets the name of the input, typically its file path, used in
// error messages.
func WithName(name string) Option {
	return func(c *config) { c.name = name }
}

// withBufferSize sets the bufio buffer size; tests use it to exercise the
// long-line path with small inputs.
func withBufferSize(n int) Option {
	return func(c *config) { c.bufSize = n }
}

// Reader reads JSON Lines items one at a time. It is not safe for
// concurrent use.
type Reader struct {
	br      *bufio.Reader
	name    string
	maxLine int

	line int    // number of lines returned so far
	buf  []byte // assembles lines longer than the bufio buffer
	err  error  // sticky: io.EOF or a read error
}

// NewReader returns a Reader that reads JSON Lines from r.
func NewReader(r io.Reader, opts ...Option) *Reader {
	c := config{maxLine: DefaultMaxLineBytes, bufSize: defaultBufferSize}
	for _, o := range opts {
		o(&c)
	}
	return &Reader{
		br:      bufio.NewReaderSize(r, c.bufSize),
		name:    c.name,
		maxLine: c.maxLine,
	}
}

// Next returns the next item.
//
// At the end of the input it returns io.EOF. If the line is blank, too long
// or not valid JSON it returns a zero Item and a [*LineError]; the Reader
// stays usable and the next call returns the following line. Any other error
// comes from the underlying reader, is wrapped with context, and is returned
// again by every later call.
//
// The returned Item's Data is only valid until the next call to Next.
func (r *Reader) Next() (Item, error) {
	if r.err != nil {
		return Item{}, r.err
	}
	data, tooLong, err := r.readLine()
	if err != nil {
		if err == io.EOF {
			r.err = io.EOF
		} else {
			r.err = fmt.Errorf("jsonl: %sreading line %d: %w", r.prefix(), r.line+1, err)
		}
		return Item{}, r.err
	}
	r.line++
	index := r.line - 1
	if tooLong {
		return Item{}, r.lineError(0, fmt.Errorf("%w (more than %d bytes)", ErrLineTooLong, r.maxLine))
	}
	if !json.Valid(data) {
		return Item{}, r.invalid(data)
	}
	if err := strictCheck(data); err != nil {
		return Item{}, r.lineError(err.Col, fmt.Errorf("%w: %s", ErrInvalidJSON, err.Msg))
	}
	return Item{Index: index, Line: r.line, Data: data}, nil
}

// readLine returns the next line without its terminator. It returns io.EOF
// only when no further line exists. When the line exceeds the limit,
// tooLong is true, the rest of the line has been consumed and discarded, and
// data is nil. A read error that ends a partial line is returned instead of
// the line.
func (r *Reader) readLine() (data []byte, tooLong bool, err error) {
	chunk, err := r.br.ReadSlice('\n')
	if err == nil {
		// Fast path: the whole line is in the bufio buffer.
		line := trimEOL(chunk)
		return line, len(line) > r.maxLine, nil
	}
	if err == io.EOF {
		if len(chunk) == 0 {
			return nil, false, io.EOF
		}
		line := trimEOL(chunk)
		return line, len(line) > r.maxLine, nil
	}
	if err != bufio.ErrBufferFull {
		return nil, false, err
	}

	// Slow path: assemble the line in r.buf. The limit allows one extra
	// byte for a '\r' that trimEOL may remove.
	limit := r.maxLine + 1
	r.buf = append(r.buf[:0], chunk...)
	for {
		if len(r.buf) > limit {
			tooLong = true
			r.buf = r.buf[:0]
		}
		chunk, err = r.br.ReadSlice('\n')
		if !tooLong {
			r.buf = append(r.buf, chunk...)
		}
		switch err {
		case nil, io.EOF:
			if tooLong {
				return nil, true, nil
			}
			line := trimEOL(r.buf)
			return line, len(line) > r.maxLine, nil
		case bufio.ErrBufferFull:
			continue
		default:
			return nil, false, err
		}
	}
}

// trimEOL removes a trailing "\n" and then a trailing "\r".
func trimEOL(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
	}
	if n := len(b); n > 0 && b[n-1] == '\r' {
		b = b[:n-1]
	}
	return b
}

// invalid builds the LineError for a line that json.Valid rejected.
func (r *Reader) invalid(data []byte) error {
	if isBlank(data) {
		return r.lineError(0, ErrBlankLine)
	}
	var v any
	err := json.Unmarshal(data, &v)
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return r.lineError(int(se.Offset), fmt.Errorf("%w: %w", ErrInvalidJSON, se))
	}
	// json.Valid and json.Unmarshal disagree; should not happen.
	return r.lineError(0, ErrInvalidJSON)
}

// strictCheck refuses valid JSON syntax whose meaning would be silently
// changed (value.ParseStrict): a string that is not valid UTF-8, an
// unpaired surrogate escape, a key repeated in an object. Only lines with
// a byte that is not ASCII, an escape or a second key can have one, so
// the others skip the parse.
func strictCheck(data []byte) *value.SyntaxError {
	if !mayBeLax(data) {
		return nil
	}
	_, err := value.ParseStrict(data)
	var se *value.SyntaxError
	if errors.As(err, &se) {
		return se
	}
	return nil
}

// mayBeLax reports whether data has a byte outside ASCII, a backslash
// escape, or more than one object key (a ':').
func mayBeLax(data []byte) bool {
	colons := 0
	for _, c := range data {
		switch {
		case c >= 0x80, c == '\\':
			return true
		case c == ':':
			if colons++; colons > 1 {
				return true
			}
		}
	}
	return false
}

// isBlank reports whether b consists only of JSON whitespace (space, tab,
// carriage return).
func isBlank(b []byte) bool {
	for _, c := range b {
		if c != ' ' && c != '\t' && c != '\r' {
			return false
		}
	}
	return true
}

func (r *Reader) lineError(col int, err error) *LineError {
	return &LineError{Name: r.name, Line: r.line, Col: col, Index: r.line - 1, Err: err}
}

// prefix returns "name: " or "".
func (r *Reader) prefix() string {
	if r.name == "" {
		return ""
	}
	return r.name + ": "
}

// Validate reads the whole stream and checks every line. It returns the
// number of items when the input is valid. Otherwise it stops at the first
// problem and returns the number of valid items before it together with a
// [*LineError], or a wrapped read error from r. It accepts the same options
// as [NewReader] and is meant as a fast pre-scan of an input file before a
// batch starts.
func Validate(r io.Reader, opts ...Option) (int, error) {
	jr := NewReader(r, opts...)
	n := 0
	for {
		_, err := jr.Next()
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		n++
	}
}
