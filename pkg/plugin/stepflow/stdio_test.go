package stepflow_test

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/runs"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// TestLegacyBatchCallbacks: a stepflow-py <= 0.8 component stores a flow
// (blobs/put, blob_type flow), runs a nested batch with
// flows/submit_batch and waits with flows/get_batch, while the batch's
// items call back into the same stdio server. The parent batch has one
// slot and completes.
func TestLegacyBatchCallbacks(t *testing.T) {
	t.Parallel()
	e := newEnv(t, sdkStdio, envOptions{})
	parentID := e.storeFlow(`
name: fan-out-demo
steps:
  - id: fan
    component: /legacy/fan_out
    input:
      texts: {$input: texts}
      max_concurrency: 2
output: {$step: fan}
`)
	texts := make([]value.Value, 10)
	for i := range texts {
		texts[i] = strings.TrimSpace(strings.Repeat("w ", i+1))
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	st, err := e.local.Submit(ctx, runs.Request{
		FlowID: parentID, MaxConcurrency: 1, Wait: true,
		Inputs: []value.Value{value.ObjectOf("texts", texts), value.ObjectOf("texts", []value.Value{"a b c", "hello world", "one"})},
	})
	require.NoError(t, err)
	require.Equal(t, runs.StatusCompleted, st.Status, "%s", value.String(st.Value()))

	out := st.Results[0].Result.Value
	require.Equal(t, `[1,2,3,4,5,6,7,8,9,10]`, value.String(field(t, out, "counts")))
	require.Equal(t, value.Int(10), field(t, out, "completed"))
	require.Equal(t, value.Int(0), field(t, out, "failed"))
	require.Equal(t, value.Int(10), field(t, out, "total"))
	require.Equal(t, "running", field(t, out, "status")) // 0.8 semantics: completion shows as completed_at
	require.Equal(t, "count-one", field(t, out, "flow_name"))
	require.Equal(t, true, field(t, out, "done"))
	require.Equal(t, `[3,2,1]`, value.String(field(t, st.Results[1].Result.Value, "counts")))

	// The batch is a run whose id is the batch id; its parent is the
	// calling item's run (the only run with executions in flight).
	batch, err := e.local.Get(ctx, field(t, out, "batch_id").(string), runs.GetOptions{})
	require.NoError(t, err)
	require.Equal(t, st.RunID, batch.ParentRunID)
	b, err := e.blobs.Get(ctx, batch.FlowID)
	require.NoError(t, err)
	require.Equal(t, blob.KindFlow, b.Kind)
	require.Equal(t, 1, e.startCount())
}

// TestLegacyEvaluateAndMetadata: flows/evaluate (after blobs/put of the
// flow) and flows/get_metadata for the executing flow and step, whose id
// the plugin sends in observability.flow_id.
func TestLegacyEvaluateAndMetadata(t *testing.T) {
	t.Parallel()
	e := newEnv(t, sdkStdio, envOptions{})
	out := e.mustCall("/evaluate", `{"text":"a b c d"}`)
	require.Equal(t, `{"result":{"words":4}}`, value.String(out))

	id := e.storeFlow(`
name: meta
metadata: {owner: team-a}
steps:
  - id: meta
    component: /legacy/metadata
    metadata: {tier: 2}
    input: {}
output: {$step: meta}
`)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	st, err := e.local.Submit(ctx, runs.Request{FlowID: id, Inputs: []value.Value{value.NewObject(0)}, Wait: true})
	require.NoError(t, err)
	require.Equal(t, runs.StatusCompleted, st.Status, "%s", value.String(st.Value()))
	require.Equal(t, `{"flow_metadata":{"owner":"team-a"},"step_metadata":{"tier":2}}`, value.String(st.Results[0].Result.Value))
}
