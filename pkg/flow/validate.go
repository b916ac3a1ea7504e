package flow

import (
	"fmt"
	"strings"

	"github.com/stepflow-go/stepflow/pkg/expr"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// Level is the severity of a diagnostic.
type Level string

// Diagnostic levels. The hundreds of the code give the level: 3xxx fatal,
// 2xxx error, 1xxx warning.
const (
	// LevelFatal stops every use of the flow: the executor refuses to run
	// it and the server refuses to store it.
	LevelFatal Level = "fatal"
	// LevelError makes `stepflow run` and `stepflow validate` fail.
	LevelError Level = "error"
	// LevelWarning is informational.
	LevelWarning Level = "warning"
)

// Diagnostic codes (upstream numbering) and their kinds.
const (
	CodeDuplicateStepID           = 3000
	CodeEmptyStepID               = 3001
	CodeSelfReference             = 3002
	CodeUndefinedStepReference    = 3003
	CodeCycle                     = 3004
	CodeInvalidSubflowLiteral     = 2003
	CodeUndefinedVariable         = 2004
	CodeUndefinedRequiredVariable = 2005
	CodeUnroutableComponent       = 2201
	CodeUnknownBuiltin            = 2202
	CodeInvalidComponent          = 2500
	CodeUnreachableStep           = 1000
	CodeMissingFlowName           = 1001
	CodeMissingFlowDescription    = 1002
	CodeUnvalidatedFieldAccess    = 1003
	CodeMissingVariableSchema     = 1004

	KindDuplicateStepID           = "duplicateStepId"
	KindEmptyStepID               = "emptyStepId"
	KindSelfReference             = "selfReference"
	KindUndefinedStepReference    = "undefinedStepReference"
	KindCycle                     = "cycle"
	KindInvalidSubflowLiteral     = "invalidSubflowLiteral"
	KindUndefinedVariable         = "undefinedVariable"
	KindUndefinedRequiredVariable = "undefinedRequiredVariable"
	KindUnroutableComponent       = "unroutableComponent"
	KindUnknownBuiltin            = "unknownBuiltin"
	KindInvalidComponent          = "invalidComponent"
	KindUnreachableStep           = "unreachableStep"
	KindMissingFlowName           = "missingFlowName"
	KindMissingFlowDescription    = "missingFlowDescription"
	KindUnvalidatedFieldAccess    = "unvalidatedFieldAccess"
	KindMissingVariableSchema     = "missingVariableSchema"
)

// LevelOf returns the level of a diagnostic code: 3xxx fatal, 2xxx error,
// anything else warning.
func LevelOf(code int) Level {
	switch {
	case code >= 3000:
		return LevelFatal
	case code >= 2000:
		return LevelError
	default:
		return LevelWarning
	}
}

// Diagnostic is one finding of static validation, shaped like upstream's.
type Diagnostic struct {
	Kind    string // camelCase kind, e.g. "unreachableStep"
	Code    int
	Level   Level
	Message string // the "formatted" message
	// Data holds the details (upstream's snake_case keys, e.g. step_id);
	// nil when there are none.
	Data *value.Object
	// Path is the JSON path of the offending part of the flow, like
	// `$.steps[1].input.x`; "" when it concerns nothing in particular.
	Path string
	// Pos is where Path was written in the flow's file; zero if unknown.
	Pos value.Pos
	// Experimental diagnostics are hidden by default upstream.
	Experimental bool
	// File is the file Pos points into when it is not the flow's own file
	// (a config diagnostic); "" otherwise.
	File string
}

// String formats the diagnostic for people:
// `file:line:col: error: <message> (<path>)`, leaving out the file and
// position when they are unknown and the path when there is none.
func (d Diagnostic) String(file string) string {
	if d.File != "" {
		file = d.File
	}
	var b strings.Builder
	if place := value.Place(file, d.Pos); place != "" {
		b.WriteString(place)
		b.WriteString(": ")
	}
	b.WriteString(string(d.Level))
	b.WriteString(": ")
	b.WriteString(d.Message)
	if d.Path != "" {
		b.WriteString(" (")
		b.WriteString(d.Path)
		b.WriteByte(')')
	}
	return b.String()
}

// JSON returns the upstream wire form
// `{kind, code, level, formatted, data?, path?, experimental?}`.
func (d Diagnostic) JSON() value.Value {
	o := value.NewObject(7)
	o.Set("kind", d.Kind)
	o.Set("code", value.Int(int64(d.Code)))
	o.Set("level", string(d.Level))
	o.Set("formatted", d.Message)
	if d.Data != nil {
		o.Set("data", d.Data)
	}
	if d.Path != "" {
		o.Set("path", d.Path)
	}
	if d.Experimental {
		o.Set("experimental", true)
	}
	return o
}

// Diagnostics is a list of diagnostics.
type Diagnostics []Diagnostic

// Counts returns the number of diagnostics per level.
func (ds Diagnostics) Counts() (fatal, errors, warnings int) {
	for _, d := range ds {
		switch d.Level {
		case LevelFatal:
			fatal++
		case LevelError:
			errors++
		default:
			warnings++
		}
	}
	return fatal, errors, warnings
}

// HasFatal reports whether any diagnostic is fatal.
func (ds Diagnostics) HasFatal() bool {
	f, _, _ := ds.Counts()
	return f > 0
}

// HasErrors reports whether any diagnostic is fatal or an error.
func (ds Diagnostics) HasErrors() bool {
	f, e, _ := ds.Counts()
	return f+e > 0
}

// JSON returns the diagnostics as a JSON array.
func (ds Diagnostics) JSON() value.Value {
	arr := make([]value.Value, len(ds))
	for i, d := range ds {
		arr[i] = d.JSON()
	}
	return arr
}

// validator collects the diagnostics of one flow.
type validator struct {
	f     *Flow
	diags Diagnostics
}

func (v *validator) add(code int, kind, path string, data *value.Object, format string, args ...any) *Diagnostic {
	v.diags = append(v.diags, Diagnostic{
		Kind: kind, Code: code, Level: LevelOf(code),
		Message: fmt.Sprintf(format, args...), Data: data, Path: path,
	})
	return &v.diags[len(v.diags)-1]
}

// Validate checks a flow statically (spec §6, except the checks that need
// a configuration; see ValidateRoutes). The diagnostics come in a stable
// order: structure, references, components, reachability, cycles,
// nested flows. Positions are filled in from f.Source.
func Validate(f *Flow) Diagnostics {
	v := &validator{f: f}
	v.structure()
	v.references()
	v.components()
	v.reachability()
	v.cycles()
	v.subflows()
	v.locate()
	return v.diags
}

// Routing is what ValidateRoutes needs of a configuration's routes
// (*plugin.Router implements it).
type Routing interface {
	// Match reports whether some route matches the component path.
	Match(component string) bool
	// UnknownBuiltin reports whether the component path surely routes to
	// a builtin that does not exist, with that builtin's local name.
	UnknownBuiltin(component string) (string, bool)
}

// ValidateRoutes reports every step whose component no route reaches
// (code 2201, unroutableComponent, level error) and every step whose
// component routes to a builtin that does not exist (code 2202,
// unknownBuiltin, level error; builtins are known statically, so a
// misspelt one would fail every item at run time). Components that do
// not start with '/' are left to Validate (invalidComponent).
func ValidateRoutes(f *Flow, r Routing) Diagnostics {
	v := &validator{f: f}
	for i, s := range f.Steps {
		if !strings.HasPrefix(s.Component, "/") {
			continue
		}
		if !r.Match(s.Component) {
			v.add(CodeUnroutableComponent, KindUnroutableComponent, stepPath(i, "component"),
				value.ObjectOf("step_id", s.ID, "component", s.Component),
				"Step '%s' uses component '%s', which no route matches", s.ID, s.Component)
			continue
		}
		if name, ok := r.UnknownBuiltin(s.Component); ok {
			v.add(CodeUnknownBuiltin, KindUnknownBuiltin, stepPath(i, "component"),
				value.ObjectOf("step_id", s.ID, "component", s.Component, "builtin", name),
				"Step '%s' uses component '%s', but the builtin plugin it routes to has no component '%s'",
				s.ID, s.Component, name)
		}
	}
	v.locate()
	return v.diags
}

func stepPath(i int, field string) string {
	p := value.PathIndex("$.steps", i)
	if field != "" {
		p = value.PathField(p, field)
	}
	return p
}

// locate fills in positions from the flow's source map.
func (v *validator) locate() {
	if v.f.Source == nil {
		return
	}
	for i := range v.diags {
		if v.diags[i].Path != "" {
			v.diags[i].Pos, _ = v.f.Source.Lookup(v.diags[i].Path)
		}
	}
}

func (v *validator) structure() {
	seen := make(map[string]bool, len(v.f.Steps))
	for i, s := range v.f.Steps {
		if seen[s.ID] {
			v.add(CodeDuplicateStepID, KindDuplicateStepID, stepPath(i, "id"),
				value.ObjectOf("step_id", s.ID), "Duplicate step ID '%s'", s.ID)
		}
		seen[s.ID] = true
	}
	for i, s := range v.f.Steps {
		if strings.TrimSpace(s.ID) == "" {
			v.add(CodeEmptyStepID, KindEmptyStepID, stepPath(i, "id"), nil, "Step has empty ID")
		}
	}
	if strings.TrimSpace(v.f.Name) == "" {
		v.add(CodeMissingFlowName, KindMissingFlowName, "$.name", nil, "Workflow has no name")
	}
	if v.f.Description == "" {
		v.add(CodeMissingFlowDescription, KindMissingFlowDescription, "$.description", nil, "Workflow has no description")
	}
}

// declaredVariables returns the property names of the variables schema
// and whether there is a variables schema at all.
func (f *Flow) declaredVariables() (map[string]bool, bool) {
	if f.Schemas == nil || f.Schemas.Variables == nil {
		return nil, false
	}
	names := map[string]bool{}
	if o, ok := f.Schemas.Variables.(*value.Object); ok {
		if props, ok := schemaProperties(o); ok {
			for _, k := range props.Keys() {
				names[k] = true
			}
		}
	}
	return names, true
}

func (v *validator) references() {
	index := make(map[string]int, len(v.f.Steps)) // first index of each id
	for i, s := range v.f.Steps {
		if _, ok := index[s.ID]; !ok {
			index[s.ID] = i
		}
	}
	vars, hasVarSchema := v.f.declaredVariables()
	reportedVarSchema := false
	check := func(e expr.Expr, base string, stepIdx int) {
		from, context := "workflow_output", "the flow output"
		if stepIdx >= 0 {
			from = v.f.Steps[stepIdx].ID
			context = fmt.Sprintf("step '%s'", from)
		}
		expr.Walk(e, base, func(path string, x expr.Expr) {
			switch r := x.(type) {
			case *expr.StepRef:
				v.stepRef(r, path, stepIdx, from, index)
			case *expr.InputRef:
				if !r.Path.IsRoot() && v.f.Schemas.inputSchema() == nil {
					field := r.Path.String()
					reason := "no input schema available"
					v.add(CodeUnvalidatedFieldAccess, KindUnvalidatedFieldAccess, path,
						value.ObjectOf("step_id", "workflow_input", "field", field, "reason", reason),
						"Field access '%s' on step 'workflow_input' cannot be validated: %s", field, reason).Experimental = true
				}
			case *expr.VariableRef:
				if !hasVarSchema {
					if !reportedVarSchema {
						reportedVarSchema = true
						v.add(CodeMissingVariableSchema, KindMissingVariableSchema, path,
							value.ObjectOf("variable", r.Name),
							"No variable schema defined, but variable '%s' is referenced", r.Name)
					}
					return
				}
				if !vars[r.Name] {
					data := value.ObjectOf("variable", r.Name, "context", context)
					if r.Default == nil {
						v.add(CodeUndefinedRequiredVariable, KindUndefinedRequiredVariable, path, data,
							"Variable '%s' referenced in %s is not declared in the variables schema and has no default", r.Name, context)
					} else {
						v.add(CodeUndefinedVariable, KindUndefinedVariable, path, data,
							"Variable '%s' referenced in %s is not declared in the variables schema (its inline default is used)", r.Name, context)
					}
				}
				if !r.Path.IsRoot() {
					field := expr.Canonical(r).(*value.Object)
					text, _ := field.Get("$variable")
					reason := "variable field type validation not yet implemented"
					v.add(CodeUnvalidatedFieldAccess, KindUnvalidatedFieldAccess, path,
						value.ObjectOf("step_id", "variable_"+r.Name, "field", text, "reason", reason),
						"Field access '%s' on step 'variable_%s' cannot be validated: %s", text, r.Name, reason).Experimental = true
				}
			}
		})
	}
	for i, s := range v.f.Steps {
		check(s.Input, stepPath(i, "input"), i)
	}
	check(v.f.Output, "$.output", -1)
}

func (v *validator) stepRef(r *expr.StepRef, path string, stepIdx int, from string, index map[string]int) {
	data := func() *value.Object { return value.ObjectOf("from_step", from, "referenced_step", r.Step) }
	target, exists := index[r.Step]
	if stepIdx >= 0 {
		if r.Step == from {
			v.add(CodeSelfReference, KindSelfReference, path, value.ObjectOf("step_id", r.Step),
				"Step '%s' references itself", r.Step)
			return
		}
		switch {
		case !exists:
			v.add(CodeUndefinedStepReference, KindUndefinedStepReference, path, data(),
				"Step '%s' references undefined step '%s'", from, r.Step)
			return
		case target > stepIdx:
			v.add(CodeUndefinedStepReference, KindUndefinedStepReference, path, data(),
				"Step '%s' references step '%s', which is defined later (steps may only reference earlier steps)", from, r.Step)
			return
		}
	} else if !exists {
		v.add(CodeUndefinedStepReference, KindUndefinedStepReference, path, data(),
			"Output references undefined step '%s'", r.Step)
		return
	}
	if !r.Path.IsRoot() {
		if _, ok := v.f.Schemas.stepSchema(r.Step); ok {
			return
		}
		field := r.Path.String()
		reason := "no output schema available"
		v.add(CodeUnvalidatedFieldAccess, KindUnvalidatedFieldAccess, path,
			value.ObjectOf("step_id", r.Step, "field", field, "reason", reason),
			"Field access '%s' on step '%s' cannot be validated: %s", field, r.Step, reason).Experimental = true
	}
}

func (s *Schemas) inputSchema() value.Value {
	if s == nil {
		return nil
	}
	return s.Input
}

func (s *Schemas) stepSchema(id string) (value.Value, bool) {
	if s == nil || s.Steps == nil {
		return nil, false
	}
	sch, ok := s.Steps[id]
	return sch, ok
}

func (v *validator) components() {
	for i, s := range v.f.Steps {
		if !strings.HasPrefix(s.Component, "/") {
			const msg = "Component path must start with '/'"
			v.add(CodeInvalidComponent, KindInvalidComponent, stepPath(i, "component"),
				value.ObjectOf("step_id", s.ID, "component", s.Component, "error", msg),
				"Invalid component '%s' in step '%s': %s", s.Component, s.ID, msg)
		}
	}
}

func (v *validator) reachability() {
	referenced := map[string]bool{}
	mark := func(id string) { referenced[id] = true }
	for _, s := range v.f.Steps {
		expr.StepRefs(s.Input, mark)
	}
	expr.StepRefs(v.f.Output, mark)
	for i, s := range v.f.Steps {
		if !referenced[s.ID] {
			v.add(CodeUnreachableStep, KindUnreachableStep, stepPath(i, ""),
				value.ObjectOf("step_id", s.ID), "Step '%s' is not reachable from the output", s.ID)
		}
	}
}

// cycles reports dependency cycles among steps (self references are
// reported as selfReference). Decoded flows with no forward references
// cannot have any; this guards flows built by hand.
func (v *validator) cycles() {
	steps := v.f.Steps
	index := make(map[string]int, len(steps))
	for i, s := range steps {
		if _, ok := index[s.ID]; !ok {
			index[s.ID] = i
		}
	}
	deps := make([][]int, len(steps))
	for i, s := range steps {
		seen := map[int]bool{}
		expr.StepRefs(s.Input, func(id string) {
			if j, ok := index[id]; ok && j != i && !seen[j] {
				seen[j] = true
				deps[i] = append(deps[i], j)
			}
		})
	}
	const (
		white = iota
		grey
		black
	)
	color := make([]int, len(steps))
	var stack []int
	var visit func(i int)
	visit = func(i int) {
		color[i] = grey
		stack = append(stack, i)
		for _, j := range deps[i] {
			switch color[j] {
			case white:
				visit(j)
			case grey:
				// stack from j to the top is the cycle.
				k := len(stack) - 1
				for stack[k] != j {
					k--
				}
				ids := make([]string, 0, len(stack)-k+1)
				arr := make([]value.Value, 0, len(stack)-k)
				for _, s := range stack[k:] {
					ids = append(ids, "'"+steps[s].ID+"'")
					arr = append(arr, steps[s].ID)
				}
				ids = append(ids, "'"+steps[j].ID+"'")
				v.add(CodeCycle, KindCycle, stepPath(j, ""), value.ObjectOf("steps", arr),
					"Steps form a dependency cycle: %s", strings.Join(ids, " -> "))
			}
		}
		stack = stack[:len(stack)-1]
		color[i] = black
	}
	for i := range steps {
		if color[i] == white {
			visit(i)
		}
	}
}

// subflows validates flows stored with /builtin/put_blob (blob_type
// "flow") whose data is written as a literal.
func (v *validator) subflows() {
	for i, s := range v.f.Steps {
		if s.Component != "/builtin/put_blob" && s.Component != "/put_blob" {
			continue
		}
		literal, path, ok := flowBlobLiteral(s.Input, stepPath(i, "input"))
		if !ok {
			continue
		}
		sub, err := FromValue(literal)
		if err != nil {
			msg := "Failed to parse subflow: " + err.Error()
			v.add(CodeInvalidSubflowLiteral, KindInvalidSubflowLiteral, path,
				value.ObjectOf("error", msg), "Invalid subflow literal: %s", msg)
			continue
		}
		for _, d := range Validate(sub) {
			d.Path = prefixPath(path, d.Path)
			d.Pos = value.Pos{}
			v.diags = append(v.diags, d)
		}
	}
}

// flowBlobLiteral finds the literal flow of a put_blob input with literal
// blob_type "flow": data written as `{$literal: …}` (path ends in
// `.$literal`), or as a scalar literal (which never parses as a flow).
// Data built from expressions, or as a plain object or array, cannot be
// checked statically (as upstream).
func flowBlobLiteral(input expr.Expr, base string) (literal value.Value, path string, ok bool) {
	var blobType, dataExpr expr.Expr
	switch in := input.(type) {
	case *expr.Object:
		for i, k := range in.Keys {
			switch k {
			case "blob_type":
				blobType = in.Vals[i]
			case "data":
				dataExpr = in.Vals[i]
			}
		}
	case *expr.Literal:
		o, isObj := in.Value.(*value.Object)
		if in.Escaped || !isObj {
			return nil, "", false
		}
		if bt, ok := o.Get("blob_type"); ok {
			blobType = &expr.Literal{Value: bt}
		}
		if d, ok := o.Get("data"); ok {
			dataExpr = &expr.Literal{Value: d}
		}
	default:
		return nil, "", false
	}
	bt, isLit := blobType.(*expr.Literal)
	if !isLit || bt.Escaped || bt.Value != "flow" || dataExpr == nil {
		return nil, "", false
	}
	lit, isLit := dataExpr.(*expr.Literal)
	if !isLit {
		return nil, "", false
	}
	path = value.PathField(base, "data")
	if lit.Escaped {
		return lit.Value, value.PathField(path, "$literal"), true
	}
	switch lit.Value.(type) {
	case *value.Object, []value.Value:
		return nil, "", false
	}
	return lit.Value, path, true
}

// prefixPath puts a JSON path of a nested document under the path of
// that document: prefixPath("$.a", "$.b[0]") = "$.a.b[0]".
func prefixPath(prefix, path string) string {
	if path == "" {
		return prefix
	}
	return prefix + strings.TrimPrefix(path, "$")
}
