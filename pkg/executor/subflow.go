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
	run := exec.newSubRun(s.parent.run, f)
	results := make([]outcome.Result, len(inputs))
	if maxConcurrency <= 0 {
		maxConcurrency = exec.subConc
	}
	if len(inputs) <= 1 || maxConcurrency == 1 {
		for i, in := range inputs {
			if err := ctx.Err(); err != nil {
				return nil, context.Cause(ctx)
			}
			results[i] = run.Execute(ctx, i, in)
		}
		return results, nil
	}
	sem := make(chan struct{}, maxConcurrency)
	var wg sync.WaitGroup
	for i, in := range inputs {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return nil, context.Cause(ctx)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			results[i] = run.Execute(ctx, i, in)
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, context.Cause(ctx)
	}
	return results, nil
}
