package protocol

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stepflow-go/stepflow/pkg/value"
	"go.uber.org/zap"
)

// HeaderInstanceID is the header that carries a server's instance id on SSE
// responses; it is copied onto the response POSTs of callbacks.
const HeaderInstanceID = "Stepflow-Instance-Id"

// acceptHeader is what the SDK requires on every POST (both types).
const acceptHeader = "application/json, text/event-stream"

// IdleConnTimeout is the idle-connection timeout of NewHTTPClient. It is
// below uvicorn's 5 s keep-alive so that the client never reuses a
// connection the server is closing (POSTs are not retried).
const IdleConnTimeout = 3 * time.Second

// HTTPOptions configures an HTTP transport.
type HTTPOptions struct {
	// Client sends the requests. nil: a client from NewHTTPClient, owned
	// by the transport. A client given here must not cap connections per
	// host, or callback answers can deadlock behind open SSE streams.
	Client *http.Client
	// Logger receives diagnostics. nil: zap.NewNop().
	Logger *zap.Logger
}

// HTTP is the client side of the streamable HTTP transport of
// stepflow-py 0.9.x (spec §2.1): every message is a POST to the server's
// base URL; the answer is either one JSON-RPC response or an SSE stream
// of component→runtime requests ending with the response.
//
// Each Call is one HTTP request, so calls run concurrently without limit.
// Callback requests inside a call's stream are served by that call's
// Handler, each on its own goroutine; their answers are POSTed back with
// the stream's Stepflow-Instance-Id. Call returns only after every
// callback handler of the call has returned.
//
// Cancelling a call's context aborts its HTTP request and returns the
// context's error; the protocol has no cancel message, so the server may
// keep executing the component (and a component waiting on a callback
// then waits forever). Kill the server to stop the work.
type HTTP struct {
	base   string
	client *http.Client
	log    *zap.Logger
	closed atomic.Bool
}

var _ Transport = (*HTTP)(nil)

// NewHTTPClient returns an HTTP client suited to component servers: no
// per-host connection cap (callback answers need connections while SSE
// streams hold others), a large idle pool, IdleConnTimeout below
// uvicorn's keep-alive, no overall timeout (executions may be long), no
// compression and HTTP/1.1 only.
func NewHTTPClient() *http.Client {
	dialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Client{Transport: &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         dialer.DialContext,
		MaxIdleConns:        512,
		MaxIdleConnsPerHost: 256,
		MaxConnsPerHost:     0,
		IdleConnTimeout:     IdleConnTimeout,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}}
}

// NewHTTP returns a transport for the server at baseURL (for example
// "http://127.0.0.1:8123"; a trailing slash is ignored).
func NewHTTP(baseURL string, opts HTTPOptions) *HTTP {
	h := &HTTP{base: strings.TrimRight(baseURL, "/"), client: opts.Client, log: opts.Logger}
	if h.client == nil {
		h.client = NewHTTPClient()
	}
	if h.log == nil {
		h.log = zap.NewNop()
	}
	return h
}

// BaseURL returns the server's base URL without a trailing slash.
func (h *HTTP) BaseURL() string { return h.base }

// Call sends a JSON-RPC request and returns its result. A JSON-RPC error
// answer for the request is returned as *RPCError, whatever the HTTP
// status. Connection failures, a non-2xx status without such an error, a
// malformed body and an SSE stream that ends without the response are
// returned as errors wrapping ErrTransport. When ctx ends first, Call
// returns ctx's error. Callback requests are served by hnd (nil: answered
// with CodeMethodNotFound); if delivering an answer fails before the
// response has arrived, the call fails with ErrTransport, because the
// component would wait for that answer forever.
func (h *HTTP) Call(ctx context.Context, method string, params value.Value, hnd Handler) (value.Value, error) {
	if h.closed.Load() {
		return nil, ErrClosed
	}
	if err := checkParams(method, params); err != nil {
		return nil, err
	}
	id := newID()
	body := appendRequest(make([]byte, 0, 256), id, method, params)

	reqCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	resp, err := h.post(reqCtx, body, "")
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w: %s: %w", ErrTransport, method, err)
	}
	defer resp.Body.Close()

	mediaType, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if resp.StatusCode/100 == 2 && mediaType == "text/event-stream" {
		return h.readStream(ctx, reqCtx, cancel, resp, id, method, hnd)
	}
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w: %s: reading response: %w", ErrTransport, method, err)
	}
	return directResponse(resp.StatusCode, data, id, method)
}

// directResponse interprets a plain (non-SSE) response body.
func directResponse(status int, data []byte, id, method string) (value.Value, error) {
	m, err := parseMessage(data)
	if err == nil && m.kind == kindResponse && m.id == id {
		if m.err != nil {
			return nil, m.err
		}
		if status/100 == 2 {
			return m.result, nil
		}
	}
	if status/100 != 2 {
		return nil, fmt.Errorf("%w: %s: HTTP %d: %s", ErrTransport, method, status, preview(data, 512))
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", method, err)
	}
	return nil, fmt.Errorf("%w: %s: response is not the answer to request %s: %s", ErrMalformed, method, id, preview(data, 512))
}

