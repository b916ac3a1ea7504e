package cli

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/coordinator"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// defaultCoordinatorURL is the default --url of submit and runs.
const defaultCoordinatorURL = "http://localhost:7840"

// apiClient is a small typed client for the coordinator's /api/v1 REST
// API (pkg/coordinator). Every method makes one attempt; retrying is the
// caller's business (see retrier), because only the caller knows whether a
// request can be repeated.
type apiClient struct {
	bases []string // every --url, as scheme://host[:port]/api/v1
	mu    sync.Mutex
	base  string // the one requests go to; guarded by mu
	token string
	http  *http.Client
}

// clientOptions are the credentials and trust of an apiClient.
type clientOptions struct {
	// token is the bearer token; "" sends none.
	token string
	// caCertFile is a PEM file of CA certificates trusted for https://
	// coordinators besides the system's roots.
	caCertFile string
}

// newAPIClient normalises rawURL (with or without the /api/v1 suffix, as
// upstream, where only scheme, host and port matter) and returns a client.
// rawURL may list several coordinators, comma-separated (coordinators
// sharing NATS, see pkg/coordinator/leader.go): requests go to one until
// it cannot be reached or answers 502/503/504, then to the next.
func newAPIClient(rawURL string, opts clientOptions) (*apiClient, error) {
	var bases []string
	for _, one := range strings.Split(rawURL, ",") {
		base, err := apiBase(one)
		if err != nil {
			return nil, err
		}
		bases = append(bases, base)
	}
	// No overall timeout: item downloads and event streams are long.
	// Dialing and response headers are bounded by the transport.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.ResponseHeaderTimeout = 0
	if opts.caCertFile != "" {
		pem, err := os.ReadFile(opts.caCertFile)
		if err != nil {
			return nil, fmt.Errorf("--ca-cert: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca-cert %s: no PEM certificate in the file", opts.caCertFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	c := &apiClient{bases: bases, token: opts.token, http: &http.Client{Transport: tr}}
	c.base = bases[0]
	return c, nil
}

// apiBase is one --url as scheme://host[:port][/prefix]/api/v1.
func apiBase(rawURL string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(rawURL))
	if err != nil {
		return "", fmt.Errorf("--url %q: %w", rawURL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("--url %q: want an http:// or https:// URL", rawURL)
	}
	if u.Host == "" {
		return "", fmt.Errorf("--url %q: no host", rawURL)
	}
	path := strings.TrimRight(u.Path, "/")
	path = strings.TrimSuffix(path, "/api/v1")
	return u.Scheme + "://" + u.Host + path + "/api/v1", nil
}

// failover moves on to the next coordinator of --url after a request to
// from failed as unreachable or unavailable.
func (c *apiClient) failover(from string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.bases) < 2 || c.base != from {
		return
	}
	for i, b := range c.bases {
		if b == from {
			c.base = c.bases[(i+1)%len(c.bases)]
			return
		}
	}
}

// baseOf returns the coordinator req was sent to.
func (c *apiClient) baseOf(req *http.Request) string {
	u := req.URL.String()
	for _, b := range c.bases {
		if strings.HasPrefix(u, b+"/") || u == b {
			return b
		}
	}
	return ""
}

// current is the coordinator requests go to now.
func (c *apiClient) current() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.base
}

// close releases idle connections.
func (c *apiClient) close() {
	c.http.CloseIdleConnections()
}

// apiError is a non-2xx answer of the coordinator: its status and the
// message of its {"code","message"} envelope.
type apiError struct {
	Status  int
	Message string
}

func (e *apiError) Error() string {
	if e.Status == http.StatusUnauthorized {
		return fmt.Sprintf("unauthorized: check --token / STEPFLOW_TOKEN (or --token-file): coordinator: %s (HTTP %d)", e.Message, e.Status)
	}
	return fmt.Sprintf("coordinator: %s (HTTP %d)", e.Message, e.Status)
}

// transportError is a request that got no (complete) answer: the
// coordinator could not be reached or the connection broke.
type transportError struct {
	op  string
	err error
}

func (e *transportError) Error() string {
	var oe *net.OpError
	if errors.As(e.err, &oe) && oe.Op == "dial" {
		return fmt.Sprintf("cannot reach the coordinator (%s): %v", e.op, e.err)
	}
	return fmt.Sprintf("lost the connection to the coordinator (%s): %v", e.op, e.err)
}

func (e *transportError) Unwrap() error { return e.err }

// retryable reports whether a request that failed with err may succeed
// when repeated: connection failures (a coordinator restarting), 429, and
// the gateway and unavailable statuses.
func retryable(err error) bool {
	var te *transportError
	if errors.As(err, &te) {
		return true
	}
	var ae *apiError
	if errors.As(err, &ae) {
		switch ae.Status {
		case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return true
		case http.StatusConflict:
			// An idempotent resubmission whose first attempt is still
			// being accepted.
			return strings.Contains(ae.Message, "still being accepted")
		}
	}
	return false
}

// request builds a request to path (relative to /api/v1).
func (c *apiClient) request(ctx context.Context, method, path string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.current()+path, body)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return req, nil
}

