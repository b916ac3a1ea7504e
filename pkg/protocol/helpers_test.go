package protocol

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stepflow-go/stepflow/pkg/value"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every wait in these tests; nothing should come near
// it.
const testTimeout = 60 * time.Second

// repoRoot finds the directory holding go.mod above the working directory.
func repoRoot(tb testing.TB) string {
	tb.Helper()
	dir, err := os.Getwd()
	require.NoError(tb, err)
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			tb.Fatal("no go.mod above the working directory")
		}
		dir = parent
	}
}

// venvPython returns the interpreter of the SDK venv named by envVar
// (default <repo>/<dir>), failing the test when it is missing.
//
// Under go test -short (make check) the test skips: it runs a real SDK
// server process.
func venvPython(tb testing.TB, envVar, dir string) string {
	tb.Helper()
	if testing.Short() {
		tb.Skip("short: runs a real stepflow-py server")
	}
	venv := os.Getenv(envVar)
	if venv == "" {
		venv = filepath.Join(repoRoot(tb), dir)
	}
	py := filepath.Join(venv, "bin", "python")
	if _, err := os.Stat(py); err != nil {
		tb.Fatalf("SDK virtual environment missing: %s not found (%v). Run `make venv` "+
			"(or set %s to a venv with the SDK installed).", py, err, envVar)
	}
	return py
}

func httpPython(tb testing.TB) string {
	return venvPython(tb, "STEPFLOW_TEST_VENV_HTTP", ".venv-sdk-http")
}

func stdioPython(tb testing.TB) string {
	return venvPython(tb, "STEPFLOW_TEST_VENV_STDIO", ".venv-sdk-stdio")
}

// lineLog collects the lines of a child's output stream and lets tests
// wait for one.
type lineLog struct {
	mu      sync.Mutex
	lines   []string
	changed chan struct{}
	done    chan struct{}
}

func newLineLog() *lineLog {
	return &lineLog{changed: make(chan struct{}), done: make(chan struct{})}
}

func (l *lineLog) add(s string) {
	l.mu.Lock()
	l.lines = append(l.lines, s)
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
}

// drain reads r line by line until EOF.
func (l *lineLog) drain(r io.ReadCloser) {
	defer close(l.done)
	defer r.Close()
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			l.add(strings.TrimRight(line, "\r\n"))
		}
		if err != nil {
			return
		}
	}
}

// waitFor blocks until a line containing substr has been seen.
func (l *lineLog) waitFor(tb testing.TB, substr string) {
	tb.Helper()
	timeout := time.NewTimer(testTimeout)
	defer timeout.Stop()
	for {
		l.mu.Lock()
		for _, line := range l.lines {
			if strings.Contains(line, substr) {
				l.mu.Unlock()
				return
			}
		}
		ch := l.changed
		l.mu.Unlock()
		select {
		case <-ch:
		case <-l.done:
			tb.Fatalf("stream ended without a line containing %q; got:\n%s", substr, l.String())
		case <-timeout.C:
			tb.Fatalf("no line containing %q; got:\n%s", substr, l.String())
		}
	}
}

func (l *lineLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// proc is a component server process started by a test.
type proc struct {
	cmd    *exec.Cmd
	stderr *lineLog
	stdout *lineLog // HTTP servers only: stdout after the port line
	exited chan struct{}
	state  *os.ProcessState
}

// kill kills the process and waits for it and its output streams.
func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	p.wait()
}

// wait waits for the process to exit and its output to be drained.
func (p *proc) wait() {
	<-p.exited
	<-p.stderr.done
	if p.stdout != nil {
		<-p.stdout.done
	}
}

func (p *proc) start(tb testing.TB, extraFiles ...*os.File) {
	tb.Helper()
	require.NoError(tb, p.cmd.Start())
	for _, f := range extraFiles {
		_ = f.Close() // the child's ends
	}
	p.exited = make(chan struct{})
	go func() {
		defer close(p.exited)
		_ = p.cmd.Wait()
		p.state = p.cmd.ProcessState
	}()
}

