package flow

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/expr"
	"github.com/stepflow-go/stepflow/pkg/value"
)

const e7Flow = `name: e7
description: spec example E7
schemas:
  type: object
  properties:
    variables:
      type: object
      properties:
        region:  { type: string, default: us }
        retries: { type: integer }
        tier:    { type: string }
      required: [tier]
output:
  region:  { $variable: region }
  retries: { $variable: retries }
  tier:    { $variable: tier, default: free }
`

func TestVariablesE7(t *testing.T) {
	t.Parallel()
	f, err := Parse([]byte(e7Flow), "e7.yaml")
	require.NoError(t, err)
	require.Empty(t, Validate(f))

	run := func(supplied map[string]value.Value) string {
		vars, err := f.Variables(supplied)
		require.NoError(t, err)
		res := expr.Eval(f.Output, testEnv{vars: vars})
		require.False(t, res.Failed(), "%v", res.Err)
		return value.String(res.Value)
	}
	require.Equal(t, `{"region":"us","retries":0,"tier":"free"}`, run(nil))
	require.Equal(t, `{"region":"eu","retries":0,"tier":"gold"}`, run(map[string]value.Value{"region": "eu", "tier": "gold"}))

	// Without the inline default the run fails on tier.
	g, err := Parse([]byte(e7Flow[:len(e7Flow)-len("{ $variable: tier, default: free }\n")]+"{ $variable: tier }\n"), "e7.yaml")
	require.NoError(t, err)
	require.Empty(t, Validate(g))
	vars, err := g.Variables(nil)
	require.NoError(t, err)
	res := expr.Eval(g.Output, testEnv{vars: vars})
	require.True(t, res.Failed())
	require.Equal(t, "Undefined variable: tier", res.Err.Message)

	_, err = f.Variables(map[string]value.Value{"retries": "three"})
	var se *SchemaError
	require.ErrorAs(t, err, &se)
	require.EqualError(t, err, "variable 'retries' does not match the flow's variables schema: $.retries: got string, want integer")
	// Undeclared variables pass through.
	vars, err = f.Variables(map[string]value.Value{"extra": value.Int(1)})
	require.NoError(t, err)
	require.Equal(t, value.Int(1), vars["extra"])
}

func TestVariableDefaults(t *testing.T) {
	t.Parallel()
	f, err := Parse([]byte(`schemas:
  type: object
  properties:
    variables:
      type: object
      properties:
        default_bool: { type: boolean, default: true }
        default_num: { type: number, default: 3.15 }
        optional_bool: { type: boolean }
        optional_str: { type: string }
        optional_num: { type: number }
        optional_int: { type: integer }
        optional_str_or_none: { type: [string, "null"] }
        optional_obj: { type: object }
        untyped: {}
        required_str: { type: string }
        required_with_default: { type: string, default: x }
      required: [required_str, required_with_default]
`), "d.yaml")
	require.NoError(t, err)
	got := map[string]string{}
	for k, v := range f.VariableDefaults() {
		got[k] = value.String(v)
	}
	require.Equal(t, map[string]string{
		"default_bool": "true", "default_num": "3.15", "optional_bool": "false", "optional_str": `""`,
		"optional_num": "0", "optional_int": "0", "optional_str_or_none": "null", "required_with_default": `"x"`,
	}, got)
	require.Empty(t, (&Flow{}).VariableDefaults())
}

const secretsSchema = `{
  "type": "object",
  "$defs": {"Token": {"type": "string", "is_secret": true}},
  "properties": {
    "user": {"type": "string"},
    "api_key": {"type": "string", "is_secret": true},
    "auth": {"type": "object", "properties": {"token": {"$ref": "#/$defs/Token"}, "kind": {"type": "string"}}},
    "keys": {"type": "array", "items": {"type": "string", "is_secret": true}},
    "pairs": {"type": "array", "items": {"type": "object", "properties": {"secret": {"is_secret": true}, "name": {}}}},
    "extra": {"type": "object", "additionalProperties": {"is_secret": true}},
    "either": {"anyOf": [{"type": "null"}, {"type": "string", "is_secret": true}]}
  }
}`

