package flow

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/expr"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// header names and describes a flow so that 1001/1002 stay quiet.
const header = "name: t\ndescription: d\n"

type wantDiag struct {
	code int
	path string
	msg  string
}

func TestValidateCodes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		src  string
		want []wantDiag
	}{
		{
			name: "clean",
			src: header + `schemas:
  type: object
  properties:
    input: {type: object}
    variables: {type: object, properties: {v: {type: string}}}
    steps: {type: object, properties: {a: {type: object}}}
steps:
  - {id: a, component: /c, input: {$input: x}}
  - {id: b, component: /c, input: {$step: a, path: y}}
output: {b: {$step: b}, v: {$variable: v}}`,
		},
		{
			name: "3000 duplicate step id",
			src: header + `steps:
  - {id: a, component: /c}
  - {id: a, component: /c}
output: {$step: a}`,
			want: []wantDiag{{3000, "$.steps[1].id", "Duplicate step ID 'a'"}},
		},
		{
			name: "3001 empty step id",
			src: header + `steps:
  - {id: " ", component: /c}
output: {$step: " "}`,
			want: []wantDiag{{3001, "$.steps[0].id", "Step has empty ID"}},
		},
		{
			name: "3002 self reference",
			src: header + `steps:
  - {id: a, component: /c, input: {x: {$step: a}}}
output: {$step: a}`,
			want: []wantDiag{{3002, "$.steps[0].input.x", "Step 'a' references itself"}},
		},
		{
			name: "3003 unknown, forward and output references",
			src: header + `steps:
  - {id: a, component: /c, input: [{$step: nope}, {$step: b}]}
  - {id: b, component: /c}
output: {x: {$step: a}, y: {$if: true, then: {$step: b}, else: {$step: ghost}}}`,
			want: []wantDiag{
				{3003, "$.steps[0].input[0]", "Step 'a' references undefined step 'nope'"},
				{3003, "$.steps[0].input[1]", "Step 'a' references step 'b', which is defined later (steps may only reference earlier steps)"},
				{3003, "$.output.y.else", "Output references undefined step 'ghost'"},
			},
		},
		{
			name: "2500 invalid component",
			src: header + `steps:
  - {id: a, component: builtin/eval}
output: {$step: a}`,
			want: []wantDiag{{2500, "$.steps[0].component", "Invalid component 'builtin/eval' in step 'a': Component path must start with '/'"}},
		},
		{
			name: "2004 and 2005 undeclared variables",
			src: header + `schemas:
  type: object
  properties:
    variables: {type: object, properties: {known: {type: string}}}
steps:
  - {id: a, component: /c, input: {k: {$variable: known}, x: {$variable: missing}}}
output: {a: {$step: a}, y: {$variable: other, default: 1}}`,
			want: []wantDiag{
				{2005, "$.steps[0].input.x", "Variable 'missing' referenced in step 'a' is not declared in the variables schema and has no default"},
				{2004, "$.output.y", "Variable 'other' referenced in the flow output is not declared in the variables schema (its inline default is used)"},
			},
		},
		{
			name: "1000 unreachable step even with mustExecute",
			src: header + `steps:
  - {id: a, component: /c, mustExecute: true}
  - {id: b, component: /c}
output: {$step: b}`,
			want: []wantDiag{{1000, "$.steps[0]", "Step 'a' is not reachable from the output"}},
		},
		{
			name: "1001 and 1002 missing name and description",
			src:  "name: '  '\noutput: 1",
			want: []wantDiag{
				{1001, "$.name", "Workflow has no name"},
				{1002, "$.description", "Workflow has no description"},
			},
		},
		{
			name: "1003 unvalidated field access",
			src: header + `schemas:
  type: object
  properties:
    variables: {type: object, properties: {cfg: {type: object}}}
steps:
  - {id: a, component: /c, input: {$input: "$.q"}}
output: {x: {$step: a, path: "$.r[0]"}, v: {$variable: "$.cfg.k"}}`,
			want: []wantDiag{
				{1003, "$.steps[0].input", "Field access '$.q' on step 'workflow_input' cannot be validated: no input schema available"},
				{1003, "$.output.x", "Field access '$.r[0]' on step 'a' cannot be validated: no output schema available"},
				{1003, "$.output.v", "Field access '$.cfg.k' on step 'variable_cfg' cannot be validated: variable field type validation not yet implemented"},
			},
		},
		{
			name: "1004 missing variable schema (once)",
			src:  header + `output: {a: {$variable: x}, b: {$variable: y}}`,
			want: []wantDiag{{1004, "$.output.a", "No variable schema defined, but variable 'x' is referenced"}},
		},
		{
			name: "2003 invalid subflow literal",
			src: header + `steps:
  - id: put
    component: /builtin/put_blob
    input:
      blob_type: flow
      data:
        $literal:
          steps: [{id: x}]
output: {$step: put}`,
			want: []wantDiag{{2003, "$.steps[0].input.data.$literal",
				"Invalid subflow literal: Failed to parse subflow: $.steps[0]: missing field `component` in step"}},
		},
		{
			name: "2003 scalar data",
			src: header + `steps:
  - {id: put, component: /put_blob, input: {blob_type: flow, data: 5}}
output: {$step: put}`,
			want: []wantDiag{{2003, "$.steps[0].input.data",
				"Invalid subflow literal: Failed to parse subflow: $: a flow must be an object, got number"}},
		},
		{
			name: "valid subflow literal is validated with prefixed paths",
			src: header + `steps:
  - id: put
    component: /builtin/put_blob
    input:
      blob_type: flow
      data:
        $literal:
          name: inner
          steps:
            - {id: x, component: nope}
          output: {$step: y}
output: {$step: put}`,
			want: []wantDiag{
				{1002, "$.steps[0].input.data.$literal.description", "Workflow has no description"},
				{3003, "$.steps[0].input.data.$literal.output", "Output references undefined step 'y'"},
				{2500, "$.steps[0].input.data.$literal.steps[0].component", "Invalid component 'nope' in step 'x': Component path must start with '/'"},
				{1000, "$.steps[0].input.data.$literal.steps[0]", "Step 'x' is not reachable from the output"},
			},
		},
		{
			name: "subflows built from expressions are not checked",
			src: header + `steps:
  - {id: put, component: /builtin/put_blob, input: {blob_type: flow, data: {$input: f}}}
  - {id: put2, component: /builtin/put_blob, input: {blob_type: data, data: {$literal: 5}}}
output: [{$step: put}, {$step: put2}]`,
			want: []wantDiag{{1003, "$.steps[0].input.data", "Field access '$.f' on step 'workflow_input' cannot be validated: no input schema available"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f, err := Parse([]byte(tc.src), "v.yaml")
			require.NoError(t, err)
			ds := Validate(f)
			got := make([]wantDiag, len(ds))
			for i, d := range ds {
				got[i] = wantDiag{d.Code, d.Path, d.Message}
				require.Equal(t, LevelOf(d.Code), d.Level)
				require.NotEmpty(t, d.Kind)
				require.False(t, d.Pos.IsZero(), "position of %s", d.Path)
				require.Equal(t, d.Code == CodeUnvalidatedFieldAccess, d.Experimental)
			}
			require.ElementsMatch(t, tc.want, got)
		})
	}
}

