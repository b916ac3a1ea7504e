package coordinator

import (
	"bufio"
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/jsonl"
	"github.com/stepflow-go/stepflow/pkg/metrics"
	"github.com/stepflow-go/stepflow/pkg/profiling"
	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/runs"
	"github.com/stepflow-go/stepflow/pkg/value"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// APIVersion is the version the health endpoint reports: the upstream
// Stepflow release whose REST API this one reproduces.
const APIVersion = "0.9.0"

// Defaults of GET /api/v1/runs paging.
const (
	defaultListLimit = 100
	maxListLimit     = 10000
)

// retryAfterSeconds is the Retry-After of a 429.
const retryAfterSeconds = 5

// Handler returns the REST API (under /api/v1), the runs page (under
// /ui/), the probes (/healthz, /readyz), /metrics, and the API's OpenAPI
// document and Swagger UI (apidocs.go), with bearer-token authentication
// when Config.AuthToken is set (on everything but the probes,
// /api/v1/health, the API's documentation and the runs page's sign-in;
// the runs page's session cookie also works, see ui.go) and permissive
// CORS like upstream. A standby coordinator forwards everything but the
// probes, /metrics, the profiles and the API's documentation to the
// leader (leader.go). It is what Start serves; tests and
// embedders may mount it elsewhere.
func (c *Coordinator) Handler() http.Handler {
	mux := http.NewServeMux()
	c.routes(mux)
	return c.forward(c.cors(c.auth(mux)))
}

// router is what routes are registered on: an *http.ServeMux (tests
// record the patterns instead).
type router interface {
	Handle(pattern string, handler http.Handler)
	HandleFunc(pattern string, handler func(http.ResponseWriter, *http.Request))
}

// routes registers every route Handler serves on mux. Every route but the
// browser pages (the runs page, Swagger UI) is in the OpenAPI document
// (apidocs.go), which a test keeps true.
func (c *Coordinator) routes(mux router) {
	mux.HandleFunc("GET /healthz", c.handleHealthz)
	mux.HandleFunc("GET /readyz", c.handleReadyz)
	mux.Handle("GET /metrics", metrics.Handler(c.reg, c.log))
	mux.HandleFunc("GET /api/v1/backlog", c.handleBacklog)
	mux.HandleFunc("GET /api/v1/health", c.handleHealth)
	mux.HandleFunc("GET /api/v1/components", c.handleComponents)
	mux.HandleFunc("POST /api/v1/flows", c.handleStoreFlow)
	mux.HandleFunc("GET /api/v1/flows/{flowId}", c.handleGetFlow)
	mux.HandleFunc("DELETE /api/v1/flows/{flowId}", c.handleDeleteFlow)
	mux.HandleFunc("POST /api/v1/runs", c.handleCreateRun)
	mux.HandleFunc("GET /api/v1/runs", c.handleListRuns)
	runRoute := func(pattern string, h http.HandlerFunc) { mux.Handle(pattern, c.withRunID(h)) }
	runRoute("GET /api/v1/runs/{runId}", c.handleGetRun)
	runRoute("PATCH /api/v1/runs/{runId}", c.handlePatchRun)
	runRoute("DELETE /api/v1/runs/{runId}", c.handleDeleteRun)
	runRoute("GET /api/v1/runs/{runId}/items", c.handleItems)
	runRoute("GET /api/v1/runs/{runId}/steps", c.handleSteps)
	runRoute("GET /api/v1/runs/{runId}/flow", c.handleRunFlow)
	runRoute("GET /api/v1/runs/{runId}/events", c.handleEvents)
	runRoute("POST /api/v1/runs/{runId}/cancel", c.handleCancel)
	mux.HandleFunc("GET /api/v1/cluster", c.handleCluster)
	profiling.Register(mux) // behind the token like everything else
	c.mountUI(mux)
	mountAPIDocs(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		c.writeError(w, r, errorf(ErrRunNotFound, "no such endpoint: %s %s", r.Method, r.URL.Path))
	})
}

// withRunID guards a route that takes a {runId}: run ids are UUIDs (the
// coordinator makes UUIDv7s), so anything that does not parse as one is
// a 400 `invalid run id '<id>' (…)`, as upstream answers a bad UUID in
// the path, and never reaches the store (404 stays for well-formed ids
// of no run). The id is handed on in its canonical form (lower case,
// hyphenated), the form under which runs are stored.
func (c *Coordinator) withRunID(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := parseRunID(r.PathValue("runId"))
		if err != nil {
			c.writeError(w, r, err)
			return
		}
		r.SetPathValue("runId", id)
		h(w, r)
	}
}

// parseRunID checks a run id from a request path and returns its
// canonical form.
func parseRunID(s string) (string, error) {
	u, err := uuid.Parse(s)
	if err != nil {
		if len(s) > 64 { // echo enough to recognise it, not a whole URL's worth
			s = s[:64] + "…"
		}
		return "", errorf(ErrInvalidRequest, "invalid run id '%s' (not a UUID: run ids look like 0198c0de-0000-7000-8000-000000000000)", s)
	}
	return u.String(), nil
}

// unauthenticatedPaths are the only paths served without the bearer
// token: liveness and readiness checks, which reveal nothing but whether
// the process is up (probes and load balancers carry no token). /metrics
// is not among them: run ids and flow names are in its labels. Keep every
// exemption here (and the runs page's sign-in, uiPublic, and the API's
// documentation, docsPath).
var unauthenticatedPaths = map[string]bool{
	"/api/v1/health": true,
	"/healthz":       true,
	"/readyz":        true,
}

