package coordinator_test

import (
	"encoding/json"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/coordinator"
	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/value"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// natsRequest sends a JSON request to the coordinator's NATS API.
func natsRequest(t *testing.T, nc *nats.Conn, subject, body string) map[string]any {
	t.Helper()
	msg, err := nc.Request(subject, []byte(body), 30*time.Second)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(msg.Data, &m), "%s", msg.Data)
	return m
}

// apiError returns the JSON-RPC error code of a reply, or 0.
func apiError(m map[string]any) float64 {
	e, ok := m["error"].(map[string]any)
	if !ok {
		return 0
	}
	return e["code"].(float64)
}

// runs.submit creates a child run through the run machinery (linked to
// its parent and the root), runs.get waits for it and returns its
// results in either order; errors carry JSON-RPC codes. Child runs do
// not count against MaxConcurrentRuns.
func TestNATSAPIChildRuns(t *testing.T) {
	t.Parallel()
	c := startCoordinator(t, func(cfg *coordinator.Config) { cfg.MaxConcurrentRuns = 1 })
	// The item "held" waits for the gate, so the run holding the one
	// top-level slot below is still running when the next one is refused.
	gate := make(chan struct{})
	var gateOnce sync.Once
	openGate := func() { gateOnce.Do(func() { close(gate) }) }
	t.Cleanup(openGate)
	startWorker(t, c.NATSURL(), func(it *stepflowv1.Item, _ uint64) action {
		if string(it.GetInput()) == `"held"` {
			<-gate
		}
		return actEcho
	})
	cl := newClient(t, c)
	flowID := cl.storeFlow()

	// The parent: a top-level run, using the one top-level slot.
	parent := cl.post("/runs", `{"flowId":"`+flowID+`","input":[{"p":1}]}`).JSON(t)
	parentID := parent["runId"].(string)

	nc, err := nats.Connect(c.NATSURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)

	sub := natsRequest(t, nc, queue.SubjectRunsSubmit,
		`{"flowId":"`+flowID+`","inputs":[1,2,3],"wait":false,"maxConcurrency":2,"parentRunId":"`+parentID+`"}`)
	require.Zero(t, apiError(sub), "%v", sub)
	childID := sub["runId"].(string)
	require.NotEqual(t, parentID, childID)
	require.Equal(t, flowID, sub["flowId"])
	require.EqualValues(t, 3, sub["items"].(map[string]any)["total"])

	got := natsRequest(t, nc, queue.SubjectRunsGet, `{"runId":"`+childID+`","wait":true,"includeResults":true}`)
	require.Equal(t, "completed", got["status"], "%v", got)
	results := got["results"].([]any)
	require.Len(t, results, 3)
	for i, r := range results {
		m := r.(map[string]any)
		require.EqualValues(t, i, m["itemIndex"])
		require.Equal(t, "completed", m["status"])
		require.Equal(t, map[string]any{"outcome": "success", "result": float64(i + 1)}, m["result"])
	}
	byCompletion := natsRequest(t, nc, queue.SubjectRunsGet, `{"runId":"`+childID+`","includeResults":true,"resultOrder":"by_completion"}`)
	seen := map[float64]bool{}
	for _, r := range byCompletion["results"].([]any) {
		seen[r.(map[string]any)["itemIndex"].(float64)] = true
	}
	require.Len(t, seen, 3)
	noResults := natsRequest(t, nc, queue.SubjectRunsGet, `{"runId":"`+childID+`"}`)
	require.NotContains(t, noResults, "results")

	// The child is linked to its parent and its root, in the REST API too.
	child := cl.get("/runs/" + childID).JSON(t)
	require.Equal(t, parentID, child["parentRunId"])
	require.Equal(t, parentID, child["rootRunId"])
	listed := cl.get("/runs?parentRunId=" + parentID).JSON(t)["runs"].([]any)
	require.Len(t, listed, 1)
	require.Equal(t, childID, listed[0].(map[string]any)["runId"])
	require.Len(t, cl.get("/runs?rootRunId=" + parentID).JSON(t)["runs"], 2)

	// A grandchild keeps the root; wait: true answers when done, with results.
	grand := natsRequest(t, nc, queue.SubjectRunsSubmit,
		`{"flowId":"`+flowID+`","inputs":["g"],"wait":true,"parentRunId":"`+childID+`"}`)
	require.Equal(t, "completed", grand["status"], "%v", grand)
	require.Len(t, grand["results"], 1)
	gd := cl.get("/runs/" + grand["runId"].(string)).JSON(t)
	require.Equal(t, childID, gd["parentRunId"])
	require.Equal(t, parentID, gd["rootRunId"])

	// Child runs are not refused by MaxConcurrentRuns (1, used by a
	// held top-level run here): refusing them could deadlock their parents.
	held := cl.uploadJSONL(flowID, "&wait=false", []string{`"held"`}, nil)
	require.Equal(t, http.StatusOK, held.Status)
	require.Equal(t, http.StatusTooManyRequests, cl.uploadJSONL(flowID, "&wait=false", []string{"1"}, nil).Status)
	more := natsRequest(t, nc, queue.SubjectRunsSubmit, `{"flowId":"`+flowID+`","inputs":[1],"wait":true,"parentRunId":"`+parentID+`"}`)
	require.Equal(t, "completed", more["status"], "%v", more)
	openGate()

	// Errors.
	const unknownRun = "0198c0de-0000-7000-8000-000000000000"
	require.EqualValues(t, -32011, apiError(natsRequest(t, nc, queue.SubjectRunsGet, `{"runId":"`+unknownRun+`"}`)))
	require.EqualValues(t, -32602, apiError(natsRequest(t, nc, queue.SubjectRunsGet, `{}`)))
	require.EqualValues(t, -32602, apiError(natsRequest(t, nc, queue.SubjectRunsGet, `{"runId":"`+childID+`","resultOrder":"random"}`)))
	require.EqualValues(t, -32602, apiError(natsRequest(t, nc, queue.SubjectRunsSubmit, `not json`)))
	require.EqualValues(t, -32602, apiError(natsRequest(t, nc, queue.SubjectRunsSubmit, `{"flowId":"`+flowID+`"}`)))
	require.EqualValues(t, -32011, apiError(natsRequest(t, nc, queue.SubjectRunsSubmit, `{"flowId":"`+flowID[:63]+`0","inputs":[1]}`)))
	require.EqualValues(t, -32011, apiError(natsRequest(t, nc, queue.SubjectRunsSubmit,
		`{"flowId":"`+flowID+`","inputs":[1],"parentRunId":"`+unknownRun+`"}`)))
}

