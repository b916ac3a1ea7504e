package batch_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/stepflow-go/stepflow/pkg/batch"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/jsonl"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/progress"
	"github.com/stepflow-go/stepflow/pkg/value"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type componentFunc func(ctx context.Context, req *executor.Request) (outcome.Result, error)

func (f componentFunc) Execute(ctx context.Context, req *executor.Request) (outcome.Result, error) {
	return f(ctx, req)
}

type router struct{ c executor.Component }

func (r router) Route(string, value.Value) (executor.Component, error) { return r.c, nil }

func newRun(t *testing.T, c componentFunc) *executor.Run {
	t.Helper()
	f, err := flow.Parse([]byte("steps: [{ id: s, component: /t/c, input: { $input: n } }]\noutput: { $step: s }\n"), "f.yaml")
	require.NoError(t, err)
	r, err := executor.New(executor.Config{Router: router{c}}).NewRun("run", f, nil)
	require.NoError(t, err)
	return r
}

func inputs(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `{"n":%d}`+"\n", i)
	}
	return b.String()
}

func TestOutOfOrderCompletionIsWrittenInOrder(t *testing.T) {
	t.Parallel()
	// Item 0 finishes last: it waits until every other item is done.
	const n = 200
	var done atomic.Int32
	allOthers := make(chan struct{})
	run := newRun(t, func(_ context.Context, req *executor.Request) (outcome.Result, error) {
		if req.ItemIndex == 0 {
			<-allOthers
		} else if done.Add(1) == n-1 {
			close(allOthers)
		}
		return outcome.Success(req.Input), nil
	})
	var out bytes.Buffer
	tracker := &progress.Tracker{}
	sum, err := batch.Run(context.Background(), batch.Options{
		Run: run, Input: strings.NewReader(inputs(n)), Name: "in.jsonl",
		MaxConcurrent: 8, Output: &out, Tracker: tracker, MaxBufferedBytes: 512, SpillDir: t.TempDir(),
	})
	require.NoError(t, err)
	require.Equal(t, batch.Summary{Total: n, Succeeded: n}, sum)
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	require.Len(t, lines, n)
	for i, l := range lines {
		require.Equal(t, fmt.Sprintf(`{"outcome":"success","result":%d}`, i), l)
	}
	snap := tracker.Snapshot()
	require.Equal(t, int64(n), snap.Succeeded)
	require.Zero(t, snap.InFlight())
}

func TestConcurrencyIsBounded(t *testing.T) {
	t.Parallel()
	var inFlight, peak atomic.Int32
	run := newRun(t, func(_ context.Context, req *executor.Request) (outcome.Result, error) {
		cur := inFlight.Add(1)
		for {
			p := peak.Load()
			if cur <= p || peak.CompareAndSwap(p, cur) {
				break
			}
		}
		inFlight.Add(-1)
		return outcome.Success(req.Input), nil
	})
	var out bytes.Buffer
	_, err := batch.Run(context.Background(), batch.Options{Run: run, Input: strings.NewReader(inputs(500)), MaxConcurrent: 3, Output: &out})
	require.NoError(t, err)
	require.LessOrEqual(t, peak.Load(), int32(3))
}

func TestInvalidLines(t *testing.T) {
	t.Parallel()
	run := newRun(t, func(_ context.Context, req *executor.Request) (outcome.Result, error) {
		return outcome.Success(req.Input), nil
	})
	in := "{\"n\":0}\n{\"n\":\n{\"n\":2}\n"
	var out bytes.Buffer
	_, err := batch.Run(context.Background(), batch.Options{Run: run, Input: strings.NewReader(in), Name: "in.jsonl", MaxConcurrent: 1, Output: &out})
	var le *jsonl.LineError
	require.ErrorAs(t, err, &le)
	require.Equal(t, 2, le.Line)
	require.Equal(t, "{\"outcome\":\"success\",\"result\":0}\n", out.String(), "what was accepted is written")

	out.Reset()
	sum, err := batch.Run(context.Background(), batch.Options{Run: run, Input: strings.NewReader(in), Name: "in.jsonl", MaxConcurrent: 2, Output: &out, InvalidLines: batch.FailInvalidItems})
	require.NoError(t, err)
	require.Equal(t, batch.Summary{Total: 3, Succeeded: 2, Failed: 1}, sum)
	require.Contains(t, out.String(), `"code":400,"message":"in.jsonl:2:`)

	_, err = batch.Run(context.Background(), batch.Options{Run: run, Input: strings.NewReader(in), MaxConcurrent: 0, Output: &out})
	require.ErrorIs(t, err, batch.ErrConcurrency)
}

func TestCancelKeepsEveryAcceptedItem(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	var started atomic.Int32
	run := newRun(t, func(ctx context.Context, req *executor.Request) (outcome.Result, error) {
		if started.Add(1) == 5 {
			cancel()
		}
		<-ctx.Done()
		return outcome.Result{}, ctx.Err()
	})
	var out bytes.Buffer
	sum, err := batch.Run(ctx, batch.Options{Run: run, Input: strings.NewReader(inputs(1000)), MaxConcurrent: 5, Output: &out})
	require.ErrorIs(t, err, context.Canceled)
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	require.Equal(t, sum.Total, len(lines), "every item read got a result line")
	require.Less(t, sum.Total, 1000)
	require.Equal(t, sum.Total, sum.Failed)
}
