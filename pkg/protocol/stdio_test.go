package protocol

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stepflow-go/stepflow/pkg/value"
	"github.com/stretchr/testify/require"
)

// ---- against the real stepflow-py 0.7.0 StepflowStdioServer ----

func TestStdioRealHandshakeListEcho(t *testing.T) {
	_, s := startStdioServer(t, StdioOptions{})
	ctx := testCtx(t)

	res, err := s.Call(ctx, MethodInitialize, InitializeParams(Capabilities{}), nil)
	require.NoError(t, err)
	require.Equal(t, `{"server_protocol_version":1}`, value.String(res))
	require.NoError(t, s.Notify(ctx, MethodInitialized, nil))

	res, err = s.Call(ctx, MethodComponentsList, nil, nil)
	require.NoError(t, err)
	infos, err := ParseListResult(res)
	require.NoError(t, err)
	var names []string
	for _, ci := range infos {
		names = append(names, ci.Component)
	}
	require.Subset(t, names, []string{"/udf", "/echo", "/boom", "/blob_roundtrip", "/big_blob", "/blob_len", "/big", "/hang"})

	in := value.MustParse(`{"z":1,"a":[1.5,"é\n\r",null,true],"m":{"y":2,"b":1.0}}`)
	out, err := execute(ctx, s, "/echo", in, nil)
	require.NoError(t, err)
	require.Equal(t, value.String(in), value.String(out))
	require.NoError(t, s.Err())
}

func TestStdioRealComponentErrors(t *testing.T) {
	_, s := startStdioServer(t, StdioOptions{})
	ctx := testCtx(t)

	_, err := execute(ctx, s, "/boom", "x", nil)
	re := requireRPCError(t, err, CodeComponentExecution)
	require.Equal(t, "Component execution failed: kaputt", re.Message)

	_, err = execute(ctx, s, "/nope", "x", nil)
	requireRPCError(t, err, CodeComponentNotFound)
}

func TestStdioRealBlobCallbacks(t *testing.T) {
	store := newBlobStore()
	_, s := startStdioServer(t, StdioOptions{Handler: store})
	ctx := testCtx(t)

	in := value.MustParse(`{"hello":"world","n":[1,2.5]}`)
	// The Handler given to Call is ignored on stdio.
	out, err := execute(ctx, s, "/blob_roundtrip", in, HandlerFunc(func(context.Context, string, value.Value) (value.Value, error) {
		panic("not used on stdio")
	}))
	require.NoError(t, err)
	want := value.ObjectOf("blob_id", blobID(in), "data", in)
	require.Equal(t, value.String(want), value.String(out))
	require.Equal(t, []string{MethodBlobsPut, MethodBlobsGet}, store.methods())

	// An unknown blob: the handler's error reaches the component.
	_, err = execute(ctx, s, "/blob_len", value.ObjectOf("blob_id", "feed"), nil)
	re := requireRPCError(t, err, CodeComponentExecution)
	require.Contains(t, re.Message, "Failed to get blob")
}

func TestStdioRealNoHandler(t *testing.T) {
	_, s := startStdioServer(t, StdioOptions{})
	_, err := execute(testCtx(t), s, "/blob_roundtrip", 1, newBlobStore())
	re := requireRPCError(t, err, CodeComponentExecution)
	require.Contains(t, re.Message, "code=-32601, message=\"Method not found: 'blobs/put'\"")
}

