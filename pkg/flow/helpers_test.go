package flow

import (
	"github.com/stepflow-go/stepflow/pkg/expr"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// testEnv is an expression environment with fixed input, step results
// and variables.
type testEnv struct {
	input value.Value
	steps map[string]outcome.Result
	vars  map[string]value.Value
}

func (e testEnv) Input() value.Value { return e.input }

func (e testEnv) Step(id string) (outcome.Result, expr.StepState) {
	r, ok := e.steps[id]
	if !ok {
		return outcome.Result{}, expr.StepUnknown
	}
	return r, expr.StepDone
}

func (e testEnv) Variable(name string) (value.Value, bool) {
	v, ok := e.vars[name]
	return v, ok
}
