package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/stepflow-go/stepflow/pkg/value"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type result struct {
	stdout, stderr string
	code           int
}

// stepflow runs the CLI in-process.
func stepflow(t *testing.T, env map[string]string, stdin string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	code := Execute(context.Background(), args, IO{
		Stdin:     strings.NewReader(stdin),
		Stdout:    &out,
		Stderr:    &errOut,
		Getenv:    func(k string) string { v, _ := lookup(k); return v },
		LookupEnv: lookup,
		Environ: func() []string {
			var kv []string
			for k, v := range env {
				kv = append(kv, k+"="+v)
			}
			return kv
		},
	})
	return result{out.String(), errOut.String(), code}
}

func tempFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	return p
}

const greetFlow = `name: greet
description: greets
schemas:
  type: object
  properties:
    input:
      type: object
      properties: { name: { type: string } }
      required: [name]
steps:
  - id: msgs
    component: /builtin/create_messages
    input:
      system_instructions: "Be brief"
      user_prompt: { $input: name }
output:
  greeting: { $input: name }
  role: { $step: msgs, path: "$.messages[1].role" }
`

func TestConformanceUpstreamFlows(t *testing.T) {
	t.Parallel()
	root := "../../test/conformance/upstream/"
	r := stepflow(t, nil, "", "test", root+"basic.yaml", root+"empty", root+"builtins", root+"mock", root+"sql-state")
	require.Equal(t, 0, r.code, r.stdout+r.stderr)
	require.Contains(t, r.stdout, "Total test cases: 21\nPassed: 21\nFailed: 0\n")
}

func TestRunBatchWritesResultsInOrder(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := tempFile(t, dir, "flow.yaml", greetFlow)
	var in strings.Builder
	for i := range 500 {
		fmt.Fprintf(&in, `{"name":"n%d"}`+"\n", i)
	}
	items := tempFile(t, dir, "items.jsonl", in.String())
	r := stepflow(t, nil, "", "run", "--flow", f, "--inputs", items, "--max-concurrent", "7")
	require.Equal(t, 0, r.code, r.stderr)
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	require.Len(t, lines, 500)
	for i, l := range lines {
		require.Equal(t, fmt.Sprintf(`{"outcome":"success","result":{"greeting":"n%d","role":"user"}}`, i), l)
	}
	require.Contains(t, r.stderr, "500 succeeded, 0 failed")

	out := filepath.Join(dir, "out.jsonl")
	r = stepflow(t, nil, "", "run", "--flow", f, "--inputs", items, "--output", out, "--quiet")
	require.Equal(t, 0, r.code, r.stderr)
	require.Empty(t, r.stdout)
	require.Empty(t, r.stderr)
	data, err := os.ReadFile(out)
	require.NoError(t, err)
	require.Equal(t, strings.Join(lines, "\n")+"\n", string(data))
}

func TestRunExitCodesAndBadInput(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := tempFile(t, dir, "flow.yaml", greetFlow)

	// An item failing the input schema fails alone; exit 3.
	items := tempFile(t, dir, "some-bad.jsonl", "{\"name\":\"a\"}\n{\"nom\":\"b\"}\n{\"name\":\"c\"}\n")
	r := stepflow(t, nil, "", "run", "--flow", f, "--inputs", items, "-q")
	require.Equal(t, ExitItemsFailed, r.code)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	require.Len(t, lines, 3)
	require.Contains(t, lines[1], `"code":400`)
	require.Contains(t, lines[1], `missing property 'name'`)
	require.Contains(t, lines[2], `"greeting":"c"`)

	// A malformed line is reported with its place before anything runs.
	bad := tempFile(t, dir, "malformed.jsonl", "{\"name\":\"a\"}\n{\"name\":\"b\"}\n{\"name\": oops}\n")
	r = stepflow(t, nil, "", "run", "--flow", f, "--inputs", bad, "-q")
	require.Equal(t, ExitFailure, r.code)
	require.Empty(t, r.stdout)
	require.Contains(t, r.stderr, "malformed.jsonl:3:10: invalid JSON")

	// ... or becomes a failed item.
	r = stepflow(t, nil, "", "run", "--flow", f, "--inputs", bad, "-q", "--on-invalid-line", "fail-item")
	require.Equal(t, ExitItemsFailed, r.code)
	lines = strings.Split(strings.TrimSpace(r.stdout), "\n")
	require.Len(t, lines, 3)
	require.Contains(t, lines[2], `malformed.jsonl:3:10: invalid JSON`)

	// An empty batch succeeds with no output.
	empty := tempFile(t, dir, "empty.jsonl", "")
	r = stepflow(t, nil, "", "run", "--flow", f, "--inputs", empty, "-q")
	require.Equal(t, ExitOK, r.code, r.stderr)
	require.Empty(t, r.stdout)

	// Usage errors.
	for _, args := range [][]string{
		{"run", "--flow", f, "--inputs", items, "--max-concurrent", "0"},
		{"run", "--inputs", items},
		{"run", "--flow", f, "--inputs", items, "--input-json", "{}"},
		{"run", "--flow", f, "--bogus"},
	} {
		r = stepflow(t, nil, "", args...)
		require.Equal(t, ExitUsage, r.code, "%v: %s", args, r.stderr)
	}

	// A flow that does not load.
	broken := tempFile(t, dir, "broken.yaml", "steps:\n  - id: a\n    component: /builtin/create_messages\n    onError: { action: explode }\n")
	r = stepflow(t, nil, "", "run", "--flow", broken, "--input-json", "{}")
	require.Equal(t, ExitFailure, r.code)
	require.Contains(t, r.stderr, "broken.yaml:4:")
}

