package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/queue"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// Aggregation settings.
const (
	// aggBatch is the most results fetched, stored and acked together:
	// one fetch, one counter write per run and one fsync (SyncResults)
	// per batch.
	aggBatch = 256
	// aggFetchWait is how long a fetch waits for results. A stopping
	// coordinator lets its last fetch run out, so this bounds Stop.
	aggFetchWait = 500 * time.Millisecond
	// aggLinger is how long a result waits for more before the batch is
	// committed: the latency it adds to counters and waiters.
	aggLinger = 10 * time.Millisecond
	// aggMaxAckPending bounds the results handed to coordinators and not
	// yet acked.
	aggMaxAckPending = 4 * aggBatch
	// aggCompactEvery is how often stored results are purged from the
	// results stream.
	aggCompactEvery = time.Second
)

// aggregator copies results from STEPFLOW_RESULTS into the result stores
// of their runs, through the durable consumer queue.ResultsConsumer. A
// result is acked only after it is in its run's store (and the run's
// counters are written), so a coordinator that dies in between gets it
// again, and the store keeps the first result per index.
type aggregator struct {
	c     *Coordinator
	cons  jetstream.Consumer
	quit  chan struct{}
	once  sync.Once
	ctx   context.Context // not cancelled by Stop: the last batch is finished
	close context.CancelFunc

	pending []jetstream.Msg
	// finishedAt holds the finish times of the results of the batch
	// that were stored, for the aggregation lag observed at commit.
	finishedAt []time.Time
	touched    map[*runState]struct{}
	// gone remembers runs whose results are dropped (finished or
	// unknown), so that stragglers do not cost a record lookup each.
	gone map[string]struct{}
	// compact holds the runs with results acked since the last compaction.
	compact     map[string]struct{}
	lastCompact time.Time
}

// newAggregator creates the results consumer anew. A leader that takes
// over (from a dead leader, or as a restart) deletes the old one first:
// results the previous leader had fetched but not acked would otherwise
// wait out their AckWait; recreated, the consumer delivers everything on
// the stream again at once (results acked but not yet purged are dropped
// as duplicates by the stores).
func newAggregator(ctx context.Context, c *Coordinator) (*aggregator, error) {
	if err := c.js.DeleteConsumer(ctx, queue.StreamResults, queue.ResultsConsumer); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		c.log.Warn("cannot reset the results consumer; results the previous leader held come back after their AckWait", zap.Error(err))
	}
	cons, err := c.js.CreateOrUpdateConsumer(ctx, queue.StreamResults, jetstream.ConsumerConfig{
		Durable:       queue.ResultsConsumer,
		Description:   "stepflow coordinators: result aggregation",
		FilterSubject: queue.ResultSubjects,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.cfg.ResultsAckWait,
		MaxDeliver:    -1,
		MaxAckPending: aggMaxAckPending,
	})
	if err != nil {
		return nil, fmt.Errorf("coordinator: results consumer: %w", err)
	}
	actx, cancel := context.WithCancel(context.WithoutCancel(c.ctx))
	return &aggregator{
		c: c, cons: cons, quit: make(chan struct{}), ctx: actx, close: cancel,
		touched: map[*runState]struct{}{}, gone: map[string]struct{}{},
		compact: map[string]struct{}{}, lastCompact: time.Now(),
	}, nil
}

// stop makes run return after its current batch.
func (a *aggregator) stop() { a.once.Do(func() { close(a.quit) }) }

// run fetches and commits batches until stop.
func (a *aggregator) run() {
	defer a.close()
	for {
		select {
		case <-a.quit:
			return
		default:
		}
		batch, err := a.cons.Fetch(aggBatch, jetstream.FetchMaxWait(aggFetchWait))
		if err == nil {
			a.consume(batch.Messages())
			err = batch.Error()
		}
		if err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) {
			a.c.log.Warn("fetching results", zap.Error(err))
			t := time.NewTimer(time.Second)
			select {
			case <-a.quit:
				t.Stop()
				return
			case <-t.C:
			}
		}
	}
}

