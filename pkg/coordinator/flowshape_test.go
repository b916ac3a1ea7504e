package coordinator_test

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// typedFlow declares every part of the schemas section, examples, test
// cases and the expression forms. Its step inputs and output are objects
// with a literal member: stepflow-py 0.9.2's generated ValueExpr (a
// oneOf) refuses a bare reference (`{"$step": "a"}`) or an object of
// references only with "Multiple matches found when deserializing ... into
// ValueExpr" whatever the server, as both its StepRef (or LiteralExpr) and
// Dict[str, ValueExpr] models accept them.
const typedFlow = `{
  "name": "typed",
  "description": "a flow with schemas",
  "schemas": {
    "type": "object",
    "$defs": {"Name": {"type": "string"}},
    "properties": {
      "input": {"type": "object", "properties": {"name": {"$ref": "#/$defs/Name"}, "n": {"type": "integer"}}},
      "output": {"type": "object"},
      "variables": {"type": "object", "properties": {"greeting": {"type": "string", "default": "hi"}}},
      "steps": {"type": "object", "properties": {"keep": {"type": "object", "properties": {"blob_id": {"type": "string"}}}}}
    }
  },
  "steps": [
    {"id": "keep", "component": "/builtin/put_blob",
     "input": {"data": {"$input": "name"}, "blob_type": "data"}},
    {"id": "pick", "component": "/builtin/put_blob",
     "input": {"data": {"$if": {"$input": "n"}, "then": {"$step": "keep", "path": "blob_id"}, "else": {"$variable": "greeting"}},
               "blob_type": "data"}}
  ],
  "output": {"kept": {"$step": "keep"}, "picked": {"$coalesce": [{"$step": "pick"}, {"$literal": {"$input": "not a ref"}}]}, "version": 1},
  "examples": [{"name": "ex1", "description": "an example", "input": {"name": "a", "n": 1}}],
  "test": {"cases": [{"name": "case1", "input": {"name": "b", "n": 0}}]}
}`

// GET /flows/{id} and GET /runs/{id}/flow answer upstream's FlowResponse
// and RunFlowResponse: the flow's schemas carry the OpenAPI FlowSchema
// fields (`defs` and `steps` required, `input`, `output`, `variables`),
// next to the JSON Schema wire form (`type`, `$defs`, `properties`), so
// that both stepflow-py's client and a flow re-stored from the answer
// work.
func TestGetFlowAnswersUpstreamFlowResponse(t *testing.T) {
	t.Parallel()
	c := startCoordinator(t, nil)
	startWorker(t, c.NATSURL(), nil)
	cl := newClient(t, c)

	stored := cl.post("/flows", `{"flow":`+typedFlow+`}`)
	require.Equal(t, http.StatusOK, stored.Status, "%s", stored.Body)
	flowID := stored.JSON(t)["flowId"].(string)

	got := cl.get("/flows/" + flowID)
	require.Equal(t, http.StatusOK, got.Status)
	var resp struct {
		FlowID      string          `json:"flowId"`
		Flow        json.RawMessage `json:"flow"`
		AllExamples []any           `json:"allExamples"`
	}
	require.NoError(t, json.Unmarshal(got.Body, &resp))
	require.Equal(t, flowID, resp.FlowID)
	require.JSONEq(t, `[{"name":"ex1","description":"an example","input":{"name":"a","n":1}},{"name":"case1","input":{"name":"b","n":0}}]`,
		mustJSON(t, resp.AllExamples))

	var fl map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(resp.Flow, &fl))
	wantSchemas := `{
	  "type": "object",
	  "$defs": {"Name": {"type": "string"}},
	  "properties": {
	    "input": {"type": "object", "properties": {"name": {"$ref": "#/$defs/Name"}, "n": {"type": "integer"}}},
	    "output": {"type": "object"},
	    "variables": {"type": "object", "properties": {"greeting": {"type": "string", "default": "hi"}}},
	    "steps": {"type": "object", "properties": {"keep": {"type": "object", "properties": {"blob_id": {"type": "string"}}}}}
	  },
	  "defs": {"Name": {"type": "string"}},
	  "input": {"type": "object", "properties": {"name": {"$ref": "#/$defs/Name"}, "n": {"type": "integer"}}},
	  "output": {"type": "object"},
	  "variables": {"type": "object", "properties": {"greeting": {"type": "string", "default": "hi"}}},
	  "steps": {"keep": {"type": "object", "properties": {"blob_id": {"type": "string"}}}}
	}`
	require.JSONEq(t, wantSchemas, string(fl["schemas"]))

	// The answer's flow stores back as the same flow.
	again := cl.post("/flows", `{"flow":`+string(resp.Flow)+`}`)
	require.Equal(t, http.StatusOK, again.Status, "%s", again.Body)
	require.Equal(t, flowID, again.JSON(t)["flowId"])

	// A flow without schemas has no schemas section.
	plain := cl.get("/flows/" + cl.storeFlow()).JSON(t)
	require.NotContains(t, plain["flow"], "schemas")

	// GET /runs/{id}/flow gives the same flow.
	r := cl.post("/runs", `{"flowId":"`+flowID+`","input":[{"name":"x","n":1}]}`)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	runID := r.JSON(t)["runId"].(string)
	runFlow := cl.get("/runs/" + runID + "/flow")
	require.Equal(t, http.StatusOK, runFlow.Status)
	var rf struct {
		FlowID string          `json:"flowId"`
		Flow   json.RawMessage `json:"flow"`
	}
	require.NoError(t, json.Unmarshal(runFlow.Body, &rf))
	require.Equal(t, flowID, rf.FlowID)
	require.JSONEq(t, string(resp.Flow), string(rf.Flow))
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}

