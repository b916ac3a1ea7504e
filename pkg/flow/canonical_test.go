package flow

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/expr"
	"github.com/stepflow-go/stepflow/pkg/value"
)

func TestBlobIDVector(t *testing.T) {
	t.Parallel()
	// spec §11 / tests/builtins/blob_test.yaml
	const want = "868591347a854ba1d0f4875b2dd44e1e8335052af03725a9819f89e0142318b0"
	v := value.MustParse(`{"message":"Hello, blobs!","number":42,"nested":{"array":[1,2,3],"boolean":true}}`)
	require.Equal(t, want, HashValue(v))

	y, _, err := value.ParseYAML([]byte("message: Hello, blobs!\nnumber: 42\nnested:\n  array: [1, 2, 3]\n  boolean: true\n"), nil)
	require.NoError(t, err)
	require.Equal(t, want, HashValue(y))
}

func TestCanonicalRoundTrip(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, src, want string }{
		{
			name: "minimal",
			src:  "output: {$input: x}",
			want: `{"output":{"$input":"$.x"}}`,
		},
		{
			name: "dotted names are quoted",
			src: `steps:
  - id: s
    component: /c
    input:
      a: {$input: "a.b"}
      b: {$input: '$["x.y"].z'}
      c: {$variable: "v.w", default: 1}
      d: {$variable: '$.cfg["k.v"][0]'}
output:
  "o.k": {$step: s, path: '$["p.q"][1]'}
  w: {$input: "$"}
  n: {$input: null}`,
			want: `{"steps":[{"id":"s","component":"/c","input":{` +
				`"a":{"$input":"$[\"a.b\"]"},"b":{"$input":"$[\"x.y\"].z"},` +
				`"c":{"$variable":"$[\"v.w\"]","default":1},"d":{"$variable":"$.cfg[\"k.v\"][0]"}}}],` +
				`"output":{"o.k":{"$step":"s","path":"$[\"p.q\"][1]"},"w":{"$input":"$"},"n":{"$input":"$"}}}`,
		},
		{
			name: "numbers, unicode, literals, lazy forms",
			src: `name: "ünï"
steps:
  - id: s
    component: /c
    onError: {action: fail}
    mustExecute: false
    input:
      f: 1.0
      i: 10
      e: 1e3
      lit: {$literal: {$step: nope, x: [1.50]}}
      from: {$from: {step: s}}
      if: {$if: {$input: c}, then: [1, {$input: a}], else: null}
      co: {$coalesce: [{$step: s}, "d"]}
output: {$step: s}`,
			want: `{"name":"ünï","steps":[{"id":"s","component":"/c","input":{` +
				`"f":1.0,"i":10,"e":1000.0,"lit":{"$literal":{"$step":"nope","x":[1.5]}},` +
				`"from":{"$from":{"step":"s"}},` +
				`"if":{"$if":{"$input":"$.c"},"then":[1,{"$input":"$.a"}],"else":null},` +
				`"co":{"$coalesce":[{"$step":"s"},"d"]}}}],"output":{"$step":"s"}}`,
		},
		{
			name: "empty things are left out",
			src: `name: ""
schemas: {type: object, properties: {}}
steps: []
output: null
examples: []
metadata: {}`,
			want: `{}`,
		},
		{
			name: "explicit null default value",
			src: `steps:
  - {id: s, component: /c, onError: {action: useDefault, defaultValue: null}}
output: {$step: s}`,
			want: `{"steps":[{"id":"s","component":"/c","onError":{"action":"useDefault"}}],"output":{"$step":"s"}}`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f, err := Parse([]byte(tc.src), "f.yaml")
			require.NoError(t, err)
			got := value.String(f.Value())
			require.Equal(t, tc.want, got)

			g, err := FromValue(f.Value())
			require.NoError(t, err)
			require.Equal(t, got, value.String(g.Value()))
			require.Equal(t, f.ID(), g.ID())
			require.Equal(t, HashValue(f.Value()), f.ID())

			// Through JSON text as well.
			h, err := Parse(value.Marshal(f.Value()), "f.json")
			require.NoError(t, err)
			require.Equal(t, got, value.String(h.Value()))
		})
	}
}

func TestCanonicalDottedPathsKeepMeaning(t *testing.T) {
	t.Parallel()
	f, err := Parse([]byte(`output: {dotted: {$input: "a.b"}, nested: {$input: "$.a.b"}}`), "f.yaml")
	require.NoError(t, err)
	g, err := FromValue(f.Value())
	require.NoError(t, err)
	in := value.MustParse(`{"a.b":1,"a":{"b":2}}`)
	for _, fl := range []*Flow{f, g} {
		res := expr.Eval(fl.Output, testEnv{input: in})
		require.False(t, res.Failed())
		require.Equal(t, `{"dotted":1,"nested":2}`, value.String(res.Value))
	}
}

func TestIDIsCachedAndConcurrent(t *testing.T) {
	t.Parallel()
	f, err := Parse([]byte("name: x\noutput: {$input: a}\n"), "f.yaml")
	require.NoError(t, err)
	want := HashValue(f.Value())
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			require.Equal(t, want, f.ID())
		}()
	}
	wg.Wait()

	// A flow built by hand is hashed on every call.
	h := &Flow{Name: "x", Output: expr.MustParse(value.MustParse(`{"$input":"a"}`))}
	require.Equal(t, want, h.ID())
	h.Name = "y"
	require.NotEqual(t, want, h.ID())
}

func TestSchemasValueOrder(t *testing.T) {
	t.Parallel()
	s := &Schemas{
		Steps:     map[string]value.Value{"z": true, "a": false, "m": true},
		StepOrder: []string{"m"},
	}
	require.Equal(t, `{"type":"object","properties":{"steps":{"type":"object","properties":{"m":true,"a":false,"z":true}}}}`, value.String(s.Value()))
	require.Nil(t, (&Schemas{}).Value())
	var nilSchemas *Schemas
	require.True(t, nilSchemas.IsEmpty())
}

func TestAllExamples(t *testing.T) {
	t.Parallel()
	f, err := Parse([]byte(`examples:
  - {name: a, input: 1}
test:
  cases:
    - {name: a, input: 2}
    - {name: b, description: bee, input: 3}
`), "f.yaml")
	require.NoError(t, err)
	all := f.AllExamples()
	require.Equal(t, []Example{{Name: "a", Input: value.Int(1)}, {Name: "b", Description: "bee", Input: value.Int(3)}}, all)
	require.Empty(t, (&Flow{}).AllExamples())
}