// consume handles one fetch, committing every aggBatch results or after
// aggLinger.
func (a *aggregator) consume(msgs <-chan jetstream.Msg) {
	var linger <-chan time.Time
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				a.commit()
				return
			}
			a.handle(m)
			switch {
			case len(a.pending) >= aggBatch:
				a.commit()
				linger = nil
			case linger == nil:
				if timer == nil {
					timer = time.NewTimer(aggLinger)
				} else {
					timer.Reset(aggLinger)
				}
				linger = timer.C
			}
		case <-linger:
			linger = nil
			a.commit()
		}
	}
}

// handle stores one result in its run's store.
func (a *aggregator) handle(m jetstream.Msg) {
	log := a.c.log
	results := a.c.metrics.results
	r, err := queue.DecodeResult(m.Data())
	if err != nil {
		log.Warn("dropping a malformed result", zap.String("subject", m.Subject()), zap.Error(err))
		results.WithLabelValues(resultDropped).Inc()
		_ = m.Term()
		return
	}
	runID := r.GetRunId()
	st, err := a.runFor(runID)
	if err != nil {
		log.Warn("cannot look up the run of a result; it will be redelivered", zap.String("run", runID), zap.Error(err))
		_ = m.NakWithDelay(time.Second)
		return
	}
	if st == nil {
		results.WithLabelValues(resultDropped).Inc()
		a.pending = append(a.pending, m) // finished or unknown run: drop
		return
	}
	data, err := queue.ResultJSON(a.ctx, r, a.c.blobs)
	switch {
	case err != nil:
		data = failureJSON(fmt.Sprintf("the result of item %d could not be read: %v", r.GetIndex(), err))
		r.Failed = true
	case !json.Valid(data):
		data = failureJSON(fmt.Sprintf("the worker produced a malformed result for item %d", r.GetIndex()))
		r.Failed = true
	}
	completed := time.Now()
	if ts := r.GetFinishedAt(); ts != nil {
		completed = ts.AsTime()
	}
	rec := &resultRecord{Index: int(r.GetIndex()), Failed: r.GetFailed(), Source: uint8(r.GetSource()), CompletedAt: completed, Result: data}
	added, err := st.add(rec)
	if errors.Is(err, errIndexRange) {
		log.Warn("dropping a result for an item the run does not have", zap.Error(err))
		results.WithLabelValues(resultDropped).Inc()
		a.pending = append(a.pending, m)
		return
	}
	if err != nil {
		log.Error("cannot store a result; it will be redelivered", zap.String("run", runID), zap.Uint64("index", r.GetIndex()), zap.Error(err))
		_ = m.NakWithDelay(time.Second)
		return
	}
	if added {
		results.WithLabelValues(resultStored).Inc()
		st.redeliveries.Add(uint64(max(r.GetDeliveries(), 1) - 1))
		if r.GetFinishedAt() != nil {
			a.finishedAt = append(a.finishedAt, completed)
		}
	} else {
		results.WithLabelValues(resultDuplicate).Inc()
		log.Debug("dropping a duplicate result", zap.String("run", runID), zap.Uint64("index", r.GetIndex()))
	}
	a.pending = append(a.pending, m)
	a.touched[st] = struct{}{}
}

// runFor returns the state of a running run, or nil when its results are
// to be dropped (the run finished or does not exist). An error (the run
// store not answering) means: try again later.
func (a *aggregator) runFor(runID string) (*runState, error) {
	if st := a.c.active(runID); st != nil {
		return st, nil
	}
	if _, ok := a.gone[runID]; ok {
		return nil, nil
	}
	st, _, err := a.c.ensureAttached(a.ctx, runID)
	if err != nil && !errors.Is(err, ErrRunNotFound) {
		return nil, err
	}
	if st == nil {
		if len(a.gone) > 4096 {
			clear(a.gone)
		}
		a.gone[runID] = struct{}{}
	}
	return st, nil
}

