// Package runs is the run machinery that component servers reach through
// runs/submit and runs/get (and the legacy flows/* callbacks): submit a
// stored flow over a list of inputs, wait for it, read its status and
// results.
//
// Local is the in-process implementation used by `stepflow run` and by
// each worker's embedded engine: it executes nested runs on their own
// goroutines with their own concurrency, never on the slot of the item
// that submitted them, so a pool whose every slot waits on a child run
// still completes.
package runs

import (
	"errors"
	"time"

	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// Run and item statuses (upstream ExecutionStatus).
const (
	StatusRunning   = "running"
	StatusCompleted = "completed"
	StatusFailed    = "failed"
	StatusCancelled = "cancelled"
)

// Errors callers branch on.
var (
	// ErrRunNotFound is returned for unknown run ids.
	ErrRunNotFound = errors.New("run not found")
	// ErrFlowNotFound is returned when the flow id names no stored flow.
	ErrFlowNotFound = errors.New("flow not found")
	// ErrInvalidRequest is returned for malformed requests.
	ErrInvalidRequest = errors.New("invalid run request")
)

// Request asks for a new run.
type Request struct {
	// FlowID is the blob id of a stored flow.
	FlowID string
	// Inputs has one element per item.
	Inputs []value.Value
	// Wait makes Submit return only when the run has finished.
	Wait bool
	// MaxConcurrency bounds the items in flight; 0 means the default.
	MaxConcurrency int
	// Overrides is the step-id map of overrides (flow.ParseOverrides);
	// nil for none.
	Overrides value.Value
	// Variables for the run; nil for none.
	Variables map[string]value.Value
	// ParentRunID links a run submitted by a component to the run of the
	// calling item; "" for a top-level run.
	ParentRunID string
}

// GetOptions select what Get returns.
type GetOptions struct {
	// Wait blocks until the run has finished.
	Wait bool
	// IncludeResults adds the item results.
	IncludeResults bool
	// ByCompletion orders results by completion time instead of index.
	ByCompletion bool
}

// ItemStatistics counts a run's items. Completed counts successes only.
type ItemStatistics struct {
	Total, Completed, Running, Failed, Cancelled int
}

// Value returns the JSON form.
func (s ItemStatistics) Value() value.Value {
	return value.ObjectOf(
		"total", value.Int(int64(s.Total)),
		"completed", value.Int(int64(s.Completed)),
		"running", value.Int(int64(s.Running)),
		"failed", value.Int(int64(s.Failed)),
		"cancelled", value.Int(int64(s.Cancelled)),
	)
}

// ItemResult is one item's state.
type ItemResult struct {
	Index       int
	Status      string
	Result      *outcome.Result // nil while running
	CompletedAt time.Time       // zero while running
}

// Value returns the JSON form `{itemIndex, status, result?, completedAt?}`.
func (r ItemResult) Value() value.Value {
	o := value.ObjectOf("itemIndex", value.Int(int64(r.Index)), "status", r.Status)
	if r.Result != nil {
		o.Set("result", r.Result.JSON())
	}
	if !r.CompletedAt.IsZero() {
		o.Set("completedAt", Timestamp(r.CompletedAt))
	}
	return o
}

// Status is a run's state: upstream's RunStatusProtocol.
type Status struct {
	RunID       string
	FlowID      string
	FlowName    string
	ParentRunID string
	Status      string
	Items       ItemStatistics
	CreatedAt   time.Time
	CompletedAt time.Time    // zero while running
	Results     []ItemResult // nil unless asked for
}

// Value returns the JSON form (RunStatusProtocol): runId, flowId,
// flowName?, status, items, createdAt, completedAt?, results?.
func (s Status) Value() value.Value {
	o := value.ObjectOf("runId", s.RunID, "flowId", s.FlowID)
	if s.FlowName != "" {
		o.Set("flowName", s.FlowName)
	}
	o.Set("status", s.Status)
	o.Set("items", s.Items.Value())
	o.Set("createdAt", Timestamp(s.CreatedAt))
	if !s.CompletedAt.IsZero() {
		o.Set("completedAt", Timestamp(s.CompletedAt))
	}
	if s.Results != nil {
		arr := make([]value.Value, len(s.Results))
		for i, r := range s.Results {
			arr[i] = r.Value()
		}
		o.Set("results", arr)
	}
	return o
}

// Timestamp formats t as RFC 3339 with nanoseconds, in UTC.
func Timestamp(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