func TestValidateCycle(t *testing.T) {
	t.Parallel()
	ref := func(id string) expr.Expr { return &expr.StepRef{Step: id} }
	f := &Flow{
		Name: "c", Description: "d",
		Steps: []*Step{
			{ID: "a", Component: "/c", Input: ref("c")},
			{ID: "b", Component: "/c", Input: ref("a")},
			{ID: "c", Component: "/c", Input: ref("b")},
		},
		Output: ref("c"),
	}
	ds := Validate(f)
	var cycles []Diagnostic
	for _, d := range ds {
		if d.Code == CodeCycle {
			cycles = append(cycles, d)
		}
	}
	require.Len(t, cycles, 1)
	require.Equal(t, "Steps form a dependency cycle: 'a' -> 'c' -> 'b' -> 'a'", cycles[0].Message)
	require.Equal(t, KindCycle, cycles[0].Kind)
	require.Equal(t, LevelFatal, cycles[0].Level)
	require.Equal(t, "$.steps[0]", cycles[0].Path)
	require.True(t, ds.HasFatal())
}

func TestValidateRoutes(t *testing.T) {
	t.Parallel()
	f, err := Parse([]byte(header+`steps:
  - {id: a, component: /builtin/eval}
  - {id: b, component: /python/udf}
  - {id: c, component: bad}
output: [{$step: a}, {$step: b}, {$step: c}]`), "r.yaml")
	require.NoError(t, err)
	ds := ValidateRoutes(f, fakeRouting{})
	require.Len(t, ds, 1)
	d := ds[0]
	require.Equal(t, CodeUnroutableComponent, d.Code)
	require.Equal(t, KindUnroutableComponent, d.Kind)
	require.Equal(t, LevelError, d.Level)
	require.Equal(t, "Step 'b' uses component '/python/udf', which no route matches", d.Message)
	require.Equal(t, "r.yaml:5:24: error: Step 'b' uses component '/python/udf', which no route matches ($.steps[1].component)", d.String("r.yaml"))
}

