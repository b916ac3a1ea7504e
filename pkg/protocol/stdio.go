package protocol

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/stepflow-go/stepflow/pkg/value"
	"go.uber.org/zap"
)

// StdioServerMaxLine is the longest line (without its '\n') that a
// stepflow-py <= 0.8 stdio server can read: its stdin reader has a
// 512 KiB limit and the process exits on a longer line (spec §2.2.6).
const StdioServerMaxLine = 524288

// DefaultMaxLineBytes is the default StdioOptions.MaxLineBytes.
const DefaultMaxLineBytes = 256 << 20

// StdioPipeSize is the size to give the server's stdout pipe (spec
// §2.2.6): the SDK loses any answer larger than the free pipe space.
const StdioPipeSize = 1 << 20

// StdioOptions configures a stdio transport.
type StdioOptions struct {
	// Logger receives diagnostics. nil: zap.NewNop().
	Logger *zap.Logger
	// MaxLineBytes bounds the lines read from the server's stdout. A
	// longer line is skipped (logged) without being buffered; the call it
	// answered, if any, is left to its deadline. 0: DefaultMaxLineBytes.
	MaxLineBytes int
	// MaxWriteLineBytes bounds the lines written to the server's stdin
	// (without the '\n'). 0: StdioServerMaxLine; negative: no limit. A
	// request over the limit is not sent (Call returns *LineTooLongError);
	// a callback answer over the limit is replaced by a CodeServerError
	// error answer.
	MaxWriteLineBytes int
	// Handler serves every component→runtime request of the server (nil:
	// answered with CodeMethodNotFound). The stdio protocol does not tie a
	// callback to the call it belongs to, so callbacks are served here,
	// not by the Handler passed to Call.
	Handler Handler
}

// LineTooLongError is returned by Stdio.Call and Stdio.Notify when the
// encoded message would exceed the server's line limit. Nothing was sent
// and the server is unaffected: for components/execute it is a component
// failure (the input is too large for this transport), not a transport
// failure.
type LineTooLongError struct {
	Size  int // bytes of the encoded message
	Limit int // StdioOptions.MaxWriteLineBytes in effect
}

// Error reports the size and the limit in the words of spec §2.2.6.
func (e *LineTooLongError) Error() string {
	return fmt.Sprintf("input too large for the stdio transport: %d bytes > %d", e.Size, e.Limit)
}

// Stdio is the client side of the stdio transport of stepflow-py <= 0.8
// (StepflowStdioServer, spec §2.2): one compact JSON-RPC message per line,
// requests on the server's stdin, answers and the server's own requests
// on its stdout.
//
// One goroutine reads stdout (lines of any size up to MaxLineBytes) and
// matches answers to calls by id; writes are serialised so lines never
// interleave. Lines that are not JSON-RPC messages (stray prints,
// fragments of an answer the SDK failed to write) are logged and skipped;
// a call whose answer was lost that way is left to its context's
// deadline, which every caller should set.
//
// Callbacks: the server's requests carry no reference to the call that
// caused them, and several calls may be in flight, so they are served by
// StdioOptions.Handler, each on its own goroutine, and Call's Handler
// argument is ignored. (Everything a callback needs is in its params:
// blobs/* are global, flows/* name their flow.)
//
// When the read loop ends (EOF on stdout, a read error) or the transport
// is closed, pending and later calls fail with errors wrapping
// ErrTransport, and Done is closed once every callback handler has
// returned.
type Stdio struct {
	log      *zap.Logger
	in       io.WriteCloser
	out      io.Reader
	handler  Handler
	maxRead  int
	maxWrite int

	wsem     chan struct{} // write lock that honours contexts
	writeErr error         // guarded by wsem

	mu      sync.Mutex
	pending map[string]chan rpcResult
	deadErr error
	dead    chan struct{} // closed when no call can complete any more

	cbCtx    context.Context
	cbCancel context.CancelFunc
	cbWG     sync.WaitGroup
	done     chan struct{}

	closeOnce sync.Once
}

var _ Transport = (*Stdio)(nil)

type rpcResult struct {
	v   value.Value
	err error
}

