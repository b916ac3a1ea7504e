package stepflow

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/plugin/pluginapi"
	"github.com/stepflow-go/stepflow/pkg/protocol"
	"github.com/stepflow-go/stepflow/pkg/runs"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// errCallTimeout is the cause of a call context ended by timeoutMs.
var errCallTimeout = errors.New("timeoutMs exceeded")

// Component returns the component with the plugin-local name (/word_stats).
// Any name is accepted: SDK servers do not list path-pattern components,
// and an unknown name fails at execution with the server's -32001 error.
func (p *Plugin) Component(name string) (executor.Component, error) {
	return &component{p: p, name: name}, nil
}

// component is one component of the server.
type component struct {
	p    *Plugin
	name string
}

var _ executor.NamedComponent = (*component)(nil)

// ComponentName returns the plugin-local name.
func (c *component) ComponentName() string { return c.name }

// Execute sends components/execute. A JSON-RPC error answer is a failed
// result with the server's code and message (the step's onError applies;
// the server is not restarted). A transport failure or a timeout is an
// error (ServerError, TimeoutError) and restarts a subprocess server.
func (c *component) Execute(ctx context.Context, req *executor.Request) (outcome.Result, error) {
	return c.p.execute(ctx, c.name, req)
}

func (p *Plugin) execute(ctx context.Context, name string, req *executor.Request) (outcome.Result, error) {
	attempt := req.Attempt
	if attempt < 1 {
		attempt = 1
	}
	obs := protocol.Observability{RunID: req.RunID, StepID: req.StepID}
	if req.RunID != "" {
		obs.FlowID = p.flowIDs.lookup(ctx, req.RunID)
	}
	params := protocol.ExecuteParams(name, req.Input, attempt, obs)

	in, err := p.instance(ctx)
	if err != nil {
		return outcome.Result{}, err
	}
	cctx := ctx
	if p.cfg.Timeout > 0 {
		var cancel context.CancelFunc
		cctx, cancel = context.WithTimeoutCause(ctx, p.cfg.Timeout, errCallTimeout)
		defer cancel()
	}
	if in.runs != nil && req.RunID != "" {
		defer in.runs.add(req.RunID)()
	}
	res, err := in.tr.Call(cctx, protocol.MethodComponentsExecute, params, p.callbacks.Handler(req.RunID))
	if err == nil {
		out, err := protocol.ParseExecuteResult(res)
		if err != nil {
			return outcome.Result{}, fmt.Errorf("component %s: %w", name, err)
		}
		if in.blobRefs {
			if out, err = resolveBlobRefs(ctx, p.host.Blobs, out); err != nil {
				return outcome.Result{}, fmt.Errorf("component %s: output: %w", name, err)
			}
		}
		return outcome.Success(out), nil
	}
	var rpcErr *protocol.RPCError
	switch {
	case errors.As(err, &rpcErr):
		return outcome.Failure(&outcome.Error{
			Code:    rpcErr.Code,
			Message: rpcErr.Message,
			Data:    value.ObjectOf("step_id", req.StepID, "component", name, "data", rpcErr.Data),
		}), nil
	case ctx.Err() != nil:
		return outcome.Result{}, context.Cause(ctx)
	case cctx.Err() != nil && errors.Is(context.Cause(cctx), errCallTimeout):
		te := &TimeoutError{Plugin: p.name, Component: name, Timeout: p.cfg.Timeout}
		if in.proc != nil {
			te.Restarting = true
			in.kill(fmt.Errorf("killed because component %q exceeded timeoutMs (%v)", name, p.cfg.Timeout))
		}
		return outcome.Result{}, te
	case errors.Is(err, protocol.ErrTransport):
		return outcome.Result{}, p.failed(in, err)
	default:
		return outcome.Result{}, fmt.Errorf("component %s: %w", name, err)
	}
}

// flowIDCache maps run ids to flow ids through Host.Runs, so that
// components/execute can carry observability.flow_id (which the legacy
// flows/get_metadata needs). Runs the host does not know map to "".
type flowIDCache struct {
	runs pluginapi.Runs
	mu   sync.Mutex
	ids  map[string]string
}

const flowIDCacheSize = 1024

func newFlowIDCache(r pluginapi.Runs) *flowIDCache {
	return &flowIDCache{runs: r, ids: make(map[string]string)}
}

func (c *flowIDCache) lookup(ctx context.Context, runID string) string {
	if c.runs == nil {
		return ""
	}
	c.mu.Lock()
	id, ok := c.ids[runID]
	c.mu.Unlock()
	if ok {
		return id
	}
	if st, err := c.runs.Get(ctx, runID, runs.GetOptions{}); err == nil {
		id = st.FlowID
	}
	c.mu.Lock()
	if len(c.ids) >= flowIDCacheSize {
		clear(c.ids)
	}
	c.ids[runID] = id
	c.mu.Unlock()
	return id
}
