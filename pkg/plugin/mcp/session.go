package mcp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/stepflow-go/stepflow/pkg/value"
)

// pipeGrace bounds how long a session waits, once its process has exited,
// for the ends of its stdout and stderr pipes (possibly held by processes
// outside its group) before closing them itself, and how long an EOF on
// stdout waits for the exit status that explains it.
const pipeGrace = time.Second

// stderrTailLines is how many of the last stderr lines an exit error
// quotes; stderrTailLineMax bounds each quoted line.
const (
	stderrTailLines   = 8
	stderrTailLineMax = 512
)

// JSON-RPC error codes used by the client.
const (
	codeMethodNotFound = -32601
)

// spec is what it takes to launch the server process.
type spec struct {
	command string
	args    []string
	dir     string
	env     []string // the whole environment of the child
}

// session is one running MCP server process and the JSON-RPC 2.0
// connection over its stdin and stdout: newline-delimited messages,
// requests multiplexed by id. One goroutine writes (writeLoop), one reads
// stdout (readLoop), one drains stderr into the log (stderrLoop) and one
// waits for the process (waitLoop). All four end on their own once the
// process is gone.
type session struct {
	log         *zap.Logger
	stderrLevel zapcore.Level
	cmd         *exec.Cmd
	pid         int

	stdin  *os.File // our write end of the child's stdin
	stdout *os.File // our read end of the child's stdout
	stderr *os.File // our read end of the child's stderr

	// onNotify is called from the reader for each server notification.
	onNotify func(method string, params value.Value)
	// sent, when set, is called by the writer after each message is
	// written (a test hook).
	sent func(method string)

	// The outgoing queue: enqueue never blocks, so the reader can answer
	// server requests while the writer is stuck on a full pipe.
	qmu   sync.Mutex
	queue []outgoing
	qsig  chan struct{} // capacity 1: "the queue is not empty"

	mu      sync.Mutex
	nextID  int64
	pending map[int64]chan *response
	err     error         // why the session ended; set once, before done closes
	done    chan struct{} // closed when the session ends (fail)

	exited     chan struct{} // closed once the process has been waited for
	exitErr    error         // cmd.Wait's result; read after exited is closed
	readerDone chan struct{}
	stderrDone chan struct{}

	tailMu sync.Mutex
	tail   []string // last stderr lines

	wg       sync.WaitGroup
	stopOnce sync.Once

	// Set by the handshake, read-only afterwards.
	protocolVersion string
	serverName      string
	serverVersion   string
	hasTools        bool
}

type outgoing struct {
	data   []byte
	method string
}

type response struct {
	result value.Value
	err    *RPCError
}

// spawn starts the server process in its own process group with piped
// stdio, and the session's goroutines.
func spawn(sp spec, log *zap.Logger, stderrLevel zapcore.Level) (*session, error) {
	var files []*os.File
	closeAll := func() {
		for _, f := range files {
			_ = f.Close()
		}
	}
	pipe := func() (*os.File, *os.File, error) {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, nil, fmt.Errorf("pipe: %w", err)
		}
		files = append(files, r, w)
		return r, w, nil
	}
	inR, inW, err := pipe()
	if err != nil {
		closeAll()
		return nil, err
	}
	outR, outW, err := pipe()
	if err != nil {
		closeAll()
		return nil, err
	}
	errR, errW, err := pipe()
	if err != nil {
		closeAll()
		return nil, err
	}

	cmd := exec.Command(sp.command, sp.args...)
	cmd.Dir = sp.dir
	cmd.Env = sp.env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	setProcessGroup(cmd)
	if err := cmd.Start(); err != nil {
		closeAll()
		return nil, fmt.Errorf("start %s: %w", sp.command, err)
	}
	// The child has its copies; ours would keep the pipes open.
	_ = inR.Close()
	_ = outW.Close()
	_ = errW.Close()

	s := &session{
		log:         log.With(zap.Int("pid", cmd.Process.Pid)),
		stderrLevel: stderrLevel,
		cmd:         cmd,
		pid:         cmd.Process.Pid,
		stdin:       inW,
		stdout:      outR,
		stderr:      errR,
		qsig:        make(chan struct{}, 1),
		pending:     map[int64]chan *response{},
		done:        make(chan struct{}),
		exited:      make(chan struct{}),
		readerDone:  make(chan struct{}),
		stderrDone:  make(chan struct{}),
	}
	return s, nil
}

