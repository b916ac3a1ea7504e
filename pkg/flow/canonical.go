package flow

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"sync"
	"time"

	"github.com/stepflow-go/stepflow/pkg/expr"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// flowCache holds what is computed once per flow.
type flowCache struct {
	idOnce sync.Once
	id     string

	inputOnce  sync.Once
	input      *SchemaValidator
	inputErr   error
	outputOnce sync.Once
	output     *SchemaValidator
	outputErr  error
	varsOnce   sync.Once
	vars       map[string]*SchemaValidator
	varsErr    error
}

// Value returns the canonical JSON form of the flow: the fields name,
// description, version, schemas, steps, output, test, examples and
// metadata in that order, absent or empty ones left out, expressions in
// canonical form. It is what the flow id hashes and what FromValue reads
// back to an identical flow. The `schema` key of the source and unknown
// keys are not part of it.
func (f *Flow) Value() value.Value {
	o := value.NewObject(9)
	if f.Name != "" {
		o.Set("name", f.Name)
	}
	if f.Description != "" {
		o.Set("description", f.Description)
	}
	if f.Version != "" {
		o.Set("version", f.Version)
	}
	if s := f.Schemas.Value(); s != nil {
		o.Set("schemas", s)
	}
	if len(f.Steps) > 0 {
		steps := make([]value.Value, len(f.Steps))
		for i, s := range f.Steps {
			steps[i] = s.Value()
		}
		o.Set("steps", steps)
	}
	if out := expr.Canonical(f.Output); out != nil {
		o.Set("output", out)
	}
	if f.Test != nil {
		o.Set("test", f.Test.Value())
	}
	if len(f.Examples) > 0 {
		arr := make([]value.Value, len(f.Examples))
		for i, e := range f.Examples {
			eo := value.NewObject(3)
			eo.Set("name", e.Name)
			if e.Description != "" {
				eo.Set("description", e.Description)
			}
			eo.Set("input", e.Input)
			arr[i] = eo
		}
		o.Set("examples", arr)
	}
	if f.Metadata.Len() > 0 {
		o.Set("metadata", f.Metadata)
	}
	return o
}

// ID returns the flow id: the lowercase hex SHA-256 of the compact JSON
// of Value(). It is computed once for decoded flows.
func (f *Flow) ID() string {
	if f.cache == nil {
		return hashValue(f.Value())
	}
	f.cache.idOnce.Do(func() { f.cache.id = hashValue(f.Value()) })
	return f.cache.id
}

// HashValue returns the content hash used for flow and blob ids: the
// lowercase hex SHA-256 of the compact JSON encoding of v.
func HashValue(v value.Value) string { return hashValue(v) }

func hashValue(v value.Value) string {
	sum := sha256.Sum256(value.Marshal(v))
	return hex.EncodeToString(sum[:])
}

// Value returns the canonical JSON form of the step (its form for
// overrides): id, component, onError (left out when it is the default
// fail), input (left out when null), mustExecute (left out when false),
// metadata (left out when empty).
func (s *Step) Value() value.Value {
	o := value.NewObject(6)
	o.Set("id", s.ID)
	o.Set("component", s.Component)
	if a := s.OnError.Value(); a != nil {
		o.Set("onError", a)
	}
	if in := expr.Canonical(s.Input); in != nil {
		o.Set("input", in)
	}
	if s.MustExecute {
		o.Set("mustExecute", true)
	}
	if s.Metadata.Len() > 0 {
		o.Set("metadata", s.Metadata)
	}
	return o
}

// Kind returns the action, with "" read as fail.
func (a ErrorAction) Kind() ErrorActionKind {
	if a.Action == "" {
		return OnErrorFail
	}
	return a.Action
}

// Value returns the JSON form of the error action, or nil for the default
// {action: fail}. A null defaultValue is left out (it means the same as an
// absent one).
func (a ErrorAction) Value() value.Value {
	switch a.Kind() {
	case OnErrorUseDefault:
		o := value.ObjectOf("action", string(OnErrorUseDefault))
		if a.DefaultValue != nil {
			o.Set("defaultValue", a.DefaultValue)
		}
		return o
	case OnErrorRetry:
		o := value.ObjectOf("action", string(OnErrorRetry))
		p := a.Retry
		if p.MaxAttempts > 0 {
			o.Set("maxAttempts", value.Int(int64(p.MaxAttempts)))
		}
		if p.InitialDelay > 0 {
			o.Set("initialDelayMs", value.Int(int64(p.InitialDelay/time.Millisecond)))
		}
		if p.BackoffCoefficient > 0 {
			o.Set("backoffCoefficient", value.Float(p.BackoffCoefficient))
		}
		if p.MaxDelay > 0 {
			o.Set("maxDelayMs", value.Int(int64(p.MaxDelay/time.Millisecond)))
		}
		return o
	default:
		return nil
	}
}

