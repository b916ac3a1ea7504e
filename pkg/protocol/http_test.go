package protocol

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stepflow-go/stepflow/pkg/value"
	"github.com/stretchr/testify/require"
)

// ---- against the real stepflow-py 0.9.2 server ----

func TestHTTPRealHandshakeListEcho(t *testing.T) {
	_, h := newHTTPTransport(t)
	ctx := testCtx(t)

	require.NoError(t, h.Health(ctx, "/health"))
	res, err := h.Call(ctx, MethodInitialize, InitializeParams(Capabilities{}), nil)
	require.NoError(t, err)
	require.Equal(t, `{"server_protocol_version":1}`, value.String(res))
	require.NoError(t, h.Notify(ctx, MethodInitialized, nil))

	res, err = h.Call(ctx, MethodComponentsList, nil, nil)
	require.NoError(t, err)
	infos, err := ParseListResult(res)
	require.NoError(t, err)
	var names []string
	for _, ci := range infos {
		names = append(names, ci.Component)
	}
	require.Equal(t, "/udf", names[0])
	require.Subset(t, names, []string{"/echo", "/boom", "/blob_roundtrip", "/big", "/hang", "/hang_ctx"})
	require.Empty(t, infos[1].Description) // null description

	res, err = h.Call(ctx, MethodComponentsInfo, InfoParams("/big"), nil)
	require.NoError(t, err)
	info, err := ParseInfoResult(res)
	require.NoError(t, err)
	require.Equal(t, "/big", info.Component)
	require.Equal(t, `{"type":"string"}`, value.String(info.OutputSchema))

	// Key order, integers and floats survive the round trip byte for byte.
	in := value.MustParse(`{"z":1,"a":[1.5,"é\n",null,true],"m":{"y":2,"b":1.0}}`)
	out, err := execute(ctx, h, "/echo", in, nil)
	require.NoError(t, err)
	require.Equal(t, value.String(in), value.String(out))
}

func TestHTTPRealComponentErrors(t *testing.T) {
	_, h := newHTTPTransport(t)
	ctx := testCtx(t)

	_, err := execute(ctx, h, "/boom", "x", nil)
	re := requireRPCError(t, err, CodeComponentExecution)
	require.Equal(t, "Component execution failed: kaputt", re.Message)

	_, err = execute(ctx, h, "/nope", "x", nil)
	requireRPCError(t, err, CodeComponentNotFound)

	// The server answers 400 without an id to an unknown method: a
	// transport (protocol) failure, not a component failure.
	_, err = h.Call(ctx, "foo/bar", nil, nil)
	requireTransportError(t, err)
	require.Contains(t, err.Error(), "HTTP 400")

	// params must be an object; nothing is sent.
	_, err = h.Call(ctx, MethodComponentsList, []value.Value{}, nil)
	require.Error(t, err)
	require.NotErrorIs(t, err, ErrTransport)
}

func TestHTTPRealBlobCallbacks(t *testing.T) {
	_, h := newHTTPTransport(t)
	ctx := testCtx(t)
	store := newBlobStore()

	in := value.MustParse(`{"hello":"world","n":[1,2.5]}`)
	out, err := execute(ctx, h, "/blob_roundtrip", in, store)
	require.NoError(t, err)
	want := value.ObjectOf("blob_id", blobID(in), "data", in)
	require.Equal(t, value.String(want), value.String(out))
	require.Equal(t, []string{MethodBlobsPut, MethodBlobsGet}, store.methods())

	// Without a handler the callback gets -32601, which the component
	// sees as an exception.
	_, err = execute(ctx, h, "/blob_roundtrip", in, nil)
	re := requireRPCError(t, err, CodeComponentExecution)
	require.Contains(t, re.Message, "JSON-RPC error -32601: Method not found: 'blobs/put'")

	// A Handler error travels back as a JSON-RPC error answer.
	failing := HandlerFunc(func(context.Context, string, value.Value) (value.Value, error) {
		return nil, errors.New("disk full")
	})
	_, err = execute(ctx, h, "/blob_roundtrip", in, failing)
	re = requireRPCError(t, err, CodeComponentExecution)
	require.Contains(t, re.Message, "JSON-RPC error -32000: disk full")
}

