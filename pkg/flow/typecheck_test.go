package flow

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/value"
)

func TestValidateTypes(t *testing.T) {
	t.Parallel()
	f, err := Parse([]byte(header+`steps:
  - id: literal
    component: /builtin/typed
    input: {n: "three"}
  - id: partial
    component: /builtin/typed
    input: {n: 3, extra: {$input: x}}
  - id: missing
    component: /builtin/typed
    input: {extra: {$input: x}}
  - {id: untyped, component: /builtin/untyped, input: 1}
  - {id: unlisted, component: /builtin/unlisted}
  - {id: unrouted, component: /python/udf}
output: [{$step: literal}, {$step: partial}, {$step: missing}, {$step: untyped}, {$step: unlisted}, {$step: unrouted}]`), "r.yaml")
	require.NoError(t, err)
	schemas := map[string]ComponentSchemas{
		"/builtin/typed": {
			Input:  value.MustParse(`{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]}`),
			Output: value.MustParse(`{"type":"object"}`),
		},
		"/builtin/untyped": {},
	}
	lookup := func(c string) (ComponentSchemas, bool) { cs, ok := schemas[c]; return cs, ok }

	ds := ValidateTypes(f, fakeRouting{}, lookup, false)
	var lines []string
	for _, d := range ds {
		lines = append(lines, d.String("r.yaml"))
	}
	require.Equal(t, []string{
		"r.yaml:6:16: error: Step 'literal' input does not match the input schema of '/builtin/typed': got string, want integer ($.steps[0].input.n)",
		"r.yaml:12:12: error: Step 'missing' input does not match the input schema of '/builtin/typed': missing property 'n' ($.steps[2].input)",
		"r.yaml:14:31: warning: Step 'unlisted' uses component '/builtin/unlisted', which its plugin does not list: its input is not type-checked ($.steps[4].component)",
	}, lines)
	require.Equal(t, CodeStepInputMismatch, ds[0].Code)
	require.Equal(t, KindStepInputMismatch, ds[0].Kind)

	strict := ValidateTypes(f, fakeRouting{}, lookup, true)
	var codes []int
	for _, d := range strict {
		codes = append(codes, d.Code)
		if d.Code == CodeUntypedComponentOutput {
			require.Equal(t, LevelError, d.Level)
		}
	}
	require.Equal(t, []int{CodeStepInputMismatch, CodeStepInputMismatch, CodeUntypedComponentOutput, CodeUntypedComponentOutput}, codes)
	require.Equal(t, "Step 'untyped' uses component '/builtin/untyped', which declares no output schema", strict[2].Message)
}
