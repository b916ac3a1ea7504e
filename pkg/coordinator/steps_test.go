package coordinator_test

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// twoStepFlow stores its input as a blob and reads it back.
const twoStepFlow = `{"name":"roundtrip","steps":[` +
	`{"id":"put","component":"/builtin/put_blob","input":{"data":{"$input":"$"},"blob_type":"data"}},` +
	`{"id":"get","component":"/builtin/get_blob","input":{"blob_id":{"$step":"put","path":"blob_id"}}}],` +
	`"output":{"$step":"get","path":"data"}}`

// TestRunStepsOfSingleItemRun: a real worker reports the steps of a
// single-item run with its result, and GET /runs/{id}/steps serves them
// in upstream's ListStepRunsResponse shape.
func TestRunStepsOfSingleItemRun(t *testing.T) {
	t.Parallel()
	c := startCoordinator(t, nil)
	cl := newClient(t, c)
	startRealWorker(t, c, "w1", 4, newGates())

	flowID := cl.storeFlowJSON(twoStepFlow)
	r := cl.post("/runs", fmt.Sprintf(`{"flowId":%q,"input":[{"x":1}]}`, flowID))
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	run := r.JSON(t)
	require.Equal(t, "completed", run["status"], "%s", r.Body)

	r = cl.get("/runs/" + run["runId"].(string) + "/steps")
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	steps := r.JSON(t)["steps"].(map[string]any)
	require.Len(t, steps, 2)
	put := steps["put"].(map[string]any)
	require.Equal(t, "put", put["stepId"])
	require.Equal(t, "/builtin/put_blob", put["component"])
	require.Equal(t, "completed", put["status"])
	res := put["result"].(map[string]any)
	require.Equal(t, "success", res["outcome"])
	blobID := res["result"].(map[string]any)["blob_id"].(string)
	require.Len(t, blobID, 64)
	get := steps["get"].(map[string]any)
	require.Equal(t, "completed", get["status"])
	require.Equal(t, map[string]any{"outcome": "success", "result": map[string]any{"data": map[string]any{"x": 1.0}}}, get["result"])
	require.Regexp(t, `^\{"steps":\{"put":\{.*\},"get":\{.*\}\}\}`, string(r.Body), "flow order")

	// A failing step is failed, and so is the step that consumes it.
	failing := `{"name":"fails","steps":[` +
		`{"id":"boom","component":"/test/boom","input":{"$input":"$"}},` +
		`{"id":"after","component":"/builtin/put_blob","input":{"data":{"$step":"boom"},"blob_type":"data"}},` +
		`{"id":"unused","component":"/builtin/put_blob","input":{"data":1,"blob_type":"data"}}],` +
		`"output":{"$step":"after"}}`
	flowID = cl.storeFlowJSON(failing)
	r = cl.post("/runs", fmt.Sprintf(`{"flowId":%q,"input":[{}]}`, flowID))
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	run = r.JSON(t)
	require.Equal(t, "failed", run["status"], "%s", r.Body)
	r = cl.get("/runs/" + run["runId"].(string) + "/steps")
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	steps = r.JSON(t)["steps"].(map[string]any)
	boom := steps["boom"].(map[string]any)
	require.Equal(t, "failed", boom["status"])
	require.Equal(t, "/test/boom", boom["component"])
	boomRes := boom["result"].(map[string]any)
	require.Equal(t, "failed", boomRes["outcome"])
	require.Equal(t, "disk on fire at item 0", boomRes["error"].(map[string]any)["message"])
	require.Equal(t, "failed", steps["after"].(map[string]any)["status"])
	unused := steps["unused"].(map[string]any)
	require.Equal(t, "blocked", unused["status"], "a step the output does not need never runs")
	require.NotContains(t, unused, "result")
}

// TestRunStepsBeforeResultAndOfBatches: before its item's result, a
// single-item run lists its flow's steps as blocked; a batch has no
// per-run step view.
func TestRunStepsBeforeResultAndOfBatches(t *testing.T) {
	t.Parallel()
	c := startCoordinator(t, nil)
	cl := newClient(t, c)
	g := newGates()
	startRealWorker(t, c, "w1", 4, g)

	flowID := cl.storeFlowJSON(heldFlow)
	runID := cl.submitGated(flowID, "one", 1, 1)
	g.waitStarted(t, "one", 1)
	r := cl.get("/runs/" + runID + "/steps")
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	require.JSONEq(t, `{"steps":{"hold":{"stepId":"hold","component":"/test/hold","status":"blocked"}}}`, string(r.Body))
	g.openAll("one")
	cl.waitStatus(runID, "completed")
	r = cl.get("/runs/" + runID + "/steps")
	require.Equal(t, "completed", r.JSON(t)["steps"].(map[string]any)["hold"].(map[string]any)["status"], "%s", r.Body)

	g.openAll("many")
	runID = cl.submitGated(flowID, "many", 3, 3)
	cl.waitStatus(runID, "completed")
	r = cl.get("/runs/" + runID + "/steps")
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	require.JSONEq(t, `{"steps":{}}`, string(r.Body))

	r = cl.get("/runs/0198c0de-0000-7000-8000-000000000000/steps")
	require.Equal(t, http.StatusNotFound, r.Status, "%s", r.Body)
}
