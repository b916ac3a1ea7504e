package cli

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// `stepflow validate` reads the files and starts nothing: every upstream
// test config (whose plugins run `uv`, `echo`, or reach a URL) validates
// every flow next to it with an empty PATH, where starting any plugin
// process would fail with `executable file not found`.
func TestValidateUpstreamConfigsStartsNothing(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	root := "../../test/conformance/upstream"
	// Flows that do not validate under their directory's config, with the
	// diagnostic each gets: error_handling_stdio.yaml routes through the
	// inline `test.config` it carries instead. (basic_mcp.yaml reaches the
	// builtin plugin through `/{*component}`, which hands it the name
	// /builtin/eval: a builtin's since upstream 0.13's root routes, see
	// builtin.Known.)
	broken := map[string]string{
		"http/error_handling_stdio.yaml": "uses component '/test_stdio/error_test', which no route matches",
	}
	var configs, withUV, flows int
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.Name() != "stepflow-config.yml" {
			return err
		}
		configs++
		text, err := os.ReadFile(path)
		require.NoError(t, err)
		if strings.Contains(string(text), "command: uv") {
			withUV++
		}
		dir := filepath.Dir(path)
		entries, err := os.ReadDir(dir)
		require.NoError(t, err)
		for _, e := range entries {
			if e.IsDir() || !strings.HasSuffix(e.Name(), ".yaml") {
				continue
			}
			flows++
			f := filepath.Join(dir, e.Name())
			rel, err := filepath.Rel(root, f)
			require.NoError(t, err)
			r := stepflow(t, nil, "", "validate", "--flow", f, "--config", path)
			require.NotContains(t, r.stdout+r.stderr, "start:", "%s: validate started a plugin", rel)
			require.NotContains(t, r.stdout+r.stderr, "executable file not found", rel)
			if want, ok := broken[filepath.ToSlash(rel)]; ok {
				require.Equal(t, 1, r.code, "%s: %s%s", rel, r.stdout, r.stderr)
				require.Contains(t, r.stdout, want, rel)
				continue
			}
			require.Equal(t, 0, r.code, "%s with %s: %s%s", rel, path, r.stdout, r.stderr)
		}
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, 8, configs, "upstream 0.9.0 has 8 test configs")
	require.Equal(t, 2, withUV, "the python and http configs run uv")
	require.Greater(t, flows, 20)
}

const missingProgramConfig = `plugins:
  builtin:
    type: builtin
  tools:
    type: stepflow
    command: stepflow-test-no-such-program
routes:
  "/tools/{*component}":
    - plugin: tools
  "/builtin/{*component}":
    - plugin: builtin
`

// --type-check starts the plugins (a missing program is then an error
// naming the plugin entry); the default does not.
func TestValidateTypeCheckStartsPlugins(t *testing.T) {
	dir := t.TempDir()
	cfg := tempFile(t, dir, "stepflow-config.yml", missingProgramConfig)
	f := tempFile(t, dir, "flow.yaml", `name: tools
description: uses a plugin process
steps:
  - id: a
    component: /tools/shout
    input: { text: hi }
output: { $step: a }
`)
	r := stepflow(t, nil, "", "validate", "--flow", f, "--config", cfg)
	require.Equal(t, 0, r.code, r.stdout+r.stderr)
	require.Contains(t, r.stdout, "Validation passed")

	r = stepflow(t, nil, "", "validate", "--flow", f, "--config", cfg, "--type-check")
	require.Equal(t, 1, r.code, r.stdout+r.stderr)
	require.Contains(t, r.stderr, cfg+`:5:5: plugin "tools": start:`)
	require.Contains(t, r.stderr, "stepflow-test-no-such-program")

	r = stepflow(t, nil, "", "validate", "--flow", f, "--config", cfg, "--strict")
	require.Equal(t, 2, r.code, r.stdout+r.stderr)
	require.Contains(t, r.stderr, "--strict requires --type-check")
}

const builtinConfig = `plugins:
  builtin:
    type: builtin
routes:
  "/builtin/{*component}":
    - plugin: builtin
`

// --type-check checks step inputs against the components' input schemas:
// literal values and required properties.
func TestValidateTypeCheckInputs(t *testing.T) {
	dir := t.TempDir()
	cfg := tempFile(t, dir, "stepflow-config.yml", builtinConfig)
	f := tempFile(t, dir, "flow.yaml", `name: blobs
description: reads blobs
schemas:
  type: object
  properties:
    input:
      type: object
      properties: { id: { type: string } }
steps:
  - id: wrong_type
    component: /builtin/get_blob
    input: { blob_id: 5 }
  - id: missing
    component: /builtin/get_blob
    input: { other: { $input: id } }
  - id: fine
    component: /builtin/get_blob
    input: { blob_id: { $input: id } }
output:
  a: { $step: wrong_type }
  b: { $step: missing }
  c: { $step: fine }
`)
	r := stepflow(t, nil, "", "validate", "--flow", f, "--config", cfg)
	require.Equal(t, 0, r.code, "without --type-check the schemas are not consulted: %s%s", r.stdout, r.stderr)

	r = stepflow(t, nil, "", "validate", "--flow", f, "--config", cfg, "--type-check")
	require.Equal(t, 1, r.code, r.stdout+r.stderr)
	require.Contains(t, r.stdout, f+":12:23: error: Step 'wrong_type' input does not match the input schema of '/builtin/get_blob': got number, want string ($.steps[0].input.blob_id)")
	require.Contains(t, r.stdout, f+":15:12: error: Step 'missing' input does not match the input schema of '/builtin/get_blob': missing property 'blob_id'")
	require.NotContains(t, r.stdout, "'fine'")
	require.Contains(t, r.stdout, "0 fatal, 2 errors")

	r = stepflow(t, nil, "", "validate", "--flow", f, "--config", cfg, "--type-check", "--format", "json")
	require.Equal(t, 1, r.code)
	require.Contains(t, r.stdout, `"kind":"stepInputMismatch","code":2301,"level":"error"`)
}

// A component its plugin does not list cannot be type-checked: a warning,
// and under --strict an error (its output is untyped). (Mock components
// always declare both schemas, so "declares no output schema" is covered
// in pkg/flow.)
func TestValidateStrictUntypedOutputs(t *testing.T) {
	dir := t.TempDir()
	cfg := tempFile(t, dir, "stepflow-config.yml", `plugins:
  mock:
    type: mock
    components:
      /typed:
        input_schema: { type: object }
        output_schema: { type: object }
        behaviors: {}
routes:
  "/mock/{*component}":
    - plugin: mock
`)
	f := tempFile(t, dir, "flow.yaml", `name: mocks
description: listed and unlisted
steps:
  - id: typed
    component: /mock/typed
    input: {}
  - id: unlisted
    component: /mock/absent
    input: {}
output: [{ $step: typed }, { $step: unlisted }]
`)
	r := stepflow(t, nil, "", "validate", "--flow", f, "--config", cfg, "--type-check")
	require.Equal(t, 0, r.code, r.stdout+r.stderr)
	require.Contains(t, r.stdout, f+":8:16: warning: Step 'unlisted' uses component '/mock/absent', which its plugin does not list: its input is not type-checked")

	r = stepflow(t, nil, "", "validate", "--flow", f, "--config", cfg, "--type-check", "--strict")
	require.Equal(t, 1, r.code, r.stdout+r.stderr)
	require.Contains(t, r.stdout, f+":8:16: error: Step 'unlisted' uses component '/mock/absent', which its plugin does not list: its output is untyped")
	require.NotContains(t, r.stdout, "Step 'typed'")
}