// fakeRouting routes /builtin/* to builtins, of which /eval exists.
type fakeRouting struct{}

func (fakeRouting) Match(c string) bool { return strings.HasPrefix(c, "/builtin/") }

func (fakeRouting) UnknownBuiltin(c string) (string, bool) {
	name := strings.TrimPrefix(c, "/builtin")
	return name, name != "/eval"
}

func TestValidateRoutesUnknownBuiltin(t *testing.T) {
	t.Parallel()
	f, err := Parse([]byte(header+`steps:
  - {id: a, component: /builtin/eval}
  - id: restore
    component: /builtin/get_blb
  - {id: c, component: /python/udf}
output: [{$step: a}, {$step: restore}, {$step: c}]`), "r.yaml")
	require.NoError(t, err)
	ds := ValidateRoutes(f, fakeRouting{})
	require.Len(t, ds, 2)
	d := ds[0]
	require.Equal(t, CodeUnknownBuiltin, d.Code)
	require.Equal(t, KindUnknownBuiltin, d.Kind)
	require.Equal(t, LevelError, d.Level)
	require.Equal(t, "r.yaml:6:16: error: Step 'restore' uses component '/builtin/get_blb', but the builtin plugin it routes to has no component '/get_blb' ($.steps[1].component)", d.String("r.yaml"))
	require.True(t, ds.HasErrors())
	require.Equal(t, CodeUnroutableComponent, ds[1].Code)
}

func TestDiagnosticFormatting(t *testing.T) {
	t.Parallel()
	f, err := Parse([]byte("steps:\n  - {id: x, component: /c}\n  - {id: y, component: /c}\noutput: {$step: y}\n"), "f.yaml")
	require.NoError(t, err)
	ds := Validate(f)
	fatal, errs, warns := ds.Counts()
	require.Equal(t, [3]int{0, 0, 3}, [3]int{fatal, errs, warns})
	require.False(t, ds.HasErrors())
	require.False(t, ds.HasFatal())

	var unreachable Diagnostic
	for _, d := range ds {
		if d.Code == CodeUnreachableStep {
			unreachable = d
		}
	}
	require.Equal(t, `{"kind":"unreachableStep","code":1000,"level":"warning","formatted":"Step 'x' is not reachable from the output","data":{"step_id":"x"},"path":"$.steps[0]"}`,
		value.String(unreachable.JSON()))
	require.Equal(t, "f.yaml:2:5: warning: Step 'x' is not reachable from the output ($.steps[0])", unreachable.String("f.yaml"))
	unreachable.Pos = value.Pos{}
	require.Equal(t, "warning: Step 'x' is not reachable from the output ($.steps[0])", unreachable.String(""))
	require.Equal(t, "f.yaml: warning: Step 'x' is not reachable from the output ($.steps[0])", unreachable.String("f.yaml"))

	exp := Diagnostic{Kind: KindUnvalidatedFieldAccess, Code: 1003, Level: LevelWarning, Message: "m", Experimental: true}
	require.Equal(t, `{"kind":"unvalidatedFieldAccess","code":1003,"level":"warning","formatted":"m","experimental":true}`, value.String(exp.JSON()))
	require.Equal(t, "warning: m", exp.String(""))

	require.Equal(t, LevelFatal, LevelOf(3003))
	require.Equal(t, LevelError, LevelOf(2201))
	require.Equal(t, LevelWarning, LevelOf(1004))
	require.Len(t, ds.JSON(), 3)
}
