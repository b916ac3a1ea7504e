package flow

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/value"
)

const e3Flow = `name: e3
steps:
  - id: msgs
    component: /builtin/create_messages
    input: { system_instructions: "Be brief", user_prompt: { $input: question } }
output:
  first_role: { $step: msgs, path: "$.messages[0].role" }
  all: { $step: msgs }
`

func TestMergePatchRFC7396(t *testing.T) {
	t.Parallel()
	// The examples of RFC 7396 appendix A, plus key order.
	tests := []struct{ target, patch, want string }{
		{`{"a":"b"}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"b"}`, `{"b":"c"}`, `{"a":"b","b":"c"}`},
		{`{"a":"b"}`, `{"a":null}`, `{}`},
		{`{"a":"b","b":"c"}`, `{"a":null}`, `{"b":"c"}`},
		{`{"a":["b"]}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"c"}`, `{"a":["b"]}`, `{"a":["b"]}`},
		{`{"a":{"b":"c"}}`, `{"a":{"b":"d","c":null}}`, `{"a":{"b":"d"}}`},
		{`{"a":[{"b":"c"}]}`, `{"a":[1]}`, `{"a":[1]}`},
		{`["a","b"]`, `["c","d"]`, `["c","d"]`},
		{`{"a":"b"}`, `["c"]`, `["c"]`},
		{`{"a":"foo"}`, `null`, `null`},
		{`{"a":"foo"}`, `"bar"`, `"bar"`},
		{`{"e":null}`, `{"a":1}`, `{"e":null,"a":1}`},
		{`[1,2]`, `{"a":"b","c":null}`, `{"a":"b"}`},
		{`{}`, `{"a":{"bb":{"ccc":null}}}`, `{"a":{"bb":{}}}`},
		{`{"x":1,"y":2,"z":3}`, `{"y":20,"w":0,"x":null}`, `{"y":20,"z":3,"w":0}`},
	}
	for _, tc := range tests {
		t.Run(tc.target+"+"+tc.patch, func(t *testing.T) {
			t.Parallel()
			target := value.MustParse(tc.target)
			before := value.String(target)
			got := MergePatch(target, value.MustParse(tc.patch))
			require.Equal(t, tc.want, value.String(got))
			require.Equal(t, before, value.String(target), "target unchanged")
		})
	}
}

func TestParseOverrides(t *testing.T) {
	t.Parallel()
	o, err := ParseOverrides(value.MustParse(`{"a":{"value":{"x":1}},"b":{"$type":"json_patch","value":[]},"c":{"$type":"merge_patch","value":null}}`))
	require.NoError(t, err)
	require.Len(t, o, 3)
	require.Equal(t, OverrideMergePatch, o["a"].Type)
	require.Equal(t, OverrideJSONPatch, o["b"].Type)
	require.Nil(t, o["c"].Value)
	require.Equal(t, `{"a":{"$type":"merge_patch","value":{"x":1}},"b":{"$type":"json_patch","value":[]},"c":{"$type":"merge_patch","value":null}}`, value.String(o.Value()))

	o, err = ParseOverrides(nil)
	require.NoError(t, err)
	require.Empty(t, o)

	for _, bad := range []string{`[]`, `{"a":1}`, `{"a":{"$type":"skip","value":{}}}`, `{"a":{"$type":"merge_patch"}}`} {
		_, err := ParseOverrides(value.MustParse(bad))
		require.ErrorIs(t, err, ErrInvalidOverrides, bad)
	}
}

