package executor

import (
	"context"
	"sync"

	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// subflows runs nested flows inside the calling item (design: sub-runs of
// eval/map/iterate never leave their parent's worker and never get a queue
// consumer of their own).
type subflows struct{ parent *item }

// RunSubflow implements Subflows. Nested runs are not validated and get
// no variables and no overrides, as upstream.
func (s subflows) RunSubflow(ctx context.Context, f *flow.Flow, inputs []value.Value, maxConcurrency int) ([]outcome.Result, error) {
	exec := s.parent.run.exec
	if maxConcurrency <= 0 {
		maxConcurrency = exec.subConc
	}
	results := exec.newSubRun(s.parent.run, f).ExecuteAll(ctx, inputs, maxConcurrency, nil)
	if err := ctx.Err(); err != nil {
		return nil, context.Cause(ctx)
	}
	return results, nil
}

// ExecuteAll executes item i = inputs[i] for every input, at most
// concurrency at once (at least 1), and returns the results in input
// order. onDone, when not nil, is called as each item finishes, from the
// item's goroutine. When ctx ends, items not yet started are not started
// and their results stay zero; the caller checks ctx.
func (r *Run) ExecuteAll(ctx context.Context, inputs []value.Value, concurrency int, onDone func(i int, res outcome.Result)) []outcome.Result {
	results := make([]outcome.Result, len(inputs))
	run := func(i int) {
		results[i] = r.Execute(ctx, i, inputs[i])
		if onDone != nil {
			onDone(i, results[i])
		}
	}
	if concurrency <= 1 || len(inputs) <= 1 {
		for i := range inputs {
			if ctx.Err() != nil {
				break
			}
			run(i)
		}
		return results
	}
	sem := make(chan struct{}, concurrency)
	var wg sync.WaitGroup
loop:
	for i := range inputs {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			break loop
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			run(i)
		}()
	}
	wg.Wait()
	return results
}
