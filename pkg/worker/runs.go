package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/plugin/pluginapi"
	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/runs"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// ErrNoCoordinator is wrapped by nested-run errors when no coordinator
// answers the run API (queue.SubjectRunsSubmit / SubjectRunsGet).
var ErrNoCoordinator = errors.New("worker: no coordinator answers the run API")

// Error codes of the run API's error replies (the JSON-RPC codes of the
// component protocol, see queue/api.go).
const (
	apiCodeNotFound      = -32011
	apiCodeInvalidParams = -32602
)

// noResponderRetry is the pause between wait-polls while no coordinator
// answers (one restarting, say): the child run keeps running meanwhile.
const noResponderRetry = time.Second

// natsRuns is the worker's pluginapi.Runs: components' runs/submit and
// runs/get become requests to the coordinator, which owns run creation.
// While a call waits for a child run to finish it lends its item's slot
// (slots.Lend), so that the child's items can run on this worker even
// when every slot is taken by items waiting on children.
type natsRuns struct {
	nc      *nats.Conn
	blobs   *queue.ObjectBlobStore // nil: no blobs to journal
	slots   *slots
	timeout time.Duration
	log     *zap.Logger
}

var _ pluginapi.Runs = (*natsRuns)(nil)

// Submit creates a run through the coordinator. The parent is
// req.ParentRunID, or else the run of the item whose context ctx is. With
// req.Wait it then polls runs/get with "wait": true until the run has
// finished: the submit itself never waits, so that a request timeout
// cannot lose the new run's id.
func (r *natsRuns) Submit(ctx context.Context, req runs.Request) (runs.Status, error) {
	if req.ParentRunID == "" {
		req.ParentRunID = itemRunID(ctx)
	}
	if req.Wait {
		defer r.slots.Lend()()
	}
	body := value.Marshal(submitRequest(req))
	if err := r.journalBlobs(ctx, body); err != nil {
		return runs.Status{}, fmt.Errorf("submit run of flow %s: %w", req.FlowID, err)
	}
	st, err := r.call(ctx, queue.SubjectRunsSubmit, body, r.timeout, runs.ErrFlowNotFound)
	if err != nil {
		return runs.Status{}, fmt.Errorf("submit run of flow %s: %w", req.FlowID, err)
	}
	r.log.Debug("child run submitted", zap.String("run", st.RunID), zap.String("parent", req.ParentRunID),
		zap.Int("items", len(req.Inputs)), zap.Bool("wait", req.Wait))
	if !req.Wait {
		return st, nil
	}
	return r.wait(ctx, st.RunID, runs.GetOptions{IncludeResults: true})
}

// journalBlobs has the coordinator journal the blobs put here recently
// that a nested run's request refers to, before the run exists: its items
// may run anywhere, after a power loss too.
func (r *natsRuns) journalBlobs(ctx context.Context, body []byte) error {
	if r.blobs == nil {
		return nil
	}
	blobs, err := r.blobs.UnjournaledBlobs(ctx, body)
	if err != nil || len(blobs) == 0 {
		return err
	}
	jctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	if err := queue.JournalBlobs(jctx, r.nc, blobs); err != nil {
		return err
	}
	r.blobs.BlobsJournaled(blobs)
	return nil
}

// Get reads a run's status through the coordinator; with opts.Wait it
// polls until the run has finished, lending the caller's slot meanwhile.
func (r *natsRuns) Get(ctx context.Context, runID string, opts runs.GetOptions) (runs.Status, error) {
	if !opts.Wait {
		return r.get(ctx, runID, opts, false)
	}
	defer r.slots.Lend()()
	return r.wait(ctx, runID, opts)
}

// wait polls runs/get with "wait": true until the run is final. A poll
// that times out (the coordinator holds wait requests until the run ends
// or the requester gives up) is simply repeated.
func (r *natsRuns) wait(ctx context.Context, runID string, opts runs.GetOptions) (runs.Status, error) {
	for {
		st, err := r.get(ctx, runID, opts, true)
		switch {
		case err == nil && finalStatus(st.Status):
			return st, nil
		case err == nil, errors.Is(err, errRequestTimeout):
			// Not finished yet: poll again.
		case errors.Is(err, ErrNoCoordinator):
			r.log.Debug("no coordinator answers while waiting for a run; retrying", zap.String("run", runID))
			t := time.NewTimer(noResponderRetry)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return runs.Status{}, fmt.Errorf("wait for run %s: %w", runID, context.Cause(ctx))
			}
		default:
			return runs.Status{}, err
		}
		if ctx.Err() != nil {
			return runs.Status{}, fmt.Errorf("wait for run %s: %w", runID, context.Cause(ctx))
		}
	}
}

