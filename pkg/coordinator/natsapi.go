package coordinator

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/runs"
	"github.com/stepflow-go/stepflow/pkg/value"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// apiHandler answers one NATS API request.
type apiHandler func(ctx context.Context, req *value.Object) (value.Value, error)

// serveAPI subscribes to the NATS request/reply API of pkg/queue/api.go
// in the coordinators' queue group. Each request is handled on its own
// goroutine (at most cap(apiSem) at once; more are refused with a
// "busy" error) because "wait": true requests are long polls.
func (c *Coordinator) serveAPI() error {
	for subject, h := range map[string]apiHandler{
		queue.SubjectRunsSubmit: c.apiSubmit,
		queue.SubjectRunsGet:    c.apiGet,
	} {
		sub, err := c.nc.QueueSubscribe(subject, queue.APIQueueGroup, func(m *nats.Msg) { c.dispatchAPI(m, h) })
		if err != nil {
			return fmt.Errorf("coordinator: subscribe to %s: %w", subject, err)
		}
		c.apiSubs = append(c.apiSubs, sub)
	}
	if err := c.nc.Flush(); err != nil {
		return fmt.Errorf("coordinator: subscribe to the API: %w", err)
	}
	return nil
}

// dispatchAPI runs h for m on a goroutine of c.wg.
func (c *Coordinator) dispatchAPI(m *nats.Msg, h apiHandler) {
	if c.ctx.Err() != nil {
		return // stopping: another coordinator (or the retry) answers
	}
	select {
	case c.apiSem <- struct{}{}:
	default:
		c.reply(m, nil, errorf(ErrTooManyRuns, "coordinator busy: too many API requests in progress"))
		return
	}
	c.apiMu.Lock()
	if c.apiClosed {
		c.apiMu.Unlock()
		<-c.apiSem
		return
	}
	c.apiWG.Add(1)
	c.apiMu.Unlock()
	go func() {
		defer c.apiWG.Done()
		defer func() { <-c.apiSem }()
		var (
			v   value.Value
			err error
		)
		req, perr := value.Parse(m.Data)
		obj, ok := req.(*value.Object)
		switch {
		case perr != nil:
			err = errorf(ErrInvalidRequest, "malformed JSON request: %w", perr)
		case !ok:
			err = errorf(ErrInvalidRequest, "the request must be a JSON object")
		default:
			v, err = h(c.ctx, obj)
		}
		c.reply(m, v, err)
	}()
}

// reply answers m with v, or with {"error":{"code","message"}}.
func (c *Coordinator) reply(m *nats.Msg, v value.Value, err error) {
	if m.Reply == "" {
		return
	}
	var data []byte
	if err == nil {
		data = value.Marshal(v)
		if mp := c.nc.MaxPayload(); mp > 0 && int64(len(data)) > mp {
			err = errorf(ErrTooLarge, "the reply is %d bytes, more than the NATS max payload (%d); read the results with GET /api/v1/runs/{id}/items", len(data), mp)
		}
	}
	if err != nil {
		if rpcCode(err) == rpcOther {
			c.log.Warn("API request failed", zap.String("subject", m.Subject), zap.Error(err))
		}
		data = value.Marshal(value.ObjectOf("error", value.ObjectOf("code", value.Int(int64(rpcCode(err))), "message", err.Error())))
	}
	if rerr := m.Respond(data); rerr != nil && !errors.Is(rerr, nats.ErrConnectionClosed) {
		c.log.Warn("API reply", zap.String("subject", m.Subject), zap.Error(rerr))
	}
}

// apiSubmit creates a run (a child run when parentRunId is set) through
// the same machinery as POST /runs; with "wait": true it answers when the
// run has finished, with its results in index order, or after APIMaxWait
// with its current status (the requester asks again with runs.get).
func (c *Coordinator) apiSubmit(ctx context.Context, req *value.Object) (value.Value, error) {
	sub, _, err := submissionFromObject(req, "inputs")
	if err != nil {
		return nil, err
	}
	wait, err := boolField(req, "wait", false)
	if err != nil {
		return nil, err
	}
	rec, _, err := c.submit(ctx, sub)
	if err != nil {
		return nil, err
	}
	if wait {
		rec = c.waitBounded(ctx, rec)
	}
	return c.statusValue(ctx, rec, wait, false)
}

