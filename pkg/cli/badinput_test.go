package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/coordinator"
	"github.com/stepflow-go/stepflow/pkg/flow"
)

// Every bad flow of docs/reliability.md ("Bad input") is refused by
// `stepflow validate`, `stepflow run` and `stepflow submit` alike, with
// the same file:line:col, before anything runs or any run is created.
func TestBadFlowsNamedByValidateRunAndSubmit(t *testing.T) {
	t.Parallel()
	url := startCluster(t, 1, func(cfg *coordinator.Config) { cfg.MaxFlowBytes = 4096 })
	dir := t.TempDir()
	items := tempFile(t, dir, "items.jsonl", "{\"name\":\"a\"}\n")
	cfg := tempFile(t, dir, "stepflow-config.yml", "plugins:\n  builtin: { type: builtin }\nroutes:\n  /builtin/{*component}:\n    - plugin: builtin\n")

	for _, tc := range []struct {
		name, src string
		// errLine is the one "Error: …" line of a flow that does not
		// load; diags are the diagnostic lines of one that does not
		// validate (validate prints warnings too).
		errLine string
		diags   []string
	}{
		{
			name:    "invalid.yaml",
			src:     "name: bad\nsteps:\n  - id: a\n    component: /builtin/put_blob\n    input: { data: [1, 2\n",
			errLine: "invalid.yaml:6:1: invalid YAML: did not find expected ',' or ']' (while parsing a flow sequence that starts at line 5, column 20)",
		},
		{
			name:    "duplicate.yaml",
			src:     "name: dup\nsteps:\n  - id: a\n    component: /builtin/put_blob\n    component: /builtin/get_blob\n",
			errLine: `duplicate.yaml:5:5: duplicate key "component" (first at line 4, column 5)`,
		},
		{
			name:    "shape.yaml",
			src:     "name: shape\nsteps:\n  - id: a\n    component: /builtin/put_blob\n    input:\n      data: { $step: 42 }\n",
			errLine: "shape.yaml:6:22: invalid expression: $step must be a string step id, got number",
		},
		{
			name:    "path.yaml",
			src:     "name: path\nsteps:\n  - id: a\n    component: /builtin/put_blob\n    input:\n      data: { $input: \"$..[[\" }\n",
			errLine: `path.yaml:6:23: invalid expression: invalid JSON path "$..[[": unclosed bracket at position 3`,
		},
		{
			name: "unknown.yaml",
			src:  "name: unknown\ndescription: d\nsteps:\n  - id: a\n    component: /builtin/put_blob\n    input:\n      data: { $step: nosuch, path: x }\n      blob_type: data\noutput: { $step: a }\n",
			diags: []string{
				"unknown.yaml:7:13: fatal: Step 'a' references undefined step 'nosuch' ($.steps[0].input.data)",
			},
		},
		{
			name: "cycle.yaml",
			src: "name: cycle\ndescription: d\nsteps:\n  - id: a\n    component: /builtin/put_blob\n    input: { data: { $step: b }, blob_type: data }\n" +
				"  - id: b\n    component: /builtin/put_blob\n    input: { data: { $step: a }, blob_type: data }\noutput: { $step: b }\n",
			diags: []string{
				"cycle.yaml:6:20: fatal: Step 'a' references step 'b', which is defined later (steps may only reference earlier steps) ($.steps[0].input.data)",
				"cycle.yaml:4:5: fatal: Steps form a dependency cycle: 'a' -> 'b' -> 'a' ($.steps[0])",
			},
		},
		{
			name: "component.yaml",
			src:  "name: component\ndescription: d\nsteps:\n  - id: a\n    component: builtin/put_blob\n    input: { data: 1, blob_type: data }\noutput: { $step: a }\n",
			diags: []string{
				"component.yaml:5:16: error: Invalid component 'builtin/put_blob' in step 'a': Component path must start with '/' ($.steps[0].component)",
			},
		},
	} {
		f := tempFile(t, dir, tc.name, tc.src)
		validate := stepflow(t, nil, "", "validate", "--flow", f, "--config", cfg)
		run := stepflow(t, nil, "", "run", "--flow", f, "--config", cfg, "--inputs", items, "-q")
		submit := stepflow(t, nil, "", "submit", "--url", url, "--flow", f, "--config", cfg, "--inputs", items, "-q", "--new-run")
		for cmd, r := range map[string]result{"validate": validate, "run": run, "submit": submit} {
			require.Equal(t, ExitFailure, r.code, "%s %s: %s%s", cmd, tc.name, r.stdout, r.stderr)
			if tc.errLine != "" {
				require.Empty(t, r.stdout, "%s %s", cmd, tc.name)
				require.Equal(t, "Error: "+filepath.Join(dir, tc.errLine)+"\n", r.stderr, "%s %s", cmd, tc.name)
				continue
			}
			out := r.stderr
			if cmd == "validate" {
				out = r.stdout
			}
			for _, d := range tc.diags {
				require.Contains(t, out, filepath.Join(dir, d)+"\n", "%s %s", cmd, tc.name)
			}
			require.True(t, strings.HasSuffix(r.stderr, "Error: flow validation failed\n") ||
				strings.HasSuffix(r.stderr, "Error: flow validation failed: the coordinator did not store the flow\n"), "%s %s: %s", cmd, tc.name, r.stderr)
		}
	}
	require.Empty(t, runsJSON(t, nil, url), "no run was created")
}