func TestRedact(t *testing.T) {
	t.Parallel()
	schema := value.MustParse(secretsSchema)
	in := value.MustParse(`{"user":"ada","api_key":"k1","auth":{"token":"t","kind":"bearer"},"keys":["a","b"],` +
		`"pairs":[{"secret":1,"name":"n"}],"extra":{"x":1,"y":{"z":2}},"either":"s","other":{"api_key":"visible"}}`)
	before := value.String(in)
	got := Redact(in, schema)
	require.Equal(t, `{"user":"ada","api_key":"[REDACTED]","auth":{"token":"[REDACTED]","kind":"bearer"},"keys":["[REDACTED]","[REDACTED]"],`+
		`"pairs":[{"secret":"[REDACTED]","name":"n"}],"extra":{"x":"[REDACTED]","y":"[REDACTED]"},"either":"[REDACTED]","other":{"api_key":"visible"}}`,
		value.String(got))
	require.Equal(t, before, value.String(in), "the input is not modified")

	// Nothing secret: the very same value comes back.
	plain := value.MustParse(`{"user":"ada","other":[1]}`)
	require.Same(t, plain.(*value.Object), Redact(plain, schema).(*value.Object))
	require.Equal(t, "x", Redact("x", nil))
	require.Equal(t, Redacted, Redact("x", value.MustParse(`{"is_secret":true}`)))

	require.Equal(t, []string{"$.api_key", "$.auth.token", "$.keys[*]", "$.pairs[*].secret", "$.extra.*", "$.either"}, SecretPaths(schema))
	require.Equal(t, []string{"$"}, SecretPaths(value.MustParse(`{"is_secret":true}`)))

	// A recursive schema terminates.
	rec := value.MustParse(`{"$defs":{"Node":{"type":"object","properties":{"pw":{"is_secret":true},"kids":{"type":"array","items":{"$ref":"#/$defs/Node"}}}}},"$ref":"#/$defs/Node"}`)
	require.Equal(t, []string{"$.pw", "$.kids[*].pw"}, SecretPaths(rec))
	tree := value.MustParse(`{"pw":1,"kids":[{"pw":2,"kids":[{"pw":3}]}]}`)
	require.Equal(t, `{"pw":"[REDACTED]","kids":[{"pw":"[REDACTED]","kids":[{"pw":"[REDACTED]"}]}]}`, value.String(Redact(tree, rec)))
}

func TestFlowSecrets(t *testing.T) {
	t.Parallel()
	f, err := Parse([]byte(`schemas:
  type: object
  $defs:
    Secret: {type: string, is_secret: true}
  properties:
    input:
      type: object
      properties:
        password: {$ref: "#/$defs/Secret"}
        name: {type: string}
    variables:
      type: object
      properties:
        api_key: {type: string, is_secret: true}
        creds: {type: object, properties: {token: {$ref: "#/schemas/$defs/Secret"}}}
        region: {type: string}
`), "s.yaml")
	require.NoError(t, err)
	require.Equal(t, []string{"api_key"}, f.SecretVariables())
	require.Equal(t, `{"password":"[REDACTED]","name":"n"}`, value.String(f.RedactInput(value.MustParse(`{"password":"p","name":"n"}`))))
	red := f.RedactVariables(map[string]value.Value{"api_key": "k", "region": "eu", "creds": value.MustParse(`{"token":"t"}`)})
	require.Equal(t, Redacted, red["api_key"])
	require.Equal(t, "eu", red["region"])
	require.Equal(t, `{"token":"[REDACTED]"}`, value.String(red["creds"]))
	require.Nil(t, (&Flow{}).SecretVariables())
}