// readStream consumes an SSE response: callback requests are dispatched,
// the event with our id ends the call.
func (h *HTTP) readStream(ctx, reqCtx context.Context, cancel context.CancelFunc, resp *http.Response,
	id, method string, hnd Handler) (value.Value, error) {
	cs := &callbackSet{
		h:          h,
		ctx:        reqCtx,
		cancel:     cancel,
		instanceID: resp.Header.Get(HeaderInstanceID),
		handler:    hnd,
	}
	sr := newSSEReader(resp.Body)
	for {
		data, err := sr.Next()
		if err != nil {
			// The stream failed before the response: stop the callbacks,
			// their answers can no longer matter.
			cancel()
			cs.wg.Wait()
			if abort := cs.abortErr(); abort != nil {
				return nil, abort
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, fmt.Errorf("%w: %s: event stream ended without a response", ErrTransport, method)
			}
			return nil, fmt.Errorf("%w: %s: reading event stream: %w", ErrTransport, method, err)
		}
		m, err := parseMessage(data)
		if err != nil {
			cancel()
			cs.wg.Wait()
			return nil, fmt.Errorf("%s: event stream: %w", method, err)
		}
		switch {
		case m.kind == kindRequest:
			cs.dispatch(m)
		case m.kind == kindResponse && m.id == id:
			cs.done.Store(true)
			cs.wg.Wait()
			if m.err != nil {
				return nil, m.err
			}
			return m.result, nil
		default:
			h.log.Warn("ignoring unexpected event in SSE stream",
				zap.String("method", method), zap.String("event", preview(data, 256)))
		}
	}
}

// callbackSet tracks the callback handlers of one call.
type callbackSet struct {
	h          *HTTP
	ctx        context.Context
	cancel     context.CancelFunc
	instanceID string
	handler    Handler
	wg         sync.WaitGroup
	done       atomic.Bool // the call's response has arrived

	mu    sync.Mutex
	abort error
}

func (cs *callbackSet) abortErr() error {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.abort
}

func (cs *callbackSet) dispatch(m *message) {
	cs.wg.Add(1)
	go func() {
		defer cs.wg.Done()
		result, rpcErr := serveCallback(cs.ctx, cs.h.log, cs.handler, m.method, m.params)
		body := appendResponse(nil, m.id, result, rpcErr)
		err := cs.h.deliver(cs.ctx, body, cs.instanceID)
		if err == nil {
			return
		}
		switch {
		case cs.ctx.Err() != nil:
			// The call is over (cancelled or failed); nothing to report.
		case cs.done.Load():
			cs.h.log.Warn("callback answer not delivered after the call completed",
				zap.String("method", m.method), zap.Error(err))
		default:
			cs.mu.Lock()
			if cs.abort == nil {
				cs.abort = fmt.Errorf("%w: delivering the answer to %s: %w", ErrTransport, m.method, err)
			}
			cs.mu.Unlock()
			cs.cancel()
		}
	}()
}

// deliver POSTs a callback answer and expects 202.
func (h *HTTP) deliver(ctx context.Context, body []byte, instanceID string) error {
	resp, err := h.post(ctx, body, instanceID)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, preview(data, 512))
	}
	return nil
}

// post sends one JSON-RPC message.
func (h *HTTP) post(ctx context.Context, body []byte, instanceID string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.base+"/", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", acceptHeader)
	if instanceID != "" {
		req.Header.Set(HeaderInstanceID, instanceID)
	}
	return h.client.Do(req)
}

// Notify sends a notification and expects 202. Any other outcome is an
// error wrapping ErrTransport (or ctx's error).
func (h *HTTP) Notify(ctx context.Context, method string, params value.Value) error {
	if h.closed.Load() {
		return ErrClosed
	}
	if err := checkParams(method, params); err != nil {
		return err
	}
	body := appendRequest(make([]byte, 0, 128), nil, method, params)
	resp, err := h.post(ctx, body, "")
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: %s: %w", ErrTransport, method, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("%w: %s: HTTP %d: %s", ErrTransport, method, resp.StatusCode, preview(data, 512))
	}
	return nil
}

// Health sends GET <base><path> (path such as "/health") and returns nil
// on a 2xx status, otherwise an error wrapping ErrTransport (or ctx's
// error).
func (h *HTTP) Health(ctx context.Context, path string) error {
	if h.closed.Load() {
		return ErrClosed
	}
	if path != "" && !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.base+path, nil)
	if err != nil {
		return fmt.Errorf("%w: health check: %w", ErrTransport, err)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: health check: %w", ErrTransport, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%w: health check: HTTP %d: %s", ErrTransport, resp.StatusCode, preview(data, 256))
	}
	return nil
}

// Close makes later calls fail with ErrClosed and releases idle
// connections. Calls in flight are not interrupted; cancel their
// contexts for that. It does not stop the server.
func (h *HTTP) Close() error {
	h.closed.Store(true)
	h.client.CloseIdleConnections()
	return nil
}