// A component that no route reaches: validate and run know the config;
// submit checks it with --config, and without, each item fails on the
// worker with the step and the component named.
func TestUnroutableComponent(t *testing.T) {
	t.Parallel()
	url := startCluster(t, 1, nil)
	dir := t.TempDir()
	items := tempFile(t, dir, "items.jsonl", "{\"x\":1}\n{\"x\":2}\n")
	cfg := tempFile(t, dir, "stepflow-config.yml", "plugins:\n  builtin: { type: builtin }\nroutes:\n  /builtin/{*component}:\n    - plugin: builtin\n")
	f := tempFile(t, dir, "unroutable.yaml", "name: unroutable\ndescription: d\nsteps:\n  - id: a\n    component: /python/nothing\n    input: { x: 1 }\noutput: { $step: a }\n")
	diag := filepath.Join(dir, "unroutable.yaml") + ":5:16: error: Step 'a' uses component '/python/nothing', which no route matches ($.steps[0].component)\n"

	r := stepflow(t, nil, "", "validate", "--flow", f, "--config", cfg)
	require.Equal(t, ExitFailure, r.code)
	require.Equal(t, diag+"📊 Validation results: 0 fatal, 1 errors, 0 warnings\n", r.stdout)
	r = stepflow(t, nil, "", "run", "--flow", f, "--config", cfg, "--inputs", items, "-q")
	require.Equal(t, ExitFailure, r.code)
	require.Equal(t, diag+"📊 Validation results: 0 fatal, 1 errors, 0 warnings\nError: flow validation failed\n", r.stderr)
	r = stepflow(t, nil, "", "submit", "--url", url, "--flow", f, "--config", cfg, "--inputs", items, "-q")
	require.Equal(t, ExitFailure, r.code)
	require.Equal(t, diag+"📊 Validation results: 0 fatal, 1 errors, 0 warnings\nError: flow validation failed\n", r.stderr)
	require.Empty(t, runsJSON(t, nil, url))

	// Without --config the coordinator cannot know the workers' routes.
	r = stepflow(t, nil, "", "submit", "--url", url, "--flow", f, "--inputs", items, "-q")
	require.Equal(t, ExitItemsFailed, r.code, r.stderr)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	require.Len(t, lines, 2)
	for _, l := range lines {
		require.Equal(t, `{"outcome":"failed","error":{"code":500,"message":"error routing component","data":{"stack":[{"error":`+
			`"no route matches component /python/nothing (routes: /builtin/{*component})","attachments":["step \"a\", component /python/nothing"]}]}}}`, l)
	}
}