// NewStdio starts a transport on a server's stdout (read) and stdin
// (written). It starts the read loop at once. For a child process, give it
// the read end of an os.Pipe whose size was raised with SetPipeSize
// (StdioPipeSize) before the child started.
func NewStdio(stdout io.Reader, stdin io.WriteCloser, opts StdioOptions) *Stdio {
	return newStdio(stdout, stdin, opts, readBufferSize)
}

// newStdio is NewStdio with the size of the read buffer (lines may be
// longer); tests use a tiny one.
func newStdio(stdout io.Reader, stdin io.WriteCloser, opts StdioOptions, bufSize int) *Stdio {
	s := &Stdio{
		log:      opts.Logger,
		in:       stdin,
		out:      stdout,
		handler:  opts.Handler,
		maxRead:  opts.MaxLineBytes,
		maxWrite: opts.MaxWriteLineBytes,
		wsem:     make(chan struct{}, 1),
		pending:  make(map[string]chan rpcResult),
		dead:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	if s.maxRead <= 0 {
		s.maxRead = DefaultMaxLineBytes
	}
	switch {
	case s.maxWrite == 0:
		s.maxWrite = StdioServerMaxLine
	case s.maxWrite < 0:
		s.maxWrite = 0
	}
	s.cbCtx, s.cbCancel = context.WithCancel(context.Background())
	go s.readLoop(bufSize)
	return s
}

// Call sends a request and waits for its answer. A JSON-RPC error answer
// is returned as *RPCError. A message over the write limit is not sent
// and yields *LineTooLongError. A write failure, the end of the read loop
// and Close yield errors wrapping ErrTransport. When ctx ends first, the
// pending entry is dropped (a late answer is ignored) and ctx's error is
// returned. The Handler argument is ignored: callbacks are served by
// StdioOptions.Handler (see Stdio).
func (s *Stdio) Call(ctx context.Context, method string, params value.Value, _ Handler) (value.Value, error) {
	if err := checkParams(method, params); err != nil {
		return nil, err
	}
	id := newID()
	line := appendRequest(make([]byte, 0, 256), id, method, params)
	if s.maxWrite > 0 && len(line) > s.maxWrite {
		return nil, &LineTooLongError{Size: len(line), Limit: s.maxWrite}
	}
	line = append(line, '\n')

	key := idKey(id)
	ch := make(chan rpcResult, 1)
	s.mu.Lock()
	if s.deadErr != nil {
		err := s.deadErr
		s.mu.Unlock()
		return nil, err
	}
	s.pending[key] = ch
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.pending, key)
		s.mu.Unlock()
	}()

	if err := s.writeLine(ctx, line); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil && errors.Is(err, ctxErr) {
			return nil, ctxErr
		}
		return nil, fmt.Errorf("%s: %w", method, err)
	}
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.dead:
		select {
		case r := <-ch:
			return r.v, r.err
		default:
		}
		return nil, fmt.Errorf("%s: %w", method, s.Err())
	}
}

// Notify writes a notification. Errors are as for Call.
func (s *Stdio) Notify(ctx context.Context, method string, params value.Value) error {
	if err := checkParams(method, params); err != nil {
		return err
	}
	line := appendRequest(make([]byte, 0, 128), nil, method, params)
	if s.maxWrite > 0 && len(line) > s.maxWrite {
		return &LineTooLongError{Size: len(line), Limit: s.maxWrite}
	}
	if err := s.writeLine(ctx, append(line, '\n')); err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	return nil
}

// writeLine writes one complete line under the write lock. Once a write
// has started it runs to completion (a partial line cannot be taken
// back); it is interrupted only by closing stdin (Close).
func (s *Stdio) writeLine(ctx context.Context, line []byte) error {
	select {
	case s.wsem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.dead:
		return s.Err()
	}
	defer func() { <-s.wsem }()
	select {
	case <-s.dead:
		return s.Err()
	default:
	}
	if s.writeErr != nil {
		return s.writeErr
	}
	if _, err := s.in.Write(line); err != nil {
		s.writeErr = fmt.Errorf("%w: writing to the server's stdin: %w", ErrTransport, err)
		return s.writeErr
	}
	return nil
}