func TestStdioRealLarge(t *testing.T) {
	store := newBlobStore()
	noise, noiseSeen := newSignalLogger("not a JSON-RPC message")
	_, s := startStdioServer(t, StdioOptions{Handler: store, Logger: noise})
	ctx := testCtx(t)
	const tenMiB = 10 << 20

	// 10 MiB in: over the server's 512 KiB line limit, so not sent.
	_, err := execute(ctx, s, "/echo", strings.Repeat("x", tenMiB), nil)
	var tooLong *LineTooLongError
	require.ErrorAs(t, err, &tooLong)
	require.NotErrorIs(t, err, ErrTransport)
	require.Equal(t, StdioServerMaxLine, tooLong.Limit)
	require.Contains(t, err.Error(), "input too large for the stdio transport:")

	// Just under the limit works both ways.
	fits := strings.Repeat("y", StdioServerMaxLine-300)
	out, err := execute(ctx, s, "/echo", fits, nil)
	require.NoError(t, err)
	require.Equal(t, fits, out)

	// 10 MiB from the server as a request (blobs/put) arrives intact.
	out, err = execute(ctx, s, "/big_blob", value.ObjectOf("size", value.Int(tenMiB)), nil)
	require.NoError(t, err)
	id := blobID(strings.Repeat("x", tenMiB))
	require.Equal(t, `{"blob_id":"`+id+`"}`, value.String(out))

	// A 10 MiB callback answer (blobs/get) is replaced by an error.
	_, err = execute(ctx, s, "/blob_len", value.ObjectOf("blob_id", id), nil)
	re := requireRPCError(t, err, CodeComponentExecution)
	require.Contains(t, re.Message, "result too large for the stdio transport")

	// 10 MiB out as an answer: the SDK writes what fits into the pipe and
	// drops the rest, and the fragment is glued to the next line. Both
	// answers are lost (the calls end by their contexts), the line is
	// logged and skipped, and the transport keeps working.
	bigCtx, cancelBig := context.WithCancel(ctx)
	bigErr := make(chan error, 1)
	go func() {
		_, err := execute(bigCtx, s, "/big", value.ObjectOf("size", value.Int(tenMiB)), nil)
		bigErr <- err
	}()
	var lost sync.WaitGroup
	var cancels []context.CancelFunc
	for i := 0; ; i++ {
		// Small calls until one is glued to the fragment.
		callCtx, cancel := context.WithCancel(ctx)
		cancels = append(cancels, cancel)
		done := make(chan error, 1)
		lost.Go(func() {
			_, err := execute(callCtx, s, "/echo", i, nil)
			done <- err
		})
		// An answer glued to the fragment is logged as noise; on a loaded
		// machine the log may come after the call's own wait: a call not
		// answered within the bound is taken as glued too (its answer is
		// lost either way, and it ends with its context below).
		bound := time.NewTimer(10 * time.Second)
		select {
		case err := <-done:
			bound.Stop()
			require.NoError(t, err) // answered before the big write
			continue
		case <-noiseSeen:
		case <-bound.C:
		}
		bound.Stop()
		break
	}
	cancelBig()
	require.ErrorIs(t, <-bigErr, context.Canceled)
	for _, cancel := range cancels {
		cancel()
	}
	lost.Wait()
	// When the loop ended on its bound (a loaded machine), the fragment
	// may not have met its next line yet: the next answer written is the
	// one glued and lost, and that can be the first call made here (CI
	// saw it hang). The transport keeps working: of two calls after the
	// fragment, one is answered.
	var answered bool
	for attempt := range 2 {
		actx, cancel := context.WithTimeout(ctx, 15*time.Second)
		out, err = execute(actx, s, "/echo", fmt.Sprintf("after %d", attempt), nil)
		cancel()
		if err == nil {
			require.Equal(t, fmt.Sprintf("after %d", attempt), out)
			answered = true
			break
		}
		require.ErrorIs(t, err, context.DeadlineExceeded, "a lost answer ends by its context")
	}
	require.True(t, answered, "a call after the fragment is answered")
	require.NoError(t, s.Err())
}

func TestStdioRealOversizeLineKillsServer(t *testing.T) {
	// With the write limit disabled the SDK receives a line over 512 KiB
	// and exits (spec §2.2.6): every call fails as a transport error.
	p, s := startStdioServer(t, StdioOptions{MaxWriteLineBytes: -1})
	_, err := execute(testCtx(t), s, "/echo", strings.Repeat("x", StdioServerMaxLine+1), nil)
	requireTransportError(t, err)
	<-s.Done()
	requireTransportError(t, s.Err())
	p.wait()
	require.Equal(t, 1, p.state.ExitCode())
	require.Contains(t, p.stderr.String(), "chunk is longer than limit")
}

