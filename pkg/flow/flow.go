// Package flow is the Stepflow flow language: the Flow and Step types,
// decoding from YAML and JSON (through yaml.v3 nodes, so that every
// problem names file:line:col), the canonical form and content hash,
// static validation into diagnostics, runtime overrides and the schema
// helpers (variables, secrets, input and output validation).
package flow

import (
	"time"

	"github.com/stepflow-go/stepflow/pkg/expr"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// Flow is a parsed flow. Treat it as immutable once loaded: it is shared
// by every item of a run, and its id and compiled schemas are computed
// once and cached. To change a flow, use ApplyOverrides or decode a new
// one (FromValue of a modified Value); a struct copy shares the cache of
// the original and must not be modified.
type Flow struct {
	Name        string // "" when absent
	Description string
	Version     string
	Schemas     *Schemas // never nil after decoding
	Steps       []*Step
	Output      expr.Expr // nil means null (and no step runs but mustExecute ones)
	Test        *TestConfig
	Examples    []Example
	Metadata    *value.Object // nil when absent or empty

	// File is the file the flow was read from ("" when it came from a
	// value, such as a nested flow).
	File string
	// Source maps JSON paths inside the flow document (`$.steps[0].input`)
	// to their place in File; nil when unknown.
	Source value.SourceMap

	// cache holds lazily computed facts about the flow (id, compiled
	// schemas). Flows made by Load, Parse, FromValue and ApplyOverrides
	// have one; for a Flow built by hand it is nil and nothing is cached.
	cache *flowCache
}

// Step is one step of a flow.
type Step struct {
	ID          string
	Component   string
	Input       expr.Expr // nil means null
	OnError     ErrorAction
	MustExecute bool
	Metadata    *value.Object
}

// ErrorActionKind is what a step does when its component fails.
type ErrorActionKind string

// Error actions.
const (
	// OnErrorFail fails the step (the default).
	OnErrorFail ErrorActionKind = "fail"
	// OnErrorUseDefault turns the failure into a success with
	// DefaultValue (null when absent).
	OnErrorUseDefault ErrorActionKind = "useDefault"
	// OnErrorRetry calls the component again with backoff, up to
	// MaxAttempts calls in all, then fails (upstream parses this action
	// but never retries).
	OnErrorRetry ErrorActionKind = "retry"
)

// ErrorAction is a step's onError. The zero value is {action: fail}.
type ErrorAction struct {
	Action ErrorActionKind // "" means fail
	// DefaultValue is the literal result of a useDefault step (not an
	// expression). HasDefault tells an explicit null from an absent one.
	DefaultValue value.Value
	HasDefault   bool
	// Retry settings (action retry); zero values take the defaults below.
	Retry RetryPolicy
}

// RetryPolicy configures onError retry:
//
//	onError:
//	  action: retry
//	  maxAttempts: 3          # calls in all, including the first (default 3)
//	  initialDelayMs: 100     # delay before the second call (default 100)
//	  backoffCoefficient: 2.0 # growth of the delay per attempt (default 2)
//	  maxDelayMs: 10000       # cap on one delay (default 10000)
//
// Delays get ±10% jitter.
type RetryPolicy struct {
	MaxAttempts        int
	InitialDelay       time.Duration
	BackoffCoefficient float64
	MaxDelay           time.Duration
}

// Retry defaults.
const (
	DefaultRetryMaxAttempts  = 3
	DefaultRetryInitialDelay = 100 * time.Millisecond
	DefaultRetryCoefficient  = 2.0
	DefaultRetryMaxDelay     = 10 * time.Second
)

// WithDefaults returns the policy with zero fields set to the defaults.
func (p RetryPolicy) WithDefaults() RetryPolicy {
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = DefaultRetryMaxAttempts
	}
	if p.InitialDelay <= 0 {
		p.InitialDelay = DefaultRetryInitialDelay
	}
	if p.BackoffCoefficient < 1 {
		p.BackoffCoefficient = DefaultRetryCoefficient
	}
	if p.MaxDelay <= 0 {
		p.MaxDelay = DefaultRetryMaxDelay
	}
	return p
}

// Schemas is the flow's `schemas` section.
type Schemas struct {
	Defs      *value.Object          // $defs, nil when absent
	Input     value.Value            // JSON Schema of the item input, nil when absent
	Output    value.Value            // JSON Schema of the flow result
	Variables value.Value            // JSON Schema whose properties are the variables
	Steps     map[string]value.Value // output schema per step id
	StepOrder []string               // step ids of Steps in source order
}

// TestConfig is the flow's embedded `test` section.
type TestConfig struct {
	ConfigFile string        // relative to the flow's directory
	Config     *value.Object // inline stepflow config (alias stepflow_config)
	Cases      []TestCase
}

// TestCase is one embedded test case.
type TestCase struct {
	Name        string
	Description string
	Input       value.Value
	// Output is the expected FlowResult JSON; nil when absent.
	Output value.Value
}

// Example is an example input.
type Example struct {
	Name        string
	Description string
	Input       value.Value
}

// StepIndex returns the index of the step with id, or -1.
func (f *Flow) StepIndex(id string) int {
	for i, s := range f.Steps {
		if s.ID == id {
			return i
		}
	}
	return -1
}

// AllExamples returns the flow's examples followed by one example per
// test case whose name is not already an example name (upstream's
// get_all_examples, shown as allExamples by the server).
func (f *Flow) AllExamples() []Example {
	out := make([]Example, 0, len(f.Examples))
	names := make(map[string]bool, len(f.Examples))
	for _, e := range f.Examples {
		out = append(out, e)
		names[e.Name] = true
	}
	if f.Test != nil {
		for _, c := range f.Test.Cases {
			if !names[c.Name] {
				names[c.Name] = true
				out = append(out, Example{Name: c.Name, Description: c.Description, Input: c.Input})
			}
		}
	}
	return out
}
