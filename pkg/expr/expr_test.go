package expr

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// mapEnv is an Env backed by maps.
type mapEnv struct {
	input value.Value
	steps map[string]*outcome.Result // nil entry = pending
	vars  map[string]value.Value
}

func (e mapEnv) Input() value.Value { return e.input }
func (e mapEnv) Step(id string) (outcome.Result, StepState) {
	r, ok := e.steps[id]
	if !ok {
		return outcome.Result{}, StepUnknown
	}
	if r == nil {
		return outcome.Result{}, StepPending
	}
	return *r, StepDone
}
func (e mapEnv) Variable(n string) (value.Value, bool) { v, ok := e.vars[n]; return v, ok }

func ok(v string) *outcome.Result {
	r := outcome.Success(value.MustParse(v))
	return &r
}

func eval(t *testing.T, exprJSON string, env mapEnv) string {
	t.Helper()
	e, err := Parse(value.MustParse(exprJSON), "$")
	require.NoError(t, err)
	return value.String(Eval(e, env).JSON())
}

func TestPaths(t *testing.T) {
	t.Parallel()
	in := value.MustParse(`{"user":{"name":"Ada","tags":["x","y"]},"a.b":1," s ":2}`)
	env := mapEnv{input: in}
	for ex, want := range map[string]string{
		`{"$input":"$.user.name"}`:    `"Ada"`,
		`{"$input":"$.user.tags[1]"}`: `"y"`,
		`{"$input":"a.b"}`:            `1`,
		`{"$input":"$[\"a.b\"]"}`:     `1`,
		`{"$input":"$['a.b']"}`:       `1`,
		`{"$input":"$..user.name"}`:   `"Ada"`,
		`{"$input":" s "}`:            `2`,
		`{"$input":"$"}`:              value.String(in),
		`{"$input":null}`:             value.String(in),
	} {
		require.Equal(t, `{"outcome":"success","result":`+want+`}`, eval(t, ex, env), ex)
	}
	require.Equal(t, `{"outcome":"failed","error":{"code":1,"message":"Input path $.user.tags[5] not found"}}`,
		eval(t, `{"$input":"$.user.tags[5]"}`, env))
	require.Equal(t, `{"outcome":"failed","error":{"code":1,"message":"Input path $.missing not found"}}`,
		eval(t, `{"x":{"$input":"missing"}}`, env))
}

func TestPathSyntaxErrors(t *testing.T) {
	t.Parallel()
	for _, p := range []string{"$field", "$[*]", "$[-1]", "$[abc]", "$[0", `$["a`} {
		_, err := ParsePath(p)
		require.ErrorIs(t, err, ErrPathSyntax, p)
	}
}

func TestPathRoundTrip(t *testing.T) {
	t.Parallel()
	for _, p := range []string{"a.b", "$.a.b[3]", `$["x.y"].z`, "$[0][1]", "$", `$["a b"]`, `$['say "hi"]']`} {
		parsed := MustParsePath(p)
		again := MustParsePath(parsed.String())
		require.Equal(t, parsed, again, p)
	}
	require.Equal(t, `$["a.b"]`, MustParsePath("a.b").String())
	require.Equal(t, "$.name", MustParsePath("name").String())
}

func TestPrecedenceAndLiterals(t *testing.T) {
	t.Parallel()
	env := mapEnv{input: value.MustParse(`{"q":"hi"}`), steps: map[string]*outcome.Result{"a": ok(`{"x":1}`)}}
	require.Equal(t, `{"outcome":"success","result":{"real":"hi","escaped":{"$input":"q","n":1},"plain":{"$from":{"workflow":"input"}}}}`,
		eval(t, `{"real":{"$input":"q"},"escaped":{"$literal":{"$input":"q","n":1}},"plain":{"$from":{"workflow":"input"}}}`, env))
	// $step wins over $input.
	require.Equal(t, `{"outcome":"success","result":{"x":1}}`, eval(t, `{"$input":"q","$step":"a"}`, env))
	for _, bad := range []string{`{"$if":true}`, `{"$coalesce":1}`, `{"$step":1}`, `{"$input":"$bad"}`, `{"$variable":"$"}`} {
		_, err := Parse(value.MustParse(bad), "$.output")
		var pe *ParseError
		require.ErrorAs(t, err, &pe, bad)
	}
}

