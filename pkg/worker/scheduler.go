package worker

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/queue"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// Timing of the scheduler's retries.
const (
	// bindTimeout bounds the lookup of a run's consumer.
	bindTimeout = 5 * time.Second
	// minRetry and maxRetry bound the backoff of a run whose consumer
	// cannot be bound or pulled from (not created yet, deleted, NATS
	// away).
	minRetry = 100 * time.Millisecond
	maxRetry = 5 * time.Second
	// rewatchDelay is the pause before re-watching run records after the
	// watch ended unexpectedly.
	rewatchDelay = time.Second
)

// runState is what the scheduler knows of one run. Only the scheduler
// goroutine touches it; pulls and items get the immutable pieces they
// need when they start.
type runState struct {
	id     string
	rec    *stepflowv1.RunRecord
	active bool
	// ctx is the parent of the run's item contexts; cancel ends them with
	// errRunCancelled when the run is cancelled.
	ctx    context.Context
	cancel context.CancelCauseFunc
	prep   *preparedRun

	cons      jetstream.Consumer // nil until bound
	heartbeat time.Duration      // the consumer's HeartbeatInterval, once bound

	pulls    int       // pulls pending
	reserved int       // slots the pending pulls may still fill
	cold     bool      // the last pull delivered nothing
	pending  int       // NumPending of the last message seen; -1 unknown
	inflight int       // items of the run executing on this worker
	failures int       // consecutive failed binds or pulls
	retryAt  time.Time // no pull before this
}

// room is how many more items of the run this worker may ask for: its
// concurrency, less the items it runs and the slots its pulls hold, plus
// a lookahead of an eighth of the concurrency. The lookahead keeps pulls
// waiting at the server while the run is at its limit, so that the item
// an ack lets in is delivered at once rather than a pull round trip
// later; the server enforces the real, fleet-wide limit
// (MaxAckPending), so the lookahead costs idle slots, never concurrency.
func (rs *runState) room() int {
	limit := int(rs.rec.GetMaxConcurrency())
	if limit <= 0 {
		return math.MaxInt
	}
	return limit + limit/8 - rs.inflight - rs.reserved
}

// maxPullsPerRun bounds the pulls pending on one run: several let the
// server hand an item to a waiting pull as soon as a slot frees, instead
// of one pull at a time, each a round trip, which caps a run at a few
// thousand items a second.
const maxPullsPerRun = 4

// pullState is one pending pull.
type pullState struct {
	rs       *runState
	reserved int // slots it may still fill
	got      int // messages it delivered so far
}

// fetchEvent is a message delivered by a pull, or (msg nil) the end of
// the pull.
type fetchEvent struct {
	p         *pullState
	rs        *runState
	msg       jetstream.Msg
	cons      jetstream.Consumer // a consumer the pull bound
	heartbeat time.Duration
	err       error
}

// scheduler owns the worker's slot state and decides what to pull from
// which run. Its loop is the only goroutine that reads or writes it.
type scheduler struct {
	w       *Worker
	log     *zap.Logger
	slots   *slots
	maxWait time.Duration

	runs     map[string]*runState
	order    []*runState // active runs, in round-robin order
	cursor   int
	inflight int // items executing
	reserved int // slots held by pending pulls
	pulls    int // pending pulls
	stopping bool
	// state is what the loop last saw once stopping (items in flight,
	// pulls pending), for the log of a stop that outlives its drain
	// timeout.
	state atomic.Value // schedState

	events   chan queue.RunEvent
	fetched  chan fetchEvent
	finished chan *runState
	jobs     chan func()     // items for idle item goroutines (runJobs)
	jobsDone chan struct{}   // closed when no item is left to run
	stopCh   <-chan struct{} // the worker's stop request
	done     chan struct{}
	wg       sync.WaitGroup // the watch, pulls and items
}

func newScheduler(w *Worker) *scheduler {
	return &scheduler{
		w:        w,
		log:      w.log,
		slots:    w.slots,
		maxWait:  w.cfg.FetchMaxWait,
		runs:     map[string]*runState{},
		events:   make(chan queue.RunEvent),
		fetched:  make(chan fetchEvent),
		finished: make(chan *runState),
		jobs:     make(chan func()),
		jobsDone: make(chan struct{}),
		stopCh:   w.stopReq,
		done:     make(chan struct{}),
	}
}

