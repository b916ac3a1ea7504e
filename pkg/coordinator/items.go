package coordinator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/queue"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// Lost items. STEPFLOW_ITEMS holds a window of each run's spool in memory
// storage (queue.Config.ItemsFileStorage): the spool, fsynced before the
// run was accepted, is the durable copy of every item, and the stream is
// only how the items reach the workers. When the stream loses items (a
// NATS server restarted, a stream or consumer deleted by hand, a quorum
// lost and rebuilt), the leader publishes every item of the run without a
// result again. It notices
//
//   - a new incarnation of the stream (queue.ItemsIncarnation: created
//     anew, or missing and created here), which lost every item;
//   - a stream that went back: its last sequence below one read before,
//     or below what a run's consumer delivered (a NATS cluster whose
//     memory-storage stream a restarted replica reset). It is created
//     anew (itemsWentBack);
//   - a run whose consumer is gone (created again here);
//   - a run whose counts do not add up: items published without a result,
//     none queued or in flight on its consumer and none on the stream, and
//     no result for itemsStallAfter, twice in a row.
//
// A republished item that was not lost after all runs twice, and the
// first result per index wins. An ack from an earlier incarnation of the
// stream can never remove an item of a later one: every incarnation
// starts its sequences above the last one's (queue.EnsureItemsStream).
const (
	// itemsCheckEvery is how often the leader checks the stream and the
	// run consumers.
	itemsCheckEvery = time.Second
	// itemsStallAfter is how long a run with unfinished published items
	// and nothing queued or in flight must go without a result before its
	// items are taken for lost.
	itemsStallAfter = 3 * time.Second
)

// queueConfig is the queue configuration with the coordinator's logger.
func (c *Coordinator) queueConfig() queue.Config {
	qcfg := c.cfg.Queue
	if qcfg.Logger == nil {
		qcfg.Logger = c.cfg.Logger
	}
	return qcfg
}

// setItemsIncarnation records the stream incarnation the runs' items
// were published to; it reports whether it changed.
func (c *Coordinator) setItemsIncarnation(inc queue.ItemsIncarnation) (changed bool) {
	c.itemsMu.Lock()
	defer c.itemsMu.Unlock()
	changed = c.itemsInc != (queue.ItemsIncarnation{}) && c.itemsInc != inc
	if c.itemsInc != inc {
		c.itemsLast = 0
	}
	c.itemsInc = inc
	return changed
}

// noteItemsLastSeq records the items stream's last sequence as just read,
// and returns the highest read before in this incarnation: a stream whose
// last sequence goes back lost messages (and would give their sequences
// out again).
func (c *Coordinator) noteItemsLastSeq(last uint64) (highest uint64) {
	c.itemsMu.Lock()
	defer c.itemsMu.Unlock()
	highest = c.itemsLast
	c.itemsLast = max(c.itemsLast, last)
	return highest
}

// watchItems checks for lost items every itemsCheckEvery while leading.
func (c *Coordinator) watchItems() {
	t := time.NewTicker(itemsCheckEvery)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		if !c.leading() || !c.nc.IsConnected() {
			continue
		}
		ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
		c.checkItems(ctx)
		cancel()
	}
}

// checkItems republishes the items of the runs that lost some.
func (c *Coordinator) checkItems(ctx context.Context) {
	inc, last, err := queue.ItemsStreamState(ctx, c.js)
	if errors.Is(err, queue.ErrNotProvisioned) {
		inc, _, err = queue.EnsureItemsStream(ctx, c.js, c.queueConfig())
		last = 0
	}
	if err != nil {
		c.apiUnresponsive.Failed(err)
		c.log.Debug("checking the items stream", zap.Error(err))
		return
	}
	c.apiUnresponsive.OK()
	recreated := c.setItemsIncarnation(inc)
	behind := false
	defer func() {
		if !behind {
			c.setItemsBehind(0)
		}
	}()
	if highest := c.noteItemsLastSeq(last); !recreated && last < highest {
		behind = true
		c.itemsBehind(ctx, fmt.Sprintf("its last sequence went back from %d to %d", highest, last))
		return
	}
	for _, st := range c.attachedRuns() {
		if ctx.Err() != nil {
			return
		}
		if recreated {
			c.republish(ctx, st, "the items stream was created anew (a NATS restart loses its memory storage)")
			continue
		}
		cons, err := queue.RunConsumerHandle(ctx, c.js, st.id)
		if errors.Is(err, queue.ErrConsumerNotFound) {
			c.republish(ctx, st, "its consumer was gone")
			continue
		}
		if err != nil {
			continue
		}
		info, err := cons.Info(ctx)
		if err != nil {
			continue
		}
		if info.Delivered.Stream > last {
			// Delivered past the stream's last sequence as read before:
			// items published since, or a stream that lost messages its
			// consumers had delivered. Read after the consumer, the
			// stream must be past it.
			_, now, err := queue.ItemsStreamState(ctx, c.js)
			if err != nil {
				continue
			}
			if info.Delivered.Stream > now {
				behind = true
				c.itemsBehind(ctx, fmt.Sprintf("the consumer of run %s delivered sequence %d, and the stream ends at %d", st.id, info.Delivered.Stream, now))
				return
			}
			last = now
		}
		if info.NumPending > 0 || info.NumAckPending > 0 || !st.stalled(itemsStallAfter) {
			st.setStalls(0)
			continue
		}
		if st.setStalls(1) < 2 {
			continue
		}
		st.setStalls(0)
		// Items left after their maximum deliveries are failed first;
		// the publisher is stopped meanwhile, since a message it added
		// would pass for one of those.
		st.stopPublisher()
		c.recoverExhausted(ctx, st)
		if n, err := queue.RunItemsQueued(ctx, c.js, st.id); err == nil && n == 0 && st.stalled(itemsStallAfter) {
			c.republish(ctx, st, "items published without a result are neither queued nor in flight")
			continue
		}
		c.startPublisher(st, st.publishedUpTo(), true)
	}
}