// runs.submit by the id of a flow that only exists as a blob (put_blob
// from a component) works: the flow is then stored as a flow too. POST
// /flows stores flows as blobs of kind flow for /builtin/eval.
func TestNATSAPISubmitByBlobID(t *testing.T) {
	t.Parallel()
	c := startCoordinator(t, nil)
	startWorker(t, c.NATSURL(), nil)
	ctx := testCtx(t)
	blobs, err := queue.OpenBlobStore(ctx, c.JetStream())
	require.NoError(t, err)
	cl := newClient(t, c)
	flowID := cl.storeFlow()
	b, err := blobs.Get(ctx, flowID)
	require.NoError(t, err)
	require.Equal(t, blob.KindFlow, b.Kind)

	v, err := value.ParseString(`{"name":"blob-only","steps":[],"output":{"$input":"$"}}`)
	require.NoError(t, err)
	blobID, err := blobs.Put(ctx, blob.KindFlow, v)
	require.NoError(t, err)
	flows, err := queue.OpenFlowStore(ctx, c.JetStream())
	require.NoError(t, err)
	_, err = flows.Get(ctx, blobID)
	require.ErrorIs(t, err, queue.ErrFlowNotFound)

	nc, err := nats.Connect(c.NATSURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	got := natsRequest(t, nc, queue.SubjectRunsSubmit, `{"flowId":"`+blobID+`","inputs":[{"k":"v"}],"wait":true}`)
	require.Equal(t, "completed", got["status"], "%v", got)
	require.Equal(t, "blob-only", got["flowName"])
	_, err = flows.Get(ctx, got["flowId"].(string))
	require.NoError(t, err, "the run's flow is where workers load flows from")
}
