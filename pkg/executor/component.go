package executor

import (
	"context"
	"errors"

	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// ErrUnavailable is matched by component errors that mean the component
// gave no answer because its server failed under the call (the process
// exited, the connection or stream broke, a restart failed), as opposed
// to the component itself failing or timing out. The step fails as any
// other (onError applies, so a retry reaches the restarted server), and
// the failure keeps the error as its outcome.Error.Cause: a caller that
// can run the item again elsewhere (a distributed worker) then hands the
// item back rather than record a failure the item may not have caused
// (another item can crash the server that several items share).
var ErrUnavailable = errors.New("component unavailable")

// Component executes one step. Implementations live in package plugin
// (builtins, component servers, mock).
//
// Execute returns either a result, which may be a failed FlowResult that
// the component chose to return (its code and message are kept as they
// are), or an error, which the executor turns into the step failure
// `500 step "<id>" failed` with the error chain in data.stack (and the
// error as Cause when it matches ErrUnavailable). The step's onError
// applies to both.
type Component interface {
	Execute(ctx context.Context, req *Request) (outcome.Result, error)
}

// Router resolves a step's component path (such as /builtin/eval or
// /python/my_fn) and its resolved input to the component that runs it.
type Router interface {
	Route(path string, input value.Value) (Component, error)
}

// Request is one component call.
type Request struct {
	// RunID is the id of the run the item belongs to.
	RunID string
	// ItemIndex is the item's index in its run.
	ItemIndex int
	// StepID is the id of the calling step.
	StepID string
	// Path is the component path as written in the flow (/builtin/eval).
	Path string
	// Input is the step's resolved input.
	Input value.Value
	// Attempt counts calls of this step for this item, from 1; it grows
	// with onError retries.
	Attempt int
	// Subflows runs nested flows for /builtin/eval, /map and /iterate as
	// part of the calling item, sharing its run's resources.
	Subflows Subflows
}

// Subflows runs a flow over inputs as a sub-run of the calling item and
// returns one result per input, in order. maxConcurrency bounds the items
// of the sub-run that run at once (0 = all).
type Subflows interface {
	RunSubflow(ctx context.Context, f *flow.Flow, inputs []value.Value, maxConcurrency int) ([]outcome.Result, error)
}