func TestStepRefs(t *testing.T) {
	t.Parallel()
	fail := outcome.Failure(&outcome.Error{Code: 8, Message: "boom"})
	env := mapEnv{steps: map[string]*outcome.Result{"a": ok(`{"x":{"y":[5]}}`), "n": ok(`null`), "f": &fail, "p": nil}}
	require.Equal(t, `{"outcome":"success","result":5}`, eval(t, `{"$step":"a","path":"$.x.y[0]"}`, env))
	require.Equal(t, `{"outcome":"success","result":null}`, eval(t, `{"$step":"n","path":"deep"}`, env))
	require.Equal(t, `{"outcome":"failed","error":{"code":8,"message":"boom"}}`, eval(t, `{"k":{"$step":"f"}}`, env))
	require.Equal(t, `{"outcome":"failed","error":{"code":1,"message":"Path $.nope not found"}}`, eval(t, `{"$step":"a","path":"nope"}`, env))
	require.Equal(t, `{"outcome":"failed","error":{"code":404,"message":"Unknown step: zz"}}`, eval(t, `{"$step":"zz"}`, env))
}

func TestIfCoalesceTruthiness(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{`{"c":true}`: `"a"`, `{"c":0}`: `"a"`, `{"c":""}`: `"a"`, `{"c":[]}`: `"a"`, `{"c":null}`: `"b"`, `{"c":false}`: `"b"`, `{}`: `"b"`} {
		env := mapEnv{input: value.MustParse(in)}
		require.Equal(t, `{"outcome":"success","result":`+want+`}`, eval(t, `{"$if":{"$input":"c"},"then":"a","else":"b"}`, env), in)
	}
	env := mapEnv{input: value.MustParse(`{}`)}
	require.Equal(t, `{"outcome":"success","result":null}`, eval(t, `{"$if":false,"then":1}`, env))
	require.Equal(t, `{"outcome":"success","result":"fb"}`, eval(t, `{"$coalesce":[null,{"$literal":null},"fb","x"]}`, env))
	require.Equal(t, `{"outcome":"failed","error":{"code":1,"message":"Input path $.m not found"}}`, eval(t, `{"$coalesce":[null,{"$input":"m"},"x"]}`, env))
	require.Equal(t, `{"outcome":"success","result":null}`, eval(t, `{"$coalesce":[]}`, env))
}

func TestVariables(t *testing.T) {
	t.Parallel()
	env := mapEnv{vars: map[string]value.Value{"region": "eu", "cfg": value.MustParse(`{"sub":[7]}`)}}
	require.Equal(t, `{"outcome":"success","result":"eu"}`, eval(t, `{"$variable":"region"}`, env))
	require.Equal(t, `{"outcome":"success","result":7}`, eval(t, `{"$variable":"$.cfg.sub[0]"}`, env))
	require.Equal(t, `{"outcome":"success","result":"free"}`, eval(t, `{"$variable":"tier","default":"free"}`, env))
	require.Equal(t, `{"outcome":"success","result":"d"}`, eval(t, `{"$variable":"$.cfg.nope","default":"d"}`, env))
	require.Equal(t, `{"outcome":"failed","error":{"code":1,"message":"Undefined variable: tier"}}`, eval(t, `{"$variable":"tier"}`, env))
}

