package stepflow_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/plugin"
	"github.com/stepflow-go/stepflow/pkg/plugin/stepflow"
	"github.com/stepflow-go/stepflow/pkg/protocol"
	"github.com/stepflow-go/stepflow/pkg/runs"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// callbackEnv is a Callbacks over a memory blob store and a runs.Local
// whose executor routes /builtin/* to the builtin plugin.
type callbackEnv struct {
	t     *testing.T
	blobs *blob.Memory
	local *runs.Local
	cb    *stepflow.Callbacks
	// storeID is a stored flow `{data: input} -> /builtin/put_blob`, whose
	// output is the blob id of the item's input (or of an override).
	storeID string
}

func newCallbackEnv(t *testing.T) *callbackEnv {
	t.Helper()
	e := &callbackEnv{t: t, blobs: blob.NewMemory()}
	e.local = runs.NewLocal(e.blobs, nil)
	ps, err := plugin.New(context.Background(), config.Default(), plugin.Options{Blobs: e.blobs, Runs: e.local})
	require.NoError(t, err)
	e.local.SetExecutor(executor.New(executor.Config{Router: ps}))
	t.Cleanup(func() {
		require.NoError(t, e.local.Close())
		require.NoError(t, ps.Close())
	})
	e.cb = stepflow.NewCallbacks(e.blobs, e.local, nil)
	f, err := flow.Parse([]byte(`
name: store
metadata: {owner: team-a}
steps:
  - id: put
    component: /builtin/put_blob
    metadata: {tier: 2}
    input: {data: {$input: "$"}, blob_type: data}
output: {$step: put, path: blob_id}
`), "")
	require.NoError(t, err)
	e.storeID, err = e.blobs.Put(context.Background(), blob.KindFlow, f.Value())
	require.NoError(t, err)
	return e
}

func (e *callbackEnv) call(h protocol.Handler, method, params string) (value.Value, error) {
	e.t.Helper()
	if h == nil {
		h = e.cb
	}
	return h.HandleCallback(context.Background(), method, value.MustParse(params))
}

func (e *callbackEnv) ok(h protocol.Handler, method, params string) value.Value {
	e.t.Helper()
	v, err := e.call(h, method, params)
	require.NoError(e.t, err, "%s %s", method, params)
	return v
}

func (e *callbackEnv) rpcErr(method, params string, code int64, msg string) {
	e.t.Helper()
	_, err := e.call(nil, method, params)
	var re *protocol.RPCError
	require.ErrorAs(e.t, err, &re, "%s %s", method, params)
	require.Equal(e.t, code, re.Code, "%s %s: %v", method, params, err)
	if msg != "" {
		require.Equal(e.t, msg, re.Message)
	}
}

func keys(t *testing.T, v value.Value) []string {
	t.Helper()
	o, ok := v.(*value.Object)
	require.True(t, ok, "%s", value.String(v))
	return o.Keys()
}

func TestCallbacksBlobs(t *testing.T) {
	t.Parallel()
	e := newCallbackEnv(t)
	res := e.ok(nil, "blobs/put", `{"data":{"b":1,"a":2},"blob_type":"data","observability":null}`)
	id := field(t, res, "blob_id").(string)
	require.Equal(t, blob.ID(value.MustParse(`{"b":1,"a":2}`)), id)
	require.Equal(t, `{"data":{"b":1,"a":2},"blob_type":"data"}`,
		value.String(e.ok(nil, "blobs/get", `{"blob_id":"`+id+`","observability":null}`)))

	// A flow blob is stored in canonical form, so its id is the flow id.
	src := `{"steps":[{"component":"/builtin/eval","id":"s","input":{"$input":"$"}}],"output":{"$step":"s"}}`
	f, err := flow.FromValue(value.MustParse(src))
	require.NoError(t, err)
	res = e.ok(nil, "blobs/put", `{"data":`+src+`,"blob_type":"flow","observability":null}`)
	require.Equal(t, f.ID(), field(t, res, "blob_id"))
	got := e.ok(nil, "blobs/get", `{"blob_id":"`+f.ID()+`"}`)
	require.Equal(t, "flow", field(t, got, "blob_type"))
	require.Equal(t, value.String(f.Value()), value.String(field(t, got, "data")))

	e.rpcErr("blobs/put", `{"data":{"steps":"nope"},"blob_type":"flow"}`, protocol.CodeServerError, "Failed to put blob")
	e.rpcErr("blobs/put", `{"blob_type":"data"}`, protocol.CodeInvalidParams, "")
	e.rpcErr("blobs/put", `{"data":1,"blob_type":"text"}`, protocol.CodeInvalidParams, "")
	e.rpcErr("blobs/get", `{"blob_id":"00"}`, protocol.CodeServerError, "Failed to get blob")
	e.rpcErr("blobs/get", `{}`, protocol.CodeInvalidParams, "")
	e.rpcErr("foo/bar", `{}`, protocol.CodeMethodNotFound, "Method not found: 'foo/bar'")
	_, err = e.cb.HandleCallback(context.Background(), "blobs/get", []value.Value{})
	require.ErrorIs(t, err, &protocol.RPCError{Code: protocol.CodeInvalidParams})
}