func TestInputValidator(t *testing.T) {
	t.Parallel()
	f, err := Parse([]byte(`schemas:
  type: object
  $defs:
    Data:
      type: object
      properties:
        value: {type: integer}
        tags: {type: array, items: {type: string}}
      required: [value]
  properties:
    input:
      type: object
      properties:
        data: {$ref: "#/$defs/Data"}
        other: {$ref: "#/schemas/$defs/Data"}
        name: {type: string, minLength: 2}
        "a.b": {type: boolean}
      required: [data]
      additionalProperties: false
`), "v.yaml")
	require.NoError(t, err)
	v, err := f.InputValidator()
	require.NoError(t, err)
	require.NotNil(t, v)
	v2, err := f.InputValidator()
	require.NoError(t, err)
	require.Same(t, v, v2, "compiled once")

	tests := []struct{ input, want string }{
		{`{"data":{"value":1}}`, ""},
		{`{"data":{"value":1,"tags":["x"]},"name":"ab","a.b":true}`, ""},
		{`{"data":{}}`, "input does not match the flow's input schema: $.data: missing property 'value'"},
		{`{}`, "input does not match the flow's input schema: $: missing property 'data'"},
		{`{"data":{"value":"1"}}`, "input does not match the flow's input schema: $.data.value: got string, want integer"},
		{`{"data":{"value":1,"tags":["x",2]}}`, "input does not match the flow's input schema: $.data.tags[1]: got number, want string"},
		{`{"data":{"value":1},"other":{"value":1.5}}`, "input does not match the flow's input schema: $.other.value: got number, want integer"},
		{`{"data":{"value":1},"a.b":1}`, `input does not match the flow's input schema: $["a.b"]: got number, want boolean`},
		{`{"data":{"value":1},"zzz":1}`, "input does not match the flow's input schema: $: additional properties 'zzz' not allowed"},
		{`[1]`, "input does not match the flow's input schema: $: got array, want object"},
	}
	for _, tc := range tests {
		err := v.Validate(value.MustParse(tc.input))
		if tc.want == "" {
			require.NoError(t, err, tc.input)
			continue
		}
		require.EqualError(t, err, tc.want, tc.input)
		var se *SchemaError
		require.ErrorAs(t, err, &se)
	}

	out, err := f.OutputValidator()
	require.NoError(t, err)
	require.Nil(t, out, "no output schema")

	// Concurrent first use compiles once and validates safely.
	g, err := Parse([]byte("schemas: {properties: {output: {type: string}}}"), "o.yaml")
	require.NoError(t, err)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ov, err := g.OutputValidator()
			require.NoError(t, err)
			require.NoError(t, ov.Validate("x"))
			require.EqualError(t, ov.Validate(value.Int(1)), "output does not match the flow's output schema: $: got number, want string")
		}()
	}
	wg.Wait()
}

func TestInvalidSchemas(t *testing.T) {
	t.Parallel()
	for _, src := range []string{
		"schemas: {properties: {input: {type: strin}}}",
		"schemas: {properties: {input: {$ref: 'file:///etc/passwd'}}}",
		"schemas: {properties: {input: {$ref: '#/$defs/Missing'}}}",
	} {
		f, err := Parse([]byte(src), "bad.yaml")
		require.NoError(t, err)
		v, err := f.InputValidator()
		require.ErrorIs(t, err, ErrInvalidSchema, src)
		require.Nil(t, v)
	}
	_, err := Parse([]byte("schemas: {properties: {input: 5}}"), "bad.yaml")
	require.EqualError(t, err, "bad.yaml:1:31: invalid type for schema: expected a JSON Schema object, got number 5")
}

// benchInputFlow has a realistic input schema.
const benchInputFlow = `schemas:
  type: object
  $defs:
    Msg:
      type: object
      properties:
        role: {type: string, enum: [system, user, assistant]}
        content: {type: string}
      required: [role, content]
  properties:
    input:
      type: object
      properties:
        id: {type: integer, minimum: 0}
        question: {type: string, minLength: 1}
        history: {type: array, items: {$ref: "#/$defs/Msg"}}
        options: {type: object, properties: {temperature: {type: number}, stream: {type: boolean}}}
      required: [id, question]
`

func BenchmarkInputValidation(b *testing.B) {
	f, err := Parse([]byte(benchInputFlow), "bench.yaml")
	require.NoError(b, err)
	v, err := f.InputValidator()
	require.NoError(b, err)
	item := value.MustParse(`{"id":42,"question":"What is the capital of France?","history":[{"role":"system","content":"Be brief"},{"role":"user","content":"Hi"}],"options":{"temperature":0.7,"stream":false}}`)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := v.Validate(item); err != nil {
			b.Fatal(err)
		}
	}
}

func TestSchemaErrorsNeverQuoteValues(t *testing.T) {
	t.Parallel()
	v, err := NewSchemaValidator(value.MustParse(`{"type":"object","properties":{"key":{"type":"string","pattern":"^sk-[a-z]+$","is_secret":true},"mail":{"type":"string","format":"email"}}}`), nil, "input does not match the flow's input schema")
	require.NoError(t, err)
	err = v.Validate(value.MustParse(`{"key":"SUPERSECRET123"}`))
	require.ErrorContains(t, err, "$.key")
	require.NotContains(t, err.Error(), "SUPERSECRET123")
	if err = v.Validate(value.MustParse(`{"mail":"SUPERSECRET123"}`)); err != nil {
		require.NotContains(t, err.Error(), "SUPERSECRET123")
	}
}
