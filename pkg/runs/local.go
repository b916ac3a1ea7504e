package runs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// DefaultMaxConcurrency is the items of a submitted run in flight at once
// when the request does not say.
const DefaultMaxConcurrency = 16

// Local runs submitted flows in this process.
type Local struct {
	blobs blob.Store
	log   *zap.Logger

	mu   sync.Mutex
	exec *executor.Executor
	runs map[string]*localRun
	wg   sync.WaitGroup
	ctx  context.Context
	stop context.CancelFunc
}

type localRun struct {
	status  Status // guarded by Local.mu
	results []ItemResult
	done    chan struct{}
}

// NewLocal returns a Local that loads flows from blobs. Call SetExecutor
// before the first Submit (the executor needs the plugins, whose
// callbacks need this Local, so the two are wired after construction).
func NewLocal(blobs blob.Store, log *zap.Logger) *Local {
	if log == nil {
		log = zap.NewNop()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Local{blobs: blobs, log: log, runs: map[string]*localRun{}, ctx: ctx, stop: cancel}
}

// SetExecutor sets the executor runs execute with.
func (l *Local) SetExecutor(e *executor.Executor) {
	l.mu.Lock()
	l.exec = e
	l.mu.Unlock()
}

// Close cancels running runs and waits for their goroutines.
func (l *Local) Close() error {
	l.stop()
	l.wg.Wait()
	return nil
}

// LoadFlow reads a stored flow by id.
func LoadFlow(ctx context.Context, blobs blob.Store, flowID string) (*flow.Flow, error) {
	b, err := blobs.Get(ctx, flowID)
	if errors.Is(err, blob.ErrNotFound) {
		return nil, fmt.Errorf("%w: flow with ID '%s'", ErrFlowNotFound, flowID)
	}
	if err != nil {
		return nil, fmt.Errorf("load flow %s: %w", flowID, err)
	}
	f, err := flow.FromValue(b.Data)
	if err != nil {
		return nil, fmt.Errorf("%w: blob %s is not a flow: %v", ErrFlowNotFound, flowID, err)
	}
	return f, nil
}

// Submit starts a run; with req.Wait it returns when the run has
// finished, with its results.
func (l *Local) Submit(ctx context.Context, req Request) (Status, error) {
	l.mu.Lock()
	exec := l.exec
	l.mu.Unlock()
	if exec == nil {
		return Status{}, errors.New("runs: no executor configured")
	}
	f, err := LoadFlow(ctx, l.blobs, req.FlowID)
	if err != nil {
		return Status{}, err
	}
	if req.Overrides != nil {
		ov, err := flow.ParseOverrides(req.Overrides)
		if err != nil {
			return Status{}, fmt.Errorf("%w: %v", ErrInvalidRequest, err)
		}
		if f, err = f.ApplyOverrides(ov); err != nil {
			return Status{}, fmt.Errorf("%w: %v", ErrInvalidRequest, err)
		}
	}
	vars, err := f.Variables(req.Variables)
	if err != nil {
		return Status{}, fmt.Errorf("%w: %v", ErrInvalidRequest, err)
	}
	id := executor.NewRunID()
	run, err := exec.NewRun(id, f, vars)
	if err != nil {
		return Status{}, fmt.Errorf("%w: %v", ErrInvalidRequest, err)
	}
	conc := req.MaxConcurrency
	if conc <= 0 {
		conc = DefaultMaxConcurrency
	}
	n := len(req.Inputs)
	lr := &localRun{
		status: Status{
			RunID: id, FlowID: req.FlowID, FlowName: f.Name, ParentRunID: req.ParentRunID,
			Status: StatusRunning, Items: ItemStatistics{Total: n, Running: n}, CreatedAt: time.Now(),
		},
		results: make([]ItemResult, n),
		done:    make(chan struct{}),
	}
	for i := range lr.results {
		lr.results[i] = ItemResult{Index: i, Status: StatusRunning}
	}
	l.mu.Lock()
	l.runs[id] = lr
	l.mu.Unlock()
	l.log.Debug("run submitted", zap.String("run", id), zap.String("flow", req.FlowID), zap.Int("items", n), zap.String("parent", req.ParentRunID))

	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		l.execute(run, lr, req.Inputs, conc)
	}()
	if !req.Wait {
		return l.snapshot(lr, GetOptions{}), nil
	}
	return l.wait(ctx, lr, GetOptions{IncludeResults: true})
}

func (l *Local) execute(run *executor.Run, lr *localRun, inputs []value.Value, conc int) {
	defer close(lr.done)
	run.ExecuteAll(l.ctx, inputs, conc, func(i int, res outcome.Result) {
		l.mu.Lock()
		defer l.mu.Unlock()
		r := &lr.results[i]
		r.Result, r.CompletedAt = &res, time.Now()
		lr.status.Items.Running--
		if res.Failed() {
			r.Status = StatusFailed
			lr.status.Items.Failed++
		} else {
			r.Status = StatusCompleted
			lr.status.Items.Completed++
		}
	})
	l.mu.Lock()
	defer l.mu.Unlock()
	lr.status.CompletedAt = time.Now()
	switch {
	case lr.status.Items.Running > 0:
		// Close stopped the run before these items started.
		for i := range lr.results {
			if lr.results[i].Result == nil {
				lr.results[i].Status = StatusCancelled
			}
		}
		lr.status.Items.Cancelled, lr.status.Items.Running = lr.status.Items.Running, 0
		lr.status.Status = StatusCancelled
	case lr.status.Items.Failed > 0:
		lr.status.Status = StatusFailed
	default:
		lr.status.Status = StatusCompleted
	}
}

// Get returns the status of a run.
func (l *Local) Get(ctx context.Context, runID string, opts GetOptions) (Status, error) {
	l.mu.Lock()
	lr, ok := l.runs[runID]
	l.mu.Unlock()
	if !ok {
		return Status{}, fmt.Errorf("%w: %s", ErrRunNotFound, runID)
	}
	if opts.Wait {
		return l.wait(ctx, lr, opts)
	}
	return l.snapshot(lr, opts), nil
}

func (l *Local) wait(ctx context.Context, lr *localRun, opts GetOptions) (Status, error) {
	select {
	case <-lr.done:
		return l.snapshot(lr, opts), nil
	case <-ctx.Done():
		return Status{}, context.Cause(ctx)
	}
}

func (l *Local) snapshot(lr *localRun, opts GetOptions) Status {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := lr.status
	if opts.IncludeResults {
		s.Results = slices.Clone(lr.results)
		if opts.ByCompletion {
			slices.SortStableFunc(s.Results, func(a, b ItemResult) int {
				switch {
				case a.CompletedAt.IsZero() && b.CompletedAt.IsZero():
					return a.Index - b.Index
				case a.CompletedAt.IsZero():
					return 1
				case b.CompletedAt.IsZero():
					return -1
				}
				return a.CompletedAt.Compare(b.CompletedAt)
			})
		}
	}
	return s
}