func (r *natsRuns) get(ctx context.Context, runID string, opts runs.GetOptions, wait bool) (runs.Status, error) {
	order := "by_index"
	if opts.ByCompletion {
		order = "by_completion"
	}
	body := value.Marshal(value.ObjectOf(
		"runId", runID,
		"wait", wait,
		"includeResults", opts.IncludeResults,
		"resultOrder", order,
	))
	st, err := r.call(ctx, queue.SubjectRunsGet, body, r.timeout, runs.ErrRunNotFound)
	if err != nil {
		return runs.Status{}, fmt.Errorf("get run %s: %w", runID, err)
	}
	return st, nil
}

// errRequestTimeout is a request the coordinator did not answer in time.
var errRequestTimeout = errors.New("coordinator did not answer in time")

// call sends one API request and decodes the reply. notFound is the
// sentinel an error reply with code -32011 maps to.
func (r *natsRuns) call(ctx context.Context, subject string, body []byte, timeout time.Duration, notFound error) (runs.Status, error) {
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	msg, err := r.nc.RequestWithContext(rctx, subject, body)
	switch {
	case err == nil:
	case errors.Is(err, nats.ErrNoResponders):
		return runs.Status{}, fmt.Errorf("%w (%s)", ErrNoCoordinator, subject)
	case ctx.Err() != nil:
		return runs.Status{}, context.Cause(ctx)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return runs.Status{}, fmt.Errorf("%w (%s after %s)", errRequestTimeout, subject, timeout)
	default:
		return runs.Status{}, fmt.Errorf("request %s: %w", subject, err)
	}
	v, err := value.Parse(msg.Data)
	if err != nil {
		return runs.Status{}, fmt.Errorf("reply to %s is not JSON: %w", subject, err)
	}
	if o, ok := v.(*value.Object); ok {
		if ev, ok := o.Get("error"); ok && ev != nil {
			return runs.Status{}, apiError(ev, notFound)
		}
	}
	st, err := parseStatus(v)
	if err != nil {
		return runs.Status{}, fmt.Errorf("reply to %s: %w", subject, err)
	}
	return st, nil
}

// apiError maps an error reply {"code","message"} onto the runs
// sentinels, so that callbacks report "not found" and "invalid
// parameters" to components as the local run machinery does.
func apiError(ev value.Value, notFound error) error {
	eo, _ := ev.(*value.Object)
	var code int64
	msg := "unknown error"
	if eo != nil {
		if c, ok := eo.Get("code"); ok {
			if n, ok := c.(value.Number); ok {
				code, _ = n.Int64()
			}
		}
		if m, ok := eo.Get("message"); ok {
			if s, ok := m.(string); ok {
				msg = s
			}
		}
	}
	switch code {
	case apiCodeNotFound:
		return fmt.Errorf("%w: %s", notFound, msg)
	case apiCodeInvalidParams:
		return fmt.Errorf("%w: %s", runs.ErrInvalidRequest, msg)
	}
	return fmt.Errorf("coordinator: %s (code %d)", msg, code)
}

// submitRequest is the JSON of a runs/submit request (queue/api.go). It
// never asks the coordinator to wait: see Submit.
func submitRequest(req runs.Request) *value.Object {
	inputs := req.Inputs
	if inputs == nil {
		inputs = []value.Value{}
	}
	o := value.ObjectOf("flowId", req.FlowID, "inputs", inputs, "wait", false)
	if req.MaxConcurrency > 0 {
		o.Set("maxConcurrency", value.Int(int64(req.MaxConcurrency)))
	} else {
		o.Set("maxConcurrency", nil)
	}
	o.Set("overrides", req.Overrides)
	if req.Variables != nil {
		names := make([]string, 0, len(req.Variables))
		for k := range req.Variables {
			names = append(names, k)
		}
		slices.Sort(names)
		vars := value.NewObject(len(names))
		for _, k := range names {
			vars.Set(k, req.Variables[k])
		}
		o.Set("variables", vars)
	} else {
		o.Set("variables", nil)
	}
	o.Set("parentRunId", req.ParentRunID)
	return o
}

// finalStatus reports whether a run status is final.
func finalStatus(s string) bool {
	return s == runs.StatusCompleted || s == runs.StatusFailed || s == runs.StatusCancelled
}