// readLoop reads stdout until EOF or a read error.
func (s *Stdio) readLoop(bufSize int) {
	defer close(s.done)
	br := bufio.NewReaderSize(s.out, bufSize)
	var buf []byte
	for {
		line, terminated, overflow, err := readLine(br, buf, s.maxRead)
		switch {
		case overflow:
			s.log.Warn("skipping stdout line longer than the limit", zap.Int("limit", s.maxRead))
		case terminated:
			s.handleLine(line)
		case len(line) > 0:
			s.log.Warn("discarding unterminated last stdout line",
				zap.Int("bytes", len(line)), zap.String("line", preview(line, 256)))
		}
		if cap(line) > 1<<20 {
			buf = nil // do not keep a huge buffer after a huge line
		} else {
			buf = line[:0]
		}
		if err != nil {
			var cause error
			if errors.Is(err, io.EOF) {
				cause = fmt.Errorf("%w: component server closed its stdout", ErrTransport)
			} else {
				cause = fmt.Errorf("%w: reading the server's stdout: %w", ErrTransport, err)
			}
			s.kill(cause)
			s.cbWG.Wait()
			return
		}
	}
}

// handleLine processes one stdout line.
func (s *Stdio) handleLine(line []byte) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return
	}
	m, err := parseMessage(line)
	if err != nil {
		s.log.Warn("skipping stdout line that is not a JSON-RPC message",
			zap.Int("bytes", len(line)), zap.String("line", preview(line, 256)), zap.Error(err))
		return
	}
	switch m.kind {
	case kindResponse:
		key := idKey(m.id)
		s.mu.Lock()
		ch, ok := s.pending[key]
		if ok {
			delete(s.pending, key)
		}
		s.mu.Unlock()
		if !ok {
			s.log.Warn("ignoring answer to an unknown or abandoned request", zap.String("id", key))
			return
		}
		if m.err != nil {
			ch <- rpcResult{err: m.err}
		} else {
			ch <- rpcResult{v: m.result}
		}
	case kindRequest:
		s.cbWG.Add(1)
		go s.serve(m)
	case kindNotification:
		s.log.Debug("ignoring notification from the server", zap.String("method", m.method))
	}
}

// serve answers one component→runtime request.
func (s *Stdio) serve(m *message) {
	defer s.cbWG.Done()
	result, rpcErr := serveCallback(s.cbCtx, s.log, s.handler, m.method, m.params)
	line := appendResponse(make([]byte, 0, 128), m.id, result, rpcErr)
	if s.maxWrite > 0 && len(line) > s.maxWrite {
		s.log.Warn("callback answer too large for the stdio transport; answering with an error",
			zap.String("method", m.method), zap.Int("bytes", len(line)), zap.Int("limit", s.maxWrite))
		line = appendResponse(line[:0], m.id, nil, &RPCError{
			Code:    CodeServerError,
			Message: fmt.Sprintf("result too large for the stdio transport: %d bytes > %d", len(line), s.maxWrite),
		})
	}
	if err := s.writeLine(s.cbCtx, append(line, '\n')); err != nil {
		s.log.Warn("could not answer callback", zap.String("method", m.method), zap.Error(err))
	}
}

// kill records why calls can no longer complete and wakes them.
func (s *Stdio) kill(err error) {
	s.mu.Lock()
	if s.deadErr == nil {
		s.deadErr = err
		close(s.dead)
	}
	s.mu.Unlock()
	s.cbCancel()
}

// Done is closed when the read loop has ended (EOF or read error on
// stdout) and every callback handler has returned.
func (s *Stdio) Done() <-chan struct{} { return s.done }

// Err returns nil while the transport works, and afterwards the error,
// wrapping ErrTransport, that ended it (ErrClosed after Close).
func (s *Stdio) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.deadErr
}

// Close fails pending and later calls with ErrClosed, cancels the
// callback handlers' context, and closes stdin (a stepflow-py stdio
// server exits on EOF) and stdout when it is an io.Closer, which ends the
// read loop. It does not kill the process; the owner waits for it.
func (s *Stdio) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.kill(ErrClosed)
		if e := s.in.Close(); e != nil && !errors.Is(e, os.ErrClosed) {
			err = fmt.Errorf("closing stdin: %w", e)
		}
		if c, ok := s.out.(io.Closer); ok {
			_ = c.Close()
		}
	})
	return err
}
