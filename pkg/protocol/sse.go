package protocol

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// readLine reads one line of any length from r into buf (reused and
// returned) and reports whether it ended in '\n'. The '\n' and one
// trailing '\r' are removed. When max > 0 and the line is longer than max
// bytes, its content is discarded as it is read and overflow is true; the
// returned line is then empty. err is the read error that ended an
// unterminated line (io.EOF at the end of the input).
func readLine(r *bufio.Reader, buf []byte, max int) (line []byte, terminated, overflow bool, err error) {
	line = buf[:0]
	for {
		chunk, err := r.ReadSlice('\n')
		if !overflow {
			// Trimming removes at most "\r\n", so a longer line is
			// known to be oversize before its end is read.
			if max > 0 && len(line)+len(chunk) > max+2 {
				overflow = true
				line = line[:0]
			} else {
				line = append(line, chunk...)
			}
		}
		switch {
		case err == nil:
			line = bytes.TrimSuffix(line, []byte{'\n'})
			line = bytes.TrimSuffix(line, []byte{'\r'})
			if max > 0 && len(line) > max {
				overflow = true
				line = line[:0]
			}
			return line, true, overflow, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return line, false, overflow, err
		}
	}
}

// sseReader reads the data of server-sent events from an HTTP response
// body. It follows the event-stream format: lines ending in "\n" or
// "\r\n", "data:" fields (one optional space after the colon) joined with
// "\n", other fields and ":" comments ignored, an empty line ends an
// event. Events may be of any size.
type sseReader struct {
	r       *bufio.Reader
	line    []byte
	data    []byte
	hasData bool
}

// readBufferSize is the bufio buffer of the line readers; lines may be
// longer.
const readBufferSize = 64 << 10

func newSSEReader(r io.Reader) *sseReader { return newSSEReaderSize(r, readBufferSize) }

// newSSEReaderSize lets tests use a tiny buffer.
func newSSEReaderSize(r io.Reader, size int) *sseReader {
	return &sseReader{r: bufio.NewReaderSize(r, size)}
}

// Next returns the data of the next event that carries data. The slice is
// valid until the following call. At the end of the input it returns
// io.EOF when the stream ended between events, and io.ErrUnexpectedEOF
// when it ended inside one (an event without its closing empty line is
// discarded, as the format requires). Other read errors are returned as
// they are.
func (s *sseReader) Next() ([]byte, error) {
	for {
		line, terminated, _, err := readLine(s.r, s.line, 0)
		s.line = line[:0]
		if !terminated {
			if errors.Is(err, io.EOF) {
				if s.hasData || len(line) > 0 {
					return nil, io.ErrUnexpectedEOF
				}
				return nil, io.EOF
			}
			return nil, err
		}
		if len(line) == 0 {
			if s.hasData {
				s.hasData = false
				// Each data line appended a '\n'; the last one is dropped.
				return s.data[:len(s.data)-1], nil
			}
			continue
		}
		if line[0] == ':' {
			continue // comment
		}
		field, val := line, []byte(nil)
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			field, val = line[:i], line[i+1:]
			if len(val) > 0 && val[0] == ' ' {
				val = val[1:]
			}
		}
		if string(field) != "data" {
			continue // event, id, retry and unknown fields are not used
		}
		if !s.hasData {
			s.data = s.data[:0]
			s.hasData = true
		}
		s.data = append(s.data, val...)
		s.data = append(s.data, '\n')
	}
}
