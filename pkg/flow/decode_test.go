package flow

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/expr"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// upstreamTests is upstream Stepflow 0.9.0's tests directory, kept in the
// repository (relative to this package's directory, where go test runs).
const upstreamTests = "../../test/conformance/upstream"

// upstreamFlowFiles lists the *.yaml and *.yml files of the upstream
// tests directory.
func upstreamFlowFiles(t testing.TB) []string {
	t.Helper()
	if _, err := os.Stat(upstreamTests); err != nil {
		t.Fatalf("upstream tests missing from the repository: %v", err)
	}
	var files []string
	err := filepath.WalkDir(upstreamTests, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if ext := filepath.Ext(p); !d.IsDir() && (ext == ".yaml" || ext == ".yml") {
			files = append(files, p)
		}
		return nil
	})
	require.NoError(t, err)
	require.NotEmpty(t, files)
	return files
}

func TestLoadUpstreamFlows(t *testing.T) {
	t.Parallel()
	for _, file := range upstreamFlowFiles(t) {
		rel, _ := filepath.Rel(upstreamTests, file)
		t.Run(rel, func(t *testing.T) {
			t.Parallel()
			f, err := Load(file)
			require.NoError(t, err)
			require.Equal(t, file, f.File)
			require.NotNil(t, f.Schemas)
			require.Len(t, f.ID(), 64)
			// The canonical form reads back to the same flow.
			g, err := FromValue(f.Value())
			require.NoError(t, err)
			require.Equal(t, value.String(f.Value()), value.String(g.Value()))
			require.Equal(t, f.ID(), g.ID())
			// No upstream test flow has fatal or error diagnostics.
			ds := Validate(f)
			require.False(t, ds.HasErrors(), "%v", ds)
		})
	}
}

func TestUpstreamFlowDetails(t *testing.T) {
	t.Parallel()
	load := func(rel string) *Flow {
		f, err := Load(filepath.Join(upstreamTests, rel))
		require.NoError(t, err)
		return f
	}
	if _, err := os.Stat(upstreamTests); err != nil {
		t.Fatalf("upstream tests missing from the repository: %v", err)
	}

	f := load("mock/error_use_default_value.yaml")
	require.Len(t, f.Steps, 1)
	s := f.Steps[0]
	require.Equal(t, "error", s.ID)
	require.Equal(t, "/mock/error", s.Component)
	require.Equal(t, OnErrorUseDefault, s.OnError.Action)
	require.True(t, s.OnError.HasDefault)
	require.Equal(t, `{"output":"using default value"}`, value.String(s.OnError.DefaultValue))
	require.Equal(t, `{"mode":{"$input":"$.mode"}}`, value.String(expr.Canonical(s.Input)))
	require.Equal(t, `{"errorResult":{"$step":"error","path":"$.output"}}`, value.String(expr.Canonical(f.Output)))
	require.True(t, f.Schemas.IsEmpty(), "legacy inputSchema/outputSchema are ignored")
	require.Len(t, f.Test.Cases, 2)
	require.Equal(t, "test error case that uses default value", f.Test.Cases[0].Name)
	require.Equal(t, `{"outcome":"success","result":{"errorResult":"using default value"}}`, value.String(f.Test.Cases[0].Output))

	// A YAML timestamp stays a string; schemas are read.
	f = load("python/blob_simple.yaml")
	require.Contains(t, value.String(expr.Canonical(f.Steps[0].Input)), `"timestamp":"2024-01-01 00:00:00+00:00"`)
	require.NotNil(t, f.Schemas.Input)
	require.NotNil(t, f.Schemas.Output)

	// Inline test config and float expectations.
	f = load("http/basic_http.yaml")
	require.NotNil(t, f.Test.Config)
	require.Contains(t, value.String(f.Test.Cases[0].Output), "15.0")

	// The legacy MCP flow loads; its `output` is plain data.
	f = load("mcp/basic_mcp.yaml")
	require.Equal(t, `{"result":{"type":"string"}}`, value.String(expr.Canonical(f.Output)))

	// Config files parse as step-less flows, even with non-string keys.
	f = load("mock/stepflow-config.yml")
	require.Empty(t, f.Steps)
	require.Nil(t, f.Test)
	require.Nil(t, f.Output)
}