func mustPipe(tb testing.TB) (*os.File, *os.File) {
	tb.Helper()
	r, w, err := os.Pipe()
	require.NoError(tb, err)
	return r, w
}

// startHTTPServer starts testdata/http_server.py and returns it with its
// base URL once it has announced its port. The process is killed when
// the test ends.
func startHTTPServer(tb testing.TB) (*proc, string) {
	tb.Helper()
	py := httpPython(tb)
	outR, outW := mustPipe(tb)
	errR, errW := mustPipe(tb)
	p := &proc{cmd: exec.Command(py, filepath.Join("testdata", "http_server.py")), stderr: newLineLog(), stdout: newLineLog()}
	p.cmd.Stdout, p.cmd.Stderr = outW, errW
	p.start(tb, outW, errW)
	tb.Cleanup(p.kill)
	go p.stderr.drain(errR)

	// The first stdout line that parses as {"port": N} announces the port.
	port := make(chan int, 1)
	go func() {
		defer close(p.stdout.done)
		defer outR.Close()
		br := bufio.NewReader(outR)
		announced := false
		for {
			line, err := br.ReadString('\n')
			if !announced {
				var msg struct {
					Port *int `json:"port"`
				}
				if json.Unmarshal([]byte(line), &msg) == nil && msg.Port != nil {
					announced = true
					port <- *msg.Port
				}
			}
			if line != "" {
				p.stdout.add(strings.TrimRight(line, "\n"))
			}
			if err != nil {
				return
			}
		}
	}()
	select {
	case n := <-port:
		return p, fmt.Sprintf("http://127.0.0.1:%d", n)
	case <-p.exited:
		tb.Fatalf("HTTP server exited before announcing its port; stderr:\n%s", p.stderr)
	case <-time.After(testTimeout):
		tb.Fatalf("HTTP server did not announce its port; stderr:\n%s", p.stderr)
	}
	return nil, ""
}

// newHTTPTransport starts a server and returns a transport for it.
func newHTTPTransport(tb testing.TB) (*proc, *HTTP) {
	tb.Helper()
	p, base := startHTTPServer(tb)
	h := NewHTTP(base, HTTPOptions{Logger: testLogger(tb)})
	tb.Cleanup(func() { _ = h.Close() })
	return p, h
}

// startStdioServer starts testdata/stdio_server.py with its stdout pipe
// raised to StdioPipeSize and returns a transport on it. Stopping: the
// transport is closed, the process killed, the read loop awaited.
func startStdioServer(tb testing.TB, opts StdioOptions) (*proc, *Stdio) {
	tb.Helper()
	py := stdioPython(tb)
	outR, outW := mustPipe(tb)
	size, err := SetPipeSize(outW, StdioPipeSize)
	require.NoError(tb, err)
	require.GreaterOrEqual(tb, size, StdioPipeSize)
	inR, inW := mustPipe(tb)
	errR, errW := mustPipe(tb)
	p := &proc{cmd: exec.Command(py, filepath.Join("testdata", "stdio_server.py")), stderr: newLineLog()}
	p.cmd.Stdin, p.cmd.Stdout, p.cmd.Stderr = inR, outW, errW
	p.start(tb, inR, outW, errW)
	go p.stderr.drain(errR)
	if opts.Logger == nil {
		opts.Logger = testLogger(tb)
	}
	s := NewStdio(outR, inW, opts)
	tb.Cleanup(func() {
		_ = s.Close()
		p.kill()
		<-s.Done()
	})
	return p, s
}

// testLogger logs to the test's output at warn level and above.
func testLogger(tb testing.TB) *zap.Logger {
	return zap.New(zapcore.NewCore(
		zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()),
		zapcore.AddSync(tbWriter{tb}), zap.WarnLevel))
}