// getFlowScript calls stepflow-py's generated FlowApi.get_flow, which
// validates the answer with the client's pydantic models, and prints
// what it parsed.
const getFlowScript = `
import asyncio, json, sys
from stepflow_py.api import ApiClient, Configuration
from stepflow_py.api.api import FlowApi

async def main(base, flow_id):
    async with ApiClient(Configuration(host=base)) as client:
        r = await FlowApi(client).get_flow(flow_id)
        s = r.flow.schemas
        print(json.dumps({
            "flowId": r.flow_id,
            "name": r.flow.name,
            "steps": [st.id for st in r.flow.steps],
            "defs": sorted(s.defs),
            "stepSchemas": sorted(s.steps),
            "input": s.input,
            "examples": [e.name for e in r.all_examples],
        }))

asyncio.run(main(sys.argv[1], sys.argv[2]))
`

// The real stepflow-py 0.9.2 client reads GET /flows/{id}.
func TestGetFlowWithStepflowPyClient(t *testing.T) {
	t.Parallel()
	python := sdkPython(t)
	c := startCoordinator(t, nil)
	cl := newClient(t, c)
	stored := cl.post("/flows", `{"flow":`+typedFlow+`}`)
	require.Equal(t, http.StatusOK, stored.Status, "%s", stored.Body)
	flowID := stored.JSON(t)["flowId"].(string)

	cmd := exec.CommandContext(testCtx(t), python, "-c", getFlowScript, c.URL()+"/api/v1", flowID)
	out, err := cmd.Output()
	var stderr []byte
	if ee, ok := err.(*exec.ExitError); ok {
		stderr = ee.Stderr
	}
	require.NoError(t, err, "stepflow-py get_flow failed:\n%s", stderr)
	require.JSONEq(t, `{"flowId":"`+flowID+`","name":"typed","steps":["keep","pick"],"defs":["Name"],"stepSchemas":["keep"],`+
		`"input":{"type":"object","properties":{"name":{"$ref":"#/$defs/Name"},"n":{"type":"integer"}}},"examples":["ex1","case1"]}`, string(out))
}

// sdkPython returns the interpreter of the stepflow-py venv:
// $STEPFLOW_TEST_VENV_HTTP, else <repo>/.venv-sdk-http (`make venv`). It
// skips under -short and fails when the venv is missing.
func sdkPython(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("short: runs the stepflow-py client")
	}
	venv := os.Getenv("STEPFLOW_TEST_VENV_HTTP")
	if venv == "" {
		venv = filepath.Join("..", "..", ".venv-sdk-http")
	}
	py, err := filepath.Abs(filepath.Join(venv, "bin", "python"))
	require.NoError(t, err)
	if _, err := os.Stat(py); err != nil {
		t.Fatalf("SDK virtual environment missing: %s not found (%v). Run `make venv` "+
			"(or set STEPFLOW_TEST_VENV_HTTP to a venv with stepflow-py installed).", py, err)
	}
	return py
}