// apiGet returns a run's status; with "wait": true once it has finished
// (or after APIMaxWait), with "includeResults": true with its results,
// by index or, with "resultOrder": "by_completion", in completion order.
func (c *Coordinator) apiGet(ctx context.Context, req *value.Object) (value.Value, error) {
	runID, err := stringField(req, "runId")
	if err != nil {
		return nil, err
	}
	if runID == "" {
		return nil, errorf(ErrInvalidRequest, `missing "runId"`)
	}
	wait, err := boolField(req, "wait", false)
	if err != nil {
		return nil, err
	}
	include, err := boolField(req, "includeResults", false)
	if err != nil {
		return nil, err
	}
	order, err := stringField(req, "resultOrder")
	if err != nil {
		return nil, err
	}
	switch order {
	case "", "by_index", "byIndex":
	case "by_completion", "byCompletion":
	default:
		return nil, errorf(ErrInvalidRequest, "unknown resultOrder %q (by_index or by_completion)", order)
	}
	rec, err := c.getRecord(ctx, runID)
	if err != nil {
		return nil, err
	}
	if wait {
		rec = c.waitBounded(ctx, rec)
	}
	return c.statusValue(ctx, rec, include, order == "by_completion" || order == "byCompletion")
}

// waitBounded waits at most APIMaxWait for the run to finish and returns
// its latest record.
func (c *Coordinator) waitBounded(ctx context.Context, rec *stepflowv1.RunRecord) *stepflowv1.RunRecord {
	if rec.GetStatus() != statusRunning {
		return rec
	}
	wctx, cancel := context.WithTimeout(ctx, c.cfg.APIMaxWait)
	defer cancel()
	if done, err := c.waitRun(wctx, rec.GetRunId()); err == nil {
		return done
	}
	if latest, err := c.getRecord(ctx, rec.GetRunId()); err == nil {
		return latest
	}
	return rec
}

// statusValue is the RunStatusProtocol of a run (runs.Status), with its
// results when asked.
func (c *Coordinator) statusValue(ctx context.Context, rec *stepflowv1.RunRecord, results, byCompletion bool) (value.Value, error) {
	n := c.countsOf(ctx, rec)
	s := runs.Status{
		RunID:       rec.GetRunId(),
		FlowID:      rec.GetFlowId(),
		FlowName:    rec.GetFlowName(),
		ParentRunID: rec.GetParentRunId(),
		Status:      queue.StatusName(rec.GetStatus()),
		Items: runs.ItemStatistics{
			Total: n.Total, Completed: n.Completed, Running: n.Running + n.Queued, Failed: n.Failed, Cancelled: n.Cancelled,
		},
		CreatedAt: rec.GetCreatedAt().AsTime(),
	}
	if rec.GetCompletedAt() != nil {
		s.CompletedAt = rec.GetCompletedAt().AsTime()
	}
	if results {
		res, err := c.itemResults(rec, byCompletion)
		if err != nil {
			return nil, err
		}
		s.Results = res
	}
	return s.Value(), nil
}

// itemResults reads a run's item results for the NATS API (child runs are
// small; the reply is bounded by the NATS max payload anyway).
func (c *Coordinator) itemResults(rec *stepflowv1.RunRecord, byCompletion bool) ([]runs.ItemResult, error) {
	committed := int64(-1)
	if st := c.active(rec.GetRunId()); st != nil {
		_, _, _, committed = st.snapshot()
	}
	rd, err := openResultReader(c.runDir(rec.GetRunId()), committed)
	if err != nil {
		return nil, err
	}
	defer rd.close()
	total := int(rec.GetItemTotal())
	out := make([]runs.ItemResult, 0, total)
	toItem := func(i int, res *resultRecord) (runs.ItemResult, error) {
		if res == nil {
			return runs.ItemResult{Index: i, Status: missingStatus(rec.GetStatus())}, nil
		}
		v, err := value.Parse(res.Result)
		if err != nil {
			return runs.ItemResult{}, fmt.Errorf("coordinator: result %d of run %s: %w", i, rec.GetRunId(), err)
		}
		o, err := outcome.Parse(v)
		if err != nil {
			return runs.ItemResult{}, fmt.Errorf("coordinator: result %d of run %s: %w", i, rec.GetRunId(), err)
		}
		return runs.ItemResult{Index: i, Status: itemStatus(res), Result: &o, CompletedAt: res.CompletedAt}, nil
	}
	if !byCompletion {
		err := rd.byIndex(0, total, func(i int, res *resultRecord) error {
			it, err := toItem(i, res)
			out = append(out, it)
			return err
		})
		return out, err
	}
	seen := make([]bool, total)
	if _, err := rd.scan(0, func(res *resultRecord, _ int64) error {
		it, err := toItem(res.Index, res)
		if res.Index < total {
			seen[res.Index] = true
		}
		out = append(out, it)
		return err
	}); err != nil {
		return nil, err
	}
	for i, ok := range seen {
		if !ok {
			out = append(out, runs.ItemResult{Index: i, Status: missingStatus(rec.GetStatus())})
		}
	}
	return out, nil
}