// loop is the scheduler. Once the worker's stop is requested it pulls
// nothing more, and it returns when every pending pull has ended and
// every item has been settled.
func (s *scheduler) loop() {
	watchCtx, cancelWatch := context.WithCancel(context.Background())
	s.wg.Go(func() { s.watch(watchCtx) })
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for !s.stopping || s.inflight > 0 || s.pulls > 0 {
		// Checked before every dispatch, not only in the select below:
		// Stop requests the stop before it cancels items, so a slot freed
		// by a cancelled item is never refilled.
		select {
		case <-s.stopCh:
			// The loop's condition again: with nothing in flight and no
			// pull pending, nothing would wake the select below (its stop
			// case is gone), and the worker would never stop.
			s.beginDrain()
			continue
		default:
		}
		var timerC <-chan time.Time
		if next := s.dispatch(); !next.IsZero() {
			timer.Reset(time.Until(next))
			timerC = timer.C
		}
		if s.stopping { // for the log of a long stop; not per item otherwise
			s.state.Store(schedState{Stopping: true, InFlight: s.inflight, Pulls: s.pulls, Reserved: s.reserved})
		}
		select {
		case ev := <-s.events:
			s.onRunEvent(ev)
		case fe := <-s.fetched:
			s.onFetch(fe)
		case rs := <-s.finished:
			s.inflight--
			s.slots.busy.Add(-1)
			rs.inflight--
			s.forget(rs)
		case <-s.slots.Changed():
		case <-timerC:
		case <-s.stopCh:
			s.beginDrain()
		}
		timer.Stop()
	}
	cancelWatch()
	close(s.jobsDone)
	s.wg.Wait()
	for _, rs := range s.runs {
		rs.cancel(errWorkerStopping)
	}
	close(s.done)
}

// schedState is the scheduler loop's state as it last saw it.
type schedState struct {
	Stopping                  bool
	InFlight, Pulls, Reserved int
}

// lastState returns what the loop last saw.
func (s *scheduler) lastState() schedState {
	st, _ := s.state.Load().(schedState)
	return st
}

// beginDrain stops pulling for good.
func (s *scheduler) beginDrain() {
	if s.stopping {
		return
	}
	s.stopping = true
	s.stopCh = nil
	if s.w.onDrainStart != nil {
		s.w.onDrainStart()
	}
}

// dispatch starts pulls while slots are free and some run can take them.
// It returns when the next run in backoff becomes eligible (zero: none).
func (s *scheduler) dispatch() (next time.Time) {
	if s.stopping {
		return time.Time{}
	}
	now := time.Now()
	for {
		free := s.slots.Capacity() - s.inflight - s.reserved
		if free <= 0 || len(s.order) == 0 {
			return next
		}
		rs, n, retry := s.pick(free, now)
		if !retry.IsZero() && (next.IsZero() || retry.Before(next)) {
			next = retry
		}
		if rs == nil {
			return next
		}
		s.launch(rs, n)
	}
}

// pick chooses the next run to pull from, round-robin from the cursor,
// and how many messages to ask for. Runs whose last pull delivered
// something ("hot") come first; a "cold" run is only long-polled with a
// slot no hot run can use, and for one message, because a pending pull
// holds its slots until it ends. A hot run gets its fair share of the
// free slots (free / active runs, rounded up), capped by its own
// remaining concurrency, by its item count and by the backlog its last
// message reported.
func (s *scheduler) pick(free int, now time.Time) (rs *runState, n int, retry time.Time) {
	share := (free + len(s.order) - 1) / len(s.order)
	for _, cold := range []bool{false, true} {
		for i := range len(s.order) {
			idx := (s.cursor + i) % len(s.order)
			r := s.order[idx]
			if r.cold != cold || (cold && r.pulls > 0) || r.pulls >= maxPullsPerRun {
				continue
			}
			if r.retryAt.After(now) {
				if retry.IsZero() || r.retryAt.Before(retry) {
					retry = r.retryAt
				}
				continue
			}
			room := r.room()
			if room <= 0 {
				continue
			}
			n := min(share, room)
			if total := r.rec.GetItemTotal(); total > 0 && uint64(n) > total {
				// A pull holds what it asked for until it is full or
				// expires: a small run, whose backlog is not known yet
				// on its first pull, must not hold more slots than it
				// has items.
				n = int(total)
			}
			switch {
			case cold:
				n = 1
			case r.pending >= 0:
				n = min(n, max(1, r.pending))
			}
			s.cursor = idx + 1
			return r, n, retry
		}
	}
	return nil, 0, retry
}

