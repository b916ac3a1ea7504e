package stepflow

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/plugin/pluginapi"
	"github.com/stepflow-go/stepflow/pkg/protocol"
	"github.com/stepflow-go/stepflow/pkg/runs"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// Messages of callback errors (component protocol §7.2, §5.5).
const (
	msgNoRuns        = "nested runs are not available here"
	msgPutBlob       = "Failed to put blob"
	msgGetBlob       = "Failed to get blob"
	msgSubmitRun     = "Failed to submit run"
	msgGetRun        = "Failed to get run"
	msgEvaluateFlow  = "Failed to evaluate flow"
	msgGetBatch      = "Failed to get batch"
	msgInvalidFlow   = "Invalid flow blob"
	msgInvalidParams = "Invalid parameters"
)

var errNoBlobs = errors.New("no blob store")

// Callbacks serves the requests component servers make while a call is
// in flight: blobs/put, blobs/get, runs/submit, runs/get and the legacy
// flows/evaluate, flows/get_metadata, flows/submit_batch and
// flows/get_batch of stepflow-py <= 0.8, whatever the transport. Results
// have exactly the shapes the SDKs type-check (a wrong shape makes the
// component wait forever); every failure is a *protocol.RPCError.
//
// Handlers block as long as their work takes (runs/submit with wait);
// transports run each on its own goroutine.
type Callbacks struct {
	blobs blob.Store
	runs  pluginapi.Runs
	log   *zap.Logger
}

// NewCallbacks returns the dispatcher. runs may be nil: runs/* and
// flows/* (except flows/get_metadata, which only reads blobs) then fail
// with -32000 "nested runs are not available here".
func NewCallbacks(blobs blob.Store, r pluginapi.Runs, log *zap.Logger) *Callbacks {
	if log == nil {
		log = zap.NewNop()
	}
	return &Callbacks{blobs: blobs, runs: r, log: log}
}

// Handler returns a protocol.Handler whose nested runs name parentRunID
// as their parent (runs.Request.ParentRunID). With "" the parent is taken
// from the callback's observability.run_id when the SDK sends one.
func (c *Callbacks) Handler(parentRunID string) protocol.Handler {
	return protocol.HandlerFunc(func(ctx context.Context, method string, params value.Value) (value.Value, error) {
		return c.handle(ctx, parentRunID, nil, method, params)
	})
}

// fallbackHandler is Handler for transports that cannot tie callbacks to
// calls: the parent is observability.run_id, else what fallback returns.
func (c *Callbacks) fallbackHandler(fallback func() string) protocol.Handler {
	return protocol.HandlerFunc(func(ctx context.Context, method string, params value.Value) (value.Value, error) {
		return c.handle(ctx, "", fallback, method, params)
	})
}

// HandleCallback serves one callback without a known parent run.
func (c *Callbacks) HandleCallback(ctx context.Context, method string, params value.Value) (value.Value, error) {
	return c.handle(ctx, "", nil, method, params)
}

func (c *Callbacks) handle(ctx context.Context, parent string, fallback func() string, method string, params value.Value) (value.Value, error) {
	p, ok := params.(*value.Object)
	if !ok {
		return nil, invalidParams("params must be an object, got %s", value.TypeName(params))
	}
	if parent == "" {
		if obs, ok := p.Get("observability"); ok {
			if oo, ok := obs.(*value.Object); ok {
				parent, _ = getString(oo, "run_id")
			}
		}
	}
	if parent == "" && fallback != nil {
		parent = fallback()
	}
	var res value.Value
	var err error
	switch method {
	case protocol.MethodBlobsPut:
		res, err = c.blobsPut(ctx, p)
	case protocol.MethodBlobsGet:
		res, err = c.blobsGet(ctx, p)
	case protocol.MethodRunsSubmit:
		res, err = c.runsSubmit(ctx, parent, p)
	case protocol.MethodRunsGet:
		res, err = c.runsGet(ctx, p)
	case protocol.MethodFlowsEvaluate:
		res, err = c.flowsEvaluate(ctx, parent, p)
	case protocol.MethodFlowsGetMetadata:
		res, err = c.flowsGetMetadata(ctx, p)
	case protocol.MethodFlowsSubmitBatch:
		res, err = c.flowsSubmitBatch(ctx, parent, p)
	case protocol.MethodFlowsGetBatch:
		res, err = c.flowsGetBatch(ctx, p)
	default:
		err = rpcError(protocol.CodeMethodNotFound, fmt.Sprintf("Method not found: '%s'", method), nil)
	}
	if err != nil {
		c.log.Debug("callback failed", zap.String("method", method), zap.Error(err))
		return nil, err
	}
	return res, nil
}

