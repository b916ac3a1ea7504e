package integration

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// runExample runs a command from the repository root with the test's
// stepflow binary and returns stdout; it fails on a non-zero exit unless
// wantCode says otherwise.
func runExample(t *testing.T, wantCode int, name string, args ...string) string {
	t.Helper()
	return runExampleEnv(t, nil, wantCode, name, args...)
}

// runExampleEnv is runExample with env (KEY=VALUE) added to the
// command's environment.
func runExampleEnv(t *testing.T, env []string, wantCode int, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = repoRoot
	cmd.Env = append(append(cmd.Environ(), "STEPFLOW="+stepflowBin), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err, stderr.String())
	}
	require.Equal(t, wantCode, code, "stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	return stdout.String()
}

func lines(s string) []string { return strings.Split(strings.TrimSuffix(s, "\n"), "\n") }

// requireSameJSONLines checks results line by line as JSON values. The
// stepflow-py 0.13 variants of the examples use it: their values travel as
// google.protobuf.Struct/Value, which keep neither the order of object keys
// nor the difference between 3 and 3.0, so the same results can differ in
// those (and only those) from the HTTP variants' bytes.
func requireSameJSONLines(t *testing.T, want, got []string) {
	t.Helper()
	require.Len(t, got, len(want), "results:\n%s", strings.Join(got, "\n"))
	for i := range want {
		require.JSONEq(t, want[i], got[i], "line %d", i+1)
	}
}

func TestExampleHello(t *testing.T) {
	skipShort(t)
	t.Parallel()
	out := runExample(t, 0, stepflowBin, "run", "--flow", "examples/hello/flow.yaml", "--inputs", "examples/hello/items.jsonl", "-q")
	require.Len(t, lines(out), 5)
	out = runExample(t, 3, stepflowBin, "run", "--flow", "examples/hello/flow.yaml", "--inputs", "examples/hello/items-with-failures.jsonl", "-q")
	require.Contains(t, lines(out)[1], `missing property 'topic'`)
}

var dataPipelineWant = []string{
	`{"outcome":"success","result":{"item_id":"item1","processed_data":{"value":100,"category":"A","score":0.1,"doubled":200,"category_name":"alpha","bucket":"small"}}}`,
	`{"outcome":"success","result":{"item_id":"item2","processed_data":{"value":200,"category":"B","score":0.2,"doubled":400,"category_name":"beta","bucket":"large"}}}`,
	`{"outcome":"success","result":{"item_id":"item3","processed_data":{"value":150,"category":"A","score":0.15,"doubled":300,"category_name":"alpha","bucket":"large"}}}`,
}

func TestExampleDataPipeline(t *testing.T) {
	skipShort(t)
	t.Parallel()
	requireVenvs(t)
	out := runExample(t, 0, stepflowBin, "run", "--flow", "examples/data-pipeline/data-pipeline.yaml",
		"--inputs", "examples/data-pipeline/items.jsonl", "--max-concurrent", "20", "-q")
	require.Equal(t, dataPipelineWant, lines(out))
}

// The same flow and items through the stepflow-py 0.13 worker
// (data_worker_013.py, `type: grpc`).
func TestExampleDataPipeline013(t *testing.T) {
	skipShort(t)
	t.Parallel()
	requireGRPC13(t)
	out := runExample(t, 0, stepflowBin, "run", "--config", "examples/data-pipeline/stepflow-config-013.yml",
		"--flow", "examples/data-pipeline/data-pipeline.yaml",
		"--inputs", "examples/data-pipeline/items.jsonl", "--max-concurrent", "20", "-q")
	requireSameJSONLines(t, dataPipelineWant, lines(out))
}

var aiAnalysisWant = []string{
	`{"outcome":"success","result":{"document_id":"doc-1","analysis_type":"sentiment","result":"[gpt-4 t=0.1] The new release is fast and the docs are"}}`,
	`{"outcome":"success","result":{"document_id":"doc-2","analysis_type":"summary","result":"[gpt-4 t=0.1] Quarterly revenue grew 12% while costs f"}}`,
	`{"outcome":"success","result":{"document_id":"doc-3","analysis_type":"classification","result":"[gpt-4 t=0.1] Invoice #4411 for 3 laptops, due in 30 d"}}`,
}