func TestHTTPRealLarge(t *testing.T) {
	_, h := newHTTPTransport(t)
	ctx := testCtx(t)
	big := strings.Repeat("0123456789", 1<<20) // 10 MiB

	// 10 MiB in, 10 MiB out, direct JSON.
	out, err := execute(ctx, h, "/echo", big, nil)
	require.NoError(t, err)
	require.Equal(t, big, out)

	// 10 MiB out of a component without a context.
	out, err = execute(ctx, h, "/big", value.ObjectOf("size", value.Int(10<<20)), nil)
	require.NoError(t, err)
	require.Len(t, out, 10<<20)

	// 10 MiB through the SSE stream: a 10 MiB blobs/put event, a 10 MiB
	// blobs/get answer POST, a 10 MiB final event.
	store := newBlobStore()
	out, err = execute(ctx, h, "/blob_roundtrip", big, store)
	require.NoError(t, err)
	data, _ := out.(*value.Object).Get("data")
	require.Equal(t, big, data)
}

func TestHTTPRealConcurrent64(t *testing.T) {
	_, h := newHTTPTransport(t)
	ctx := testCtx(t)
	store := newBlobStore()

	const n = 64
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			in := value.ObjectOf("i", value.Int(int64(i)))
			component := "/echo"
			if i%2 == 1 {
				component = "/blob_roundtrip" // SSE stream plus two callbacks
			}
			out, err := execute(ctx, h, component, in, store)
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
	require.Len(t, store.methods(), n) // 32 puts + 32 gets
}

func TestHTTPRealKilledMidCall(t *testing.T) {
	for _, component := range []string{"/hang", "/hang_ctx"} {
		t.Run(component, func(t *testing.T) {
			p, h := newHTTPTransport(t)
			ctx := testCtx(t)
			errc := make(chan error, 1)
			go func() {
				_, err := execute(ctx, h, component, "k1", nil)
				errc <- err
			}()
			p.stderr.waitFor(t, "started k1")
			p.kill()
			requireTransportError(t, <-errc)

			// Later calls find nobody listening.
			_, err := execute(ctx, h, "/echo", 1, nil)
			requireTransportError(t, err)
			requireTransportError(t, h.Health(ctx, "/health"))
		})
	}
}

func TestHTTPRealCancel(t *testing.T) {
	p, h := newHTTPTransport(t)
	ctx, cancel := context.WithCancel(testCtx(t))
	errc := make(chan error, 1)
	go func() {
		_, err := execute(ctx, h, "/hang_ctx", "c1", nil)
		errc <- err
	}()
	p.stderr.waitFor(t, "started c1")
	cancel()
	require.ErrorIs(t, <-errc, context.Canceled)

	// The server is still fine.
	out, err := execute(testCtx(t), h, "/echo", "still here", nil)
	require.NoError(t, err)
	require.Equal(t, "still here", out)
}

// ---- against fake servers, for what the SDK cannot be made to do ----

// fakeServer is an httptest server whose handler gets the decoded request.
type fakeServer struct {
	*httptest.Server
	mu      sync.Mutex
	headers []http.Header
}