// rpcError builds a JSON-RPC error; detail, when not "", goes into
// data.detail.
func rpcError(code int64, msg string, detail error) *protocol.RPCError {
	e := &protocol.RPCError{Code: code, Message: msg}
	if detail != nil {
		e.Data = value.ObjectOf("detail", detail.Error())
	}
	return e
}

func invalidParams(format string, args ...any) *protocol.RPCError {
	return &protocol.RPCError{Code: protocol.CodeInvalidParams, Message: msgInvalidParams + ": " + fmt.Sprintf(format, args...)}
}

func notFound(what, id string) *protocol.RPCError {
	return &protocol.RPCError{Code: protocol.CodeNotFound, Message: fmt.Sprintf("Not found: %s with ID '%s'", what, id)}
}

func invalidValue(field, want string) *protocol.RPCError {
	return &protocol.RPCError{Code: protocol.CodeInvalidValue, Message: fmt.Sprintf("Invalid value for field '%s': expected %s", field, want)}
}

func (c *Callbacks) noRuns() error {
	return &protocol.RPCError{Code: protocol.CodeServerError, Message: msgNoRuns}
}

// runsError maps an error of Runs to the callback's JSON-RPC error.
func runsError(err error, msg string, flowID string) error {
	switch {
	case errors.Is(err, runs.ErrFlowNotFound):
		return notFound("flow", flowID)
	case errors.Is(err, runs.ErrInvalidRequest):
		return &protocol.RPCError{Code: protocol.CodeInvalidParams, Message: msgInvalidParams + ": " + err.Error()}
	default:
		return rpcError(protocol.CodeServerError, msg, err)
	}
}

// --- parameter readers -----------------------------------------------

func reqString(p *value.Object, key string) (string, error) {
	v, ok := p.Get(key)
	if !ok || v == nil {
		return "", invalidParams("missing field `%s`", key)
	}
	s, ok := v.(string)
	if !ok {
		return "", invalidParams("field `%s` must be a string, got %s", key, value.TypeName(v))
	}
	return s, nil
}

func optString(p *value.Object, key string) (string, bool, error) {
	v, ok := p.Get(key)
	if !ok || v == nil {
		return "", false, nil
	}
	s, ok := v.(string)
	if !ok {
		return "", false, invalidParams("field `%s` must be a string or null, got %s", key, value.TypeName(v))
	}
	return s, true, nil
}

func optBool(p *value.Object, key string) (bool, error) {
	v, ok := p.Get(key)
	if !ok || v == nil {
		return false, nil
	}
	b, ok := v.(bool)
	if !ok {
		return false, invalidParams("field `%s` must be a boolean, got %s", key, value.TypeName(v))
	}
	return b, nil
}

// optCount reads a non-negative integer; set is false for absent/null.
func optCount(p *value.Object, key string) (n int, set bool, err error) {
	v, ok := p.Get(key)
	if !ok || v == nil {
		return 0, false, nil
	}
	num, ok := v.(value.Number)
	if !ok {
		return 0, false, invalidParams("field `%s` must be an integer or null, got %s", key, value.TypeName(v))
	}
	i, err := num.Int64()
	if err != nil || i < 0 || i > 1<<31 {
		return 0, false, invalidParams("field `%s` must be a non-negative integer, got %s", key, num)
	}
	return int(i), true, nil
}

func reqArray(p *value.Object, key string) ([]value.Value, error) {
	v, ok := p.Get(key)
	if !ok {
		return nil, invalidParams("missing field `%s`", key)
	}
	a, ok := v.([]value.Value)
	if !ok {
		return nil, invalidParams("field `%s` must be an array, got %s", key, value.TypeName(v))
	}
	return a, nil
}

// overrides reads WorkflowOverrides: {"steps": {...}} (0.9) or the bare
// step-id map (0.8); null or absent is none.
func overrides(p *value.Object, key string) (value.Value, error) {
	v, ok := p.Get(key)
	if !ok || v == nil {
		return nil, nil
	}
	o, ok := v.(*value.Object)
	if !ok {
		return nil, invalidParams("field `%s` must be an object or null, got %s", key, value.TypeName(v))
	}
	if o.Len() == 1 {
		if k, sv := o.At(0); k == "steps" {
			if so, ok := sv.(*value.Object); ok && !so.Has("value") {
				return so, nil
			}
			if sv == nil {
				return nil, nil
			}
		}
	}
	return o, nil
}

