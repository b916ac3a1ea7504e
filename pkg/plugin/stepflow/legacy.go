package stepflow

import (
	"context"
	"errors"

	"github.com/google/uuid"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/protocol"
	"github.com/stepflow-go/stepflow/pkg/runs"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// The legacy callbacks of stepflow-py <= 0.8 (component protocol §5.5),
// mapped onto runs: a batch is one run with one item per input, and its
// batch_id is the run id.

// flowsEvaluate runs a stored flow on one input and waits:
// {"result": FlowResult}.
func (c *Callbacks) flowsEvaluate(ctx context.Context, parent string, p *value.Object) (value.Value, error) {
	if c.runs == nil {
		return nil, c.noRuns()
	}
	flowID, err := reqString(p, "flow_id")
	if err != nil {
		return nil, err
	}
	input, ok := p.Get("input")
	if !ok {
		return nil, invalidParams("missing field `input`")
	}
	ov, err := overrides(p, "overrides")
	if err != nil {
		return nil, err
	}
	st, err := c.runs.Submit(ctx, runs.Request{
		FlowID: flowID, Inputs: []value.Value{input}, Wait: true, MaxConcurrency: 1,
		Overrides: ov, ParentRunID: parent,
	})
	if err != nil {
		if errors.Is(err, runs.ErrFlowNotFound) {
			return nil, notFound("flow", flowID)
		}
		return nil, rpcError(protocol.CodeServerError, msgEvaluateFlow, err)
	}
	if len(st.Results) != 1 || st.Results[0].Result == nil {
		return nil, rpcError(protocol.CodeServerError, msgEvaluateFlow, errors.New("the run has no result"))
	}
	return value.ObjectOf("result", st.Results[0].Result.JSON()), nil
}

// flowsGetMetadata answers {"flow_metadata": {...}[, "step_metadata": {...}]}.
func (c *Callbacks) flowsGetMetadata(ctx context.Context, p *value.Object) (value.Value, error) {
	flowID, err := reqString(p, "flow_id")
	if err != nil {
		return nil, err
	}
	stepID, hasStep, err := optString(p, "step_id")
	if err != nil {
		return nil, err
	}
	if c.blobs == nil {
		return nil, notFound("flow", flowID)
	}
	b, err := c.blobs.Get(ctx, flowID)
	if errors.Is(err, blob.ErrNotFound) {
		return nil, notFound("flow", flowID)
	}
	if err != nil {
		return nil, rpcError(protocol.CodeServerError, msgInvalidFlow, err)
	}
	f, err := flow.FromValue(b.Data)
	if err != nil {
		return nil, rpcError(protocol.CodeServerError, msgInvalidFlow, err)
	}
	meta := func(m *value.Object) *value.Object {
		if m == nil {
			return value.NewObject(0)
		}
		return m
	}
	res := value.ObjectOf("flow_metadata", meta(f.Metadata))
	if hasStep {
		i := f.StepIndex(stepID)
		if i < 0 {
			return nil, notFound("step", stepID)
		}
		res.Set("step_metadata", meta(f.Steps[i].Metadata))
	}
	return res, nil
}

// flowsSubmitBatch starts a run: {"batch_id": <run id>, "total_runs": n}.
func (c *Callbacks) flowsSubmitBatch(ctx context.Context, parent string, p *value.Object) (value.Value, error) {
	if c.runs == nil {
		return nil, c.noRuns()
	}
	flowID, err := reqString(p, "flow_id")
	if err != nil {
		return nil, err
	}
	inputs, err := reqArray(p, "inputs")
	if err != nil {
		return nil, err
	}
	conc, set, err := optCount(p, "max_concurrency")
	if err != nil {
		return nil, err
	}
	switch {
	case !set:
		conc = len(inputs)
	case conc == 0:
		return nil, invalidValue("max_concurrency", "positive integer")
	}
	ov, err := overrides(p, "overrides")
	if err != nil {
		return nil, err
	}
	st, err := c.runs.Submit(ctx, runs.Request{
		FlowID: flowID, Inputs: inputs, MaxConcurrency: conc, Overrides: ov, ParentRunID: parent,
	})
	if err != nil {
		return nil, runsError(err, msgSubmitRun, flowID)
	}
	return value.ObjectOf("batch_id", st.RunID, "total_runs", value.Int(int64(len(inputs)))), nil
}

// flowsGetBatch answers {"details": BatchDetails[, "outputs": [BatchOutputInfo]]}.
func (c *Callbacks) flowsGetBatch(ctx context.Context, p *value.Object) (value.Value, error) {
	if c.runs == nil {
		return nil, c.noRuns()
	}
	id, err := reqString(p, "batch_id")
	if err != nil {
		return nil, err
	}
	if _, err := uuid.Parse(id); err != nil {
		return nil, invalidValue("batch_id", "valid UUID")
	}
	var opts runs.GetOptions
	if opts.Wait, err = optBool(p, "wait"); err != nil {
		return nil, err
	}
	if opts.IncludeResults, err = optBool(p, "include_results"); err != nil {
		return nil, err
	}
	st, err := c.runs.Get(ctx, id, opts)
	if errors.Is(err, runs.ErrRunNotFound) {
		return nil, notFound("batch", id)
	}
	if err != nil {
		return nil, rpcError(protocol.CodeServerError, msgGetBatch, err)
	}
	res := value.ObjectOf("details", batchDetails(st))
	if opts.IncludeResults {
		outs := make([]value.Value, len(st.Results))
		for i, r := range st.Results {
			o := value.ObjectOf("batch_input_index", value.Int(int64(r.Index)), "status", r.Status)
			if r.Result != nil {
				o.Set("result", r.Result.JSON())
			}
			outs[i] = o
		}
		res.Set("outputs", outs)
	}
	return res, nil
}

// batchDetails is the 0.8 BatchDetails of a run. Its status is "running"
// until cancelled, as in 0.8: completion shows as completed_at.
func batchDetails(st runs.Status) *value.Object {
	status := "running"
	if st.Status == runs.StatusCancelled {
		status = "cancelled"
	}
	o := value.ObjectOf(
		"batch_id", st.RunID,
		"flow_id", st.FlowID,
	)
	if st.FlowName != "" {
		o.Set("flow_name", st.FlowName)
	}
	o.Set("total_runs", value.Int(int64(st.Items.Total)))
	o.Set("status", status)
	o.Set("created_at", runs.Timestamp(st.CreatedAt))
	o.Set("completed_runs", value.Int(int64(st.Items.Completed)))
	o.Set("running_runs", value.Int(int64(st.Items.Running)))
	o.Set("failed_runs", value.Int(int64(st.Items.Failed)))
	o.Set("cancelled_runs", value.Int(int64(st.Items.Cancelled)))
	o.Set("paused_runs", value.Int(0))
	if !st.CompletedAt.IsZero() {
		o.Set("completed_at", runs.Timestamp(st.CompletedAt))
	}
	return o
}
