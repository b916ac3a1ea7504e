// Package blobapi is the blob HTTP API that component servers of
// stepflow-py 0.10 and later use instead of the blobs/put and blobs/get
// callbacks: the runtime passes its address in initialize
// (capabilities.blobApiUrl) and the SDK's context.put_blob and get_blob
// call
//
//	POST {url}        {"data": …, "blobType": "data"|"flow"}  → 200 {"blobId": …}
//	GET  {url}/{id}                                           → 200 {"blobId": …, "blobType": …, "data": …}
//
// (the shapes of upstream's /api/v1/blobs). It serves the plugin host's
// blob.Store, the one /builtin/put_blob and /builtin/get_blob use, so a
// blob a Python component puts is the same blob a flow step reads.
//
// The server listens on loopback only, on a port chosen by the kernel,
// under a random path prefix: other users of the machine cannot guess the
// URL of a worker's blobs. It starts on the first call to URL (a config
// without such servers never listens) and stops with Close.
//
// Errors are the {"code": status, "message": …} envelope of the
// coordinator's API: 400 for a body that is not a JSON object with a
// data field or has an unknown blobType (or a malformed id), 404 for an
// unknown id, 405 for another method, 413 for a body over the size
// limit, 415 for binary (application/octet-stream) blobs, which the
// store does not hold, and 500 when the store fails.
package blobapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// DefaultMaxBodyBytes bounds a POST body: the coordinator's default
// --max-body-bytes.
const DefaultMaxBodyBytes = 32 << 20

// shutdownGrace bounds how long Close lets requests in flight finish.
const shutdownGrace = 5 * time.Second

// ErrClosed is returned by URL after Close.
var ErrClosed = errors.New("blob API closed")

// Options configures New. Zero fields take the defaults stated.
type Options struct {
	// MaxBodyBytes bounds a POST body; default DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// Logger; default zap.NewNop().
	Logger *zap.Logger
}

// Server serves a blob.Store over HTTP on loopback. It is safe for
// concurrent use.
type Server struct {
	store   blob.Store
	maxBody int64
	log     *zap.Logger
	prefix  string // "/<random hex>/blobs"

	mu     sync.Mutex
	url    string
	srv    *http.Server
	served chan struct{} // closed when Serve returned
	closed bool
}

// New returns a server for store. It listens only once URL is called.
func New(store blob.Store, opts Options) *Server {
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	var token [16]byte
	_, _ = rand.Read(token[:]) // never fails (crypto/rand documents it)
	return &Server{
		store:   store,
		maxBody: opts.MaxBodyBytes,
		log:     opts.Logger,
		prefix:  "/" + hex.EncodeToString(token[:]) + "/blobs",
	}
}

// URL returns the base URL of the API, http://127.0.0.1:<port>/<token>/blobs,
// starting the listener on the first call.
func (s *Server) URL() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return "", ErrClosed
	case s.url != "":
		return s.url, nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("blob API: listen on loopback: %w", err)
	}
	s.srv = &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          zap.NewStdLog(s.log),
	}
	s.served = make(chan struct{})
	go func() {
		defer close(s.served)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("blob API stopped", zap.Error(err))
		}
	}()
	s.url = "http://" + ln.Addr().String() + s.prefix
	s.log.Debug("blob API listening", zap.String("addr", ln.Addr().String()))
	return s.url, nil
}

// Close stops the listener, lets requests in flight finish for a few
// seconds and closes the connections. URL fails afterwards. It is
// idempotent and safe before any URL call.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	srv, served := s.srv, s.served
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	err := srv.Shutdown(ctx)
	if err != nil {
		err = errors.Join(err, srv.Close())
	}
	<-served
	if err != nil {
		return fmt.Errorf("blob API: close: %w", err)
	}
	return nil
}