func TestStdioRealConcurrent64(t *testing.T) {
	store := newBlobStore()
	_, s := startStdioServer(t, StdioOptions{Handler: store})
	ctx := testCtx(t)

	const n = 64
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			in := value.ObjectOf("i", value.Int(int64(i)))
			component := "/echo"
			if i%2 == 1 {
				component = "/blob_roundtrip"
			}
			out, err := execute(ctx, s, component, in, nil)
			if err != nil {
				errs[i] = err
				return
			}
			if component == "/blob_roundtrip" {
				out, _ = out.(*value.Object).Get("data")
			}
			if value.String(out) != value.String(in) {
				errs[i] = fmt.Errorf("call %d: got %s", i, value.String(out))
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	require.Len(t, store.methods(), n)
}

func TestStdioRealKilledMidCall(t *testing.T) {
	p, s := startStdioServer(t, StdioOptions{})
	ctx := testCtx(t)
	errc := make(chan error, 2)
	for c, tag := range map[string]string{"/hang": "k-plain", "/hang_ctx": "k-ctx"} {
		go func() {
			_, err := execute(ctx, s, c, tag, nil)
			errc <- err
		}()
	}
	p.stderr.waitFor(t, "started k-plain")
	p.stderr.waitFor(t, "started k-ctx")
	p.kill()
	requireTransportError(t, <-errc)
	requireTransportError(t, <-errc)
	<-s.Done()
	requireTransportError(t, s.Err())
	_, err := execute(ctx, s, "/echo", 1, nil)
	requireTransportError(t, err)
}

func TestStdioRealClose(t *testing.T) {
	p, s := startStdioServer(t, StdioOptions{})
	ctx := testCtx(t)
	errc := make(chan error, 1)
	go func() {
		_, err := execute(ctx, s, "/hang", "z", nil)
		errc <- err
	}()
	p.stderr.waitFor(t, "started z")
	require.NoError(t, s.Close())
	require.ErrorIs(t, <-errc, ErrClosed)
	<-s.Done()
	// EOF on stdin ends the SDK server with status 0.
	p.wait()
	require.Equal(t, 0, p.state.ExitCode())
	_, err := execute(ctx, s, "/echo", 1, nil)
	require.ErrorIs(t, err, ErrClosed)
}

// ---- against a fake server on in-memory pipes ----

// fakeStdio is the server side of a Stdio transport on io.Pipes.
type fakeStdio struct {
	t    *testing.T
	s    *Stdio
	in   *bufio.Reader  // what the transport writes
	out  *io.PipeWriter // what the transport reads
	inR  *io.PipeReader
	outR *io.PipeReader
}

func newFakeStdio(t *testing.T, opts StdioOptions) *fakeStdio {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	f := &fakeStdio{t: t, in: bufio.NewReader(inR), out: outW, inR: inR, outR: outR}
	f.s = NewStdio(outR, inW, opts)
	t.Cleanup(func() {
		_ = f.s.Close()
		_ = outW.Close()
		_ = inR.Close()
		<-f.s.Done()
	})
	return f
}

// readMessage reads the next line the transport wrote.
func (f *fakeStdio) readMessage() *message {
	line, err := f.in.ReadBytes('\n')
	require.NoError(f.t, err)
	m, err := parseMessage(line)
	require.NoError(f.t, err)
	return m
}

func (f *fakeStdio) write(s string) {
	_, err := io.WriteString(f.out, s)
	require.NoError(f.t, err)
}

// call starts a Call in the background.
func (f *fakeStdio) call(ctx context.Context, method string) <-chan rpcResult {
	ch := make(chan rpcResult, 1)
	go func() {
		v, err := f.s.Call(ctx, method, nil, nil)
		ch <- rpcResult{v, err}
	}()
	return ch
}

func TestStdioFakeNoiseAndFraming(t *testing.T) {
	f := newFakeStdio(t, StdioOptions{MaxLineBytes: 1024})
	ctx := testCtx(t)
	r1 := f.call(ctx, "a")
	m := f.readMessage()
	require.Equal(t, "a", m.method)
	require.Equal(t, "{}", value.String(m.params))
	id := value.String(m.id)

	f.write("garbage from a print()\n")
	f.write("{not json\n\n   \n[1,2]\n")
	f.write(`{"jsonrpc":"2.0","method":"note","params":{}}` + "\n")                  // notification
	f.write(`{"id":"nobody","result":1}` + "\n")                                     // unknown id
	f.write(`{"id":` + id + `,"result":"` + strings.Repeat("z", 2000) + `"}` + "\n") // over MaxLineBytes
	f.write(`{"id":` + id + `,"result":{"output":1},"jsonrpc":"2.0"}` + "\r\n")      // CRLF
	f.write(`{"id":` + id + `,"result":{"output":2},"jsonrpc":"2.0"}` + "\n")        // duplicate: ignored
	r := <-r1
	require.NoError(t, r.err)
	require.Equal(t, `{"output":1}`, value.String(r.v))

	// An error answer; the transport still works.
	r2 := f.call(ctx, "b")
	m = f.readMessage()
	f.write(`{"id":` + value.String(m.id) + `,"error":{"code":-32003,"message":"Component execution failed: x","data":{}}}` + "\n")
	r = <-r2
	requireRPCError(t, r.err, CodeComponentExecution)
	require.NoError(t, f.s.Err())
}

func TestStdioFakeCallbacks(t *testing.T) {
	started := make(chan struct{}, 2)
	release := make(chan struct{})
	h := HandlerFunc(func(ctx context.Context, method string, params value.Value) (value.Value, error) {
		switch method {
		case "slow":
			started <- struct{}{}
			select {
			case <-release:
				return "slow done", nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		case "fast":
			return value.ObjectOf("params", params), nil
		case "fail":
			return nil, &RPCError{Code: CodeNotFound, Message: "Not found: x", Data: "d"}
		case "big":
			return strings.Repeat("b", StdioServerMaxLine), nil
		default:
			panic("boom")
		}
	})
	f := newFakeStdio(t, StdioOptions{Handler: h})
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })

	// A slow callback does not hold up the others; ids keep their type.
	f.write(`{"jsonrpc":"2.0","id":7,"method":"slow","params":{}}` + "\n")
	<-started
	f.write(`{"jsonrpc":"2.0","id":"7","method":"fast","params":{"k":[1]}}` + "\n")
	m := f.readMessage()
	require.Equal(t, `"7"`, value.String(m.id))
	require.Equal(t, `{"params":{"k":[1]}}`, value.String(m.result))

	f.write(`{"jsonrpc":"2.0","id":8,"method":"fail","params":null}` + "\n")
	m = f.readMessage()
	require.Equal(t, `8`, value.String(m.id))
	require.Equal(t, `{"code":-32011,"message":"Not found: x","data":"d"}`, value.String(m.err.Value()))

	f.write(`{"jsonrpc":"2.0","id":9,"method":"big","params":{}}` + "\n")
	m = f.readMessage()
	require.Equal(t, int64(CodeServerError), m.err.Code)
	require.Contains(t, m.err.Message, "result too large for the stdio transport")

	f.write(`{"jsonrpc":"2.0","id":10,"method":"panics","params":{}}` + "\n")
	m = f.readMessage()
	require.Equal(t, int64(CodeInternal), m.err.Code)

	releaseOnce.Do(func() { close(release) })
	m = f.readMessage()
	require.Equal(t, `7`, value.String(m.id))
	require.Equal(t, `"slow done"`, value.String(m.result))
}