// parseStatus reads a RunStatusProtocol (runs.Status.Value()).
func parseStatus(v value.Value) (runs.Status, error) {
	o, ok := v.(*value.Object)
	if !ok {
		return runs.Status{}, fmt.Errorf("run status: expected an object, got %s", value.TypeName(v))
	}
	var st runs.Status
	var err error
	for _, f := range []struct {
		key      string
		dst      *string
		required bool
	}{
		{"runId", &st.RunID, true}, {"status", &st.Status, true}, {"flowId", &st.FlowID, false},
		{"flowName", &st.FlowName, false}, {"parentRunId", &st.ParentRunID, false},
	} {
		if *f.dst, err = optString(o, f.key, f.required); err != nil {
			return runs.Status{}, fmt.Errorf("run status: %w", err)
		}
	}
	if st.CreatedAt, err = optTime(o, "createdAt"); err != nil {
		return runs.Status{}, err
	}
	if st.CompletedAt, err = optTime(o, "completedAt"); err != nil {
		return runs.Status{}, err
	}
	if iv, ok := o.Get("items"); ok && iv != nil {
		io, ok := iv.(*value.Object)
		if !ok {
			return runs.Status{}, errors.New("run status: field \"items\" must be an object")
		}
		for key, dst := range map[string]*int{
			"total": &st.Items.Total, "completed": &st.Items.Completed, "running": &st.Items.Running,
			"failed": &st.Items.Failed, "cancelled": &st.Items.Cancelled,
		} {
			if *dst, err = optInt(io, key); err != nil {
				return runs.Status{}, fmt.Errorf("run status: items: %w", err)
			}
		}
	}
	if rv, ok := o.Get("results"); ok && rv != nil {
		arr, ok := rv.([]value.Value)
		if !ok {
			return runs.Status{}, errors.New("run status: field \"results\" must be an array")
		}
		st.Results = make([]runs.ItemResult, 0, len(arr))
		for i, e := range arr {
			r, err := parseItemResult(e)
			if err != nil {
				return runs.Status{}, fmt.Errorf("run status: results[%d]: %w", i, err)
			}
			st.Results = append(st.Results, r)
		}
	}
	return st, nil
}

func parseItemResult(v value.Value) (runs.ItemResult, error) {
	o, ok := v.(*value.Object)
	if !ok {
		return runs.ItemResult{}, fmt.Errorf("expected an object, got %s", value.TypeName(v))
	}
	var r runs.ItemResult
	var err error
	if r.Index, err = optInt(o, "itemIndex"); err != nil {
		return runs.ItemResult{}, err
	}
	if s, ok := o.Get("status"); ok {
		r.Status, _ = s.(string)
	}
	if res, ok := o.Get("result"); ok && res != nil {
		fr, err := outcome.Parse(res)
		if err != nil {
			return runs.ItemResult{}, fmt.Errorf("result: %w", err)
		}
		r.Result = &fr
	}
	if r.CompletedAt, err = optTime(o, "completedAt"); err != nil {
		return runs.ItemResult{}, err
	}
	return r, nil
}

func optInt(o *value.Object, key string) (int, error) {
	x, ok := o.Get(key)
	if !ok || x == nil {
		return 0, nil
	}
	n, ok := x.(value.Number)
	if !ok {
		return 0, fmt.Errorf("field %q must be a number, got %s", key, value.TypeName(x))
	}
	i, err := n.Int64()
	if err != nil {
		return 0, fmt.Errorf("field %q must be an integer: %w", key, err)
	}
	return int(i), nil
}

func optTime(o *value.Object, key string) (time.Time, error) {
	x, ok := o.Get(key)
	if !ok || x == nil {
		return time.Time{}, nil
	}
	s, ok := x.(string)
	if !ok {
		return time.Time{}, fmt.Errorf("field %q must be a timestamp string, got %s", key, value.TypeName(x))
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("field %q: %w", key, err)
	}
	return t, nil
}

func optString(o *value.Object, key string, required bool) (string, error) {
	x, ok := o.Get(key)
	if !ok || x == nil {
		if required {
			return "", fmt.Errorf("missing field %q", key)
		}
		return "", nil
	}
	s, ok := x.(string)
	if !ok {
		return "", fmt.Errorf("field %q must be a string, got %s", key, value.TypeName(x))
	}
	return s, nil
}

// runIDKey is the context key of the run of the item a context belongs
// to, so that nested runs submitted without a parent get the calling
// item's run.
type runIDKey struct{}

func withItemRunID(ctx context.Context, runID string) context.Context {
	return context.WithValue(ctx, runIDKey{}, runID)
}

func itemRunID(ctx context.Context) string {
	id, _ := ctx.Value(runIDKey{}).(string)
	return id
}