// launch starts a pull of up to n messages from rs, reserving n slots
// until the pull ends.
func (s *scheduler) launch(rs *runState, n int) {
	p := &pullState{rs: rs, reserved: n}
	rs.pulls++
	rs.reserved += n
	s.reserved += n
	s.pulls++
	cons := rs.cons
	s.wg.Go(func() { s.pull(p, cons, n) })
}

// pull runs on its own goroutine: it binds the run's consumer if needed,
// pulls up to n messages with a short wait, and forwards each message to
// the loop as it arrives, then the end of the pull.
func (s *scheduler) pull(p *pullState, cons jetstream.Consumer, n int) {
	rs := p.rs
	end := fetchEvent{p: p, rs: rs}
	defer func() { s.fetched <- end }()
	if cons == nil {
		ctx, cancel := context.WithTimeout(context.Background(), bindTimeout)
		c, err := queue.RunConsumerHandle(ctx, s.w.js, rs.id)
		cancel()
		if err != nil {
			end.err = err
			return
		}
		cc := c.CachedInfo().Config
		cons, end.cons = c, c
		end.heartbeat = queue.RunConsumerConfig{AckWait: cc.AckWait, BackOff: cc.BackOff}.HeartbeatInterval()
	}
	batch, err := cons.Fetch(n, jetstream.FetchMaxWait(s.maxWait))
	if err != nil {
		end.err = err
		return
	}
	for m := range batch.Messages() {
		s.fetched <- fetchEvent{p: p, rs: rs, msg: m, cons: end.cons, heartbeat: end.heartbeat}
	}
	end.err = batch.Error()
}

func (s *scheduler) onFetch(fe fetchEvent) {
	rs := fe.rs
	if fe.cons != nil {
		rs.cons, rs.heartbeat = fe.cons, fe.heartbeat
	}
	p := fe.p
	if fe.msg != nil {
		p.reserved--
		rs.reserved--
		s.reserved--
		p.got++
		if md, err := fe.msg.Metadata(); err == nil {
			rs.pending = int(md.NumPending)
		}
		switch {
		case s.stopping:
			s.w.settle(fe.msg, errWorkerStopping)
			s.w.metrics.countItem(errWorkerStopping, false, 0)
		case !rs.active:
			cause := inactiveCause(rs)
			s.w.settle(fe.msg, cause)
			s.w.metrics.countItem(cause, false, 0)
		default:
			s.start(rs, fe.msg)
		}
		return
	}
	s.pulls--
	s.reserved -= p.reserved
	rs.reserved -= p.reserved
	rs.pulls--
	p.reserved = 0
	switch {
	case fe.err != nil:
		// Rebind next time: the consumer may have been deleted and
		// recreated, or never existed yet.
		rs.cons = nil
		rs.failures++
		s.w.unresponsive.Failed(fe.err)
		delay := min(minRetry<<min(rs.failures-1, 10), maxRetry)
		rs.retryAt = time.Now().Add(delay)
		lvl := zap.DebugLevel
		if rs.failures >= 5 && rs.active {
			lvl = zap.WarnLevel
		}
		s.log.Log(lvl, "cannot pull from run; retrying", zap.String("run", rs.id), zap.Error(fe.err),
			zap.Int("failures", rs.failures), zap.Duration("retry_in", delay))
	default:
		rs.failures = 0
		rs.cold = p.got == 0
		s.w.unresponsive.OK()
	}
	s.forget(rs)
}

// start runs one delivered item on its own goroutine.
func (s *scheduler) start(rs *runState, msg jetstream.Msg) {
	s.inflight++
	s.slots.busy.Add(1)
	rs.inflight++
	d := delivery{msg: msg, runID: rs.id, ctx: rs.ctx, prep: rs.prep, heartbeat: rs.heartbeat}
	job := func() {
		s.w.process(d)
		s.finished <- rs
	}
	select {
	case s.jobs <- job: // an idle item goroutine takes it
	default:
		s.wg.Go(func() { s.runJobs(job) })
	}
}

// itemGoroutineIdle is how long an item goroutine waits for the next item
// before it exits.
const itemGoroutineIdle = 10 * time.Second

