package coordinator_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/coordinator"
	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// A blob put by a worker and referred to by an acknowledged result is in
// the coordinator's journal by the time the result is answered, and
// nowhere else: the coordinator serves it from there. A blob no result
// refers to stays with the worker, which writes it to the blob stream
// when it stops.
func TestBlobsOfAcknowledgedResultsAreJournaled(t *testing.T) {
	c := startCoordinator(t, func(cfg *coordinator.Config) { cfg.SyncResults = true })
	w := startRealWorker(t, c, "w1", 4, newGates())
	cl := newClient(t, c)
	flowID := cl.storeFlowJSON(`{"schema":"https://stepflow.org/schemas/v1/flow.json","name":"archive",
		"steps":[
		  {"id":"keep","component":"/builtin/put_blob","input":{"data":{"$input":"$"},"blob_type":"data"}},
		  {"id":"scratch","component":"/builtin/put_blob","input":{"data":{"scratch":{"$input":"n"}},"blob_type":"data"}},
		  {"id":"back","component":"/builtin/get_blob","input":{"blob_id":{"$step":"scratch","path":"blob_id"}}}],
		"output":{"kept":{"$step":"keep","path":"blob_id"},"n":{"$step":"back","path":"$.data.scratch"}}}`)
	const n = 5
	inputs := make([]string, n)
	for i := range inputs {
		inputs[i] = fmt.Sprintf(`{"n":%d}`, i)
	}
	r := cl.post("/runs", fmt.Sprintf(`{"flowId":%q,"input":[%s],"wait":false}`, flowID, strings.Join(inputs, ",")))
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	runID := r.JSON(t)["runId"].(string)
	cl.waitStatus(runID, "completed")

	var kept []string
	for _, line := range cl.itemsJSONL(runID) {
		var item struct {
			Result struct {
				Kept string `json:"kept"`
			} `json:"result"`
		}
		require.NoError(t, json.Unmarshal([]byte(line), &item), line)
		require.True(t, blob.ValidID(item.Result.Kept), line)
		kept = append(kept, item.Result.Kept)
	}
	require.Len(t, kept, n)

	journaled, err := c.JournaledBlobs()
	require.NoError(t, err)
	for _, id := range kept {
		require.True(t, journaled[id], "blob %s of an acknowledged result is journaled", id)
	}
	scratch := blob.ID(value.MustParse(`{"scratch":0}`))
	require.False(t, journaled[scratch], "a blob no result refers to is not journaled")

	// The kept blobs were never written to the blob stream; the
	// coordinator serves them from its journal.
	ctx := testCtx(t)
	nc, js, err := queue.Connect(ctx, c.NATSURL(), queue.ConnectOptions{Name: t.Name()})
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	stream, err := queue.OpenBlobStore(ctx, js)
	require.NoError(t, err)
	_, err = stream.Get(ctx, kept[0])
	require.ErrorIs(t, err, blob.ErrNotFound)
	_, err = stream.Get(ctx, scratch)
	require.ErrorIs(t, err, blob.ErrNotFound, "a deferred blob stays with its worker")
	viaCoordinator, err := queue.OpenBlobStore(ctx, js, queue.WithDeferredPuts(nc))
	require.NoError(t, err)
	for i, id := range kept {
		b, err := viaCoordinator.Get(ctx, id)
		require.NoError(t, err, "blob %s", id)
		require.JSONEq(t, inputs[i], string(value.Marshal(b.Data)))
	}
	_, err = viaCoordinator.Get(ctx, scratch)
	require.ErrorIs(t, err, blob.ErrNotFound)

	// A worker that stops writes what it deferred to the blob stream.
	require.NoError(t, w.Stop(ctx))
	b, err := stream.Get(ctx, scratch)
	require.NoError(t, err)
	require.JSONEq(t, `{"scratch":0}`, string(value.Marshal(b.Data)))
}