type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// signalCore is a zap core that closes a channel the first time an entry
// whose message contains a substring is logged.
type signalCore struct {
	zapcore.LevelEnabler
	substr string
	once   *sync.Once
	ch     chan struct{}
}

func newSignalLogger(substr string) (*zap.Logger, <-chan struct{}) {
	c := signalCore{LevelEnabler: zap.DebugLevel, substr: substr, once: new(sync.Once), ch: make(chan struct{})}
	return zap.New(c), c.ch
}

func (c signalCore) With([]zapcore.Field) zapcore.Core { return c }
func (c signalCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	return ce.AddCore(e, c)
}
func (c signalCore) Write(e zapcore.Entry, _ []zapcore.Field) error {
	if strings.Contains(e.Message, c.substr) {
		c.once.Do(func() { close(c.ch) })
	}
	return nil
}
func (c signalCore) Sync() error { return nil }

// blobStore is an in-memory Handler for blobs/put and blobs/get with the
// runtime's content addressing (SHA-256 of the compact JSON).
type blobStore struct {
	mu    sync.Mutex
	blobs map[string]blobEntry
	calls []string
}

type blobEntry struct {
	data     value.Value
	blobType string
}

func newBlobStore() *blobStore { return &blobStore{blobs: map[string]blobEntry{}} }

func blobID(data value.Value) string {
	sum := sha256.Sum256(value.Marshal(data))
	return hex.EncodeToString(sum[:])
}

func (b *blobStore) HandleCallback(ctx context.Context, method string, params value.Value) (value.Value, error) {
	b.mu.Lock()
	b.calls = append(b.calls, method)
	b.mu.Unlock()
	switch method {
	case MethodBlobsPut:
		data, bt, err := ParsePutBlobParams(params)
		if err != nil {
			return nil, err
		}
		id := blobID(data)
		b.mu.Lock()
		b.blobs[id] = blobEntry{data: data, blobType: bt}
		b.mu.Unlock()
		return PutBlobResult(id), nil
	case MethodBlobsGet:
		id, err := ParseGetBlobParams(params)
		if err != nil {
			return nil, err
		}
		b.mu.Lock()
		e, ok := b.blobs[id]
		b.mu.Unlock()
		if !ok {
			return nil, &RPCError{Code: CodeServerError, Message: "Failed to get blob"}
		}
		return GetBlobResult(e.data, e.blobType), nil
	default:
		return nil, &RPCError{Code: CodeMethodNotFound, Message: fmt.Sprintf("Method not found: '%s'", method)}
	}
}

func (b *blobStore) methods() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.calls...)
}

// testCtx returns a context bounded by testTimeout.
func testCtx(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	tb.Cleanup(cancel)
	return ctx
}

// execute runs components/execute and returns the output.
func execute(ctx context.Context, tr Transport, component string, input value.Value, h Handler) (value.Value, error) {
	res, err := tr.Call(ctx, MethodComponentsExecute,
		ExecuteParams(component, input, 1, Observability{RunID: "r1", FlowID: "f1", StepID: "s1"}), h)
	if err != nil {
		return nil, err
	}
	return ParseExecuteResult(res)
}

// requireRPCError asserts err is an *RPCError with code, not a transport
// error, and returns it.
func requireRPCError(tb testing.TB, err error, code int64) *RPCError {
	tb.Helper()
	var re *RPCError
	require.True(tb, errors.As(err, &re), "want *RPCError %d, got %v", code, err)
	require.Equal(tb, code, re.Code, "error: %v", err)
	require.False(tb, errors.Is(err, ErrTransport))
	return re
}

// requireTransportError asserts err wraps ErrTransport and is no
// *RPCError.
func requireTransportError(tb testing.TB, err error) {
	tb.Helper()
	require.Error(tb, err)
	require.ErrorIs(tb, err, ErrTransport)
	var re *RPCError
	require.False(tb, errors.As(err, &re), "got an *RPCError: %v", err)
}