// runJobs runs job, then the items handed to it while it waits, until it
// has been idle for itemGoroutineIdle or the scheduler ends. Items run on
// goroutines that live on, not one new goroutine each: an item's stack
// grows deep (executor, plugins, protobuf, NATS), and growing a fresh
// stack for every item costs more than the item's own work on a busy
// worker.
func (s *scheduler) runJobs(job func()) {
	idle := time.NewTimer(itemGoroutineIdle)
	defer idle.Stop()
	for {
		job()
		idle.Reset(itemGoroutineIdle)
		select {
		case job = <-s.jobs:
		case <-idle.C:
			return
		case <-s.jobsDone:
			return
		}
	}
}

// onRunEvent keeps the set of active runs: status running and no
// cancellation requested.
func (s *scheduler) onRunEvent(ev queue.RunEvent) {
	switch {
	case ev.Ready:
		s.w.watchReady.Store(true)
		return
	case ev.Err != nil:
		s.log.Warn("undecodable run record; ignored", zap.String("run", ev.RunID), zap.Error(ev.Err))
		return
	}
	rs := s.runs[ev.RunID]
	if ev.Deleted {
		if rs != nil && rs.active {
			s.deactivate(rs, errRunCancelled)
		}
		return
	}
	rec := ev.Record
	if rec.GetStatus() != stepflowv1.RunStatus_RUN_STATUS_RUNNING || rec.GetCancelRequested() {
		if rs != nil && rs.active {
			var cause error // paused: in-flight items finish
			if rec.GetCancelRequested() || queue.Terminal(rec.GetStatus()) {
				cause = errRunCancelled
			}
			rs.rec = rec
			s.deactivate(rs, cause)
		}
		return
	}
	if rs == nil {
		rs = &runState{id: ev.RunID, pending: -1}
		s.runs[ev.RunID] = rs
	}
	rs.rec = rec
	if !rs.active {
		s.activate(rs)
	}
}

func (s *scheduler) activate(rs *runState) {
	rs.active, rs.cold, rs.failures, rs.retryAt = true, false, 0, time.Time{}
	if rs.ctx == nil || rs.ctx.Err() != nil {
		rs.ctx, rs.cancel = context.WithCancelCause(s.w.workCtx)
	}
	rs.prep = newPreparedRun(rs.rec, s.w.flows, s.w.exec)
	s.order = append(s.order, rs)
	s.log.Debug("run active", zap.String("run", rs.id), zap.Uint32("max_concurrency", rs.rec.GetMaxConcurrency()))
}

// deactivate stops pulling from rs; with a cause it also cancels the
// run's in-flight items.
func (s *scheduler) deactivate(rs *runState, cause error) {
	rs.active = false
	for i, r := range s.order {
		if r == rs {
			s.order = append(s.order[:i], s.order[i+1:]...)
			if s.cursor > i {
				s.cursor--
			}
			break
		}
	}
	if cause != nil {
		rs.cancel(cause)
	}
	s.log.Debug("run inactive", zap.String("run", rs.id), zap.Int("in_flight", rs.inflight),
		zap.String("status", queue.StatusName(rs.rec.GetStatus())), zap.Bool("cancel_requested", rs.rec.GetCancelRequested()))
	s.forget(rs)
}

// forget drops the state of an inactive run once nothing of it is left.
func (s *scheduler) forget(rs *runState) {
	if rs.active || rs.inflight > 0 || rs.pulls > 0 || s.runs[rs.id] != rs {
		return
	}
	delete(s.runs, rs.id)
	if rs.cancel != nil {
		rs.cancel(errRunCancelled)
	}
}

// inactiveCause is how a message of an inactive run is settled: Term if
// the run was cancelled, Nak if it is only paused.
func inactiveCause(rs *runState) error {
	if cause := context.Cause(rs.ctx); cause != nil {
		return cause
	}
	return errRunPaused
}

// watch forwards run record changes to the loop until ctx ends,
// re-watching if the watch ends on its own.
func (s *scheduler) watch(ctx context.Context) {
	for {
		rw, err := s.w.runStore.Watch(ctx, queue.WatchOptions{})
		if err == nil {
			s.forward(ctx, rw)
			if err := rw.Stop(); err != nil {
				s.log.Debug("stop run watcher", zap.Error(err))
			}
		}
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("watching run records failed; retrying", zap.Error(err))
		t := time.NewTimer(rewatchDelay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
}

func (s *scheduler) forward(ctx context.Context, rw *queue.RunWatcher) {
	for ev := range rw.Events() {
		select {
		case s.events <- ev:
		case <-ctx.Done():
			return
		}
	}
}
