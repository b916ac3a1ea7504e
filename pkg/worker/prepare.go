package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/value"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// maxCachedFlows bounds the parsed flows a worker keeps. Flows are
// content-addressed and immutable, so a cached flow is never stale; the
// bound only caps memory when a worker sees many distinct flows.
const maxCachedFlows = 128

// errRunUnusable marks a run that cannot execute any item (its flow is
// missing or invalid, its overrides or variables do not apply): every
// item gets a failed result rather than being retried.
var errRunUnusable = errors.New("run cannot start")

// flowCache keeps parsed flows by flow id, evicting the least recently
// used beyond maxCachedFlows. It is safe for concurrent use.
type flowCache struct {
	store *queue.FlowStore

	mu    sync.Mutex
	clock uint64
	flows map[string]*cachedFlow
}

type cachedFlow struct {
	f    *flow.Flow
	used uint64
}

func newFlowCache(store *queue.FlowStore) *flowCache {
	return &flowCache{store: store, flows: map[string]*cachedFlow{}}
}

// get returns the flow with the id, loading and parsing it on first use.
// A flow that is not stored or does not parse wraps errRunUnusable; other
// errors (NATS unreachable) are transient.
func (c *flowCache) get(ctx context.Context, id string) (*flow.Flow, error) {
	c.mu.Lock()
	if cf, ok := c.flows[id]; ok {
		c.clock++
		cf.used = c.clock
		c.mu.Unlock()
		return cf.f, nil
	}
	c.mu.Unlock()

	// Two items may load the same flow at once; both get an identical
	// flow and the second store wins. Cheaper than a per-id lock for a
	// once-per-run event.
	data, err := c.store.Get(ctx, id)
	if errors.Is(err, queue.ErrFlowNotFound) {
		return nil, fmt.Errorf("%w: %w", errRunUnusable, err)
	}
	if err != nil {
		return nil, fmt.Errorf("load flow %s: %w", id, err)
	}
	v, err := value.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%w: flow %s is not JSON: %w", errRunUnusable, id, err)
	}
	f, err := flow.FromValue(v)
	if err != nil {
		return nil, fmt.Errorf("%w: flow %s: %w", errRunUnusable, id, err)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.flows) >= maxCachedFlows {
		var oldest string
		var oldestUse uint64
		for k, cf := range c.flows {
			if oldest == "" || cf.used < oldestUse {
				oldest, oldestUse = k, cf.used
			}
		}
		delete(c.flows, oldest)
	}
	c.clock++
	c.flows[id] = &cachedFlow{f: f, used: c.clock}
	return f, nil
}

// preparedRun builds the executor.Run of one run (its flow with the
// record's overrides applied, and its variables) on first use and keeps
// it while the run is active. It is shared by the run's item goroutines.
type preparedRun struct {
	rec   *stepflowv1.RunRecord
	flows *flowCache
	exec  *executor.Executor

	mu  sync.Mutex
	run *executor.Run
	err error // permanent (wraps errRunUnusable)
}

func newPreparedRun(rec *stepflowv1.RunRecord, flows *flowCache, exec *executor.Executor) *preparedRun {
	return &preparedRun{rec: rec, flows: flows, exec: exec}
}

// get returns the run, building it under the lock the first time. A
// permanent failure is remembered; a transient one is retried by the
// next item. flowID is the item's flow id, used when the record has none.
func (p *preparedRun) get(ctx context.Context, flowID string) (*executor.Run, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.run != nil || p.err != nil {
		return p.run, p.err
	}
	run, err := p.build(ctx, cmp.Or(p.rec.GetFlowId(), flowID))
	if errors.Is(err, errRunUnusable) {
		p.err = err
	}
	if err != nil {
		return nil, err
	}
	p.run = run
	return run, nil
}

func (p *preparedRun) build(ctx context.Context, flowID string) (*executor.Run, error) {
	f, err := p.flows.get(ctx, flowID)
	if err != nil {
		return nil, err
	}
	if raw := p.rec.GetOverrides(); len(raw) > 0 {
		v, err := value.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("%w: overrides are not JSON: %w", errRunUnusable, err)
		}
		if v != nil {
			ov, err := flow.ParseOverrides(v)
			if err != nil {
				return nil, fmt.Errorf("%w: overrides: %w", errRunUnusable, err)
			}
			if f, err = f.ApplyOverrides(ov); err != nil {
				return nil, fmt.Errorf("%w: overrides: %w", errRunUnusable, err)
			}
		}
	}
	var supplied map[string]value.Value
	if raw := p.rec.GetVariables(); len(raw) > 0 {
		v, err := value.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("%w: variables are not JSON: %w", errRunUnusable, err)
		}
		switch o := v.(type) {
		case nil:
		case *value.Object:
			supplied = make(map[string]value.Value, o.Len())
			for i := range o.Len() {
				k, val := o.At(i)
				supplied[k] = val
			}
		default:
			return nil, fmt.Errorf("%w: variables must be a JSON object, not %s", errRunUnusable, value.TypeName(v))
		}
	}
	vars, err := f.Variables(supplied)
	if err != nil {
		return nil, fmt.Errorf("%w: variables: %w", errRunUnusable, err)
	}
	run, err := p.exec.NewRun(p.rec.GetRunId(), f, vars)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errRunUnusable, err)
	}
	return run, nil
}