// run starts the goroutines. It is separate from spawn so that the
// caller can set the callbacks first.
func (s *session) run() {
	s.wg.Add(4)
	go s.waitLoop()
	go s.readLoop()
	go s.stderrLoop()
	go s.writeLoop()
}

// dead reports whether the session has ended.
func (s *session) dead() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// fail ends the session with err (only the first call counts): calls in
// flight and later calls fail with it, and the writer stops.
func (s *session) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	s.err = err
	s.pending = nil
	close(s.done)
}

// failure returns why the session ended; call it only after done closed.
func (s *session) failure() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// stop ends the session and its process: it closes the server's stdin,
// sends SIGTERM to the process group, SIGKILL after grace, and waits for
// the process and the session's goroutines. reason becomes the error of
// calls still in flight. It is idempotent.
func (s *session) stop(reason error, grace time.Duration) {
	s.stopOnce.Do(func() {
		s.fail(reason)
		select {
		case <-s.exited:
		default:
			signalGroup(s.pid, syscall.SIGTERM)
			t := time.NewTimer(grace)
			select {
			case <-s.exited:
			case <-t.C:
				s.log.Warn("mcp server ignored SIGTERM; killing it", zap.Duration("grace", grace))
				signalGroup(s.pid, syscall.SIGKILL)
				<-s.exited
			}
			t.Stop()
		}
	})
	s.wg.Wait()
}

// waitLoop reaps the process, kills what is left of its group, and makes
// sure the readers end even if a process outside the group holds the
// pipes.
func (s *session) waitLoop() {
	defer s.wg.Done()
	err := s.cmd.Wait()
	s.exitErr = err
	// Members of the group that outlived the leader would keep the pipes
	// open and run unsupervised.
	signalGroup(s.pid, syscall.SIGKILL)
	close(s.exited)
	// Nobody reads the server's stdin any more; this also unblocks a
	// writer stuck on a full pipe.
	_ = s.stdin.Close()
	t := time.NewTimer(pipeGrace)
	defer t.Stop()
	for _, ch := range []chan struct{}{s.readerDone, s.stderrDone} {
		select {
		case <-ch:
		case <-t.C:
			_ = s.stdout.Close()
			_ = s.stderr.Close()
			return
		}
	}
}

// exitError explains why the connection ended (cause: the read or write
// error that showed it), waiting a little for the process's exit status
// and its last words on stderr.
func (s *session) exitError(cause error) error {
	t := time.NewTimer(pipeGrace)
	defer t.Stop()
	select {
	case <-s.exited:
	case <-t.C:
		if errors.Is(cause, io.EOF) {
			return fmt.Errorf("%w (it closed its stdout)", ErrServerExited)
		}
		return fmt.Errorf("%w (%v)", ErrServerExited, cause)
	}
	select {
	case <-s.stderrDone:
	case <-t.C:
	}
	status := "exit status 0"
	if s.exitErr != nil {
		var ee *exec.ExitError
		if errors.As(s.exitErr, &ee) {
			status = ee.ProcessState.String()
		} else {
			status = s.exitErr.Error()
		}
	}
	if tail := s.stderrTail(); tail != "" {
		return fmt.Errorf("%w (%s); stderr: %s", ErrServerExited, status, tail)
	}
	return fmt.Errorf("%w (%s)", ErrServerExited, status)
}

func (s *session) stderrTail() string {
	s.tailMu.Lock()
	defer s.tailMu.Unlock()
	return strings.Join(s.tail, " | ")
}