func TestNeedsIsLazy(t *testing.T) {
	t.Parallel()
	e := MustParse(value.MustParse(`{"$if":{"$step":"cond"},"then":{"$step":"a"},"else":{"$coalesce":[{"$step":"b"},{"$step":"c"}]}}`))
	needs := func(env mapEnv) []string {
		var out []string
		Needs(e, env, func(s string) { out = append(out, s) })
		return out
	}
	pendingAll := map[string]*outcome.Result{"cond": nil, "a": nil, "b": nil, "c": nil}
	require.Equal(t, []string{"cond"}, needs(mapEnv{steps: pendingAll}))
	require.Equal(t, []string{"a"}, needs(mapEnv{steps: map[string]*outcome.Result{"cond": ok(`1`), "a": nil, "b": nil, "c": nil}}))
	require.Equal(t, []string{"b"}, needs(mapEnv{steps: map[string]*outcome.Result{"cond": ok(`null`), "a": nil, "b": nil, "c": nil}}))
	require.Equal(t, []string{"c"}, needs(mapEnv{steps: map[string]*outcome.Result{"cond": ok(`null`), "a": nil, "b": ok(`null`), "c": nil}}))
	require.Empty(t, needs(mapEnv{steps: map[string]*outcome.Result{"cond": ok(`null`), "a": nil, "b": ok(`2`), "c": nil}}))
}

func TestCanonicalRoundTrip(t *testing.T) {
	t.Parallel()
	for _, in := range []string{
		`{"a":{"$input":"x"},"b":[{"$step":"s","path":"a.b"}],"c":{"$literal":{"$step":"no"}},"d":{"$if":{"$variable":"$.v.w","default":1},"then":2},"e":{"$coalesce":[null,3]}}`,
	} {
		e := MustParse(value.MustParse(in))
		c := Canonical(e)
		require.Equal(t, `{"a":{"$input":"$.x"},"b":[{"$step":"s","path":"$[\"a.b\"]"}],"c":{"$literal":{"$step":"no"}},"d":{"$if":{"$variable":"$.v.w","default":1},"then":2},"e":{"$coalesce":[null,3]}}`, value.String(c))
		again := MustParse(c)
		require.Equal(t, value.String(c), value.String(Canonical(again)))
	}
}

func FuzzPath(f *testing.F) {
	for _, s := range []string{"$.a[0]", `$["a.b"]`, "name", "$..x", "$[", "$['q']"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePath(s)
		if err != nil || (strings.Contains(s, `"]`) && strings.Contains(s, `']`)) {
			// The path syntax has no escapes: a name containing both
			// `"]` and `']` cannot be written back.
			return
		}
		again, err := ParsePath(p.String())
		if err != nil {
			t.Fatalf("canonical %q of %q does not parse: %v", p.String(), s, err)
		}
		if again.String() != p.String() {
			t.Fatalf("round trip changed %q to %q", p.String(), again.String())
		}
	})
}

func FuzzExpr(f *testing.F) {
	for _, s := range []string{`{"$if":{"$input":"a"},"then":{"$step":"x"}}`, `{"$coalesce":[{"$variable":"v"}]}`, `[{"$literal":1}]`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := value.ParseString(s)
		if err != nil {
			return
		}
		e, err := Parse(v, "$")
		if err != nil {
			return
		}
		env := mapEnv{input: v, steps: map[string]*outcome.Result{"x": ok(`1`)}}
		_ = Eval(e, env)
		Needs(e, env, func(string) {})
		if _, err := Parse(Canonical(e), "$"); err != nil {
			t.Fatalf("canonical form does not parse: %v", err)
		}
	})
}

func BenchmarkEval(b *testing.B) {
	e := MustParse(value.MustParse(`{"id":{"$input":"$.user.id"},"msg":{"$step":"m","path":"$.messages[0].content"},"v":{"$coalesce":[{"$input":"missing_ok"},"d"]}}`))
	env := mapEnv{
		input: value.MustParse(`{"user":{"id":"u1"},"missing_ok":null}`),
		steps: map[string]*outcome.Result{"m": ok(`{"messages":[{"role":"user","content":"hi"}]}`)},
	}
	b.ReportAllocs()
	for b.Loop() {
		if r := Eval(e, env); r.Failed() {
			b.Fatal(r.Err)
		}
	}
}