func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, file, src, want string
		is                    error
	}{
		{
			name: "float version",
			file: "f.yaml",
			src:  "name: x\nversion: 1.0\n",
			want: "f.yaml:2:10: invalid type for `version`: expected a string, got number 1.0 (quote it)",
		},
		{
			name: "unknown onError action",
			file: "f.yaml",
			src:  "steps:\n  - id: a\n    component: /x\n    onError:\n      action: skip\n",
			want: "f.yaml:5:15: unknown onError action \"skip\": expected `fail`, `useDefault` or `retry`",
		},
		{
			name: "onError without action",
			file: "f.yaml",
			src:  "steps:\n  - id: a\n    component: /x\n    onError: {defaultValue: 1}\n",
			want: "f.yaml:4:14: missing field `action` in onError",
		},
		{
			name: "coalesce not an array",
			file: "f.yaml",
			src:  "steps:\n  - id: a\n    component: /x\n    input:\n      x: {$coalesce: 5}\n",
			want: "f.yaml:5:22: invalid expression: $coalesce must be an array",
		},
		{
			name: "invalid input path",
			file: "f.yaml",
			src:  "output:\n  x:\n    $input: $field\n",
			want: `f.yaml:3:13: invalid expression: invalid JSON path "$field": invalid character 'f' at position 1, expected '.' or '['`,
			is:   expr.ErrPathSyntax,
		},
		{
			name: "if without then",
			file: "f.yaml",
			src:  "output:\n  $if: true\n",
			want: "f.yaml:2:3: invalid expression: then key required for $if",
		},
		{
			name: "non-string step reference",
			file: "f.yaml",
			src:  "output: {$step: 3}\n",
			want: "f.yaml:1:17: invalid expression: $step must be a string step id, got number",
		},
		{
			name: "missing step id",
			file: "f.yaml",
			src:  "steps:\n  - component: /x\n",
			want: "f.yaml:2:5: missing field `id` in step",
		},
		{
			name: "mustExecute not a bool",
			file: "f.yaml",
			src:  "steps:\n  - id: a\n    component: /x\n    mustExecute: \"yes\"\n",
			want: "f.yaml:4:18: invalid type for `mustExecute`: expected a boolean, got string \"yes\"",
		},
		{
			name: "steps not an array",
			file: "f.yaml",
			src:  "steps: {}\n",
			want: "f.yaml:1:8: invalid type for `steps`: expected an array of steps, got object",
		},
		{
			name: "skipped test outcome",
			file: "f.yaml",
			src:  "test:\n  cases:\n    - name: c\n      input: {}\n      output:\n        outcome: skipped\n",
			want: "f.yaml:6:9: invalid expected output of test case \"c\": not a flow result: outcome must be \"success\" or \"failed\", got \"skipped\"",
		},
		{
			name: "test case without input",
			file: "f.yaml",
			src:  "test:\n  cases:\n    - name: c\n",
			want: "f.yaml:3:7: missing field `input` in test case \"c\"",
		},
		{
			name: "not a mapping",
			file: "f.yaml",
			src:  "- a\n- b\n",
			want: "f.yaml:1:1: a flow must be an object, got array",
		},
		{
			name: "empty document",
			file: "f.yaml",
			src:  "# nothing\n",
			want: "f.yaml: empty document: a flow must be an object",
		},
		{
			name: "yaml syntax",
			file: "f.yaml",
			src:  "name: x\n  y: 2\n",
			want: "f.yaml:2:4: invalid YAML: mapping values are not allowed in this context",
		},
		{
			// yaml.v3 alone says "line 4" (the 0-based line of the
			// mapping) and no column.
			name: "unclosed flow mapping",
			file: "f.yaml",
			src:  "name: x\nsteps:\n  - id: a\n    input: {data: 1\noutput: 1\n",
			want: "f.yaml:5:7: invalid YAML: did not find expected ',' or '}' (while parsing a flow mapping that starts at line 4, column 12)",
		},
		{
			name: "bad indentation",
			file: "f.yaml",
			src:  "name: x\nsteps:\n  - id: a\n   component: /c\n",
			want: "f.yaml:4:4: invalid YAML: did not find expected '-' indicator (while parsing a block collection that starts at line 3, column 3)",
		},
		{
			name: "tab indentation",
			file: "f.yaml",
			src:  "name: x\nsteps:\n\t- id: a\n",
			want: "f.yaml:3:1: invalid YAML: found character that cannot start any token",
		},
		{
			name: "unterminated string",
			file: "f.yaml",
			src:  "name: \"x\nsteps: []\n",
			want: "f.yaml:3:1: invalid YAML: found unexpected end of stream (while scanning a quoted scalar that starts at line 1, column 7)",
		},
		{
			name: "duplicate key",
			file: "f.yaml",
			src:  "name: x\nsteps:\n  - id: a\n    component: /a\n    component: /b\n",
			want: `f.yaml:5:5: duplicate key "component" (first at line 4, column 5)`,
		},
		{
			name: "yaml nan",
			file: "f.yaml",
			src:  "output: .nan\n",
			want: "f.yaml:1:9: .nan has no JSON representation",
		},
		{
			name: "retry attempts",
			file: "f.yaml",
			src:  "steps:\n  - id: a\n    component: /x\n    onError: {action: retry, maxAttempts: -1}\n",
			want: "f.yaml:4:43: invalid type for `maxAttempts`: expected an integer between 0 and 2147483647, got number -1",
		},
		{
			name: "invalid json",
			file: "f.json",
			src:  "{\"name\": \"x\",\n \"steps\": [}\n",
			want: "f.json:2:12: invalid JSON: invalid character '}' looking for beginning of value",
		},
		{
			name: "no file",
			src:  "version: 2\n",
			want: "1:10: invalid type for `version`: expected a string, got number 2 (quote it)",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse([]byte(tc.src), tc.file)
			require.Error(t, err)
			var de *DecodeError
			require.ErrorAs(t, err, &de)
			require.Equal(t, tc.want, err.Error())
			require.ErrorIs(t, err, ErrInvalidFlow)
			if tc.is != nil {
				require.ErrorIs(t, err, tc.is)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()

	_, err := Load(filepath.Join(dir, "flow.txt"))
	require.ErrorIs(t, err, ErrUnrecognizedExtension)
	require.Contains(t, err.Error(), "unrecognized file extension")

	_, err = Load(filepath.Join(dir, "missing.yaml"))
	require.ErrorIs(t, err, fs.ErrNotExist)
	var de *DecodeError
	require.ErrorAs(t, err, &de)

	big := filepath.Join(dir, "big.yaml")
	data := []byte("name: x\nmetadata:\n  pad: \"" + strings.Repeat("a", MaxFlowBytes) + "\"\n")
	require.NoError(t, os.WriteFile(big, data, 0o600))
	_, err = Load(big)
	require.ErrorIs(t, err, ErrTooLarge)
	_, err = Parse(data, "big.yaml")
	require.ErrorIs(t, err, ErrTooLarge)
	require.Contains(t, err.Error(), "larger than")

	// JSON files: JSON escapes that the YAML parser rejects still load.
	js := filepath.Join(dir, "flow.json")
	require.NoError(t, os.WriteFile(js, []byte(`{"name":"a\/b","output":{"$input":"x"}}`), 0o600))
	f, err := Load(js)
	require.NoError(t, err)
	require.Equal(t, "a/b", f.Name)
	require.Nil(t, f.Source)

	jsl := filepath.Join(dir, "flow.jsonl")
	require.NoError(t, os.WriteFile(jsl, []byte("{\n\t\"name\": \"tabs\",\n\t\"version\": 1\n}"), 0o600))
	_, err = Load(jsl)
	require.EqualError(t, err, jsl+":3:13: invalid type for `version`: expected a string, got number 1 (quote it)")
}

func TestAliasBomb(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	b.WriteString("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i < 10; i++ {
		b.WriteString("a")
		b.WriteString(string(rune('0' + i)))
		b.WriteString(": &a")
		b.WriteString(string(rune('0' + i)))
		b.WriteString(" [")
		for j := range 10 {
			if j > 0 {
				b.WriteString(", ")
			}
			b.WriteString("*a")
			b.WriteString(string(rune('0' + i - 1)))
		}
		b.WriteString("]\n")
	}
	b.WriteString("metadata: {bomb: *a9}\n")
	start := time.Now()
	_, err := Parse([]byte(b.String()), "bomb.yaml")
	require.Error(t, err)
	require.Contains(t, err.Error(), "excessive aliasing")
	require.Less(t, time.Since(start), 5*time.Second)
}

func TestDecodeFields(t *testing.T) {
	t.Parallel()
	src := `schema: https://stepflow.org/schemas/v1/flow.json
name: demo
description: all the fields
version: "1.0"
schemas:
  type: object
  required: [input]
  $defs:
    Msg: {type: string}
  properties:
    input: {type: object, properties: {q: {$ref: "#/$defs/Msg"}}}
    output: {type: object}
    variables: {type: object, properties: {region: {type: string}}}
    steps:
      type: object
      properties:
        b: {type: object}
        a: {type: string}
steps:
  - id: a
    component: /builtin/eval
    skipIf: {$input: skip}
    on_error: {action: useDefault}
    input: {q: {$input: q}}
    mustExecute: true
    metadata: {ui: {x: 1}}
  - id: b
    component: /mock/b
    onError: {action: retry, maxAttempts: 5, initialDelayMs: 20, backoffCoefficient: 1.5, maxDelayMs: 1000}
    input: {$step: a}
  - id: c
    component: /mock/c
    onError: {action: useDefault, defaultValue: {$step: a}}
    onError2: ignored
    mustExecute: null
    metadata: {}
output:
  b: {$step: b}
  v: {$variable: region, default: eu}
test:
  stepflow_config: {plugins: {}}
  cases:
    - name: one
      description: first
      input: {q: hi}
examples:
  - name: ex
    input: {q: example}
metadata: {owner: me}
`
	f, err := Parse([]byte(src), "demo.yaml")
	require.NoError(t, err)
	require.Equal(t, "demo", f.Name)
	require.Equal(t, "all the fields", f.Description)
	require.Equal(t, "1.0", f.Version)
	require.Equal(t, `{"Msg":{"type":"string"}}`, value.String(f.Schemas.Defs))
	require.Equal(t, []string{"b", "a"}, f.Schemas.StepOrder)
	require.Len(t, f.Steps, 3)

	a := f.Steps[0]
	require.Equal(t, OnErrorFail, a.OnError.Kind(), "on_error is not an alias")
	require.True(t, a.MustExecute)
	require.Equal(t, `{"ui":{"x":1}}`, value.String(a.Metadata))

	b := f.Steps[1]
	require.Equal(t, OnErrorRetry, b.OnError.Action)
	require.Equal(t, RetryPolicy{MaxAttempts: 5, InitialDelay: 20 * time.Millisecond, BackoffCoefficient: 1.5, MaxDelay: time.Second}, b.OnError.Retry)

	c := f.Steps[2]
	require.Equal(t, `{"$step":"a"}`, value.String(c.OnError.DefaultValue), "defaultValue is a literal")
	require.False(t, c.MustExecute)
	require.Nil(t, c.Metadata)
	require.Nil(t, c.Input)

	require.NotNil(t, f.Test.Config, "stepflow_config is an alias of config")
	require.Equal(t, "first", f.Test.Cases[0].Description)
	require.Nil(t, f.Test.Cases[0].Output)
	require.Equal(t, "ex", f.Examples[0].Name)
	require.Equal(t, `{"owner":"me"}`, value.String(f.Metadata))

	pos, ok := f.Source.Lookup("$.steps[1].onError.maxAttempts")
	require.True(t, ok)
	require.Equal(t, value.Pos{Line: 29, Col: 43}, pos)

	want := `{"name":"demo","description":"all the fields","version":"1.0",` +
		`"schemas":{"type":"object","$defs":{"Msg":{"type":"string"}},"properties":{` +
		`"input":{"type":"object","properties":{"q":{"$ref":"#/$defs/Msg"}}},"output":{"type":"object"},` +
		`"variables":{"type":"object","properties":{"region":{"type":"string"}}},` +
		`"steps":{"type":"object","properties":{"b":{"type":"object"},"a":{"type":"string"}}}}},` +
		`"steps":[{"id":"a","component":"/builtin/eval","input":{"q":{"$input":"$.q"}},"mustExecute":true,"metadata":{"ui":{"x":1}}},` +
		`{"id":"b","component":"/mock/b","onError":{"action":"retry","maxAttempts":5,"initialDelayMs":20,"backoffCoefficient":1.5,"maxDelayMs":1000},"input":{"$step":"a"}},` +
		`{"id":"c","component":"/mock/c","onError":{"action":"useDefault","defaultValue":{"$step":"a"}}}],` +
		`"output":{"b":{"$step":"b"},"v":{"$variable":"region","default":"eu"}},` +
		`"test":{"config":{"plugins":{}},"cases":[{"name":"one","description":"first","input":{"q":"hi"}}]},` +
		`"examples":[{"name":"ex","input":{"q":"example"}}],"metadata":{"owner":"me"}}`
	require.Equal(t, want, value.String(f.Value()))
}

func TestFromValueErrors(t *testing.T) {
	t.Parallel()
	_, err := FromValue(value.MustParse(`{"steps":[{"id":"a"}]}`))
	require.EqualError(t, err, "$.steps[0]: missing field `component` in step")
	_, err = FromValue("flow")
	require.EqualError(t, err, "$: a flow must be an object, got string")
	var de *DecodeError
	require.True(t, errors.As(err, &de))
	require.Equal(t, "$", de.Path)
}