func newFakeServer(t *testing.T, fn func(w http.ResponseWriter, r *http.Request, m *message)) *fakeServer {
	f := &fakeServer{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.headers = append(f.headers, r.Header.Clone())
		f.mu.Unlock()
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		m, err := parseMessage(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fn(w, r, m)
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeServer) transport(t *testing.T) *HTTP {
	h := NewHTTP(f.URL+"/", HTTPOptions{Logger: testLogger(t)})
	t.Cleanup(func() { _ = h.Close() })
	return h
}

func sseHeaders(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
	w.Header().Set(HeaderInstanceID, "0123456789abcdef")
	w.WriteHeader(http.StatusOK)
}

func writeEvent(w http.ResponseWriter, raw string) {
	_, _ = io.WriteString(w, raw)
	w.(http.Flusher).Flush()
}

func response(id value.Value, result string) string {
	return string(appendResponse(nil, id, value.MustParse(result), nil))
}

func TestHTTPFakeStreamEndsEarly(t *testing.T) {
	answered := make(chan string, 1)
	f := newFakeServer(t, func(w http.ResponseWriter, r *http.Request, m *message) {
		if m.kind == kindResponse { // the callback answer
			answered <- value.String(m.id) + " " + value.String(m.result)
			w.WriteHeader(http.StatusAccepted)
			_, _ = io.WriteString(w, `""`)
			return
		}
		sseHeaders(w)
		writeEvent(w, `data: {"jsonrpc":"2.0","id":"cb-1","method":"blobs/put","params":{"data":1,"blob_type":"data","observability":null}}`+"\n\n")
		// Wait for the answer, then end without a response.
		ans := <-answered
		answered <- ans
	})
	h := f.transport(t)
	_, err := execute(testCtx(t), h, "/x", 1, newBlobStore())
	requireTransportError(t, err)
	require.Contains(t, err.Error(), "ended without a response")
	require.Equal(t, `"cb-1" {"blob_id":"`+blobID(value.Int(1))+`"}`, <-answered)

	// Every POST carried the required headers; the answer the instance id.
	f.mu.Lock()
	defer f.mu.Unlock()
	require.Len(t, f.headers, 2)
	for _, hd := range f.headers {
		require.Equal(t, "application/json", hd.Get("Content-Type"))
		require.Equal(t, "application/json, text/event-stream", hd.Get("Accept"))
	}
	require.Empty(t, f.headers[0].Get(HeaderInstanceID))
	require.Equal(t, "0123456789abcdef", f.headers[1].Get(HeaderInstanceID))
}

func TestHTTPFakeStreamCutMidEvent(t *testing.T) {
	f := newFakeServer(t, func(w http.ResponseWriter, r *http.Request, m *message) {
		sseHeaders(w)
		// The final event, without its closing empty line, then the
		// connection is dropped: the event must not be used.
		writeEvent(w, "data: "+response(m.id, `{"output":1}`)+"\n")
		panic(http.ErrAbortHandler)
	})
	_, err := execute(testCtx(t), f.transport(t), "/x", 1, nil)
	requireTransportError(t, err)
}

func TestHTTPFakeSSEFraming(t *testing.T) {
	f := newFakeServer(t, func(w http.ResponseWriter, r *http.Request, m *message) {
		sseHeaders(w)
		resp := response(m.id, `{"output":{"a":"b"}}`)
		// Comments, other fields, CRLF, no space after the colon, and the
		// JSON split over two data lines.
		writeEvent(w, ": keep-alive\r\n\r\nevent: message\r\nid: 1\r\nretry: 10\r\n")
		writeEvent(w, "data:"+resp[:10]+"\r\ndata: "+resp[10:]+"\r\n\r\n")
	})
	out, err := execute(testCtx(t), f.transport(t), "/x", 1, nil)
	require.NoError(t, err)
	require.Equal(t, `{"a":"b"}`, value.String(out))
}

func TestHTTPFakeConcurrentCallbacks(t *testing.T) {
	const n = 3
	var posts atomic.Int32
	f := newFakeServer(t, func(w http.ResponseWriter, r *http.Request, m *message) {
		if m.kind == kindResponse {
			posts.Add(1)
			w.WriteHeader(http.StatusAccepted)
			return
		}
		sseHeaders(w)
		for i := range n {
			writeEvent(w, fmt.Sprintf(`data: {"jsonrpc":"2.0","id":%d,"method":"runs/get","params":{"runId":"r"}}`+"\n\n", i))
		}
		// The response arrives before any callback is answered.
		writeEvent(w, "data: "+response(m.id, `{"output":"done"}`)+"\n\n")
	})

	// Each handler waits until all n are running: they must run
	// concurrently. Call must wait for all of them.
	var started sync.WaitGroup
	started.Add(n)
	var finished atomic.Int32
	h := HandlerFunc(func(ctx context.Context, method string, params value.Value) (value.Value, error) {
		started.Done()
		started.Wait()
		finished.Add(1)
		return value.ObjectOf("ok", true), nil
	})
	out, err := execute(testCtx(t), f.transport(t), "/x", 1, h)
	require.NoError(t, err)
	require.Equal(t, "done", out)
	require.Equal(t, int32(n), finished.Load())
	require.Equal(t, int32(n), posts.Load())
}

func TestHTTPFakeCallbackIDsKeepTheirType(t *testing.T) {
	got := make(chan string, 2)
	f := newFakeServer(t, func(w http.ResponseWriter, r *http.Request, m *message) {
		if m.kind == kindResponse {
			got <- value.String(m.id)
			w.WriteHeader(http.StatusAccepted)
			return
		}
		sseHeaders(w)
		writeEvent(w, `data: {"jsonrpc":"2.0","id":7,"method":"x","params":{}}`+"\n\n")
		writeEvent(w, `data: {"jsonrpc":"2.0","id":"7","method":"x","params":{}}`+"\n\n")
		writeEvent(w, "data: "+response(m.id, `{"output":null}`)+"\n\n")
	})
	out, err := execute(testCtx(t), f.transport(t), "/x", 1, HandlerFunc(func(context.Context, string, value.Value) (value.Value, error) {
		return nil, nil
	}))
	require.NoError(t, err)
	require.Nil(t, out)
	require.ElementsMatch(t, []string{`7`, `"7"`}, []string{<-got, <-got})
}

func TestHTTPFakeCallbackAnswerRejected(t *testing.T) {
	f := newFakeServer(t, func(w http.ResponseWriter, r *http.Request, m *message) {
		if m.kind == kindResponse {
			// What the SDK does with an answer of the wrong shape; the
			// component would then wait forever.
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, `{"error":{"code":-32600,"message":"Failed to decode message"}}`)
			return
		}
		sseHeaders(w)
		writeEvent(w, `data: {"jsonrpc":"2.0","id":"cb","method":"blobs/put","params":{"data":1,"blob_type":"data"}}`+"\n\n")
		<-r.Context().Done() // the stream stays open until the client gives up
	})
	_, err := execute(testCtx(t), f.transport(t), "/x", 1, newBlobStore())
	requireTransportError(t, err)
	require.Contains(t, err.Error(), "delivering the answer to blobs/put")
	require.Contains(t, err.Error(), "HTTP 400")
}

func TestHTTPFakeStatusClassification(t *testing.T) {
	cases := []struct {
		name   string
		status int
		ctype  string
		body   func(id value.Value) string
		rpc    int64 // 0: transport error
	}{
		{"malformed 200", 200, "application/json", func(value.Value) string { return "not json" }, 0},
		{"200 other id", 200, "application/json", func(value.Value) string { return response("other", `1`) }, 0},
		{"400 without id", 400, "application/json", func(value.Value) string {
			return `{"error":{"code":-32600,"message":"Unknown method"}}`
		}, 0},
		{"406", 406, "application/json", func(value.Value) string { return `{"error":"Accept header must include"}` }, 0},
		{"500 plain", 500, "text/plain", func(value.Value) string { return "Internal Server Error" }, 0},
		{"500 with error for our id", 500, "application/json", func(id value.Value) string {
			return string(appendResponse(nil, id, nil, &RPCError{Code: CodeInternal, Message: "Internal error: x"}))
		}, CodeInternal},
		{"200 error", 200, "application/json", func(id value.Value) string {
			return string(appendResponse(nil, id, nil, &RPCError{Code: CodeComponentExecution, Message: "boom", Data: value.NewObject(0)}))
		}, CodeComponentExecution},
		{"200 error for other id", 200, "application/json", func(value.Value) string {
			return string(appendResponse(nil, "x", nil, &RPCError{Code: CodeComponentExecution, Message: "boom"}))
		}, 0},
		{"event stream not 2xx", 503, "text/event-stream", func(value.Value) string { return "data: x\n\n" }, 0},
		{"empty stream", 200, "text/event-stream", func(value.Value) string { return "" }, 0},
		{"garbage event", 200, "text/event-stream", func(value.Value) string { return "data: {\n\n" }, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeServer(t, func(w http.ResponseWriter, r *http.Request, m *message) {
				w.Header().Set("Content-Type", tc.ctype)
				w.WriteHeader(tc.status)
				_, _ = io.WriteString(w, tc.body(m.id))
			})
			_, err := f.transport(t).Call(testCtx(t), MethodComponentsList, nil, nil)
			if tc.rpc != 0 {
				requireRPCError(t, err, tc.rpc)
			} else {
				requireTransportError(t, err)
			}
		})
	}
}