// stderrLoop logs the server's stderr line by line (long lines in
// pieces) and keeps the last lines for exit errors.
func (s *session) stderrLoop() {
	defer s.wg.Done()
	defer close(s.stderrDone)
	defer func() { _ = s.stderr.Close() }()
	br := bufio.NewReaderSize(s.stderr, 64<<10)
	for {
		line, _, err := br.ReadLine()
		if len(line) > 0 {
			text := string(line)
			if ce := s.log.Check(s.stderrLevel, text); ce != nil {
				ce.Write(zap.String("stream", "stderr"))
			}
			text = truncate(text, stderrTailLineMax)
			s.tailMu.Lock()
			if len(s.tail) == stderrTailLines {
				s.tail = append(s.tail[:0], s.tail[1:]...)
			}
			s.tail = append(s.tail, text)
			s.tailMu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

// readLoop reads newline-delimited JSON-RPC messages from stdout, of any
// length, and dispatches them.
func (s *session) readLoop() {
	defer s.wg.Done()
	defer close(s.readerDone)
	defer func() { _ = s.stdout.Close() }()
	br := bufio.NewReaderSize(s.stdout, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			s.handleLine(line)
		}
		if err != nil {
			if !s.dead() {
				s.fail(s.exitError(err))
			}
			return
		}
	}
}

func (s *session) handleLine(line []byte) {
	line = trimSpace(line)
	if len(line) == 0 {
		return
	}
	v, err := value.Parse(line)
	if err != nil {
		s.log.Warn("ignoring a line of mcp server stdout that is not JSON", zap.String("line", clip(string(line))), zap.Error(err))
		return
	}
	switch t := v.(type) {
	case *value.Object:
		s.handleMessage(t)
	case []value.Value: // a JSON-RPC batch
		for _, e := range t {
			if o, ok := e.(*value.Object); ok {
				s.handleMessage(o)
			}
		}
	default:
		s.log.Warn("ignoring a JSON-RPC message that is not an object", zap.String("line", clip(string(line))))
	}
}

func (s *session) handleMessage(o *value.Object) {
	id, hasID := o.Get("id")
	if mv, ok := o.Get("method"); ok {
		method, _ := mv.(string)
		params, _ := o.Get("params")
		if hasID && id != nil {
			s.answer(id, method)
			return
		}
		s.notification(method, params)
		return
	}
	n, ok := parseID(id)
	if !ok {
		s.log.Warn("ignoring a JSON-RPC message with neither a method nor a known id", zap.String("message", clip(value.String(o))))
		return
	}
	s.mu.Lock()
	ch := s.pending[n]
	delete(s.pending, n)
	s.mu.Unlock()
	if ch == nil {
		s.log.Debug("ignoring the response to a call no longer waited for", zap.Int64("id", n))
		return
	}
	r := &response{}
	if ev, ok := o.Get("error"); ok && ev != nil {
		r.err = parseRPCError(ev)
	} else {
		r.result, _ = o.Get("result")
	}
	ch <- r // buffered
}

// answer replies to a server→client request: ping gets {}, everything
// else (roots/list, sampling/createMessage, elicitation/create, …) gets
// "method not found", so that the server never waits for us.
func (s *session) answer(id value.Value, method string) {
	msg := value.NewObject(3)
	msg.Set("jsonrpc", "2.0")
	msg.Set("id", id)
	if method == "ping" {
		msg.Set("result", value.NewObject(0))
	} else {
		s.log.Debug("refusing a request from the mcp server", zap.String("method", method))
		msg.Set("error", value.ObjectOf("code", value.Int(codeMethodNotFound), "message", "Method not found: "+method))
	}
	s.enqueue(msg, "")
}

func (s *session) notification(method string, params value.Value) {
	if method == "notifications/message" {
		if ce := s.log.Check(zapcore.DebugLevel, "mcp server log message"); ce != nil {
			ce.Write(zap.String("message", clip(value.String(params))))
		}
	}
	if s.onNotify != nil {
		s.onNotify(method, params)
	}
}

// enqueue queues a message for the writer; it never blocks.
func (s *session) enqueue(msg *value.Object, method string) {
	data := value.Append(make([]byte, 0, 128), msg)
	data = append(data, '\n')
	s.qmu.Lock()
	s.queue = append(s.queue, outgoing{data: data, method: method})
	s.qmu.Unlock()
	select {
	case s.qsig <- struct{}{}:
	default:
	}
}

// writeLoop is the only writer of the server's stdin. It closes stdin when
// the session ends, which tells a well-behaved server to exit.
func (s *session) writeLoop() {
	defer s.wg.Done()
	defer func() { _ = s.stdin.Close() }()
	for {
		select {
		case <-s.done:
			return
		case <-s.qsig:
		}
		s.qmu.Lock()
		q := s.queue
		s.queue = nil
		s.qmu.Unlock()
		for _, m := range q {
			if _, err := s.stdin.Write(m.data); err != nil {
				if !s.dead() {
					s.fail(s.exitError(err))
				}
				return
			}
			if s.sent != nil && m.method != "" {
				s.sent(m.method)
			}
		}
	}
}

// notify sends a notification.
func (s *session) notify(method string, params value.Value) {
	msg := value.NewObject(3)
	msg.Set("jsonrpc", "2.0")
	msg.Set("method", method)
	if params != nil {
		msg.Set("params", params)
	}
	s.enqueue(msg, method)
}

// call sends a request and waits for its response, the end of the
// session, or ctx. A JSON-RPC error is returned as *RPCError; when ctx
// ends first the error is context.Cause(ctx) and the server is told that
// the request is cancelled.
func (s *session) call(ctx context.Context, method string, params value.Value) (value.Value, error) {
	if ctx.Err() != nil {
		return nil, context.Cause(ctx)
	}
	s.mu.Lock()
	if s.err != nil {
		err := s.err
		s.mu.Unlock()
		return nil, err
	}
	s.nextID++
	id := s.nextID
	ch := make(chan *response, 1)
	s.pending[id] = ch
	s.mu.Unlock()

	msg := value.NewObject(4)
	msg.Set("jsonrpc", "2.0")
	msg.Set("id", value.Int(id))
	msg.Set("method", method)
	if params != nil {
		msg.Set("params", params)
	}
	s.enqueue(msg, method)

	select {
	case r := <-ch:
		return r.value()
	case <-s.done:
		select {
		case r := <-ch: // answered just before the end
			return r.value()
		default:
		}
		return nil, s.failure()
	case <-ctx.Done():
		s.mu.Lock()
		delete(s.pending, id)
		s.mu.Unlock()
		select {
		case r := <-ch:
			return r.value()
		default:
		}
		if !s.dead() {
			s.notify("notifications/cancelled", value.ObjectOf("requestId", value.Int(id), "reason", context.Cause(ctx).Error()))
		}
		return nil, context.Cause(ctx)
	}
}

func (r *response) value() (value.Value, error) {
	if r.err != nil {
		return nil, r.err
	}
	return r.result, nil
}

func parseID(id value.Value) (int64, bool) {
	switch t := id.(type) {
	case value.Number:
		n, err := strconv.ParseInt(string(t), 10, 64)
		return n, err == nil
	case string: // some servers echo ids as strings
		n, err := strconv.ParseInt(t, 10, 64)
		return n, err == nil
	}
	return 0, false
}

func parseRPCError(v value.Value) *RPCError {
	e := &RPCError{Code: -1, Message: "unknown error"}
	o, ok := v.(*value.Object)
	if !ok {
		e.Message = value.String(v)
		return e
	}
	if c, ok := o.Get("code"); ok {
		if n, ok := c.(value.Number); ok {
			if i, err := n.Int64(); err == nil {
				e.Code = i
			}
		}
	}
	if m, ok := o.Get("message"); ok {
		if s, ok := m.(string); ok {
			e.Message = s
		}
	}
	e.Data, _ = o.Get("data")
	return e
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r' || b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t' || b[0] == '\r') {
		b = b[1:]
	}
	return b
}

// clip shortens text quoted in logs.
func clip(s string) string { return truncate(s, 1024) }

// truncate cuts s to at most n bytes (plus an ellipsis), on a rune
// boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}
