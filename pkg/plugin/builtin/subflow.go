package builtin

import (
	"context"
	"errors"
	"fmt"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// errNoSubflows is the cause when a request carries no Subflows.
var errNoSubflows = errors.New("nested flows are not available to this call")

// DefaultMaxIterations is /iterate's default `max_iterations`.
const DefaultMaxIterations = 1000

// runOne runs f once on input as a one-item sub-run.
func runOne(ctx context.Context, req *executor.Request, f *flow.Flow, input value.Value) (outcome.Result, error) {
	if req.Subflows == nil {
		return outcome.Result{}, internal(errNoSubflows, "running nested flow")
	}
	res, err := req.Subflows.RunSubflow(ctx, f, []value.Value{input}, 1)
	if err != nil {
		return outcome.Result{}, internal(err, "running nested flow")
	}
	if len(res) != 1 {
		return outcome.Result{}, internal(nil, "nested flow returned %d results for 1 input", len(res))
	}
	return res[0], nil
}

// flowField decodes a field holding a flow object; a flow that does not
// parse is invalid input.
func flowField(in input, key string) (*flow.Flow, error) {
	v, err := in.reqAny(key)
	if err != nil {
		return nil, err
	}
	f, err := flow.FromValue(v)
	if err != nil {
		return nil, &Error{Kind: ErrInvalidInput, Detail: fmt.Sprintf("`%s` is not a valid flow", key), Err: err}
	}
	return f, nil
}

// eval implements /eval: {flow_id, input} -> {result: <FlowResult>,
// run_id: <the calling run's id>}. A failed nested flow does not fail the
// step.
func (p *Plugin) eval(ctx context.Context, req *executor.Request) (outcome.Result, error) {
	in, err := decodeInput(req.Input)
	if err != nil {
		return outcome.Result{}, err
	}
	id, err := in.reqString("flow_id")
	if err != nil {
		return outcome.Result{}, err
	}
	input, err := in.reqAny("input")
	if err != nil {
		return outcome.Result{}, err
	}
	if !blob.ValidID(id) {
		return outcome.Result{}, invalidInput("invalid flow id %q (expected 64 lowercase hex digits)", id)
	}
	b, err := p.host.Blobs.Get(ctx, id)
	if err == nil && b.Kind != blob.KindFlow {
		// A cached blob's kind may be stale: it may have been stored as a
		// flow elsewhere since it was cached as data.
		b, err = p.host.Blobs.Get(blob.WithoutCache(ctx), id)
	}
	if err != nil {
		return outcome.Result{}, internal(err, "loading flow %s", id)
	}
	if b.Kind != blob.KindFlow {
		return outcome.Result{}, internal(nil, "blob %s is not a flow (store it with blob_type: flow)", id)
	}
	f, err := flow.FromValue(b.Data)
	if err != nil {
		return outcome.Result{}, internal(err, "stored flow %s does not parse", id)
	}
	res, err := runOne(ctx, req, f, input)
	if err != nil {
		return outcome.Result{}, err
	}
	return success(value.ObjectOf("result", res.JSON(), "run_id", req.RunID))
}

// mapFlow implements /map: {workflow, items, max_concurrency?} ->
// {results, successful, failed}, one sub-run with one item per element.
// Item failures never fail the step.
func (p *Plugin) mapFlow(ctx context.Context, req *executor.Request) (outcome.Result, error) {
	in, err := decodeInput(req.Input)
	if err != nil {
		return outcome.Result{}, err
	}
	f, err := flowField(in, "workflow")
	if err != nil {
		return outcome.Result{}, err
	}
	iv, err := in.reqAny("items")
	if err != nil {
		return outcome.Result{}, err
	}
	items, ok := iv.([]value.Value)
	if !ok {
		return outcome.Result{}, invalidInput("`items`: expected an array, got %s", describe(iv))
	}
	maxConc, _, err := in.optUint("max_concurrency", 1<<31-1, true)
	if err != nil {
		return outcome.Result{}, err
	}
	var results []outcome.Result
	if len(items) > 0 {
		if req.Subflows == nil {
			return outcome.Result{}, internal(errNoSubflows, "running nested flow")
		}
		results, err = req.Subflows.RunSubflow(ctx, f, items, int(maxConc))
		if err != nil {
			return outcome.Result{}, internal(err, "running nested flow")
		}
		if len(results) != len(items) {
			return outcome.Result{}, internal(nil, "nested flow returned %d results for %d items", len(results), len(items))
		}
	}
	out := make([]value.Value, len(results))
	failed := 0
	for i, r := range results {
		out[i] = r.JSON()
		if r.Failed() {
			failed++
		}
	}
	return success(value.ObjectOf(
		"results", out,
		"successful", value.Int(int64(len(results)-failed)),
		"failed", value.Int(int64(failed)),
	))
}

// iterate implements /iterate: run `flow` on the current value until it
// returns {result} (or max_iterations is reached), feeding {next} back.
// A failed iteration fails the step with that error; a result with
// neither key is a failed result with code 400.
func (p *Plugin) iterate(ctx context.Context, req *executor.Request) (outcome.Result, error) {
	in, err := decodeInput(req.Input)
	if err != nil {
		return outcome.Result{}, err
	}
	f, err := flowField(in, "flow")
	if err != nil {
		return outcome.Result{}, err
	}
	current, err := in.reqAny("initial_input")
	if err != nil {
		return outcome.Result{}, err
	}
	maxIter, ok, err := in.optUint("max_iterations", 1<<32-1, false)
	if err != nil {
		return outcome.Result{}, err
	}
	if !ok {
		maxIter = DefaultMaxIterations
	}
	for i := uint64(0); ; {
		if i >= maxIter {
			return success(value.ObjectOf("result", current, "iterations", value.Int(int64(i)), "terminated", true))
		}
		res, err := runOne(ctx, req, f, current)
		if err != nil {
			return outcome.Result{}, err
		}
		i++
		if res.Failed() {
			return res, nil
		}
		if o, ok := res.Value.(*value.Object); ok {
			if r, ok := o.Get("result"); ok {
				return success(value.ObjectOf("result", r, "iterations", value.Int(int64(i)), "terminated", false))
			}
			if next, ok := o.Get("next"); ok {
				current = next
				continue
			}
		}
		return outcome.Failure(&outcome.Error{
			Code:    outcome.CodeInvalidInput,
			Message: "Workflow result must contain either 'result' or 'next' field",
		}), nil
	}
}