func TestHTTPFakeNotifyHealthClose(t *testing.T) {
	var status atomic.Int32
	status.Store(http.StatusAccepted)
	seen := make(chan string, 2)
	f := newFakeServer(t, func(w http.ResponseWriter, r *http.Request, m *message) {
		seen <- fmt.Sprintf("%d %s %s", m.kind, m.method, value.String(m.params))
		w.WriteHeader(int(status.Load()))
	})
	h := f.transport(t)
	ctx := testCtx(t)
	require.NoError(t, h.Notify(ctx, MethodInitialized, nil))
	require.Equal(t, fmt.Sprintf("%d initialized {}", kindNotification), <-seen)
	status.Store(http.StatusBadRequest)
	requireTransportError(t, h.Notify(ctx, MethodInitialized, nil))

	// Health: the fake answers GET with 400 (no JSON body to decode).
	requireTransportError(t, h.Health(ctx, "health"))

	require.NoError(t, h.Close())
	_, err := h.Call(ctx, MethodComponentsList, nil, nil)
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, h.Notify(ctx, MethodInitialized, nil), ErrClosed)
}

func TestHTTPConnectionRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	h := NewHTTP("http://"+addr, HTTPOptions{})
	defer h.Close()
	_, err = h.Call(testCtx(t), MethodComponentsList, nil, nil)
	requireTransportError(t, err)
	requireTransportError(t, h.Notify(testCtx(t), MethodInitialized, nil))
	requireTransportError(t, h.Health(testCtx(t), "/health"))
}
