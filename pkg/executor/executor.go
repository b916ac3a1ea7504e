package executor

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/expr"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// Config configures an Executor.
type Config struct {
	// Router resolves component paths. Required.
	Router Router
	// Logger receives step failures and retries at debug level. Default: no-op.
	Logger *zap.Logger
	// Sleep waits between retries; it must return early with ctx's error
	// when ctx ends. Default: a timer. Tests inject their own.
	Sleep func(ctx context.Context, d time.Duration) error
	// SubflowConcurrency bounds the items of a nested run (/builtin/map)
	// that run at once when the component does not say. Default 64.
	SubflowConcurrency int
}

// Executor executes flows against a Router. It is safe for concurrent use
// and holds no per-run state.
type Executor struct {
	router  Router
	log     *zap.Logger
	sleep   func(ctx context.Context, d time.Duration) error
	subConc int
}

// New returns an Executor.
func New(cfg Config) *Executor {
	e := &Executor{router: cfg.Router, log: cfg.Logger, sleep: cfg.Sleep, subConc: cfg.SubflowConcurrency}
	if e.log == nil {
		e.log = zap.NewNop()
	}
	if e.sleep == nil {
		e.sleep = sleepCtx
	}
	if e.subConc <= 0 {
		e.subConc = 64
	}
	return e
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// NewRunID returns a new run id (a UUIDv7, time-ordered).
func NewRunID() string {
	id, err := uuid.NewV7()
	if err != nil {
		return uuid.NewString()
	}
	return id.String()
}

// Run is what all items of one run share: the flow (with overrides
// applied), the variables and the compiled per-flow plan. Build it once
// with NewRun and call Execute for each item, from any goroutine.
type Run struct {
	ID        string
	Flow      *flow.Flow
	Variables map[string]value.Value

	exec      *Executor
	index     map[string]int // step id -> index
	inputSV   *flow.SchemaValidator
	outputSV  *flow.SchemaValidator
	mustSteps []int
}

// NewRun prepares a run of f. vars are the resolved variables (defaults
// already applied, see flow.Flow.Variables); nil means none.
func (e *Executor) NewRun(id string, f *flow.Flow, vars map[string]value.Value) (*Run, error) {
	r := e.plan(id, f)
	r.Variables = vars
	var err error
	if r.inputSV, err = f.InputValidator(); err != nil {
		return nil, fmt.Errorf("flow input schema: %w", err)
	}
	if r.outputSV, err = f.OutputValidator(); err != nil {
		return nil, fmt.Errorf("flow output schema: %w", err)
	}
	return r, nil
}

// newSubRun prepares a nested run of f inside parent: no variables, and
// no schema validation of its items (as upstream).
func (e *Executor) newSubRun(parent *Run, f *flow.Flow) *Run { return e.plan(parent.ID, f) }

// plan indexes the steps of f for a run.
func (e *Executor) plan(id string, f *flow.Flow) *Run {
	r := &Run{ID: id, Flow: f, exec: e, index: make(map[string]int, len(f.Steps))}
	for i, s := range f.Steps {
		r.index[s.ID] = i
		if s.MustExecute {
			r.mustSteps = append(r.mustSteps, i)
		}
	}
	return r
}

// step states of one item
const (
	stIdle    uint8 = iota // not needed (yet)
	stRunning              // launched
	stDone                 // result available
)

// item is the state of one item's execution. Only the item's own
// goroutine touches it; step goroutines get their resolved input and send
// their result back over done.
type item struct {
	run    *Run
	index  int
	input  value.Value
	state  []uint8
	result []outcome.Result
	// done receives the results of steps running on their own
	// goroutines; made on first use.
	done chan stepDone
}

type stepDone struct {
	step int
	res  outcome.Result
}

// Input implements expr.Env.
func (it *item) Input() value.Value { return it.input }

// Step implements expr.Env.
func (it *item) Step(id string) (outcome.Result, expr.StepState) {
	i, ok := it.run.index[id]
	if !ok {
		return outcome.Result{}, expr.StepUnknown
	}
	if it.state[i] != stDone {
		return outcome.Result{}, expr.StepPending
	}
	return it.result[i], expr.StepDone
}

// Variable implements expr.Env.
func (it *item) Variable(name string) (value.Value, bool) {
	v, ok := it.run.Variables[name]
	return v, ok
}

// Execute runs one item and returns its FlowResult. It never panics
// because of a component and never returns a Go error: every failure is a
// failed result. When ctx ends, steps in flight are abandoned and the item
// fails with the context's cause.
func (r *Run) Execute(ctx context.Context, index int, input value.Value) outcome.Result {
	res, _ := r.run(ctx, index, input)
	return res
}

// StepStatus is how far a step of an item got (upstream's StepStatus,
// less the states only a live view has).
type StepStatus uint8

// Step statuses.
const (
	// StepBlocked: the step never started. It was not needed (lazy
	// evaluation: upstream's "not executed, leaves no trace"), or it
	// still waited on other steps when the item ended.
	StepBlocked StepStatus = iota
	// StepRunning: the step was in flight when the item was cancelled.
	StepRunning
	// StepCompleted: the step has a successful result (onError:
	// useDefault turns a failure into one).
	StepCompleted
	// StepFailed: the step has a failed result (its component failed, or
	// its input could not be resolved).
	StepFailed
)

// String returns upstream's name: blocked, running, completed, failed.
func (s StepStatus) String() string {
	switch s {
	case StepRunning:
		return "running"
	case StepCompleted:
		return "completed"
	case StepFailed:
		return "failed"
	}
	return "blocked"
}

// StepOutcome is one step's state at the end of an item.
type StepOutcome struct {
	Status StepStatus
	// Result is the step's FlowResult when Status is StepCompleted or
	// StepFailed.
	Result outcome.Result
}

// ExecuteSteps is Execute that also returns each step's outcome, in the
// flow's step order (nil when the input failed validation and no step
// was considered). It costs one slice per item over Execute; callers
// use it when someone will look at the steps (a single-item run's
// GET /runs/{id}/steps).
func (r *Run) ExecuteSteps(ctx context.Context, index int, input value.Value) (outcome.Result, []StepOutcome) {
	res, it := r.run(ctx, index, input)
	if it == nil {
		return res, nil
	}
	out := make([]StepOutcome, len(it.state))
	for i, st := range it.state {
		switch st {
		case stRunning:
			out[i].Status = StepRunning
		case stDone:
			out[i].Result = it.result[i]
			out[i].Status = StepCompleted
			if it.result[i].Failed() {
				out[i].Status = StepFailed
			}
		}
	}
	return res, out
}

// run executes one item and returns its result and its final state (nil
// when the input failed validation). Only this goroutine wrote the
// state, so it may be read once run returns.
func (r *Run) run(ctx context.Context, index int, input value.Value) (outcome.Result, *item) {
	if r.inputSV != nil {
		if err := r.inputSV.Validate(input); err != nil {
			return outcome.Failure(&outcome.Error{Code: outcome.CodeInvalidInput, Message: err.Error()}), nil
		}
	}
	it := &item{
		run:    r,
		index:  index,
		input:  input,
		state:  make([]uint8, len(r.Flow.Steps)),
		result: make([]outcome.Result, len(r.Flow.Steps)),
	}
	res := it.execute(ctx)
	if !res.Failed() && r.outputSV != nil {
		if err := r.outputSV.Validate(res.Value); err != nil {
			return outcome.Failure(&outcome.Error{Code: outcome.CodeComponent, Message: err.Error()}), it
		}
	}
	return res, it
}

// ErrDeadlock is the cause of an item whose needed steps can never run
// (a dependency cycle in a flow that skipped validation).
var ErrDeadlock = errors.New("workflow deadlock: needed steps wait on each other")

func (it *item) execute(ctx context.Context) outcome.Result {
	flowSteps := it.run.Flow.Steps
	running := 0
	var ready []int
	var stack []int
	needed := make([]bool, len(flowSteps))
	for {
		// Collect the steps needed now: the output's needs, every
		// mustExecute step, and transitively the needs of their inputs.
		clear(needed)
		stack = stack[:0]
		mark := func(id string) {
			if i, ok := it.run.index[id]; ok && !needed[i] {
				needed[i] = true
				stack = append(stack, i)
			}
		}
		expr.Needs(it.run.Flow.Output, it, mark)
		for _, i := range it.run.mustSteps {
			if it.state[i] != stDone && !needed[i] {
				needed[i] = true
				stack = append(stack, i)
			}
		}
		ready = ready[:0]
		for len(stack) > 0 {
			i := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if it.state[i] != stIdle {
				continue
			}
			waiting := false
			expr.Needs(flowSteps[i].Input, it, func(id string) {
				waiting = true
				mark(id)
			})
			if !waiting {
				ready = append(ready, i)
			}
		}
		if len(ready) == 0 && running == 0 {
			break
		}
		// Launch in step order; keep one ready step for this goroutine
		// when nothing else is running.
		slices.Sort(ready)
		inline := -1
		if running == 0 && len(ready) > 0 {
			inline = ready[len(ready)-1]
			ready = ready[:len(ready)-1]
		}
		for _, i := range ready {
			in := expr.Eval(flowSteps[i].Input, it)
			it.state[i] = stRunning
			running++
			if it.done == nil {
				it.done = make(chan stepDone, len(flowSteps))
			}
			go func(i int, in outcome.Result) {
				it.done <- stepDone{i, it.runStep(ctx, i, in)}
			}(i, in)
		}
		if inline >= 0 {
			in := expr.Eval(flowSteps[inline].Input, it)
			it.state[inline] = stRunning
			it.result[inline] = it.runStep(ctx, inline, in)
			it.state[inline] = stDone
			continue
		}
		select {
		case d := <-it.done:
			running--
			it.result[d.step] = d.res
			it.state[d.step] = stDone
		case <-ctx.Done():
			return outcome.Failure(outcome.Errorf(outcome.CodeComponent, "item cancelled: %v", context.Cause(ctx)))
		}
	}
	// Nothing is ready and nothing runs. If the output still waits on a
	// step, the needed steps wait on each other.
	stuck := false
	expr.Needs(it.run.Flow.Output, it, func(string) { stuck = true })
	if stuck {
		return outcome.Failure(&outcome.Error{Code: outcome.CodeComponent, Message: ErrDeadlock.Error()})
	}
	return expr.Eval(it.run.Flow.Output, it)
}

// runStep resolves, routes and invokes one step, applying onError. in is
// the already evaluated step input.
func (it *item) runStep(ctx context.Context, i int, in outcome.Result) outcome.Result {
	step := it.run.Flow.Steps[i]
	if in.Failed() {
		// The input could not be resolved (a failed dependency or a
		// missing path): the component is not called, onError does not
		// apply.
		return in
	}
	comp, err := it.run.exec.router.Route(step.Component, in.Value)
	if err != nil {
		return outcome.Failure(&outcome.Error{
			Code:    outcome.CodeComponent,
			Message: "error routing component",
			Data: value.ObjectOf("stack", []value.Value{
				value.ObjectOf("error", err.Error(), "attachments", []value.Value{
					fmt.Sprintf("step %q, component %s", step.ID, step.Component),
				}),
			}),
		})
	}
	policy := step.OnError.Retry.WithDefaults()
	attempts := 1
	if step.OnError.Action == flow.OnErrorRetry {
		attempts = policy.MaxAttempts
	}
	var res outcome.Result
	delay := policy.InitialDelay
	for attempt := 1; ; attempt++ {
		res = it.invoke(ctx, step, comp, in.Value, attempt)
		if !res.Failed() || attempt >= attempts || ctx.Err() != nil {
			break
		}
		d := jitter(delay)
		it.run.exec.log.Debug("retrying step",
			zap.String("run", it.run.ID), zap.Int("item", it.index), zap.String("step", step.ID),
			zap.Int("attempt", attempt), zap.Duration("delay", d), zap.String("error", res.Err.Message))
		if err := it.run.exec.sleep(ctx, d); err != nil {
			break
		}
		delay = min(time.Duration(float64(delay)*policy.BackoffCoefficient), policy.MaxDelay)
	}
	if res.Failed() && step.OnError.Action == flow.OnErrorUseDefault {
		return outcome.Success(step.OnError.DefaultValue)
	}
	return res
}

// jitter spreads d by ±10% so that retries of many items do not align.
func jitter(d time.Duration) time.Duration {
	f := 0.9 + 0.2*rand.Float64()
	return time.Duration(float64(d) * f)
}

// invoke calls the component once, turning errors and panics into the
// step failure `500 step "<id>" failed`.
func (it *item) invoke(ctx context.Context, step *flow.Step, comp Component, input value.Value, attempt int) (res outcome.Result) {
	req := &Request{
		RunID:     it.run.ID,
		ItemIndex: it.index,
		StepID:    step.ID,
		Path:      step.Component,
		Input:     input,
		Attempt:   attempt,
		Subflows:  subflows{it},
	}
	defer func() {
		if p := recover(); p != nil {
			res = outcome.Failure(stepError(step, comp, fmt.Errorf("component panicked: %v\n%s", p, debug.Stack())))
		}
	}()
	out, err := comp.Execute(ctx, req)
	if err != nil {
		e := stepError(step, comp, err)
		if errors.Is(err, ErrUnavailable) {
			e.Cause = err
		}
		return outcome.Failure(e)
	}
	return out
}

// StepError builds the FlowError of a component that failed with err:
// code 500, message `step "<id>" failed`, and data.stack in upstream's
// two-entry shape, so that expectations written against upstream match:
//
//	[{"error": "step \"<id>\" failed",
//	  "attachments": ["Component: <name>", "Component execution failed for step '<id>'", "<err>"]},
//	 {"error": "error executing user-defined function"}]
func StepError(stepID, component string, err error) *outcome.Error {
	stack := []value.Value{
		value.ObjectOf(
			"attachments", []value.Value{
				"Component: " + component,
				fmt.Sprintf("Component execution failed for step '%s'", stepID),
				err.Error(),
			},
			"error", fmt.Sprintf("step %q failed", stepID),
		),
		value.ObjectOf("error", "error executing user-defined function"),
	}
	return &outcome.Error{
		Code:    outcome.CodeComponent,
		Message: fmt.Sprintf("step %q failed", stepID),
		Data:    value.ObjectOf("stack", stack),
	}
}

// NamedComponent is implemented by components that know their
// plugin-local name (/eval for the flow path /builtin/eval); error stacks
// name the component by it, as upstream does.
type NamedComponent interface {
	ComponentName() string
}

func stepError(step *flow.Step, comp Component, err error) *outcome.Error {
	name := step.Component
	if n, ok := comp.(NamedComponent); ok {
		name = n.ComponentName()
	}
	return StepError(step.ID, name, err)
}