func TestCallbacksRuns(t *testing.T) {
	t.Parallel()
	e := newCallbackEnv(t)
	h := e.cb.Handler("parent-run")

	// wait: true answers with results, in the exact RunStatusProtocol shape.
	st := e.ok(h, "runs/submit", `{"flowId":"`+e.storeID+`","inputs":["a","b"],"wait":true,"maxConcurrency":null,"overrides":null,"observability":null}`)
	require.Equal(t, []string{"runId", "flowId", "flowName", "status", "items", "createdAt", "completedAt", "results"}, keys(t, st))
	require.Equal(t, "completed", field(t, st, "status"))
	require.Equal(t, `{"total":2,"completed":2,"running":0,"failed":0,"cancelled":0}`, value.String(field(t, st, "items")))
	results := field(t, st, "results").([]value.Value)
	require.Len(t, results, 2)
	require.Equal(t, []string{"itemIndex", "status", "result", "completedAt"}, keys(t, results[0]))
	require.Equal(t, `{"outcome":"success","result":"`+blob.ID("a")+`"}`, value.String(field(t, results[0], "result")))
	runID := field(t, st, "runId").(string)
	got, err := e.local.Get(context.Background(), runID, runs.GetOptions{})
	require.NoError(t, err)
	require.Equal(t, "parent-run", got.ParentRunID)

	// runs/get: results only when asked for.
	st = e.ok(nil, "runs/get", `{"runId":"`+runID+`","wait":true,"includeResults":false,"resultOrder":"by_index","observability":null}`)
	require.NotContains(t, keys(t, st), "results")
	st = e.ok(nil, "runs/get", `{"runId":"`+runID+`","wait":false,"includeResults":true,"resultOrder":"by_completion"}`)
	require.Len(t, field(t, st, "results"), 2)

	// wait: false answers at once, without results; the parent comes from
	// observability.run_id when the handler has none.
	st = e.ok(nil, "runs/submit", `{"flowId":"`+e.storeID+`","inputs":["c"],"wait":false,"observability":{"run_id":"obs-run"}}`)
	require.NotContains(t, keys(t, st), "results")
	got, err = e.local.Get(context.Background(), field(t, st, "runId").(string), runs.GetOptions{Wait: true})
	require.NoError(t, err)
	require.Equal(t, "obs-run", got.ParentRunID)

	// Overrides: WorkflowOverrides {"steps": …} and the bare map.
	for _, ov := range []string{
		`{"steps":{"put":{"$type":"merge_patch","value":{"input":{"data":"x"}}}}}`,
		`{"put":{"value":{"input":{"data":"x"}}}}`,
	} {
		st = e.ok(nil, "runs/submit", `{"flowId":"`+e.storeID+`","inputs":["c"],"wait":true,"overrides":`+ov+`}`)
		r := field(t, st, "results").([]value.Value)[0]
		require.Equal(t, blob.ID("x"), field(t, field(t, r, "result"), "result"), ov)
	}

	missing := "0000000000000000000000000000000000000000000000000000000000000000"
	e.rpcErr("runs/submit", `{"flowId":"`+missing+`","inputs":[],"wait":true}`, protocol.CodeNotFound, "Not found: flow with ID '"+missing+"'")
	e.rpcErr("runs/submit", `{"flowId":"`+e.storeID+`"}`, protocol.CodeInvalidParams, "")
	e.rpcErr("runs/submit", `{"flowId":"`+e.storeID+`","inputs":[],"overrides":{"nope":{"value":1}}}`, protocol.CodeInvalidParams, "")
	e.rpcErr("runs/get", `{"runId":"not-a-uuid"}`, protocol.CodeInvalidValue, "Invalid value for field 'run_id': expected valid UUID")
	e.rpcErr("runs/get", `{"runId":"0194f0c3-7c1e-7a52-9d0e-2b8f4f5e0a11"}`, protocol.CodeNotFound, "")
	e.rpcErr("runs/get", `{"runId":"`+runID+`","resultOrder":"byIndex"}`, protocol.CodeInvalidParams, "")
}