// itemsBehind handles an items stream found behind what was read of it
// before: twice in a row, a second apart, it went back (a new stream
// leader that has not applied everything yet catches up sooner).
func (c *Coordinator) itemsBehind(ctx context.Context, why string) {
	if c.setItemsBehind(1) < 2 {
		c.log.Info("the items stream is behind what was read of it before; checking again", zap.String("why", why))
		return
	}
	c.setItemsBehind(0)
	c.itemsWentBack(ctx, why)
}

// setItemsBehind adds n to the count of checks in a row that found the
// items stream behind, or resets it (n = 0), and returns it.
func (c *Coordinator) setItemsBehind(n int) int {
	c.itemsMu.Lock()
	defer c.itemsMu.Unlock()
	if n == 0 {
		c.itemsBehindChecks = 0
	} else {
		c.itemsBehindChecks += n
	}
	return c.itemsBehindChecks
}

// itemsWentBack handles an items stream that lost messages without
// being created anew (seen on a NATS cluster: a memory-storage stream
// reset by a restarted replica). Its consumers wait for acks of messages
// it no longer has, and the sequences it gives out next were given out
// before, so an ack from before the loss could remove a new item: the
// stream is created anew, its sequences above the old ones, and every
// run's items without a result are published again.
func (c *Coordinator) itemsWentBack(ctx context.Context, why string) {
	c.log.Warn("the items stream lost messages; creating it anew and publishing every unfinished item again", zap.String("why", why))
	inc, err := queue.RecreateItemsStream(ctx, c.js, c.queueConfig())
	if err != nil {
		c.log.Warn("cannot create the items stream anew; retrying", zap.Error(err))
		return
	}
	c.setItemsIncarnation(inc)
	for _, st := range c.attachedRuns() {
		if ctx.Err() != nil {
			return
		}
		c.republish(ctx, st, "the items stream lost messages ("+why+")")
	}
}

// attachedRuns returns the runs attached to this coordinator.
func (c *Coordinator) attachedRuns() []*runState {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*runState, 0, len(c.runs))
	for _, st := range c.runs {
		out = append(out, st)
	}
	return out
}

// republish makes sure the run has a consumer and publishes again, from
// its spool, every item without a result.
func (c *Coordinator) republish(ctx context.Context, st *runState, why string) {
	rec, err := c.getRecord(ctx, st.id)
	if err != nil || rec.GetStatus() != statusRunning {
		return
	}
	if _, err := c.ensureRunConsumer(ctx, rec); err != nil {
		c.log.Warn("cannot recreate the consumer of a run that lost items; retrying", zap.String("run", st.id), zap.Error(err))
		return
	}
	c.log.Warn("publishing the run's unfinished items again", zap.String("run", st.id), zap.String("why", why))
	c.metrics.republished.Inc()
	st.stopPublisher()
	st.mu.Lock()
	st.pubGen++
	st.mu.Unlock()
	c.startPublisher(st, 0, true)
}

// publishedUpTo returns the index below which every item was published.
func (s *runState) publishedUpTo() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.published
}

// generation returns how often the run's items were published again.
func (s *runState) generation() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pubGen
}

// ensureRunConsumer creates the run's consumer when it does not exist;
// created says it did not.
func (c *Coordinator) ensureRunConsumer(ctx context.Context, rec *stepflowv1.RunRecord) (created bool, err error) {
	runID := rec.GetRunId()
	_, err = queue.RunConsumerHandle(ctx, c.js, runID)
	if err == nil {
		return false, nil
	}
	if !errors.Is(err, queue.ErrConsumerNotFound) {
		return false, fmt.Errorf("coordinator: consumer of run %s: %w", runID, err)
	}
	cc := queue.RunConsumerConfig{
		MaxAckPending: max(int(rec.GetMaxConcurrency()), 1),
		AckWait:       rec.GetAckWait().AsDuration(),
		MaxDeliver:    cmp.Or(int(rec.GetMaxDeliver()), c.cfg.RunMaxDeliver),
	}
	if _, err := queue.CreateRunConsumer(ctx, c.js, runID, cc); err != nil {
		return false, fmt.Errorf("coordinator: recreate consumer of run %s: %w", runID, err)
	}
	return true, nil
}

// stalled reports whether the run has published items without a result
// and has had no result for d.
func (s *runState) stalled(d time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.status != statusRunning || s.frontier-s.below <= 0 {
		return false
	}
	last := s.lastAdded
	if last.IsZero() || s.attachedAt.After(last) {
		last = s.attachedAt
	}
	if s.pubAt.After(last) {
		last = s.pubAt
	}
	return time.Since(last) >= d
}

// setStalls adds n to the consecutive stalled checks, or resets them for
// n = 0; it returns the count.
func (s *runState) setStalls(n int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n == 0 {
		s.stalls = 0
	} else {
		s.stalls += n
	}
	return s.stalls
}