func TestRunSingleMode(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := tempFile(t, dir, "flow.yaml", greetFlow)
	r := stepflow(t, nil, `{"name":"Ada"}`, "run", "--flow", f)
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, `{"outcome":"success","result":{"greeting":"Ada","role":"user"}}`+"\n", r.stdout)

	r = stepflow(t, nil, "name: Ada\n", "run", "--flow", f, "--stdin-format", "yaml")
	require.Equal(t, 0, r.code, r.stderr)

	out := filepath.Join(dir, "out.yaml")
	r = stepflow(t, nil, "", "run", "--flow", f, "--input-yaml", "{name: Ada}", "--output", out)
	require.Equal(t, 0, r.code, r.stderr)
	data, err := os.ReadFile(out)
	require.NoError(t, err)
	require.Equal(t, "outcome: success\nresult:\n  greeting: Ada\n  role: user\n", string(data))

	r = stepflow(t, nil, "", "run", "--flow", f, "--input-json", `{}`)
	require.Equal(t, ExitItemsFailed, r.code)
	require.Contains(t, r.stdout, `"outcome":"failed"`)
}

func TestRunVariablesAndOverrides(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := tempFile(t, dir, "flow.yaml", `
schemas:
  type: object
  properties:
    variables:
      type: object
      properties:
        region: { type: string, default: us }
        retries: { type: integer }
        token: { type: string, is_secret: true, pattern: "^tok-" }
steps:
  - id: msgs
    component: /builtin/create_messages
    input: { system_instructions: "Be brief", user_prompt: { $input: question } }
output:
  region: { $variable: region }
  retries: { $variable: retries }
  first_role: { $step: msgs, path: "$.messages[0].role" }
  all: { $step: msgs }
`)
	r := stepflow(t, nil, "", "run", "--flow", f, "--input-json", `{"question":"Hi"}`)
	require.Equal(t, `{"outcome":"success","result":{"region":"us","retries":0,"first_role":"system","all":{"messages":[{"role":"system","content":"Be brief"},{"role":"user","content":"Hi"}]}}}`+"\n", r.stdout)

	r = stepflow(t, map[string]string{"STEPFLOW_VAR_RETRIES": "5", "STEPFLOW_VAR_REGION": "ap"}, "", "run", "--flow", f, "--input-json", `{"question":"Hi"}`,
		"--env-variables", "--variables-json", `{"region":"eu"}`,
		"--overrides-json", `{"msgs":{"value":{"input":{"system_instructions":null,"user_prompt":"patched"}}}}`)
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, `{"outcome":"success","result":{"region":"eu","retries":5,"first_role":"user","all":{"messages":[{"role":"user","content":"patched"}]}}}`+"\n", r.stdout)

	// A bad secret is reported without its value.
	r = stepflow(t, nil, "", "--log-level", "debug", "run", "--flow", f, "--input-json", `{"question":"Hi"}`, "--variables-json", `{"token":"hunter2-secret"}`)
	require.Equal(t, ExitFailure, r.code)
	require.Contains(t, r.stderr, "token")
	require.NotContains(t, r.stderr+r.stdout, "hunter2-secret")

	r = stepflow(t, nil, "", "run", "--flow", f, "--input-json", `{}`, "--overrides-json", `{"nope":{"value":{}}}`)
	require.Equal(t, ExitFailure, r.code)
	require.Contains(t, r.stderr, "Step 'nope' not found in workflow")
}