// Handler returns the API's handler; it serves paths under the server's
// random prefix only.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(s.serveHTTP)
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.Path, s.prefix)
	switch {
	case !ok:
		writeError(w, http.StatusNotFound, "not found")
	case rest == "" || rest == "/":
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed: POST stores a blob", r.Method))
			return
		}
		s.put(w, r)
	case strings.HasPrefix(rest, "/") && !strings.Contains(rest[1:], "/"):
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed: GET reads a blob", r.Method))
			return
		}
		s.get(w, r, rest[1:])
	default:
		writeError(w, http.StatusNotFound, "not found")
	}
}

func (s *Server) put(w http.ResponseWriter, r *http.Request) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		switch {
		case err != nil:
			writeError(w, http.StatusUnsupportedMediaType, fmt.Sprintf("invalid Content-Type %q: %v", ct, err))
			return
		case mt == "application/octet-stream":
			writeError(w, http.StatusUnsupportedMediaType, "binary blobs (application/octet-stream) are not supported: store JSON data with Content-Type application/json")
			return
		case mt != "application/json":
			writeError(w, http.StatusUnsupportedMediaType, fmt.Sprintf("Content-Type must be application/json, not %s", mt))
			return
		}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", mbe.Limit))
			return
		}
		writeError(w, http.StatusBadRequest, fmt.Sprintf("reading the request body: %v", err))
		return
	}
	data, kind, err := parsePut(body)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	id, err := s.store.Put(r.Context(), kind, data)
	if err != nil {
		s.log.Warn("blob API: store failed", zap.Error(err))
		writeError(w, http.StatusInternalServerError, fmt.Sprintf("storing the blob: %v", err))
		return
	}
	writeJSON(w, http.StatusOK, value.ObjectOf("blobId", id))
}

// parsePut decodes {"data": …, "blobType": "data"|"flow"|null}. A flow
// is stored in canonical form, so that its blob id is its flow id.
func parsePut(body []byte) (value.Value, blob.Kind, error) {
	v, err := value.ParseStrict(body)
	if err != nil {
		return nil, "", fmt.Errorf("malformed JSON body: %w", err)
	}
	o, ok := v.(*value.Object)
	if !ok {
		return nil, "", fmt.Errorf("the request body must be a JSON object, not %s", value.TypeName(v))
	}
	data, ok := o.Get("data")
	if !ok {
		return nil, "", errors.New(`the request body has no "data" field`)
	}
	kind := blob.KindData
	switch bt, _ := o.Get("blobType"); t := bt.(type) {
	case nil:
	case string:
		kind = blob.Kind(t)
		if !kind.Valid() {
			return nil, "", fmt.Errorf(`"blobType" must be "data" or "flow", not %q`, t)
		}
	default:
		return nil, "", fmt.Errorf(`"blobType" must be a string, not %s`, value.TypeName(bt))
	}
	if kind == blob.KindFlow {
		f, err := flow.FromValue(data)
		if err != nil {
			return nil, "", fmt.Errorf(`"data" is not a valid flow: %w`, err)
		}
		data = f.Value()
	}
	return data, kind, nil
}

func (s *Server) get(w http.ResponseWriter, r *http.Request, id string) {
	if !blob.ValidID(id) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid blob id %q (expected 64 lowercase hex digits)", id))
		return
	}
	b, err := s.store.Get(r.Context(), id)
	switch {
	case errors.Is(err, blob.ErrNotFound):
		writeError(w, http.StatusNotFound, fmt.Sprintf("blob %s not found", id))
		return
	case err != nil:
		s.log.Warn("blob API: read failed", zap.String("blob_id", id), zap.Error(err))
		writeError(w, http.StatusInternalServerError, fmt.Sprintf("reading blob %s: %v", id, err))
		return
	}
	writeJSON(w, http.StatusOK, value.ObjectOf("blobId", b.ID, "blobType", string(b.Kind), "data", b.Data))
}

func writeJSON(w http.ResponseWriter, status int, v value.Value) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(value.Marshal(v))
}

// writeError writes the coordinator API's envelope {"code","message"}.
func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, value.ObjectOf("code", value.Int(int64(status)), "message", msg))
}