func TestCallbacksLegacy(t *testing.T) {
	t.Parallel()
	e := newCallbackEnv(t)

	res := e.ok(nil, "flows/evaluate", `{"flow_id":"`+e.storeID+`","input":"q","overrides":null,"observability":null}`)
	require.Equal(t, `{"result":{"outcome":"success","result":"`+blob.ID("q")+`"}}`, value.String(res))

	res = e.ok(nil, "flows/get_metadata", `{"flow_id":"`+e.storeID+`","step_id":"put","observability":null}`)
	require.Equal(t, `{"flow_metadata":{"owner":"team-a"},"step_metadata":{"tier":2}}`, value.String(res))
	res = e.ok(nil, "flows/get_metadata", `{"flow_id":"`+e.storeID+`","step_id":null,"observability":null}`)
	require.Equal(t, `{"flow_metadata":{"owner":"team-a"}}`, value.String(res))

	res = e.ok(nil, "flows/submit_batch", `{"flow_id":"`+e.storeID+`","inputs":["a","b","c"],"overrides":null,"max_concurrency":2,"observability":null}`)
	require.Equal(t, []string{"batch_id", "total_runs"}, keys(t, res))
	require.Equal(t, value.Int(3), field(t, res, "total_runs"))
	batchID := field(t, res, "batch_id").(string)

	res = e.ok(nil, "flows/get_batch", `{"batch_id":"`+batchID+`","wait":true,"include_results":true,"observability":null}`)
	details := field(t, res, "details")
	require.Equal(t, []string{"batch_id", "flow_id", "flow_name", "total_runs", "status", "created_at",
		"completed_runs", "running_runs", "failed_runs", "cancelled_runs", "paused_runs", "completed_at"}, keys(t, details))
	require.Equal(t, "running", field(t, details, "status"))
	require.Equal(t, value.Int(3), field(t, details, "completed_runs"))
	outputs := field(t, res, "outputs").([]value.Value)
	require.Len(t, outputs, 3)
	require.Equal(t, `{"batch_input_index":1,"status":"completed","result":{"outcome":"success","result":"`+blob.ID("b")+`"}}`, value.String(outputs[1]))
	res = e.ok(nil, "flows/get_batch", `{"batch_id":"`+batchID+`","wait":false,"include_results":false}`)
	require.Equal(t, []string{"details"}, keys(t, res))

	missing := "0000000000000000000000000000000000000000000000000000000000000000"
	e.rpcErr("flows/evaluate", `{"flow_id":"`+missing+`","input":1}`, protocol.CodeNotFound, "Not found: flow with ID '"+missing+"'")
	e.rpcErr("flows/evaluate", `{"flow_id":"`+e.storeID+`"}`, protocol.CodeInvalidParams, "")
	e.rpcErr("flows/get_metadata", `{"flow_id":"`+missing+`","step_id":null}`, protocol.CodeNotFound, "Not found: flow with ID '"+missing+"'")
	e.rpcErr("flows/get_metadata", `{"flow_id":"`+e.storeID+`","step_id":"zzz"}`, protocol.CodeNotFound, "Not found: step with ID 'zzz'")
	dataID := field(t, e.ok(nil, "blobs/put", `{"data":[1],"blob_type":"data"}`), "blob_id").(string)
	e.rpcErr("flows/get_metadata", `{"flow_id":"`+dataID+`","step_id":null}`, protocol.CodeServerError, "Invalid flow blob")
	e.rpcErr("flows/submit_batch", `{"flow_id":"`+e.storeID+`","inputs":[1],"max_concurrency":0}`, protocol.CodeInvalidValue,
		"Invalid value for field 'max_concurrency': expected positive integer")
	e.rpcErr("flows/submit_batch", `{"flow_id":"`+missing+`","inputs":[1]}`, protocol.CodeNotFound, "")
	e.rpcErr("flows/get_batch", `{"batch_id":"x"}`, protocol.CodeInvalidValue, "Invalid value for field 'batch_id': expected valid UUID")
	e.rpcErr("flows/get_batch", `{"batch_id":"0194f0c3-7c1e-7a52-9d0e-2b8f4f5e0a11"}`, protocol.CodeNotFound, "")
}

func TestCallbacksWithoutRuns(t *testing.T) {
	t.Parallel()
	cb := stepflow.NewCallbacks(blob.NewMemory(), nil, nil)
	for _, m := range []string{"runs/submit", "runs/get", "flows/evaluate", "flows/submit_batch", "flows/get_batch"} {
		_, err := cb.HandleCallback(context.Background(), m, value.MustParse(`{"flowId":"x","inputs":[]}`))
		var re *protocol.RPCError
		require.ErrorAs(t, err, &re, m)
		require.EqualValues(t, protocol.CodeServerError, re.Code)
		require.Equal(t, "nested runs are not available here", re.Message)
	}
}