// auth requires the bearer token on everything but unauthenticatedPaths,
// the runs page's sign-in and the API's documentation. Without an
// Authorization header, the runs page's session cookie is accepted
// instead; a mutating request on the cookie alone must carry UIHeader
// (CSRF protection). An unauthenticated
// page of the runs UI redirects to its sign-in form.
func (c *Coordinator) auth(next http.Handler) http.Handler {
	if c.cfg.AuthToken == "" {
		return next
	}
	// Digests of equal length are compared, so that the time taken
	// reveals neither the token's bytes nor its length.
	want := sha256.Sum256([]byte(c.cfg.AuthToken))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if unauthenticatedPaths[r.URL.Path] || uiPublic(r) || docsPath(r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		authz := r.Header.Get("Authorization")
		got, ok := bearerToken(authz)
		gotSum := sha256.Sum256([]byte(got))
		if ok && subtle.ConstantTimeCompare(gotSum[:], want[:]) == 1 {
			next.ServeHTTP(w, r)
			return
		}
		if authz == "" && c.validSession(r, time.Now()) {
			if !safeMethod(r.Method) && r.Header.Get(UIHeader) != "1" {
				writeEnvelope(w, http.StatusForbidden, "a request authenticated by the runs page's session cookie must carry the header "+UIHeader+": 1")
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		if (r.URL.Path == "/ui" || strings.HasPrefix(r.URL.Path, "/ui/")) && safeMethod(r.Method) {
			http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="stepflow"`)
		writeEnvelope(w, http.StatusUnauthorized, "missing or invalid bearer token")
	})
}

// bearerToken returns the token of an Authorization header of the Bearer
// scheme, whose name is case-insensitive (RFC 7235, section 2.1).
func bearerToken(authz string) (string, bool) {
	scheme, token, ok := strings.Cut(strings.TrimSpace(authz), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return strings.TrimSpace(token), true
}

// cors answers preflight requests and allows any origin for the bearer
// token API. The runs page's session cookie is SameSite=Strict and
// mutations on it need UIHeader, which preflights do not allow, so other
// origins cannot use a signed-in browser's session.
func (c *Coordinator) cors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", "*")
		if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
			h.Set("Access-Control-Allow-Methods", "GET, POST, PATCH, DELETE, OPTIONS")
			h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, Idempotency-Key, Last-Event-ID, "+VariablesHeader)
			h.Set("Access-Control-Max-Age", "3600")
			w.WriteHeader(http.StatusNoContent)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// writeJSON writes v with status.
func writeJSON(w http.ResponseWriter, status int, v value.Value) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	b := value.Marshal(v)
	_, _ = w.Write(b)
}

// writeEnvelope writes upstream's error envelope {"code","message"}.
func writeEnvelope(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, value.ObjectOf("code", value.Int(int64(status)), "message", msg))
}

// writeError maps err onto a status and writes the envelope.
func (c *Coordinator) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status := httpStatus(err)
	if status == http.StatusInternalServerError || status == http.StatusServiceUnavailable {
		if serr := c.storageHealth(); serr != nil {
			// Most likely the cause: say so, with 507.
			status, err = http.StatusInsufficientStorage, fmt.Errorf("%w (%w)", err, serr)
		}
	}
	msg := err.Error()
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		msg = fmt.Sprintf("request body larger than %d bytes (the coordinator's --max-body-bytes)", mbe.Limit)
	}
	switch status {
	case http.StatusTooManyRequests:
		w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds))
	case http.StatusServiceUnavailable:
		// Expected while NATS is away; the client retries.
		w.Header().Set("Retry-After", "1")
		c.log.Debug("request failed; the client may retry", zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Error(err))
	case http.StatusInternalServerError:
		if r.Context().Err() == nil { // not a client that went away, or a stop
			c.log.Error("request failed", zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Error(err))
		}
	}
	writeEnvelope(w, status, msg)
}

// readObject reads a JSON object body of at most MaxBodyBytes.
func (c *Coordinator) readObject(w http.ResponseWriter, r *http.Request) (*value.Object, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, c.cfg.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, err
		}
		return nil, errorf(ErrInvalidRequest, "reading the request body: %w", err)
	}
	v, err := value.ParseStrict(body)
	if err != nil {
		return nil, errorf(ErrInvalidRequest, "malformed JSON body: %w", err)
	}
	o, ok := v.(*value.Object)
	if !ok {
		return nil, errorf(ErrInvalidRequest, "the request body must be a JSON object, not %s", value.TypeName(v))
	}
	return o, nil
}

// field helpers: absent and null read as the zero value.

func stringField(o *value.Object, key string) (string, error) {
	v, _ := o.Get(key)
	switch t := v.(type) {
	case nil:
		return "", nil
	case string:
		return t, nil
	}
	return "", errorf(ErrInvalidRequest, "%q must be a string, not %s", key, value.TypeName(v))
}

func boolField(o *value.Object, key string, def bool) (bool, error) {
	v, _ := o.Get(key)
	switch t := v.(type) {
	case nil:
		return def, nil
	case bool:
		return t, nil
	}
	return false, errorf(ErrInvalidRequest, "%q must be a boolean, not %s", key, value.TypeName(v))
}

// concurrencyField reads maxConcurrency: absent or null = 0 (default),
// otherwise an integer of at least 1 (see parseConcurrency).
func concurrencyField(o *value.Object, key string) (int, error) {
	v, _ := o.Get(key)
	if v == nil {
		return 0, nil
	}
	return parseConcurrency(v)
}

// parseConcurrency checks a maxConcurrency value: a JSON integer of at
// least 1 (1.0 is 1). Its upper bound, Config.MaxRunConcurrency, is
// checked by checkConcurrency; values beyond 32 bits fail here.
func parseConcurrency(v value.Value) (int, error) {
	n, ok := v.(value.Number)
	var i int64
	var err error
	if ok && value.IsInteger(n) {
		i, err = n.Int64()
	}
	if !ok || !value.IsInteger(n) || err != nil || i < 1 || i > math.MaxInt32 {
		return 0, errorf(ErrInvalidRequest, "maxConcurrency must be an integer of at least 1, not %s", value.String(v))
	}
	return int(i), nil
}

// checkConcurrency rejects a requested concurrency over
// MaxRunConcurrency.
func (c *Coordinator) checkConcurrency(n int) error {
	if n > c.cfg.MaxRunConcurrency {
		return errorf(ErrInvalidRequest, "maxConcurrency %d is more than the coordinator's limit of %d (--max-run-concurrency)", n, c.cfg.MaxRunConcurrency)
	}
	return nil
}

func objectField(o *value.Object, key string) (*value.Object, error) {
	v, _ := o.Get(key)
	switch t := v.(type) {
	case nil:
		return nil, nil
	case *value.Object:
		return t, nil
	}
	return nil, errorf(ErrInvalidRequest, "%q must be an object, not %s", key, value.TypeName(v))
}

// overridesField returns the overrides value, nil for absent, null or {}.
func overridesField(v value.Value) value.Value {
	if o, ok := v.(*value.Object); ok && o.Len() == 0 {
		return nil
	}
	return v
}

// handleHealth answers upstream's HealthResponse: "healthy", or 503
// "unhealthy" with the reason while the coordinator cannot store (a full
// disk under its data dir or its embedded NATS store) or NATS does not
// answer its writes (an external server's full store, a lost quorum).
// Readiness says only the former: the API still answers meanwhile.
func (c *Coordinator) handleHealth(w http.ResponseWriter, _ *http.Request) {
	err := c.storageHealth()
	if err == nil && c.renewFailing.Load() {
		err = errNATSWritesUnanswered
	}
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, value.ObjectOf("status", "unhealthy", "reason", err.Error(),
			"timestamp", runs.Timestamp(time.Now()), "version", APIVersion))
		return
	}
	writeJSON(w, http.StatusOK, value.ObjectOf("status", "healthy", "timestamp", runs.Timestamp(time.Now()), "version", APIVersion))
}

func (c *Coordinator) handleStoreFlow(w http.ResponseWriter, r *http.Request) {
	o, err := c.readObject(w, r)
	if err != nil {
		c.writeError(w, r, err)
		return
	}
	fv, ok := o.Get("flow")
	if !ok || fv == nil {
		c.writeError(w, r, errorf(ErrInvalidRequest, `missing "flow"`))
		return
	}
	dryRun, err := boolField(o, "dryRun", false)
	if err != nil {
		c.writeError(w, r, err)
		return
	}
	if err := c.checkFlowSize(len(value.Marshal(fv))); err != nil {
		c.writeError(w, r, err)
		return
	}
	f, err := flow.FromValue(fv)
	if err != nil {
		c.writeError(w, r, errorf(ErrInvalidRequest, "invalid flow: %w", err))
		return
	}
	diags := flow.Validate(f)
	fatal, errs, warns := diags.Counts()
	stored := !dryRun && fatal == 0
	if stored {
		canonical := f.Value()
		if _, err := c.flows.Put(r.Context(), value.Marshal(canonical)); err != nil {
			c.writeError(w, r, err)
			return
		}
		if _, err := (journaledBlobs{c}).Put(r.Context(), blob.KindFlow, canonical); err != nil {
			c.writeError(w, r, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, value.ObjectOf(
		"flowId", f.ID(),
		"stored", stored,
		"diagnostics", value.ObjectOf("diagnostics", diags.JSON(),
			"numFatal", value.Int(int64(fatal)), "numError", value.Int(int64(errs)), "numWarning", value.Int(int64(warns))),
	))
}

// checkFlowSize rejects a flow of n bytes (compact JSON) over
// MaxFlowBytes.
func (c *Coordinator) checkFlowSize(n int) error {
	if int64(n) > c.cfg.MaxFlowBytes {
		return errorf(ErrTooLarge, "the flow is %d bytes, more than the coordinator's limit of %d bytes (--max-flow-bytes)", n, c.cfg.MaxFlowBytes)
	}
	return nil
}

func (c *Coordinator) handleGetFlow(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("flowId")
	f, _, err := c.loadFlow(r.Context(), id)
	if err != nil {
		if errors.Is(err, ErrFlowNotFound) {
			err = errorf(ErrFlowNotFound, "Flow not found")
		}
		c.writeError(w, r, err)
		return
	}
	o := value.ObjectOf("flow", f.APIValue(), "flowId", id)
	if ex := f.AllExamples(); len(ex) > 0 {
		arr := make([]value.Value, len(ex))
		for i, e := range ex {
			eo := value.ObjectOf("name", e.Name)
			if e.Description != "" {
				eo.Set("description", e.Description)
			}
			eo.Set("input", e.Input)
			arr[i] = eo
		}
		o.Set("allExamples", arr)
	}
	writeJSON(w, http.StatusOK, o)
}

// handleDeleteFlow is a no-op, as upstream: flows are content-addressed
// and shared by every run (and child run) that names them.
func (c *Coordinator) handleDeleteFlow(w http.ResponseWriter, _ *http.Request) {
	w.WriteHeader(http.StatusOK)
}

// isJSONL reports whether a Content-Type names JSON Lines.
func isJSONL(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return false
	}
	switch mt {
	case "application/x-ndjson", "application/jsonl", "application/x-jsonlines", "application/jsonlines", "application/ndjson":
		return true
	}
	return false
}

func (c *Coordinator) handleCreateRun(w http.ResponseWriter, r *http.Request) {
	var (
		sub  submission
		wait bool
		err  error
	)
	if isJSONL(r.Header.Get("Content-Type")) {
		sub, wait, err = c.jsonlSubmission(r)
	} else {
		sub, wait, err = c.jsonSubmission(w, r)
	}
	if err == nil {
		if key := r.Header.Get("Idempotency-Key"); key != "" {
			err = validateIdempotencyKey(key)
			sub.IdempotencyKey = key
		}
	}
	if err != nil {
		c.writeError(w, r, err)
		return
	}
	rec, created, err := c.submit(r.Context(), sub)
	if err != nil {
		c.writeError(w, r, err)
		return
	}
	if !created {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	if wait && rec.GetStatus() == statusRunning {
		runID := rec.GetRunId()
		if rec, err = c.waitRun(r.Context(), runID); err != nil {
			switch {
			case errors.Is(context.Cause(r.Context()), ErrStopped):
				writeEnvelope(w, http.StatusServiceUnavailable, fmt.Sprintf(
					"the coordinator is stopping; run %s goes on: follow it with GET /api/v1/runs/%s", runID, runID))
			case r.Context().Err() != nil: // the client went away; the run goes on
			default:
				c.writeError(w, r, err)
			}
			return
		}
	}
	o := value.ObjectOf("runId", rec.GetRunId(), "itemCount", value.Int(int64(rec.GetItemTotal())), "status", queue.StatusName(rec.GetStatus()))
	if rec.GetItemTotal() == 1 && queue.Terminal(rec.GetStatus()) {
		res, err := c.readResult(rec.GetRunId(), 0)
		if err != nil {
			c.writeError(w, r, err)
			return
		}
		if res != nil {
			v, err := value.Parse(res.Result)
			if err != nil {
				c.writeError(w, r, fmt.Errorf("coordinator: stored result of run %s: %w", rec.GetRunId(), err))
				return
			}
			o.Set("result", v)
		}
	}
	writeJSON(w, http.StatusOK, o)
}

// readResult reads one stored result of a finished run, or nil.
func (c *Coordinator) readResult(runID string, index int) (*resultRecord, error) {
	rd, err := openResultReader(c.runDir(runID), -1)
	if err != nil {
		return nil, err
	}
	defer rd.close()
	return rd.at(index)
}

// jsonSubmission reads CreateRunRequest plus "wait" (default true).
func (c *Coordinator) jsonSubmission(w http.ResponseWriter, r *http.Request) (submission, bool, error) {
	o, err := c.readObject(w, r)
	if err != nil {
		return submission{}, false, err
	}
	return submissionFromObject(o, "input")
}

// submissionFromObject reads the fields shared by the REST request and
// the NATS runs.submit request; inputsKey is "input" (REST) or "inputs".
func submissionFromObject(o *value.Object, inputsKey string) (submission, bool, error) {
	var sub submission
	var err error
	if sub.FlowID, err = stringField(o, "flowId"); err != nil {
		return sub, false, err
	}
	if sub.FlowID == "" {
		return sub, false, errorf(ErrInvalidRequest, `missing "flowId"`)
	}
	iv, _ := o.Get(inputsKey)
	arr, ok := iv.([]value.Value)
	if !ok {
		return sub, false, errorf(ErrInvalidRequest, "%q must be an array with one input per item", inputsKey)
	}
	sub.Items = len(arr)
	sub.Inputs = func(fn func([]byte) error) error {
		var buf []byte
		for _, v := range arr {
			buf = value.Append(buf[:0], v)
			if err := fn(buf); err != nil {
				return err
			}
		}
		return nil
	}
	ov, _ := o.Get("overrides")
	sub.Overrides = overridesField(ov)
	if sub.Variables, err = objectField(o, "variables"); err != nil {
		return sub, false, err
	}
	if sub.MaxConcurrency, err = concurrencyField(o, "maxConcurrency"); err != nil {
		return sub, false, err
	}
	if sub.ParentRunID, err = stringField(o, "parentRunId"); err != nil {
		return sub, false, err
	}
	wait, err := boolField(o, "wait", true)
	return sub, wait, err
}

// VariablesHeader carries the variables (a JSON object) of a JSONL
// upload. The query parameter "variables" is accepted too, but variables
// may be secrets, and URLs end up in proxy and access logs where headers
// usually do not; `stepflow submit` uses the header.
const VariablesHeader = "Stepflow-Variables"

// jsonlSubmission reads a JSONL upload: the body has one input per line;
// flowId, maxConcurrency, wait, overrides and variables are query
// parameters (the last two as JSON); variables may come in the
// VariablesHeader instead.
func (c *Coordinator) jsonlSubmission(r *http.Request) (submission, bool, error) {
	q := r.URL.Query()
	sub := submission{FlowID: q.Get("flowId")}
	if sub.FlowID == "" {
		return sub, false, errorf(ErrInvalidRequest, "missing query parameter flowId")
	}
	if s := q.Get("maxConcurrency"); s != "" {
		v, err := value.ParseString(s)
		if err != nil {
			v = s // not JSON: quoted in the message
		}
		if sub.MaxConcurrency, err = parseConcurrency(v); err != nil {
			return sub, false, err
		}
	}
	wait := true
	if s := q.Get("wait"); s != "" {
		b, err := strconv.ParseBool(s)
		if err != nil {
			return sub, false, errorf(ErrInvalidRequest, "query parameter wait must be true or false, not %q", s)
		}
		wait = b
	}
	if s := q.Get("overrides"); s != "" {
		v, err := value.ParseString(s)
		if err != nil {
			return sub, false, errorf(ErrInvalidRequest, "query parameter overrides is not JSON: %w", err)
		}
		sub.Overrides = overridesField(v)
	}
	vars, where := q.Get("variables"), "query parameter variables"
	if h := r.Header.Get(VariablesHeader); h != "" {
		if vars != "" {
			return sub, false, errorf(ErrInvalidRequest, "variables given both in the query and in the %s header", VariablesHeader)
		}
		vars, where = h, VariablesHeader+" header"
	}
	if vars != "" {
		v, err := value.ParseString(vars)
		if err != nil {
			return sub, false, errorf(ErrInvalidRequest, "%s is not JSON: %w", where, err)
		}
		o, ok := v.(*value.Object)
		if !ok && v != nil {
			return sub, false, errorf(ErrInvalidRequest, "%s must be a JSON object", where)
		}
		sub.Variables = o
	}
	maxLine := int(min(c.cfg.MaxBodyBytes, int64(1<<31-1)))
	body := r.Body
	sub.Inputs = func(fn func([]byte) error) error {
		rd := jsonl.NewReader(body, jsonl.WithMaxLineBytes(maxLine))
		for {
			it, err := rd.Next()
			if errors.Is(err, io.EOF) {
				return nil
			}
			var le *jsonl.LineError
			if errors.As(err, &le) {
				if errors.Is(le, jsonl.ErrLineTooLong) {
					return errorf(ErrTooLarge, "input line %d (item %d) is longer than %d bytes (the coordinator's --max-body-bytes); the upload was rejected and no run was created", le.Line, le.Index, maxLine)
				}
				return inputError(le)
			}
			if err != nil {
				return fmt.Errorf("coordinator: reading the inputs: %w", err)
			}
			if err := fn(it.Data); err != nil {
				return err
			}
		}
	}
	return sub, wait, nil
}

// itemCounts are a run's item statistics: upstream's ItemStatistics plus
// queued (not yet handed to a worker) and redelivered (handed out again
// after a crash, a timeout or a nak, not yet acked).
type itemCounts struct {
	Total, Completed, Running, Failed, Cancelled, Queued, Redelivered int
}

func (n itemCounts) value() *value.Object {
	return value.ObjectOf(
		"total", value.Int(int64(n.Total)),
		"completed", value.Int(int64(n.Completed)),
		"running", value.Int(int64(n.Running)),
		"failed", value.Int(int64(n.Failed)),
		"cancelled", value.Int(int64(n.Cancelled)),
		"queued", value.Int(int64(n.Queued)),
		"redelivered", value.Int(int64(n.Redelivered)),
	)
}

// countsOf returns a run's statistics: the attached state's counters
// when the run runs here (fresher than the record), and the run
// consumer's in-flight and pending counts for running and queued.
func (c *Coordinator) countsOf(ctx context.Context, rec *stepflowv1.RunRecord) itemCounts {
	var cs *queue.ConsumerStats
	if rec.GetStatus() == statusRunning {
		cs = c.consumerStats(ctx, rec.GetRunId())
	}
	return c.countsWith(rec, cs)
}

// consumerStats reads the run consumer's state in one request; nil when
// it cannot.
func (c *Coordinator) consumerStats(ctx context.Context, runID string) *queue.ConsumerStats {
	cons, err := queue.RunConsumerHandle(ctx, c.js, runID)
	if err != nil {
		return nil
	}
	// js.Consumer has just fetched the info: CachedInfo is current.
	info := cons.CachedInfo()
	if info == nil {
		return nil
	}
	return &queue.ConsumerStats{NumAckPending: info.NumAckPending, NumRedelivered: info.NumRedelivered}
}

// countsWith is countsOf with the run consumer's state already read (nil
// when unknown).
func (c *Coordinator) countsWith(rec *stepflowv1.RunRecord, cs *queue.ConsumerStats) itemCounts {
	it := rec.GetItems()
	n := itemCounts{
		Total:     int(rec.GetItemTotal()),
		Completed: int(it.GetCompleted()),
		Failed:    int(it.GetFailed()),
		Cancelled: int(it.GetCancelled()),
	}
	if rec.GetStatus() != statusRunning {
		return n
	}
	if st := c.active(rec.GetRunId()); st != nil {
		n.Completed, n.Failed, _, _ = st.snapshot()
	}
	return withConsumer(n, cs)
}

// liveCounts completes the counts of a running run (Total, Completed,
// Failed and Cancelled set) from one consumer info request.
func (c *Coordinator) liveCounts(ctx context.Context, runID string, n itemCounts) itemCounts {
	return withConsumer(n, c.consumerStats(ctx, runID))
}

// withConsumer splits a running run's remaining items between running
// (handed to a worker, not acked: the consumer's NumAckPending) and
// queued (on the queue, or in the run's spool), and sets the items in
// flight on a redelivery. Without the consumer's state, every remaining
// item counts as running.
func withConsumer(n itemCounts, cs *queue.ConsumerStats) itemCounts {
	remaining := max(n.Total-n.Completed-n.Failed-n.Cancelled, 0)
	n.Running, n.Queued, n.Redelivered = remaining, 0, 0
	if cs != nil {
		n.Running = min(cs.NumAckPending, remaining)
		n.Queued = remaining - n.Running
		n.Redelivered = cs.NumRedelivered
	}
	return n
}

// summary is RunSummary: upstream's fields, then maxConcurrency and the
// run's error when it failed as a whole.
func summary(rec *stepflowv1.RunRecord, n itemCounts) *value.Object {
	o := value.ObjectOf("runId", rec.GetRunId(), "flowId", rec.GetFlowId())
	if rec.GetFlowName() != "" {
		o.Set("flowName", rec.GetFlowName())
	} else {
		o.Set("flowName", nil)
	}
	o.Set("status", queue.StatusName(rec.GetStatus()))
	o.Set("items", n.value())
	o.Set("createdAt", runs.Timestamp(rec.GetCreatedAt().AsTime()))
	if rec.GetCompletedAt() != nil {
		o.Set("completedAt", runs.Timestamp(rec.GetCompletedAt().AsTime()))
	} else {
		o.Set("completedAt", nil)
	}
	o.Set("rootRunId", cmp.Or(rec.GetRootRunId(), rec.GetRunId()))
	if rec.GetParentRunId() != "" {
		o.Set("parentRunId", rec.GetParentRunId())
	}
	o.Set("maxConcurrency", value.Int(int64(rec.GetMaxConcurrency())))
	if rec.GetError() != "" {
		o.Set("error", rec.GetError())
	}
	return o
}

func (c *Coordinator) handleListRuns(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var status stepflowv1.RunStatus
	if s := q.Get("status"); s != "" {
		st, ok := queue.ParseStatus(s)
		if !ok {
			c.writeError(w, r, errorf(ErrInvalidRequest, "unknown status %q (running, completed, failed, cancelled, paused)", s))
			return
		}
		status = st
	}
	limit, err := intParam(q.Get("limit"), defaultListLimit)
	if err == nil && limit > maxListLimit {
		limit = maxListLimit
	}
	offset, err2 := intParam(q.Get("offset"), 0)
	if err = errors.Join(err, err2); err != nil {
		c.writeError(w, r, err)
		return
	}
	recs, err := c.listRecords(r.Context())
	if err != nil {
		c.writeError(w, r, err)
		return
	}
	sortNewestFirst(recs)
	out := []value.Value{}
	skipped := 0
	for _, rec := range recs {
		switch {
		case status != 0 && rec.GetStatus() != status,
			q.Has("parentRunId") && rec.GetParentRunId() != q.Get("parentRunId"),
			q.Get("rootRunId") != "" && cmp.Or(rec.GetRootRunId(), rec.GetRunId()) != q.Get("rootRunId"),
			q.Get("flowName") != "" && rec.GetFlowName() != q.Get("flowName"):
			continue
		}
		if skipped < offset {
			skipped++
			continue
		}
		if len(out) >= limit {
			break
		}
		out = append(out, summary(rec, c.countsOf(r.Context(), rec)))
	}
	writeJSON(w, http.StatusOK, value.ObjectOf("runs", out))
}

// intParam parses a non-negative integer query parameter.
func intParam(s string, def int) (int, error) {
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, errorf(ErrInvalidRequest, "expected a non-negative integer, not %q", s)
	}
	return n, nil
}

// handleGetRun returns RunDetails. inputs holds one page of the run's
// inputs (?inputsOffset, ?inputsLimit: default DefaultInputsPage, at most
// MaxInputsPage), read line by line from the kept inputs, never the whole
// file; inputsNextOffset is set when more follow. The inputs are kept when
// their total size was at most MaxDetailInputsBytes; larger runs (and runs
// created before the inputs were kept) omit inputs and set
// "inputsOmitted": true instead: the inputs live on the work queue until
// executed, not in the coordinator.
func (c *Coordinator) handleGetRun(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	offset, err := intParam(q.Get("inputsOffset"), 0)
	if err != nil {
		c.writeError(w, r, fmt.Errorf("inputsOffset: %w", err))
		return
	}
	limit, err := intParam(q.Get("inputsLimit"), DefaultInputsPage)
	if err != nil {
		c.writeError(w, r, fmt.Errorf("inputsLimit: %w", err))
		return
	}
	limit = min(limit, MaxInputsPage)
	rec, err := c.getRecord(r.Context(), r.PathValue("runId"))
	if err != nil {
		c.writeError(w, r, err)
		return
	}
	o := summary(rec, c.countsOf(r.Context(), rec))
	// Secrets are redacted by the flow's schemas; without the flow, the
	// inputs are omitted and every variable is redacted.
	f, _, ferr := c.loadFlow(r.Context(), rec.GetFlowId())
	if ferr != nil {
		c.log.Debug("run details without the flow: secrets cannot be told apart, redacting", zap.String("run", rec.GetRunId()), zap.Error(ferr))
	}
	if inputs, ok := c.detailInputs(rec, offset, limit); ok && f != nil {
		for i, in := range inputs {
			inputs[i] = f.RedactInput(in)
		}
		o.Set("inputs", inputs)
		if next := offset + len(inputs); uint64(next) < rec.GetItemTotal() {
			o.Set("inputsNextOffset", int64(next))
		}
	} else {
		o.Set("inputsOmitted", true)
	}
	if len(rec.GetOverrides()) > 0 {
		if v, err := value.Parse(rec.GetOverrides()); err == nil {
			o.Set("overrides", v)
		}
	}
	if len(rec.GetVariables()) > 0 {
		if v, err := value.Parse(rec.GetVariables()); err == nil {
			o.Set("variables", redactVariables(f, v))
		}
	}
	writeJSON(w, http.StatusOK, o)
}

// redactVariables replaces the secret variables of a run (by f's variable
// schema) with "[REDACTED]"; with no flow, every variable.
func redactVariables(f *flow.Flow, v value.Value) value.Value {
	vo, ok := v.(*value.Object)
	if !ok {
		return v
	}
	vars := make(map[string]value.Value, vo.Len())
	for i := range vo.Len() {
		k, x := vo.At(i)
		vars[k] = x
	}
	if f != nil {
		vars = f.RedactVariables(vars)
	}
	out := value.NewObject(vo.Len())
	for i := range vo.Len() {
		k, _ := vo.At(i)
		if f == nil {
			out.Set(k, flow.Redacted)
		} else {
			out.Set(k, vars[k])
		}
	}
	return out
}

// Pages of RunDetails' inputs.
const (
	// DefaultInputsPage is the number of inputs GET /runs/{id} answers
	// without ?inputsLimit.
	DefaultInputsPage = 100
	// MaxInputsPage is the most it answers.
	MaxInputsPage = 1000
)

// detailInputs returns inputs [offset, offset+limit) of the kept inputs
// of a run, reading the file a line at a time.
func (c *Coordinator) detailInputs(rec *stepflowv1.RunRecord, offset, limit int) ([]value.Value, bool) {
	total := rec.GetItemTotal()
	if total == 0 || uint64(offset) >= total || limit == 0 {
		return []value.Value{}, true
	}
	f, err := os.Open(filepath.Join(c.runDir(rec.GetRunId()), inputsFileName))
	if err != nil {
		return nil, false
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	out := make([]value.Value, 0, min(uint64(limit), total-uint64(offset)))
	for i := 0; len(out) < limit; i++ {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// A long input: read the rest of its line.
			long := append([]byte(nil), line...)
			for err == bufio.ErrBufferFull {
				line, err = br.ReadSlice('\n')
				long = append(long, line...)
			}
			line = long
		}
		if err != nil && (err != io.EOF || len(line) == 0) {
			break
		}
		if i < offset {
			continue
		}
		v, perr := value.Parse(line)
		if perr != nil {
			return nil, false
		}
		out = append(out, v)
	}
	if want := min(uint64(limit), total-uint64(offset)); uint64(len(out)) != want {
		return nil, false // a file that does not match the record
	}
	return out, true
}

func (c *Coordinator) handlePatchRun(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("runId")
	if err := validRunID(id); err != nil {
		c.writeError(w, r, err)
		return
	}
	o, err := c.readObject(w, r)
	if err != nil {
		c.writeError(w, r, err)
		return
	}
	v, ok := o.Get("maxConcurrency")
	if !ok || v == nil {
		c.writeError(w, r, errorf(ErrInvalidRequest, `missing "maxConcurrency"`))
		return
	}
	n, err := parseConcurrency(v)
	if err != nil {
		c.writeError(w, r, err)
		return
	}
	rec, err := c.setConcurrency(r.Context(), id, n)
	if err != nil {
		c.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, summary(rec, c.countsOf(r.Context(), rec)))
}

func (c *Coordinator) handleCancel(w http.ResponseWriter, r *http.Request) {
	rec, err := c.cancelRun(r.Context(), r.PathValue("runId"))
	if err != nil {
		c.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, summary(rec, c.countsOf(r.Context(), rec)))
}

func (c *Coordinator) handleDeleteRun(w http.ResponseWriter, r *http.Request) {
	if err := c.deleteRun(r.Context(), r.PathValue("runId")); err != nil {
		c.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// maxStepsBytes bounds the step outcomes stored with a result (the
// worker sends at most 64 KiB; anything larger is not stored).
const maxStepsBytes = 1 << 20

// handleSteps answers upstream's ListStepRunsResponse,
// {"steps":{"<stepId>":{"stepId","component","status","result"?}}} in
// flow order, for a run of one item: the step outcomes its worker sent
// with the item's result (ItemResult.steps), stored with it. Until the
// result is stored (or when it came without steps: an item the
// coordinator failed itself, a worker that predates them), every step
// of the flow is "blocked": the coordinator sees no step start, only
// the item's end. A run of several items answers {"steps":{}}: upstream
// keeps one step view per run, which in a batch is whichever item wrote
// a step last; we do not make every batch item carry its step outcomes
// for that (GET /runs/{id}/items has each item's result).
func (c *Coordinator) handleSteps(w http.ResponseWriter, r *http.Request) {
	rec, err := c.getRecord(r.Context(), r.PathValue("runId"))
	if err != nil {
		c.writeError(w, r, err)
		return
	}
	if rec.GetItemTotal() != 1 {
		writeJSON(w, http.StatusOK, value.ObjectOf("steps", value.NewObject(0)))
		return
	}
	committed := int64(-1)
	if st := c.active(rec.GetRunId()); st != nil {
		_, _, _, committed = st.snapshot()
	}
	rd, err := openResultReader(c.runDir(rec.GetRunId()), committed)
	if err != nil {
		c.writeError(w, r, err)
		return
	}
	res, err := rd.at(0)
	_ = rd.close()
	if err != nil {
		c.writeError(w, r, err)
		return
	}
	if res != nil && len(res.Steps) > 0 {
		v, err := value.Parse(res.Steps)
		if err != nil {
			c.writeError(w, r, fmt.Errorf("coordinator: stored steps of run %s: %w", rec.GetRunId(), err))
			return
		}
		writeJSON(w, http.StatusOK, value.ObjectOf("steps", v))
		return
	}
	steps, err := c.blockedSteps(r.Context(), rec.GetFlowId())
	if err != nil {
		c.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, value.ObjectOf("steps", steps))
}

// blockedSteps lists the steps of a stored flow, each "blocked".
func (c *Coordinator) blockedSteps(ctx context.Context, flowID string) (*value.Object, error) {
	data, err := c.flows.Get(ctx, flowID)
	if err != nil {
		return nil, err
	}
	v, err := value.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("coordinator: stored flow %s: %w", flowID, err)
	}
	f, err := flow.FromValue(v)
	if err != nil {
		return nil, fmt.Errorf("coordinator: stored flow %s: %w", flowID, err)
	}
	out := value.NewObject(len(f.Steps))
	for _, s := range f.Steps {
		out.Set(s.ID, value.ObjectOf("stepId", s.ID, "component", s.Component, "status", "blocked"))
	}
	return out, nil
}

func (c *Coordinator) handleRunFlow(w http.ResponseWriter, r *http.Request) {
	rec, err := c.getRecord(r.Context(), r.PathValue("runId"))
	if err != nil {
		c.writeError(w, r, err)
		return
	}
	f, _, err := c.loadFlow(r.Context(), rec.GetFlowId())
	if err != nil {
		c.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, value.ObjectOf("flow", f.APIValue(), "flowId", rec.GetFlowId()))
}

// missingStatus is the status of an item without a result.
func missingStatus(run stepflowv1.RunStatus) string {
	switch run {
	case statusRunning, stepflowv1.RunStatus_RUN_STATUS_PAUSED:
		return runs.StatusRunning
	case statusCancelled:
		return runs.StatusCancelled
	}
	return runs.StatusFailed
}

// itemStatus is the status of an item with a result.
func itemStatus(rec *resultRecord) string {
	if rec.Failed {
		return runs.StatusFailed
	}
	return runs.StatusCompleted
}

// handleItems writes the items of a run in index order, streamed from
// the result store with constant memory: {"itemCount","items":[…]} or,
// with ?format=jsonl (or Accept: application/x-ndjson), one FlowResult
// per line for the items that have one (what `stepflow submit` writes).
// ?offset= is the first index; ?limit= bounds the items answered.
// ?status= (completed, failed, running, cancelled) answers only the items
// with that status, scanning from offset until limit of them are found:
// the runs page lists a run's failures with ?status=failed&limit=20.
func (c *Coordinator) handleItems(w http.ResponseWriter, r *http.Request) {
	rec, err := c.getRecord(r.Context(), r.PathValue("runId"))
	if err != nil {
		c.writeError(w, r, err)
		return
	}
	q := r.URL.Query()
	total := int(rec.GetItemTotal())
	offset, err := intParam(q.Get("offset"), 0)
	limit, err2 := intParam(q.Get("limit"), total)
	if err = errors.Join(err, err2); err != nil {
		c.writeError(w, r, err)
		return
	}
	want := q.Get("status")
	switch want {
	case "", runs.StatusCompleted, runs.StatusFailed, runs.StatusRunning, runs.StatusCancelled:
	default:
		c.writeError(w, r, errorf(ErrInvalidRequest, "unknown item status %q (completed, failed, running, cancelled)", want))
		return
	}
	format := q.Get("format")
	asJSONL := format == "jsonl" || (format == "" && isJSONL(r.Header.Get("Accept")))
	if format != "" && format != "jsonl" && format != "json" {
		c.writeError(w, r, errorf(ErrInvalidRequest, "unknown format %q (json or jsonl)", format))
		return
	}
	committed := int64(-1)
	status := rec.GetStatus()
	if st := c.active(rec.GetRunId()); st != nil {
		_, _, _, committed = st.snapshot()
	}
	rd, err := openResultReader(c.runDir(rec.GetRunId()), committed)
	if err != nil {
		c.writeError(w, r, err)
		return
	}
	defer rd.close()
	from := min(offset, total)
	to := min(total, from+min(limit, total))
	// match reports whether an item is answered; with a status filter
	// the scan goes on to the end and stops after limit matches
	// (errEnoughItems).
	matched := 0
	match := func(*resultRecord) (bool, error) { return true, nil }
	if want != "" {
		to = total
		match = func(res *resultRecord) (bool, error) {
			if matched >= limit {
				return false, errEnoughItems
			}
			st := missingStatus(status)
			if res != nil {
				st = itemStatus(res)
			}
			if st != want {
				return false, nil
			}
			matched++
			return true, nil
		}
	}

	bw := bufio.NewWriterSize(w, 64<<10)
	if asJSONL {
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		err = rd.byIndex(from, to, func(_ int, res *resultRecord) error {
			if ok, err := match(res); !ok || res == nil {
				return err
			}
			_, _ = bw.Write(res.Result)
			return bw.WriteByte('\n')
		})
	} else {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = fmt.Fprintf(bw, `{"itemCount":%d,"items":[`, total)
		var buf []byte
		first := true
		err = rd.byIndex(from, to, func(i int, res *resultRecord) error {
			if ok, err := match(res); !ok {
				return err
			}
			buf = buf[:0]
			if !first {
				buf = append(buf, ',')
			}
			first = false
			buf = appendItemResult(buf, i, res, status)
			_, err := bw.Write(buf)
			return err
		})
		if errors.Is(err, errEnoughItems) {
			err = nil
		}
		if err == nil {
			_, err = bw.WriteString("]}")
		}
	}
	if errors.Is(err, errEnoughItems) { // JSONL
		err = nil
	}
	if err == nil {
		err = bw.Flush()
	}
	if err != nil && r.Context().Err() == nil {
		// The status line is out; all we can do is cut the response short.
		c.log.Error("writing items failed", zap.String("run", rec.GetRunId()), zap.Error(err))
		panic(http.ErrAbortHandler)
	}
}

// errEnoughItems ends a filtered item scan that found limit items.
var errEnoughItems = errors.New("enough items")

// appendItemResult appends upstream's ItemResult JSON.
func appendItemResult(buf []byte, index int, res *resultRecord, run stepflowv1.RunStatus) []byte {
	buf = append(buf, `{"itemIndex":`...)
	buf = strconv.AppendInt(buf, int64(index), 10)
	buf = append(buf, `,"status":`...)
	if res == nil {
		buf = value.AppendString(buf, missingStatus(run))
		return append(buf, '}')
	}
	buf = value.AppendString(buf, itemStatus(res))
	buf = append(buf, `,"result":`...)
	buf = append(buf, res.Result...)
	buf = append(buf, `,"completedAt":`...)
	buf = value.AppendString(buf, runs.Timestamp(res.CompletedAt))
	return append(buf, '}')
}
