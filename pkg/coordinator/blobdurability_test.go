package coordinator_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/coordinator"
	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// A blob put by a worker and referred to by an acknowledged result is in
// the coordinator's journal by the time the result is answered, so a
// blob stream that lost its last (asynchronous) writes gets it back from
// the journal; a blob no result refers to is not journaled.
func TestBlobsOfAcknowledgedResultsAreJournaled(t *testing.T) {
	c := startCoordinator(t, func(cfg *coordinator.Config) { cfg.SyncResults = true })
	startRealWorker(t, c, "w1", 4, newGates())
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

	// The blob stream loses the kept blobs (as a power loss may take its
	// last writes); a replay of the journal puts them back.
	ctx := testCtx(t)
	nc, js, err := queue.Connect(ctx, c.NATSURL(), queue.ConnectOptions{Name: t.Name()})
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	st, err := js.Stream(ctx, "OBJ_"+queue.BucketBlobs)
	require.NoError(t, err)
	for _, id := range kept {
		require.NoError(t, st.Purge(ctx, jetstream.WithPurgeSubject("$O."+queue.BucketBlobs+".C."+id)))
		require.NoError(t, st.Purge(ctx, jetstream.WithPurgeSubject("$O."+queue.BucketBlobs+".M."+base64.URLEncoding.EncodeToString([]byte(id)))))
	}
	store, err := queue.OpenBlobStore(ctx, js)
	require.NoError(t, err)
	_, err = store.Get(ctx, kept[0])
	require.ErrorIs(t, err, blob.ErrNotFound)

	c.ReplayBlobJournal()
	for i, id := range kept {
		b, err := store.Get(ctx, id)
		require.NoError(t, err, "blob %s is back", id)
		require.JSONEq(t, inputs[i], string(value.Marshal(b.Data)))
	}
}
