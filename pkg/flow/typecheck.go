package flow

import (
	"errors"
	"fmt"
	"strings"

	"github.com/stepflow-go/stepflow/pkg/expr"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// Diagnostic codes of type checking (ValidateTypes; `stepflow validate
// --type-check`).
const (
	// CodeStepInputMismatch: a step's input does not match its
	// component's input schema (level error).
	CodeStepInputMismatch = 2301
	// CodeUntypedComponentOutput: under --strict, a step's component
	// declares no output schema, or its plugin does not list it (level
	// error).
	CodeUntypedComponentOutput = 2302
	// CodeUnlistedComponent: the plugin a step routes to does not list
	// the step's component, so its input cannot be checked (level
	// warning; under --strict CodeUntypedComponentOutput instead).
	CodeUnlistedComponent = 1301
	// CodeInvalidComponentSchema: a component's input schema does not
	// compile, so the step's input cannot be checked (level warning).
	CodeInvalidComponentSchema = 1302

	KindStepInputMismatch      = "stepInputMismatch"
	KindUntypedComponentOutput = "untypedComponentOutput"
	KindUnlistedComponent      = "unlistedComponent"
	KindInvalidComponentSchema = "invalidComponentSchema"
)

// ComponentSchemas is what type checking knows of a component: its
// JSON Schemas, nil when the component declares none.
type ComponentSchemas struct {
	Input, Output value.Value
}

// ComponentLookup returns the schemas of the component a step's component
// path reaches; false when the plugin it routes to does not list it.
type ComponentLookup func(component string) (ComponentSchemas, bool)

// ValidateTypes checks every step whose component path starts with '/'
// and that route reaches (see Routing.Match) against the component's
// schemas, as `stepflow validate --type-check` does:
//
//   - a literal input must match the input schema; an object input whose
//     values are partly expressions must have every property the schema
//     requires, and its literal values must match their property schemas
//     (values computed from expressions are not checked);
//   - a component the plugin does not list gets a warning (its input
//     cannot be checked);
//   - strict: a component without an output schema, or not listed, is an
//     error (upstream's --strict: untyped component outputs are errors).
//
// Positions are filled in from f.Source.
func ValidateTypes(f *Flow, r Routing, lookup ComponentLookup, strict bool) Diagnostics {
	v := &validator{f: f}
	for i, s := range f.Steps {
		if !strings.HasPrefix(s.Component, "/") || !r.Match(s.Component) {
			continue // Validate and ValidateRoutes report these
		}
		cs, ok := lookup(s.Component)
		if !ok {
			data := value.ObjectOf("step_id", s.ID, "component", s.Component)
			if strict {
				v.add(CodeUntypedComponentOutput, KindUntypedComponentOutput, stepPath(i, "component"), data,
					"Step '%s' uses component '%s', which its plugin does not list: its output is untyped", s.ID, s.Component)
			} else {
				v.add(CodeUnlistedComponent, KindUnlistedComponent, stepPath(i, "component"), data,
					"Step '%s' uses component '%s', which its plugin does not list: its input is not type-checked", s.ID, s.Component)
			}
			continue
		}
		if strict && cs.Output == nil {
			v.add(CodeUntypedComponentOutput, KindUntypedComponentOutput, stepPath(i, "component"),
				value.ObjectOf("step_id", s.ID, "component", s.Component),
				"Step '%s' uses component '%s', which declares no output schema", s.ID, s.Component)
		}
		if cs.Input != nil {
			v.stepInput(i, s, cs.Input)
		}
	}
	v.locate()
	return v.diags
}

// stepInput checks the input of step i against the component's input
// schema.
func (v *validator) stepInput(i int, s *Step, schema value.Value) {
	inputPath := stepPath(i, "input")
	subject := fmt.Sprintf("Step '%s' input does not match the input schema of '%s'", s.ID, s.Component)
	mismatch := func(err error) {
		var se *SchemaError
		path, reason := inputPath, err.Error()
		if errors.As(err, &se) {
			path, reason = se.Path, se.Reason
		}
		v.add(CodeStepInputMismatch, KindStepInputMismatch, path,
			value.ObjectOf("step_id", s.ID, "component", s.Component, "reason", reason),
			"%s: %s", subject, reason)
	}
	invalid := func(err error) {
		v.add(CodeInvalidComponentSchema, KindInvalidComponentSchema, stepPath(i, "component"),
			value.ObjectOf("step_id", s.ID, "component", s.Component),
			"Step '%s' input is not type-checked: the input schema of '%s' is invalid: %v", s.ID, s.Component, err)
	}
	switch in := s.Input.(type) {
	case nil, *expr.Literal:
		var lit value.Value
		if l, ok := in.(*expr.Literal); ok {
			lit = l.Value
		}
		compiled, err := compileSchema(schema, nil, []string{""})
		if err != nil {
			invalid(err)
			return
		}
		if err := newValidator(compiled[0], subject, inputPath).Validate(lit); err != nil {
			mismatch(err)
		}
	case *expr.Object:
		so, ok := schema.(*value.Object)
		if !ok {
			return
		}
		present := make(map[string]bool, len(in.Keys))
		for _, k := range in.Keys {
			present[k] = true
		}
		for _, req := range requiredKeys(so) {
			if !present[req] {
				v.add(CodeStepInputMismatch, KindStepInputMismatch, inputPath,
					value.ObjectOf("step_id", s.ID, "component", s.Component, "property", req),
					"%s: missing property '%s'", subject, req)
			}
		}
		props, _ := schemaProperties(so)
		var keys, frags []string
		var vals []value.Value
		for j, k := range in.Keys {
			l, ok := in.Vals[j].(*expr.Literal)
			if !ok || props == nil || !props.Has(k) {
				continue
			}
			keys = append(keys, k)
			vals = append(vals, l.Value)
			frags = append(frags, "/properties/"+escapePointer(k))
		}
		if len(frags) == 0 {
			return
		}
		compiled, err := compileSchema(schema, nil, frags)
		if err != nil {
			invalid(err)
			return
		}
		for j, c := range compiled {
			if err := newValidator(c, subject, value.PathField(inputPath, keys[j])).Validate(vals[j]); err != nil {
				mismatch(err)
			}
		}
	}
}

// requiredKeys returns a schema's `required` names in order.
func requiredKeys(o *value.Object) []string {
	rv, _ := o.Get("required")
	arr, _ := rv.([]value.Value)
	out := make([]string, 0, len(arr))
	for _, r := range arr {
		if s, ok := r.(string); ok {
			out = append(out, s)
		}
	}
	return out
}