func TestStdioFakeEOFFailsPending(t *testing.T) {
	f := newFakeStdio(t, StdioOptions{})
	r1 := f.call(testCtx(t), "a")
	f.readMessage()
	// An unterminated last line is not a message.
	f.write(`{"id":"x","result":1}`)
	require.NoError(t, f.out.Close())
	r := <-r1
	requireTransportError(t, r.err)
	<-f.s.Done()
	require.ErrorIs(t, f.s.Err(), ErrTransport)
	require.NotErrorIs(t, f.s.Err(), ErrClosed)
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }
func (failingWriter) Close() error              { return nil }

func TestStdioFakeWriteError(t *testing.T) {
	outR, outW := io.Pipe()
	s := NewStdio(outR, failingWriter{}, StdioOptions{})
	defer func() { _ = outW.Close(); <-s.Done() }()
	_, err := s.Call(testCtx(t), MethodComponentsList, nil, nil)
	requireTransportError(t, err)
	require.Contains(t, err.Error(), "broken pipe")
	requireTransportError(t, s.Notify(testCtx(t), MethodInitialized, nil))
	require.NoError(t, s.Close())
}

func TestStdioFakeCancel(t *testing.T) {
	f := newFakeStdio(t, StdioOptions{})
	ctx, cancel := context.WithCancel(testCtx(t))
	r1 := f.call(ctx, "a")
	m := f.readMessage()
	cancel()
	require.ErrorIs(t, (<-r1).err, context.Canceled)
	// The late answer is ignored; the next call works.
	f.write(`{"id":` + value.String(m.id) + `,"result":1}` + "\n")
	r2 := f.call(testCtx(t), "b")
	m = f.readMessage()
	f.write(`{"id":` + value.String(m.id) + `,"result":2}` + "\n")
	require.Equal(t, value.Int(2), (<-r2).v)
}