func TestExampleAIAnalysis(t *testing.T) {
	skipShort(t)
	t.Parallel()
	out := runExample(t, 0, "examples/ai-analysis/run.sh", "-q")
	require.Equal(t, aiAnalysisWant, lines(out))
}

// The model call made by a stepflow-py 0.13 component (ai_worker_013.py)
// instead of /builtin/openai: the same answers from the same fake API.
func TestExampleAIAnalysis013(t *testing.T) {
	skipShort(t)
	t.Parallel()
	requireGRPC13(t)
	out := runExampleEnv(t, []string{"FLOW=" + filepath.Join(repoRoot, "examples/ai-analysis/ai-analysis-013.yaml")}, 0, "examples/ai-analysis/run.sh", "--config", "examples/ai-analysis/stepflow-config-013.yml", "-q")
	requireSameJSONLines(t, aiAnalysisWant, lines(out))
}

var apiTestingWant = []string{
	`{"outcome":"success","result":{"test_case":"health_check","passed":true,"details":"expected 200, got 200"}}`,
	`{"outcome":"success","result":{"test_case":"not_found","passed":true,"details":"expected 404, got 404"}}`,
	`{"outcome":"success","result":{"test_case":"user_list","passed":true,"details":"expected 200, got 200"}}`,
}

func TestExampleAPITesting(t *testing.T) {
	skipShort(t)
	t.Parallel()
	requireVenvs(t)
	out := runExample(t, 0, "examples/api-testing/run.sh", "-q")
	require.Equal(t, apiTestingWant, lines(out))
}

// The same test cases through the stepflow-py 0.13 worker (api_worker_013.py).
func TestExampleAPITesting013(t *testing.T) {
	skipShort(t)
	t.Parallel()
	requireGRPC13(t)
	out := runExample(t, 0, "examples/api-testing/run.sh", "--config", "examples/api-testing/stepflow-config-013.yml", "-q")
	requireSameJSONLines(t, apiTestingWant, lines(out))
}

// The nested-batch examples: each input loads `count` items (every 7th
// bad) and the component submits them as a nested run.
var batchProcessorWant = []string{
	`{"outcome":"success","result":{"batch":"small","total_processed":3,"success_count":3,"error_count":0,"summary":{"scored":3,"total_score":3.0}}}`,
	`{"outcome":"success","result":{"batch":"medium","total_processed":10,"success_count":9,"error_count":1,"summary":{"scored":9,"total_score":39.0}}}`,
	`{"outcome":"success","result":{"batch":"with-a-bad-item","total_processed":8,"success_count":7,"error_count":1,"summary":{"scored":7,"total_score":22.0}}}`,
}

func TestExampleBatchProcessor(t *testing.T) {
	skipShort(t)
	t.Parallel()
	requireVenvs(t)
	for _, dir := range []string{"batch-processor", "batch-processor-legacy"} {
		t.Run(dir, func(t *testing.T) {
			t.Parallel()
			flowPath := filepath.Join("examples", dir, "main-workflow.yaml")
			inputs := filepath.Join("examples", dir, "inputs.jsonl")
			out := runExample(t, 0, stepflowBin, "run", "--flow", flowPath, "--inputs", inputs, "-q")
			require.Equal(t, batchProcessorWant, lines(out))
			// Every slot of the pool waits on a nested run: it must not
			// deadlock.
			out = runExample(t, 0, stepflowBin, "run", "--flow", flowPath, "--inputs", inputs, "--max-concurrent", "1", "-q")
			require.Equal(t, batchProcessorWant, lines(out))
		})
	}
}

// The nested batches through the stepflow-py 0.13 worker
// (batch_worker_013.py): the sub-flow runs via the 0.13 context's
// submit_run_by_id (OrchestratorService.SubmitRun).
func TestExampleBatchProcessor013(t *testing.T) {
	skipShort(t)
	t.Parallel()
	requireGRPC13(t)
	for _, mc := range []string{"16", "1"} {
		out := runExample(t, 0, stepflowBin, "run", "--config", "examples/batch-processor/stepflow-config-013.yml",
			"--flow", "examples/batch-processor/main-workflow.yaml", "--inputs", "examples/batch-processor/inputs.jsonl",
			"--max-concurrent", mc, "-q")
		requireSameJSONLines(t, batchProcessorWant, lines(out))
	}
}