// do sends req and returns the response when it is 2xx; any other status
// becomes an *apiError (body consumed), a failed exchange a
// *transportError. The caller closes the body.
func (c *apiClient) do(req *http.Request) (*http.Response, error) {
	resp, err := c.http.Do(req)
	if err != nil {
		if ctxErr := req.Context().Err(); ctxErr != nil {
			return nil, fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, context.Cause(req.Context()))
		}
		c.failover(c.baseOf(req))
		return nil, &transportError{op: req.Method + " " + redactedURL(req.URL), err: unwrapURLError(err)}
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	switch resp.StatusCode {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		c.failover(c.baseOf(req))
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	ae := &apiError{Status: resp.StatusCode, Message: strings.TrimSpace(string(data))}
	var env struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(data, &env) == nil && env.Message != "" {
		ae.Message = env.Message
	}
	if ae.Message == "" {
		ae.Message = http.StatusText(resp.StatusCode)
	}
	return nil, ae
}

// redactedURL is u without its query, for messages: the query of a run
// upload carries its overrides (and, from older clients, its variables).
func redactedURL(u *url.URL) string {
	r := *u
	r.RawQuery, r.User = "", nil
	return r.String()
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// doJSON sends a request with an optional JSON body and decodes a JSON
// answer into out (when out is not nil). It returns the response headers.
func (c *apiClient) doJSON(ctx context.Context, method, path string, body value.Value, out any) (http.Header, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(value.Marshal(body))
	}
	req, err := c.request(ctx, method, path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, &transportError{op: method + " " + redactedURL(req.URL), err: err}
	}
	if out != nil {
		if raw, ok := out.(*json.RawMessage); ok {
			*raw = data
		} else if err := json.Unmarshal(data, out); err != nil {
			return nil, fmt.Errorf("%s %s: unexpected answer: %w", method, path, err)
		}
	}
	return resp.Header, nil
}

// storeFlowResponse is the answer of POST /flows.
type storeFlowResponse struct {
	FlowID      string `json:"flowId"`
	Stored      bool   `json:"stored"`
	Diagnostics struct {
		Diagnostics []wireDiagnostic `json:"diagnostics"`
	} `json:"diagnostics"`
}

// wireDiagnostic is upstream's diagnostic JSON.
type wireDiagnostic struct {
	Kind      string `json:"kind"`
	Code      int    `json:"code"`
	Level     string `json:"level"`
	Formatted string `json:"formatted"`
	Path      string `json:"path"`
}

// storeFlow stores a flow (its canonical JSON) and returns its id and
// diagnostics.
func (c *apiClient) storeFlow(ctx context.Context, f value.Value) (storeFlowResponse, error) {
	var out storeFlowResponse
	_, err := c.doJSON(ctx, http.MethodPost, "/flows", value.ObjectOf("flow", f, "dryRun", false), &out)
	return out, err
}

// createRunRequest is a run submission; the inputs are the JSONL body.
type createRunRequest struct {
	FlowID         string
	MaxConcurrency int         // 0 = the server's default
	Overrides      value.Value // nil = none
	Variables      value.Value // nil = none
	IdempotencyKey string
	// Body returns a fresh reader of the JSONL inputs and its size (-1 if
	// unknown); it is called once per attempt.
	Body func() (io.ReadCloser, int64, error)
}

// createRunResponse is the answer of POST /runs.
type createRunResponse struct {
	RunID     string `json:"runId"`
	ItemCount int    `json:"itemCount"`
	Status    string `json:"status"`
	// Replayed is set when the Idempotency-Key named an existing run.
	Replayed bool `json:"-"`
}

// createRun uploads the inputs as JSONL with wait=false.
func (c *apiClient) createRun(ctx context.Context, r createRunRequest) (createRunResponse, error) {
	q := url.Values{}
	q.Set("flowId", r.FlowID)
	q.Set("wait", "false")
	if r.MaxConcurrency > 0 {
		q.Set("maxConcurrency", strconv.Itoa(r.MaxConcurrency))
	}
	if r.Overrides != nil {
		q.Set("overrides", string(value.Marshal(r.Overrides)))
	}
	body, size, err := r.Body()
	if err != nil {
		return createRunResponse{}, err
	}
	req, err := c.request(ctx, http.MethodPost, "/runs?"+q.Encode(), body)
	if err != nil {
		_ = body.Close()
		return createRunResponse{}, err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/x-ndjson")
	if r.IdempotencyKey != "" {
		req.Header.Set("Idempotency-Key", r.IdempotencyKey)
	}
	if r.Variables != nil {
		// In a header, not the query: variables may be secrets, and URLs
		// end up in proxy logs.
		req.Header.Set(coordinator.VariablesHeader, string(value.Marshal(r.Variables)))
	}
	resp, err := c.do(req)
	if err != nil {
		return createRunResponse{}, err
	}
	defer resp.Body.Close()
	var out createRunResponse
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return out, &transportError{op: "POST /runs", err: err}
	}
	out.Replayed = resp.Header.Get("Idempotent-Replayed") == "true"
	return out, nil
}

// itemStats are a run's item statistics.
type itemStats struct {
	Total       int `json:"total"`
	Completed   int `json:"completed"`
	Running     int `json:"running"`
	Failed      int `json:"failed"`
	Cancelled   int `json:"cancelled"`
	Queued      int `json:"queued"`
	Redelivered int `json:"redelivered"`
}

// runSummary is the coordinator's RunSummary.
type runSummary struct {
	RunID          string    `json:"runId"`
	FlowID         string    `json:"flowId"`
	FlowName       string    `json:"flowName"`
	Status         string    `json:"status"`
	Items          itemStats `json:"items"`
	CreatedAt      string    `json:"createdAt"`
	CompletedAt    string    `json:"completedAt"`
	RootRunID      string    `json:"rootRunId"`
	ParentRunID    string    `json:"parentRunId"`
	MaxConcurrency int       `json:"maxConcurrency"`
	Error          string    `json:"error"`
}

// finished reports whether the run has ended.
func (s runSummary) finished() bool {
	switch s.Status {
	case "completed", "failed", "cancelled":
		return true
	}
	return false
}

// runPath is /runs/<escaped id><suffix>.
func runPath(id, suffix string) string { return "/runs/" + url.PathEscape(id) + suffix }

// getRun returns a run's summary and its raw JSON (RunDetails).
func (c *apiClient) getRun(ctx context.Context, id string) (runSummary, json.RawMessage, error) {
	var raw json.RawMessage
	if _, err := c.doJSON(ctx, http.MethodGet, runPath(id, ""), nil, &raw); err != nil {
		return runSummary{}, nil, err
	}
	var s runSummary
	if err := json.Unmarshal(raw, &s); err != nil {
		return s, nil, fmt.Errorf("GET /runs/%s: unexpected answer: %w", id, err)
	}
	return s, raw, nil
}

// listFilter selects runs of GET /runs.
type listFilter struct {
	Status string
	Parent string // "" = any
	Limit  int    // 0 = the server's default
}

// listRuns returns the runs, newest first, and the raw answer.
func (c *apiClient) listRuns(ctx context.Context, f listFilter) ([]runSummary, json.RawMessage, error) {
	q := url.Values{}
	if f.Status != "" {
		q.Set("status", f.Status)
	}
	if f.Parent != "" {
		q.Set("parentRunId", f.Parent)
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	path := "/runs"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var raw json.RawMessage
	if _, err := c.doJSON(ctx, http.MethodGet, path, nil, &raw); err != nil {
		return nil, nil, err
	}
	var out struct {
		Runs []runSummary `json:"runs"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, nil, fmt.Errorf("GET /runs: unexpected answer: %w", err)
	}
	return out.Runs, raw, nil
}

// cancelRun cancels a run and returns its summary.
func (c *apiClient) cancelRun(ctx context.Context, id string) (json.RawMessage, error) {
	var raw json.RawMessage
	_, err := c.doJSON(ctx, http.MethodPost, runPath(id, "/cancel"), nil, &raw)
	return raw, err
}

// scaleRun sets a run's maxConcurrency and returns its summary.
func (c *apiClient) scaleRun(ctx context.Context, id string, n int) (json.RawMessage, error) {
	var raw json.RawMessage
	_, err := c.doJSON(ctx, http.MethodPatch, runPath(id, ""), value.ObjectOf("maxConcurrency", value.Int(int64(n))), &raw)
	return raw, err
}

// items opens the JSONL results of a run from item index offset: one
// FlowResult per line, in index order, for the items that have one.
func (c *apiClient) items(ctx context.Context, id string, offset int) (io.ReadCloser, error) {
	path := runPath(id, "/items?format=jsonl")
	if offset > 0 {
		path += "&offset=" + strconv.Itoa(offset)
	}
	req, err := c.request(ctx, http.MethodGet, path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.do(req)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// sseEvent is one server-sent event.
type sseEvent struct {
	ID    string
	Event string
	Data  []byte
}

// errStreamEnded is an event stream that ended before its done event.
var errStreamEnded = errors.New("the event stream ended before the run finished")

// events follows GET /runs/{id}/events from lastID ("" = the start) and
// calls fn for each event until the done event (nil), fn's error, or a
// broken stream (a *transportError, to be retried with the last id fn
// saw).
func (c *apiClient) events(ctx context.Context, id, lastID string, fn func(sseEvent) error) error {
	req, err := c.request(ctx, http.MethodGet, runPath(id, "/events"), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := c.do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	var ev sseEvent
	var data []byte
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 { // dispatch
			if ev.Event != "" || data != nil {
				ev.Data = data
				if err := fn(ev); err != nil {
					return err
				}
				if ev.Event == "done" {
					return nil
				}
			}
			ev, data = sseEvent{}, nil
			continue
		}
		field, val, _ := bytes.Cut(line, []byte(":"))
		val = bytes.TrimPrefix(val, []byte(" "))
		switch string(field) {
		case "id":
			ev.ID = string(val)
		case "event":
			ev.Event = string(val)
		case "data":
			if data != nil {
				data = append(data, '\n')
			}
			data = append(data, val...)
		}
	}
	if err := sc.Err(); err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return &transportError{op: "GET " + redactedURL(req.URL), err: err}
	}
	return &transportError{op: "GET " + redactedURL(req.URL), err: errStreamEnded}
}

// retrier retries failed requests with exponential backoff for as long
// as they keep failing retryably within timeout of the first failure
// (reset by ok), reporting the outage once on stderr.
type retrier struct {
	timeout time.Duration
	stderr  io.Writer // nil = silent
	log     *zap.Logger

	since    time.Time // first failure of the current outage; zero = none
	delay    time.Duration
	reported bool
}

// Backoff bounds of retrier.
const (
	retryMinDelay = 100 * time.Millisecond
	retryMaxDelay = 5 * time.Second
)

// ok ends an outage.
func (r *retrier) ok() {
	if r.reported && r.stderr != nil {
		fmt.Fprintln(r.stderr, "Reconnected to the coordinator.")
	}
	r.since, r.delay, r.reported = time.Time{}, 0, false
}

// wait decides about err: it returns err when it is not retryable or the
// outage has lasted timeout, and otherwise waits for the next attempt
// and returns nil (or ctx's cause when ctx ends meanwhile).
func (r *retrier) wait(ctx context.Context, err error) error {
	if !retryable(err) || r.timeout <= 0 {
		return err
	}
	now := time.Now()
	if r.since.IsZero() {
		r.since = now
	}
	if now.Sub(r.since) >= r.timeout {
		return fmt.Errorf("giving up after retrying for %s: %w", r.timeout, err)
	}
	r.delay = min(max(2*r.delay, retryMinDelay), retryMaxDelay)
	var ae *apiError
	if errors.As(err, &ae) && ae.Status == http.StatusTooManyRequests {
		r.delay = retryMaxDelay
	}
	d := min(r.delay, r.timeout-now.Sub(r.since))
	if r.log != nil {
		r.log.Debug("retrying", zap.Duration("in", d), zap.Error(err))
	}
	if !r.reported && r.stderr != nil {
		fmt.Fprintf(r.stderr, "%v; retrying for up to %s\n", err, r.timeout)
		r.reported = true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// retry calls fn until it succeeds or r gives up.
func retry[T any](ctx context.Context, r *retrier, fn func() (T, error)) (T, error) {
	for {
		v, err := fn()
		if err == nil {
			r.ok()
			return v, nil
		}
		if werr := r.wait(ctx, err); werr != nil {
			return v, werr
		}
	}
}