// A misspelt builtin: builtins are known statically, so validate and run
// refuse the flow at the step's component, with the default routes and
// with a config's.
func TestUnknownBuiltin(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	items := tempFile(t, dir, "items.jsonl", "{\"x\":1}\n")
	cfg := tempFile(t, dir, "stepflow-config.yml", "plugins:\n  builtin: { type: builtin }\nroutes:\n  /builtin/{*component}:\n    - plugin: builtin\n")
	f := tempFile(t, dir, "typo.yaml", "name: typo\ndescription: d\nsteps:\n  - id: store\n    component: /builtin/put_blob\n    input: { data: 1, blob_type: data }\n"+
		"  - id: restore\n    component: /builtin/get_blb\n    input: { blob_id: { $step: store, path: blob_id } }\noutput: { $step: restore }\n")
	diag := filepath.Join(dir, "typo.yaml") + ":8:16: error: Step 'restore' uses component '/builtin/get_blb', but the builtin plugin it routes to has no component '/get_blb' ($.steps[1].component)\n"

	for _, args := range [][]string{nil, {"--config", cfg}} {
		r := stepflow(t, nil, "", append([]string{"validate", "--flow", f}, args...)...)
		require.Equal(t, ExitFailure, r.code)
		require.Equal(t, diag+"📊 Validation results: 0 fatal, 1 errors, 0 warnings\n", r.stdout)
		r = stepflow(t, nil, "", append([]string{"run", "--flow", f, "--inputs", items, "-q"}, args...)...)
		require.Equal(t, ExitFailure, r.code)
		require.Equal(t, "", r.stdout)
		require.Equal(t, diag+"📊 Validation results: 0 fatal, 1 errors, 0 warnings\nError: flow validation failed\n", r.stderr)
	}
}

// An oversized flow: `run` and `validate` stop at flow.MaxFlowBytes
// (16 MiB) before parsing; the coordinator at --max-flow-bytes.
func TestOversizedFlow(t *testing.T) {
	t.Parallel()
	url := startCluster(t, 0, func(cfg *coordinator.Config) { cfg.MaxFlowBytes = 4096 })
	dir := t.TempDir()

	huge := filepath.Join(dir, "huge.yaml")
	fh, err := os.Create(huge)
	require.NoError(t, err)
	_, err = fh.WriteString("name: huge\nsteps: []\noutput: \"")
	require.NoError(t, err)
	_, err = fh.Write([]byte(strings.Repeat("x", flow.MaxFlowBytes)))
	require.NoError(t, err)
	require.NoError(t, fh.Close())
	for _, cmd := range []string{"validate", "run", "submit"} {
		args := []string{cmd, "--flow", huge}
		if cmd == "submit" {
			args = append(args, "--url", url)
		}
		r := stepflow(t, nil, "{}", args...)
		require.Equal(t, ExitFailure, r.code, cmd)
		require.Equal(t, "Error: "+huge+": flow document is larger than 16777216 bytes\n", r.stderr, cmd)
	}

	// Under the CLI's limit, over the coordinator's.
	big := tempFile(t, dir, "big.yaml", "name: big\nsteps: []\noutput: \""+strings.Repeat("x", 5000)+"\"\n")
	r := stepflow(t, nil, "", "run", "--flow", big, "--input-json", "{}")
	require.Equal(t, ExitOK, r.code, r.stderr)
	r = stepflow(t, nil, "", "submit", "--url", url, "--flow", big, "--input-json", "{}")
	require.Equal(t, ExitFailure, r.code)
	require.Equal(t, "Error: store flow: coordinator: the flow is 5026 bytes, more than the coordinator's limit of 4096 bytes (--max-flow-bytes) (HTTP 413)\n", r.stderr)
}

// An item that fails the flow's input schema fails alone, through the
// coordinator and a worker, with the field named; the others succeed.
func TestSubmitItemFailingInputSchema(t *testing.T) {
	t.Parallel()
	url := startCluster(t, 1, nil)
	dir := t.TempDir()
	f := tempFile(t, dir, "flow.yaml", greetFlow)
	items := tempFile(t, dir, "items.jsonl", "{\"name\":\"a\"}\n{\"nom\":\"b\"}\n{\"name\":7}\n{\"name\":\"d\"}\n")
	r := stepflow(t, nil, "", "submit", "--url", url, "--flow", f, "--inputs", items, "-q")
	require.Equal(t, ExitItemsFailed, r.code, r.stderr)
	require.Equal(t, `{"outcome":"success","result":{"greeting":"a","role":"user"}}
{"outcome":"failed","error":{"code":400,"message":"input does not match the flow's input schema: $: missing property 'name'"}}
{"outcome":"failed","error":{"code":400,"message":"input does not match the flow's input schema: $.name: got number, want string"}}
{"outcome":"success","result":{"greeting":"d","role":"user"}}
`, r.stdout)
}