// commit makes the batch durable, updates counters, finishes complete
// runs and acks the batch.
func (a *aggregator) commit() {
	now := time.Now()
	for _, t := range a.finishedAt {
		a.c.metrics.aggLag.Observe(max(now.Sub(t).Seconds(), 0))
	}
	a.finishedAt = a.finishedAt[:0]
	for st := range a.touched {
		if a.c.cfg.SyncResults {
			if err := st.sync(); err != nil {
				a.c.log.Error("cannot sync results", zap.String("run", st.id), zap.Error(err))
			}
		}
		if st.complete() {
			if _, err := a.c.terminate(a.ctx, st, outcomeStatus(st), ""); err != nil && !errors.Is(err, ErrRunFinished) {
				a.c.log.Warn("finishing run", zap.String("run", st.id), zap.Error(err))
			}
			continue
		}
		a.c.flushCounts(a.ctx, st)
		st.notify()
	}
	for st := range a.touched {
		a.compact[st.id] = struct{}{}
	}
	clear(a.touched)
	for _, m := range a.pending {
		if err := m.Ack(); err != nil {
			a.c.log.Debug("ack result", zap.Error(err))
		}
	}
	a.pending = a.pending[:0]
	if time.Since(a.lastCompact) >= aggCompactEvery {
		a.compactResults()
	}
}

// compactResults purges the results below the consumer's ack floor of
// the runs that had results since the last time: they are in their
// stores, and the results stream would otherwise keep every result of a
// run (and the server its bookkeeping) until the run ends. The ack floor
// is shared by every coordinator, so no result another one has not stored
// yet is touched.
func (a *aggregator) compactResults() {
	a.lastCompact = time.Now()
	if len(a.compact) == 0 {
		return
	}
	info, err := a.cons.Info(a.ctx)
	if err != nil {
		a.c.log.Debug("results consumer info", zap.Error(err))
		return
	}
	floor := info.AckFloor.Stream
	for runID := range a.compact {
		if err := queue.PurgeRunResultsBefore(a.ctx, a.c.js, runID, floor+1); err != nil {
			a.c.log.Debug("compacting results", zap.String("run", runID), zap.Error(err))
		}
	}
	clear(a.compact)
}

// failureJSON is a FlowResult failure with message.
func failureJSON(message string) []byte {
	return outcome.Failure(&outcome.Error{Code: outcome.CodeComponent, Message: message}).AppendJSON(nil)
}

// onMaxDeliveries turns an item JetStream gave up on into a failed result:
// published like a worker's result (so the first result per index still
// wins), then the item message is deleted from the work queue.
func (c *Coordinator) onMaxDeliveries(ctx context.Context, ev queue.MaxDeliveriesEvent) {
	log := c.log.With(zap.String("run", ev.RunID), zap.Int("index", ev.Index), zap.Uint64("seq", ev.StreamSeq))
	if ev.Item == nil {
		log.Debug("max-deliveries advisory for an item no longer queued", zap.Error(ev.Err))
		return
	}
	st := c.active(ev.RunID)
	if st != nil && st.hasResult(ev.Index) {
		// A result arrived after all (the last delivery reported one).
		if err := queue.DeleteItemMsg(ctx, c.js, ev.StreamSeq); err != nil {
			log.Warn("cannot delete an exhausted item", zap.Error(err))
		}
		return
	}
	// A worker records the error itself when a failure ends the last
	// delivery; the advisory comes when nothing did.
	msg := fmt.Sprintf("item %d exceeded its maximum deliveries (%d); last error: unknown (its last delivery ended without a result: "+
		"the worker crashed, was stopped, or went silent for longer than AckWait)", ev.Index, ev.Deliveries)
	res := &stepflowv1.ItemResult{
		RunId:         ev.RunID,
		Index:         uint64(ev.Index),
		Result:        failureJSON(msg),
		Failed:        true,
		Source:        stepflowv1.ResultSource_RESULT_SOURCE_MAX_DELIVERIES,
		Deliveries:    uint32(ev.Deliveries),
		FinishedAt:    timestamppb.Now(),
		ItemStreamSeq: ev.StreamSeq,
	}
	if _, err := queue.PublishResult(ctx, c.js, res, queue.ResultOptions{Subject: ev.Item.GetReplySubject()}); err != nil {
		log.Error("cannot fail an item that exceeded its maximum deliveries", zap.Error(err))
		return
	}
	c.metrics.exhausted.Inc()
	if err := queue.DeleteItemMsg(ctx, c.js, ev.StreamSeq); err != nil {
		log.Warn("cannot delete an exhausted item", zap.Error(err))
	}
	log.Warn("item failed: maximum deliveries exceeded", zap.Uint64("deliveries", ev.Deliveries))
}
