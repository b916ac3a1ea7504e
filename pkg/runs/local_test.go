package runs_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/plugin"
	"github.com/stepflow-go/stepflow/pkg/runs"
	"github.com/stepflow-go/stepflow/pkg/value"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type bundle struct {
	local  *runs.Local
	blobs  blob.Store
	flowID string
}

func setup(t *testing.T) *bundle {
	t.Helper()
	ctx := context.Background()
	store := blob.NewMemory()
	local := runs.NewLocal(store, nil)
	plugins, err := plugin.New(ctx, config.Default(), plugin.Options{Blobs: store, Runs: local})
	require.NoError(t, err)
	local.SetExecutor(executor.New(executor.Config{Router: plugins}))
	t.Cleanup(func() {
		require.NoError(t, local.Close())
		require.NoError(t, plugins.Close())
	})
	f, err := flow.Parse([]byte(`name: greet
steps:
  - id: m
    component: /builtin/create_messages
    input: { user_prompt: { $input: name } }
output: { $step: m, path: "$.messages[0].content" }
`), "greet.yaml")
	require.NoError(t, err)
	id, err := store.Put(ctx, blob.KindFlow, f.Value())
	require.NoError(t, err)
	require.Equal(t, f.ID(), id)
	return &bundle{local: local, blobs: store, flowID: id}
}

func TestSubmitAndWait(t *testing.T) {
	t.Parallel()
	b := setup(t)
	st, err := b.local.Submit(context.Background(), runs.Request{
		FlowID: b.flowID,
		Inputs: []value.Value{value.MustParse(`{"name":"a"}`), value.MustParse(`{}`), value.MustParse(`{"name":"c"}`)},
		Wait:   true, MaxConcurrency: 2, ParentRunID: "parent",
	})
	require.NoError(t, err)
	require.Equal(t, runs.StatusFailed, st.Status)
	require.Equal(t, runs.ItemStatistics{Total: 3, Completed: 2, Failed: 1}, st.Items)
	require.Equal(t, "greet", st.FlowName)
	require.Len(t, st.Results, 3)
	require.Equal(t, `{"outcome":"success","result":"a"}`, value.String(st.Results[0].Result.JSON()))
	require.Equal(t, runs.StatusFailed, st.Results[1].Status)
	require.Equal(t, `{"outcome":"success","result":"c"}`, value.String(st.Results[2].Result.JSON()))

	v := st.Value().(*value.Object)
	for _, k := range []string{"runId", "flowId", "flowName", "status", "items", "createdAt", "completedAt", "results"} {
		require.True(t, v.Has(k), k)
	}
}

func TestSubmitNoWaitThenGet(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	st, err := b.local.Submit(ctx, runs.Request{FlowID: b.flowID, Inputs: []value.Value{value.MustParse(`{"name":"x"}`)}})
	require.NoError(t, err)
	require.Nil(t, st.Results)
	got, err := b.local.Get(ctx, st.RunID, runs.GetOptions{Wait: true, IncludeResults: true, ByCompletion: true})
	require.NoError(t, err)
	require.Equal(t, runs.StatusCompleted, got.Status)
	require.Equal(t, 1, got.Items.Completed)
	require.Len(t, got.Results, 1)

	_, err = b.local.Get(ctx, "nope", runs.GetOptions{})
	require.ErrorIs(t, err, runs.ErrRunNotFound)
	_, err = b.local.Submit(ctx, runs.Request{FlowID: "0000000000000000000000000000000000000000000000000000000000000000"})
	require.ErrorIs(t, err, runs.ErrFlowNotFound)
}

func TestSubmitWithOverrides(t *testing.T) {
	t.Parallel()
	b := setup(t)
	st, err := b.local.Submit(context.Background(), runs.Request{
		FlowID:    b.flowID,
		Inputs:    []value.Value{value.MustParse(`{"name":"x"}`)},
		Overrides: value.MustParse(`{"m":{"value":{"input":{"user_prompt":"patched"}}}}`),
		Wait:      true,
	})
	require.NoError(t, err)
	require.Equal(t, `{"outcome":"success","result":"patched"}`, value.String(st.Results[0].Result.JSON()))
	_, err = b.local.Submit(context.Background(), runs.Request{FlowID: b.flowID, Overrides: value.MustParse(`{"zz":{"value":{}}}`)})
	require.ErrorIs(t, err, runs.ErrInvalidRequest)
}
