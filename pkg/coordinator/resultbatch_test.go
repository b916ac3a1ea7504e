package coordinator_test

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/coordinator"
	"github.com/stepflow-go/stepflow/pkg/queue"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// A batch of results is stored as if each came alone, and answered once,
// one answer per result in order: stored, duplicate (the first result per
// index wins, within the batch too), dropped (malformed, or an unknown
// run).
func TestResultBatches(t *testing.T) {
	t.Parallel()
	c := startCoordinator(t, func(cfg *coordinator.Config) { cfg.SyncResults = true })
	cl := newClient(t, c)
	flowID := cl.storeFlow()
	r := cl.post("/runs", fmt.Sprintf(`{"flowId":%q,"input":[1,2,3],"wait":false}`, flowID))
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	runID := r.JSON(t)["runId"].(string)

	ctx := testCtx(t)
	nc, _, err := queue.Connect(ctx, c.NATSURL(), queue.ConnectOptions{Name: t.Name()})
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	enc := func(run string, index uint64, result string) []byte {
		_, data, err := queue.EncodeResult(ctx, nc, &stepflowv1.ItemResult{RunId: run, Index: index, Result: []byte(`{"outcome":"success","result":` + result + `}`)}, queue.ResultOptions{})
		require.NoError(t, err)
		return data
	}
	outs, err := queue.SendResultBatch(ctx, nc, [][]byte{
		enc(runID, 0, `"a"`),
		enc(runID, 1, `"b"`),
		enc(runID, 0, `"again"`),
		[]byte("not a result"),
		enc("0198c0de-0000-7000-8000-00000000ffff", 0, `1`),
		enc(runID, 2, `"c"`),
	})
	require.NoError(t, err)
	var got []queue.ResultStatus
	for _, o := range outs {
		require.NoError(t, o.Err)
		got = append(got, o.Answer.Status)
	}
	require.Equal(t, []queue.ResultStatus{queue.ResultStored, queue.ResultStored, queue.ResultDuplicate, queue.ResultDropped, queue.ResultDropped, queue.ResultStored}, got)

	cl.waitStatus(runID, "completed")
	require.Equal(t, []string{echoResult(`"a"`), echoResult(`"b"`), echoResult(`"c"`)}, cl.itemsJSONL(runID))
}