func TestValidateNamesThePlace(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := tempFile(t, dir, "flow.yaml", `name: v
description: d
steps:
  - id: a
    component: /builtin/create_messages
    input: { user_prompt: { $step: later } }
  - id: later
    component: /nowhere/thing
output: { $step: a }
`)
	r := stepflow(t, nil, "", "validate", "--flow", f)
	require.Equal(t, ExitFailure, r.code)
	require.Contains(t, r.stdout, "flow.yaml:6:")
	require.Contains(t, r.stdout, "later")
	require.Contains(t, r.stdout, "/nowhere/thing")

	r = stepflow(t, nil, "", "run", "--flow", f, "--input-json", "{}")
	require.Equal(t, ExitFailure, r.code)
	require.Empty(t, r.stdout, "diagnostics go to stderr")
	require.Contains(t, r.stderr, "flow.yaml:6:")

	ok := tempFile(t, dir, "ok.yaml", greetFlow)
	r = stepflow(t, nil, "", "validate", "--flow", ok, "--format", "json")
	require.Equal(t, 0, r.code, r.stdout+r.stderr)
	v, err := value.ParseString(r.stdout)
	require.NoError(t, err)
	n, _ := v.(*value.Object).Get("numError")
	require.Equal(t, value.Number("0"), n)
}

func TestVisualize(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := tempFile(t, dir, "flow.yaml", `name: viz
steps:
  - { id: a, component: /builtin/create_messages, input: { user_prompt: { $input: q } } }
  - { id: b, component: /builtin/put_blob, input: { data: { $step: a } } }
  - { id: c, component: /builtin/put_blob, input: { data: 1 } }
output: { $if: { $input: flag }, then: { $step: b }, else: { $step: c } }
`)
	r := stepflow(t, nil, "", "visualize", f)
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, `digraph "viz"`)
	require.Contains(t, r.stdout, "step_a -> step_b;")
	require.Contains(t, r.stdout, "step_b -> output [style=dashed];")
	require.Contains(t, r.stdout, "input -> step_a;")

	r = stepflow(t, nil, "", "visualize", "--format", "mermaid", f)
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "flowchart TD")
	require.Contains(t, r.stdout, "step_c -.-> output")

	// A flow that does not validate is not drawn: validate's messages on
	// stderr, exit 1, with either format and with -o.
	bad := tempFile(t, dir, "bad.yaml", `name: viz
steps:
  - { id: a, component: /builtin/put_blob, input: { data: { $step: nope } } }
output: { $step: a }
`)
	diag := bad + ":3:59: fatal: Step 'a' references undefined step 'nope' ($.steps[0].input.data)\n"
	for _, args := range [][]string{{bad}, {"--format", "mermaid", bad}, {"-o", filepath.Join(dir, "bad.dot"), bad}} {
		r = stepflow(t, nil, "", append([]string{"visualize"}, args...)...)
		require.Equal(t, ExitFailure, r.code, args)
		require.Empty(t, r.stdout, args)
		require.Equal(t, diag+"📊 Validation results: 1 fatal, 0 errors, 0 warnings\nError: flow validation failed\n", r.stderr, args)
	}
	require.NoFileExists(t, filepath.Join(dir, "bad.dot"))
	v := stepflow(t, nil, "", "validate", "--flow", bad)
	require.Equal(t, ExitFailure, v.code)
	require.Contains(t, v.stdout, diag, "the same message as validate")
}

func TestListComponents(t *testing.T) {
	t.Parallel()
	r := stepflow(t, nil, "", "list-components", "--format", "json", "--config", "../../test/conformance/upstream/stepflow-config.yml")
	require.Equal(t, 0, r.code, r.stderr)
	v, err := value.ParseString(r.stdout)
	require.NoError(t, err)
	comps, _ := v.(*value.Object).Get("components")
	require.Len(t, comps, 8)
	require.Contains(t, r.stdout, `"resolvedPath":"/builtin/eval"`)
}