func TestApplyOverridesE9(t *testing.T) {
	t.Parallel()
	f, err := Parse([]byte(e3Flow), "e3.yaml")
	require.NoError(t, err)
	origValue := value.String(f.Value())
	origID := f.ID()

	o, err := ParseOverrides(value.MustParse(`{"msgs":{"value":{"input":{"system_instructions":null,"user_prompt":"patched"}}}}`))
	require.NoError(t, err)
	g, err := f.ApplyOverrides(o)
	require.NoError(t, err)
	require.NotSame(t, f, g)
	require.Equal(t, `{"id":"msgs","component":"/builtin/create_messages","input":{"user_prompt":"patched"}}`, value.String(g.Steps[0].Value()))
	require.Equal(t, origValue, value.String(f.Value()), "the original is not modified")
	require.Equal(t, origID, f.ID())
	require.NotEqual(t, origID, g.ID())
	require.Equal(t, f.Output, g.Output)
	require.Equal(t, f.File, g.File)
}

func TestApplyOverrides(t *testing.T) {
	t.Parallel()
	f, err := Parse([]byte(`steps:
  - {id: a, component: /mock/a, input: {$input: x}}
  - {id: b, component: /mock/b, input: {items: {$step: a}, temperature: 0.5}}
output: {$step: b}`), "f.yaml")
	require.NoError(t, err)

	apply := func(overrides string) (*Flow, error) {
		o, err := ParseOverrides(value.MustParse(overrides))
		require.NoError(t, err)
		return f.ApplyOverrides(o)
	}

	g, err := apply(`{"a":{"value":{"component":"/mock/x","onError":{"action":"useDefault","defaultValue":1}}},"b":{"value":{"input":{"temperature":0.9}}}}`)
	require.NoError(t, err)
	require.Equal(t, `{"id":"a","component":"/mock/x","onError":{"action":"useDefault","defaultValue":1},"input":{"$input":"$.x"}}`, value.String(g.Steps[0].Value()))
	require.Equal(t, `{"id":"b","component":"/mock/b","input":{"items":{"$step":"a"},"temperature":0.9}}`, value.String(g.Steps[1].Value()))

	// Patching an expression object merges into it (spec §13 gotcha):
	// {"$input":"$.x","items":[1]} is still an input reference.
	g, err = apply(`{"a":{"value":{"input":{"items":[1]}}}}`)
	require.NoError(t, err)
	require.Equal(t, `{"$input":"$.x"}`, value.String(mustGet(g.Steps[0].Value(), "input")))
	g, err = apply(`{"a":{"value":{"input":{"$input":null,"items":[1]}}}}`)
	require.NoError(t, err)
	require.Equal(t, `{"items":[1]}`, value.String(mustGet(g.Steps[0].Value(), "input")))

	// A skip key is merged and then ignored.
	g, err = apply(`{"b":{"value":{"skip":true}}}`)
	require.NoError(t, err)
	require.Equal(t, value.String(f.Steps[1].Value()), value.String(g.Steps[1].Value()))

	// Empty overrides give the flow itself.
	g, err = f.ApplyOverrides(Overrides{})
	require.NoError(t, err)
	require.Same(t, f, g)

	_, err = apply(`{"nope":{"value":{}}}`)
	require.EqualError(t, err, "Step 'nope' not found in workflow")
	require.ErrorIs(t, err, ErrStepNotFound)

	_, err = apply(`{"a":{"$type":"json_patch","value":[]}}`)
	require.ErrorIs(t, err, ErrUnsupportedOverride)

	_, err = apply(`{"a":{"value":{"onError":{"action":"skip"}}}}`)
	require.ErrorIs(t, err, ErrInvalidFlow)
	require.EqualError(t, err, "invalid override for step 'a': $.steps[0].onError.action: unknown onError action \"skip\": expected `fail`, `useDefault` or `retry`")
	var oe *OverrideError
	require.ErrorAs(t, err, &oe)
	require.Equal(t, "a", oe.Step)

	_, err = apply(`{"a":{"value":null}}`)
	require.EqualError(t, err, "invalid override for step 'a': $.steps[0]: invalid type for a step: expected an object, got null")
}

func mustGet(v value.Value, key string) value.Value {
	x, _ := v.(*value.Object).Get(key)
	return x
}