// --- blobs -----------------------------------------------------------

func (c *Callbacks) blobsPut(ctx context.Context, p *value.Object) (value.Value, error) {
	data, kind, err := protocol.ParsePutBlobParams(p)
	if err != nil {
		return nil, err
	}
	if c.blobs == nil {
		return nil, rpcError(protocol.CodeServerError, msgPutBlob, errNoBlobs)
	}
	if kind == protocol.BlobTypeFlow {
		f, err := flow.FromValue(data)
		if err != nil {
			return nil, rpcError(protocol.CodeServerError, msgPutBlob, err)
		}
		data = f.Value()
	}
	id, err := c.blobs.Put(ctx, blob.Kind(kind), data)
	if err != nil {
		return nil, rpcError(protocol.CodeServerError, msgPutBlob, err)
	}
	return protocol.PutBlobResult(id), nil
}

func (c *Callbacks) blobsGet(ctx context.Context, p *value.Object) (value.Value, error) {
	id, err := protocol.ParseGetBlobParams(p)
	if err != nil {
		return nil, err
	}
	if c.blobs == nil {
		return nil, rpcError(protocol.CodeServerError, msgGetBlob, errNoBlobs)
	}
	b, err := c.blobs.Get(ctx, id)
	if err != nil {
		return nil, rpcError(protocol.CodeServerError, msgGetBlob, err)
	}
	return protocol.GetBlobResult(b.Data, string(b.Kind)), nil
}

// --- runs (SDK 0.9) ----------------------------------------------------

func (c *Callbacks) runsSubmit(ctx context.Context, parent string, p *value.Object) (value.Value, error) {
	if c.runs == nil {
		return nil, c.noRuns()
	}
	flowID, err := reqString(p, "flowId")
	if err != nil {
		return nil, err
	}
	inputs, err := reqArray(p, "inputs")
	if err != nil {
		return nil, err
	}
	wait, err := optBool(p, "wait")
	if err != nil {
		return nil, err
	}
	conc, set, err := optCount(p, "maxConcurrency")
	if err != nil {
		return nil, err
	}
	if !set || conc == 0 {
		conc = len(inputs) // upstream: null means the number of items
	}
	ov, err := overrides(p, "overrides")
	if err != nil {
		return nil, err
	}
	st, err := c.runs.Submit(ctx, runs.Request{
		FlowID: flowID, Inputs: inputs, Wait: wait, MaxConcurrency: conc,
		Overrides: ov, ParentRunID: parent,
	})
	if err != nil {
		return nil, runsError(err, msgSubmitRun, flowID)
	}
	if !wait {
		st.Results = nil
	} else if st.Results == nil {
		st.Results = []runs.ItemResult{}
	}
	return st.Value(), nil
}

func (c *Callbacks) runsGet(ctx context.Context, p *value.Object) (value.Value, error) {
	if c.runs == nil {
		return nil, c.noRuns()
	}
	runID, err := reqString(p, "runId")
	if err != nil {
		return nil, err
	}
	if _, err := uuid.Parse(runID); err != nil {
		return nil, invalidValue("run_id", "valid UUID")
	}
	var opts runs.GetOptions
	if opts.Wait, err = optBool(p, "wait"); err != nil {
		return nil, err
	}
	if opts.IncludeResults, err = optBool(p, "includeResults"); err != nil {
		return nil, err
	}
	order, _, err := optString(p, "resultOrder")
	if err != nil {
		return nil, err
	}
	switch order {
	case "", "by_index":
	case "by_completion":
		opts.ByCompletion = true
	default:
		return nil, invalidParams("field `resultOrder` must be \"by_index\" or \"by_completion\", got %q", order)
	}
	st, err := c.runs.Get(ctx, runID, opts)
	if errors.Is(err, runs.ErrRunNotFound) {
		return nil, notFound("run", runID)
	}
	if err != nil {
		return nil, rpcError(protocol.CodeServerError, msgGetRun, err)
	}
	if !opts.IncludeResults {
		st.Results = nil
	} else if st.Results == nil {
		st.Results = []runs.ItemResult{}
	}
	return st.Value(), nil
}