// IsEmpty reports whether the section declares nothing.
func (s *Schemas) IsEmpty() bool {
	return s == nil || (s.Defs.Len() == 0 && s.Input == nil && s.Output == nil &&
		s.Variables == nil && len(s.Steps) == 0)
}

// Value returns the wire form of the schemas section,
// `{"type":"object","$defs":{…},"properties":{"input":…,"output":…,
// "variables":…,"steps":{"type":"object","properties":{…}}}}`, or nil
// when it is empty.
func (s *Schemas) Value() value.Value {
	if s.IsEmpty() {
		return nil
	}
	o := value.ObjectOf("type", "object")
	if s.Defs.Len() > 0 {
		o.Set("$defs", s.Defs)
	}
	props := value.NewObject(4)
	if s.Input != nil {
		props.Set("input", s.Input)
	}
	if s.Output != nil {
		props.Set("output", s.Output)
	}
	if s.Variables != nil {
		props.Set("variables", s.Variables)
	}
	if len(s.Steps) > 0 {
		sp := value.NewObject(len(s.Steps))
		for _, id := range s.stepOrder() {
			sp.Set(id, s.Steps[id])
		}
		props.Set("steps", value.ObjectOf("type", "object", "properties", sp))
	}
	if props.Len() > 0 {
		o.Set("properties", props)
	}
	return o
}

// APIValue returns the schemas section as upstream's REST API types it
// (the OpenAPI FlowSchema that stepflow-py's generated client validates:
// `defs` and `steps` required, `steps` mapping each step id to its output
// schema, `input`, `output`, `variables` when declared) merged with the
// wire form of Value (`type`, `$defs`, `properties`), which that client
// ignores and which FromValue reads back. Nil when the section is empty.
func (s *Schemas) APIValue() value.Value {
	v := s.Value()
	o, ok := v.(*value.Object)
	if !ok {
		return v
	}
	defs := s.Defs
	if defs == nil {
		defs = value.NewObject(0)
	}
	o.Set("defs", defs)
	if s.Input != nil {
		o.Set("input", s.Input)
	}
	if s.Output != nil {
		o.Set("output", s.Output)
	}
	if s.Variables != nil {
		o.Set("variables", s.Variables)
	}
	steps := value.NewObject(len(s.Steps))
	for _, id := range s.stepOrder() {
		steps.Set(id, s.Steps[id])
	}
	o.Set("steps", steps)
	return o
}

// APIValue returns the flow as upstream's REST API answers it
// (FlowResponse.flow, RunFlowResponse.flow): Value with the schemas
// section in the shape of Schemas.APIValue.
func (f *Flow) APIValue() value.Value {
	v := f.Value()
	if o, ok := v.(*value.Object); ok && !f.Schemas.IsEmpty() {
		o.Set("schemas", f.Schemas.APIValue())
	}
	return v
}

// stepOrder returns the ids of Steps in order: those of StepOrder, then
// any id missing from it (a hand-built Schemas), sorted.
func (s *Schemas) stepOrder() []string {
	ids := make([]string, 0, len(s.Steps))
	seen := make(map[string]bool, len(s.Steps))
	for _, id := range s.StepOrder {
		if _, ok := s.Steps[id]; ok && !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	if len(ids) == len(s.Steps) {
		return ids
	}
	rest := make([]string, 0, len(s.Steps)-len(ids))
	for id := range s.Steps {
		if !seen[id] {
			rest = append(rest, id)
		}
	}
	slices.Sort(rest)
	return append(ids, rest...)
}

// Value returns the JSON form of the test section: configFile, config,
// cases (always present).
func (t *TestConfig) Value() value.Value {
	o := value.NewObject(3)
	if t.ConfigFile != "" {
		o.Set("configFile", t.ConfigFile)
	}
	if t.Config != nil {
		o.Set("config", t.Config)
	}
	cases := make([]value.Value, len(t.Cases))
	for i, c := range t.Cases {
		co := value.NewObject(4)
		co.Set("name", c.Name)
		if c.Description != "" {
			co.Set("description", c.Description)
		}
		co.Set("input", c.Input)
		if c.Output != nil {
			co.Set("output", c.Output)
		}
		cases[i] = co
	}
	o.Set("cases", cases)
	return o
}