// The coordinator's limits as `stepflow submit` reports them: a
// malformed line is caught before anything is sent; too many items is a
// 413 naming the first item over the limit; too many runs is a 429 that
// submit waits out (--retry-timeout), so the second batch still runs
// once the first has finished, and nothing is lost.
func TestSubmitRefusedByLimits(t *testing.T) {
	t.Parallel()
	url := startCluster(t, 0, func(cfg *coordinator.Config) {
		cfg.MaxItemsPerRun = 3
		cfg.MaxConcurrentRuns = 1
	})
	dir := t.TempDir()
	f := tempFile(t, dir, "flow.yaml", greetFlow)

	bad := tempFile(t, dir, "malformed.jsonl", "{\"name\":\"a\"}\n{\"name\": oops}\n")
	blank := tempFile(t, dir, "blank.jsonl", "{\"name\":\"a\"}\n\n{\"name\":\"c\"}\n")
	for _, cmd := range []string{"run", "submit"} {
		for file, msg := range map[string]string{
			bad:   ":2:10: invalid JSON: invalid character 'o' looking for beginning of value",
			blank: ":2: blank line",
		} {
			args := []string{cmd, "--flow", f, "--inputs", file, "-q"}
			if cmd == "submit" {
				args = append(args, "--url", url)
			}
			r := stepflow(t, nil, "", args...)
			require.Equal(t, ExitFailure, r.code, cmd)
			require.Empty(t, r.stdout, cmd)
			require.Equal(t, "Error: "+file+msg+"\n", r.stderr, cmd)
		}
	}

	four := greetBatch(t, dir, "four.jsonl", 4, 0)
	r := stepflow(t, nil, "", "submit", "--url", url, "--flow", f, "--inputs", four, "-q")
	require.Equal(t, ExitFailure, r.code)
	require.Equal(t, "Error: create run: coordinator: item 3 is over the coordinator's limit of 3 items per run (--max-items-per-run); "+
		"the upload was rejected and no run was created (HTTP 413)\n", r.stderr)
	require.Empty(t, runsJSON(t, nil, url))

	// No worker: the first run stays in progress.
	three := greetBatch(t, dir, "three.jsonl", 3, 0)
	r = stepflow(t, nil, "", "submit", "--url", url, "--flow", f, "--inputs", three, "--no-wait")
	require.Equal(t, ExitOK, r.code, r.stderr)
	first := strings.TrimSpace(r.stdout)
	two := greetBatch(t, dir, "two.jsonl", 2, 0)
	r = stepflow(t, nil, "", "submit", "--url", url, "--flow", f, "--inputs", two, "--no-wait", "--retry-timeout", "0", "-q")
	require.Equal(t, ExitFailure, r.code)
	require.Equal(t, "Error: create run: coordinator: 1 runs are in progress, the coordinator's limit (--max-active-runs); "+
		"retry when one has finished (HTTP 429)\n", r.stderr)

	// With retries, submit waits until the first run is done.
	var stderr syncBuffer
	var stdout bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- Execute(context.Background(), []string{"submit", "--url", url, "--flow", f, "--inputs", two, "--no-wait", "--retry-timeout", "1m", "-q"},
			IO{Stdin: strings.NewReader(""), Stdout: &stdout, Stderr: &stderr, Getenv: func(string) string { return "" }})
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(stderr.String(), "coordinator: 1 runs are in progress, the coordinator's limit (--max-active-runs); "+
		"retry when one has finished (HTTP 429); retrying for up to 1m0s\n") {
		require.True(t, time.Now().Before(deadline), "submit did not report the 429: %s", stderr.String())
		time.Sleep(20 * time.Millisecond)
	}
	r = stepflow(t, nil, "", "runs", "cancel", first, "--url", url)
	require.Equal(t, ExitOK, r.code, r.stderr)
	select {
	case code := <-done:
		require.Equal(t, ExitOK, code, stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatal("submit did not retry")
	}
	second := strings.TrimSpace(stdout.String())
	require.NotEqual(t, first, second)
	running := runsJSON(t, nil, url, "--status", "running")
	require.Len(t, running, 1)
	require.Equal(t, second, running[0].RunID)
	require.Equal(t, 2, running[0].Items.Total)
}
