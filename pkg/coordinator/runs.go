package coordinator

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/value"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// Files of a run's directory besides the result store.
const (
	uploadMarkerName = "uploading"       // present while the inputs are published; holds the key hash
	keyFileName      = "idempotency-key" // the hash of the run's Idempotency-Key
	inputsFileName   = "inputs.jsonl"    // the inputs, for RunDetails, when small enough
)

const (
	statusRunning   = stepflowv1.RunStatus_RUN_STATUS_RUNNING
	statusCompleted = stepflowv1.RunStatus_RUN_STATUS_COMPLETED
	statusFailed    = stepflowv1.RunStatus_RUN_STATUS_FAILED
	statusCancelled = stepflowv1.RunStatus_RUN_STATUS_CANCELLED
)

var (
	// errAlreadyTerminal aborts a record Modify that found the run finished.
	errAlreadyTerminal = errors.New("run record already terminal")
	// errIndexRange is a result for an index the run does not have.
	errIndexRange = errors.New("item index out of range")
)

// runState is a running run attached to this coordinator: the writer of
// its result store, its counters (the local truth the record's counters
// are written from) and the signals waiters and event streams wait on.
type runState struct {
	id       string
	dir      string
	topLevel bool
	total    int
	meta     runMeta // for metrics

	maxConc      atomic.Int64  // the run's concurrency, for metrics
	redeliveries atomic.Uint64 // extra deliveries of the items with a stored result

	mu          sync.Mutex
	log         *resultLog // nil once the run finished (or was detached)
	succeeded   int
	failed      int
	flushed     [2]int // succeeded, failed as last written to the record
	status      stepflowv1.RunStatus
	committed   int64                 // bytes of the result log readers may read
	pendingAdds []pendingAdd          // results added, not yet flushed
	lastAdded   time.Time             // when the last result was stored (zero: none since attached)
	attachedAt  time.Time             // when this coordinator attached the run
	pubAt       time.Time             // when the publisher last put an item on the queue
	stalls      int                   // consecutive checks that found the run stalled (items.go)
	pubGen      int                   // times the items were published again after a loss (items.go)
	changed     chan struct{}         // closed and replaced on every change
	done        chan struct{}         // closed when the run finished
	final       *stepflowv1.RunRecord // the terminal record, once terminate wrote it

	released bool // no longer counted in Coordinator.topLevel; guarded by Coordinator.mu

	// Publishing the spool (publisher.go).
	conc      int                // the run's concurrency, which sizes its publish window
	published int                // every item below this index is on the queue or has a result
	flushedP  int                // published as last written to the record
	frontier  int                // the publisher has passed every index below
	below     int                // results with an index below frontier
	pubStop   context.CancelFunc // nil: no publisher
	pubDone   chan struct{}
}

func newRunState(rec *stepflowv1.RunRecord, dir string, log *resultLog, counts storeCounts) *runState {
	st := &runState{
		id:         rec.GetRunId(),
		dir:        dir,
		topLevel:   rec.GetParentRunId() == "",
		total:      int(rec.GetItemTotal()),
		meta:       metaOf(rec),
		log:        log,
		succeeded:  counts.Succeeded,
		failed:     counts.Failed,
		status:     statusRunning,
		committed:  log.size,
		changed:    make(chan struct{}),
		done:       make(chan struct{}),
		attachedAt: time.Now(),
	}
	st.flushed = [2]int{int(rec.GetItems().GetCompleted()), int(rec.GetItems().GetFailed())}
	st.conc = max(int(rec.GetMaxConcurrency()), 1)
	st.published = int(rec.GetItemsPublished())
	st.flushedP = st.published
	st.maxConc.Store(int64(rec.GetMaxConcurrency()))
	return st
}

// setConcurrency records a new concurrency and wakes the publisher, whose
// window grows with it.
func (s *runState) setConcurrency(n int) {
	s.mu.Lock()
	s.conc = n
	s.mu.Unlock()
	s.notify()
}

// resetFrontier starts the publish accounting at index from: the items
// below it were published before, and those without a result are still
// on the queue.
func (s *runState) resetFrontier(from int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.frontier, s.below = from, 0
	if s.log == nil {
		return
	}
	for i := range from {
		if ok, err := s.log.has(i); ok && err == nil {
			s.below++
		}
	}
}

// admit decides about publishing item index, in one critical section:
// skip when check is set and the item has a result (it finished before a
// restart); publish (the frontier moves past it) when fewer than
// window(concurrency) published items lack a result; otherwise wait for
// the returned channel, closed at the next change, and ask again.
func (s *runState) admit(index int, check bool, window func(conc int) int) (skip, publish bool, wait <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if check && s.log != nil {
		if ok, err := s.log.has(index); ok && err == nil {
			if index >= s.frontier {
				s.frontier = index + 1
				s.below++
			}
			return true, false, nil
		}
	}
	if s.frontier-s.below >= window(s.conc) {
		return false, false, s.changed
	}
	if index >= s.frontier {
		s.frontier = index + 1
	}
	return false, true, nil
}

// setPublished records that every item below next is on the queue.
func (s *runState) setPublished(next int) {
	s.mu.Lock()
	s.published = max(s.published, next)
	s.pubAt = time.Now()
	s.mu.Unlock()
}

// add stores a result unless the run has finished, the index is out of
// range or already has a result.
func (s *runState) add(rec *resultRecord) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.log == nil || s.status != statusRunning {
		return false, nil
	}
	if rec.Index >= s.total {
		return false, fmt.Errorf("%w: result for item %d of run %s, which has %d items", errIndexRange, rec.Index, s.id, s.total)
	}
	added, err := s.log.add(rec)
	if err != nil || !added {
		return false, err
	}
	p := pendingAdd{index: rec.Index, failed: rec.Failed, below: rec.Index < s.frontier}
	if p.below {
		s.below++
	}
	if rec.Failed {
		s.failed++
	} else {
		s.succeeded++
	}
	s.pendingAdds = append(s.pendingAdds, p)
	s.lastAdded = time.Now()
	return true, nil
}

// pendingAdd is what add counted for a record flush has not written yet.
type pendingAdd struct {
	index         int
	failed, below bool
}

// flush writes the results added since the last flush (a batch) and
// lets readers read them. When the write fails, their counts are taken
// back with them (see resultLog.flush) and the error returned; a failed
// index slot write is only reported (slotErr).
func (s *runState) flush() (logErr, slotErr error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.log == nil {
		return nil, nil
	}
	forgotten, logErr, slotErr := s.log.flush()
	if len(forgotten) > 0 {
		lost := make(map[int]bool, len(forgotten))
		for _, i := range forgotten {
			lost[i] = true
		}
		for _, p := range s.pendingAdds {
			if !lost[p.index] {
				continue
			}
			if p.below {
				s.below--
			}
			if p.failed {
				s.failed--
			} else {
				s.succeeded--
			}
		}
	}
	s.pendingAdds = s.pendingAdds[:0]
	s.committed = s.log.size
	return logErr, slotErr
}

// lastResult returns when the run's last result was stored by this
// coordinator (zero when none since it attached the run).
func (s *runState) lastResult() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastAdded
}

// hasResult reports whether index has a result.
func (s *runState) hasResult(index int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.log == nil {
		return false
	}
	ok, err := s.log.has(index)
	return ok && err == nil
}

// snapshot returns the counters and the committed log size.
func (s *runState) snapshot() (succeeded, failed int, status stepflowv1.RunStatus, committed int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.succeeded, s.failed, s.status, s.committed
}

// complete reports whether every item has a result.
func (s *runState) complete() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.succeeded+s.failed >= s.total
}

// syncWritten makes durable what flush wrote before it, without holding
// the run's lock during the fsync: the aggregator adds and writes the
// next batch's results meanwhile. An fsync that fails because finish or
// detach closed the log meanwhile counts if theirs covered the writes.
func (s *runState) syncWritten() error {
	s.mu.Lock()
	l := s.log
	if l == nil || !l.dirty {
		s.mu.Unlock()
		return nil
	}
	gen, f := l.flushGen, l.log
	s.mu.Unlock()
	err := f.Sync()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		l.synced(gen)
		return nil
	}
	if l.syncedGen >= gen {
		return nil
	}
	return fmt.Errorf("coordinator: sync result log: %w", err)
}

// changes returns a channel closed at the next change.
func (s *runState) changes() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// notify wakes everything waiting on changes.
func (s *runState) notify() {
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// finish marks the run terminal and closes its result store; ok is false
// when it already was.
func (s *runState) finish(status stepflowv1.RunStatus) (succeeded, failed int, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.status != statusRunning {
		return s.succeeded, s.failed, false
	}
	s.status = status
	if s.log != nil {
		if err := s.log.sync(); err == nil {
			_ = s.log.close()
		} else {
			_ = s.log.close()
		}
		s.log = nil
	}
	return s.succeeded, s.failed, true
}

// detach closes the result store of a run that keeps running without this
// coordinator (Stop).
func (s *runState) detach() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.log != nil {
		_ = s.log.sync()
		_ = s.log.close()
		s.log = nil
	}
}

// runDir is the directory of a run's files.
func (c *Coordinator) runDir(runID string) string {
	return filepath.Join(c.cfg.DataDir, "runs", runID)
}

// newRunID returns a UUIDv7 run id.
func newRunID() string {
	id, err := uuid.NewV7()
	if err != nil {
		return uuid.NewString()
	}
	return id.String()
}

// active returns the attached state of a running run, or nil.
func (c *Coordinator) active(runID string) *runState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.runs[runID]
}

// validRunID checks a run id from a request.
func validRunID(runID string) error {
	if err := queue.ValidateRunID(runID); err != nil {
		return errorf(ErrInvalidRequest, "invalid run id '%s' (%w)", runID, err)
	}
	return nil
}

// getRecord reads a run record, mapping a missing one onto ErrRunNotFound.
func (c *Coordinator) getRecord(ctx context.Context, runID string) (*stepflowv1.RunRecord, error) {
	if err := validRunID(runID); err != nil {
		return nil, err
	}
	rec, _, err := c.runStore.Get(ctx, runID)
	if errors.Is(err, queue.ErrRunNotFound) {
		return nil, errorf(ErrRunNotFound, "Execution '%s' not found", runID)
	}
	return rec, err
}

// ensureAttached returns the state of a running run, attaching it to this
// coordinator if needed (a run left by a previous coordinator), or, for a
// run that is not running, nil and its record.
func (c *Coordinator) ensureAttached(ctx context.Context, runID string) (*runState, *stepflowv1.RunRecord, error) {
	if err := validRunID(runID); err != nil {
		return nil, nil, err
	}
	for {
		c.mu.Lock()
		if st := c.runs[runID]; st != nil {
			c.mu.Unlock()
			return st, nil, nil
		}
		if ch := c.attaching[runID]; ch != nil {
			c.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, nil, context.Cause(ctx)
			}
		}
		ch := make(chan struct{})
		c.attaching[runID] = ch
		c.mu.Unlock()

		st, rec, err := c.attachFromStore(ctx, runID)

		c.mu.Lock()
		delete(c.attaching, runID)
		close(ch)
		c.mu.Unlock()
		return st, rec, err
	}
}

func (c *Coordinator) attachFromStore(ctx context.Context, runID string) (*runState, *stepflowv1.RunRecord, error) {
	rec, err := c.getRecord(ctx, runID)
	if err != nil {
		return nil, nil, err
	}
	if rec.GetStatus() != statusRunning {
		return nil, rec, nil
	}
	st, err := c.attach(ctx, rec)
	if err != nil {
		return nil, nil, err
	}
	if st == nil { // finished while attaching
		rec, err = c.getRecord(ctx, runID)
		return nil, rec, err
	}
	return st, rec, nil
}

// attach takes over a running run: it opens (and repairs) its result
// store, recreates its consumer if it is missing, writes the true
// counters to the record, fails items whose max-deliveries advisory was
// missed, and finishes the run if every item has a result. It returns nil
// when the run finished on the way.
func (c *Coordinator) attach(ctx context.Context, rec *stepflowv1.RunRecord) (*runState, error) {
	runID := rec.GetRunId()
	dir := c.runDir(runID)
	log, counts, err := openResultLog(ctx, dir)
	if err != nil {
		return nil, err
	}
	st := newRunState(rec, dir, log, counts)
	c.mu.Lock()
	c.runs[runID] = st
	if st.topLevel {
		c.topLevel++
	}
	c.mu.Unlock()
	c.log.Info("run attached", zap.String("run", runID), zap.Int("items", st.total),
		zap.Int("succeeded", counts.Succeeded), zap.Int("failed", counts.Failed))

	if st.complete() {
		_, err := c.terminate(ctx, st, outcomeStatus(st), "")
		return nil, err
	}
	// A consumer that is missing (a coordinator stopped between creating
	// the record and the consumer, or the items stream was lost with a
	// NATS restart: memory storage) lost whatever was queued: every item
	// without a result is published again from the spool.
	created, err := c.ensureRunConsumer(ctx, rec)
	if err != nil {
		return st, err
	}
	from := int(rec.GetItemsPublished())
	if created {
		from = 0
	}
	c.flushCounts(ctx, st)
	// Items the server gave up on while no coordinator listened (a
	// consumer that was kept; a new one has delivered nothing) are found
	// before the publisher adds any, and failed in the background:
	// failing one goes through the aggregator, which may be the caller (a
	// result for a run not attached yet).
	if !created {
		if evs := c.exhaustedItems(ctx, st); len(evs) > 0 {
			c.wg.Go(func() {
				for _, ev := range evs {
					c.onMaxDeliveries(c.ctx, ev)
				}
			})
		}
	}
	c.startPublisher(st, from, true)
	return st, nil
}

// outcomeStatus is the final status of a run whose items all have a
// result: completed iff none failed.
func outcomeStatus(st *runState) stepflowv1.RunStatus {
	_, failed, _, _ := st.snapshot()
	if failed > 0 {
		return statusFailed
	}
	return statusCompleted
}

// flushCountsTimeout bounds a write of a run's counters.
const flushCountsTimeout = 10 * time.Second

// flushCounts writes the run's counters to its record when they changed
// since the last write (one compare-and-set per run per aggregated batch,
// not per item). The counters are absolute, so a repeated or lost write
// is repaired by the next one.
func (c *Coordinator) flushCounts(ctx context.Context, st *runState) {
	s, f, status, _ := st.snapshot()
	st.mu.Lock()
	published, unchanged := st.published, [2]int{s, f} == st.flushed && st.published == st.flushedP
	st.mu.Unlock()
	if status != statusRunning || unchanged {
		return
	}
	// Bounded: while NATS does not answer, the next flush tries again.
	fctx, cancel := context.WithTimeout(ctx, flushCountsTimeout)
	defer cancel()
	_, _, err := c.runStore.Modify(fctx, st.id, func(r *stepflowv1.RunRecord) error {
		if queue.Terminal(r.GetStatus()) {
			return errAlreadyTerminal
		}
		r.ItemsPublished = max(r.GetItemsPublished(), uint64(published))
		total := r.GetItemTotal()
		r.Items = &stepflowv1.ItemCounts{
			Completed: uint64(s), Failed: uint64(f),
			Running: total - min(total, uint64(s+f)),
		}
		return nil
	})
	switch {
	case err == nil:
		st.mu.Lock()
		st.flushed, st.flushedP = [2]int{s, f}, published
		st.mu.Unlock()
	case errors.Is(err, errAlreadyTerminal):
	case ctx.Err() != nil:
		// The caller gave up (a publisher stopped as its run finished):
		// the next flush, or the terminal record, writes the counters.
		c.log.Debug("run counters not updated", zap.String("run", st.id), zap.Error(err))
	default:
		c.log.Warn("cannot update run counters; will retry", zap.String("run", st.id), zap.Error(err))
	}
}

// terminate finishes a run: records its final status and counters,
// deletes its consumer, removes its remaining items and its results from
// the streams (they are in the result store), and wakes its waiters.
// reason is stored as the run's error. It fails with ErrRunFinished when
// the run has already finished.
func (c *Coordinator) terminate(ctx context.Context, st *runState, status stepflowv1.RunStatus, reason string) (*stepflowv1.RunRecord, error) {
	s, f, ok := st.finish(status)
	if !ok {
		return nil, errorf(ErrRunFinished, "Execution '%s' has already finished", st.id)
	}
	st.stopPublisher() // before the purge below, which must be the last word
	c.runFinished(st.finalSnapshot(status, s, f, time.Now()))
	// Waiters (a synchronous POST /runs, runs/get with wait, event
	// streams) are woken as soon as the terminal record is written: the
	// results are in the closed store, and what follows is cleanup of
	// the streams that no answer depends on. The run stops counting
	// against --max-active-runs at the same time, so that a client that
	// starts its next run on the answer is not refused; it stays
	// attached (c.runs) until the cleanup is done. When the record
	// cannot be written, waiters are woken at the end.
	wake := sync.OnceFunc(func() {
		c.mu.Lock()
		if c.runs[st.id] == st && st.topLevel && !st.released {
			st.released = true
			c.topLevel--
		}
		c.mu.Unlock()
		close(st.done)
		st.notify()
	})
	defer func() {
		c.mu.Lock()
		if c.runs[st.id] == st {
			delete(c.runs, st.id)
			if st.topLevel && !st.released {
				st.released = true
				c.topLevel--
			}
		}
		c.mu.Unlock()
		wake()
	}()
	rec, err := c.recordEnd(ctx, st, status, reason, s, f)
	if err != nil {
		c.log.Error("cannot record the end of a run; a restart repairs it", zap.String("run", st.id), zap.Error(err))
	} else if queue.Terminal(rec.GetStatus()) {
		st.mu.Lock()
		st.final = rec
		st.mu.Unlock()
		wake()
	}
	cctx, cancel := cleanupCtx(ctx)
	defer cancel()
	if err := queue.DeleteRunConsumer(cctx, c.js, st.id); err != nil {
		c.log.Warn("cannot delete run consumer", zap.String("run", st.id), zap.Error(err))
	}
	if n, err := queue.PurgeRunItems(cctx, c.js, st.id); err != nil {
		c.log.Warn("cannot purge run items", zap.String("run", st.id), zap.Error(err))
	} else if n > 0 {
		c.log.Info("removed items left on the queue", zap.String("run", st.id), zap.Uint64("items", n))
	}
	_ = os.Remove(filepath.Join(st.dir, spoolFileName))
	c.log.Info("run finished", zap.String("run", st.id), zap.String("status", queue.StatusName(status)),
		zap.Int("succeeded", s), zap.Int("failed", f), zap.Int("items", st.total))
	return rec, err
}

// recordEnd writes a run's final status and counters to its record. While
// NATS does not answer (a quorum lost), it keeps trying until the
// coordinator stops.
func (c *Coordinator) recordEnd(ctx context.Context, st *runState, status stepflowv1.RunStatus, reason string, s, f int) (*stepflowv1.RunRecord, error) {
	for {
		cctx, cancel := cleanupCtx(ctx)
		rec, err := c.recordEndOnce(cctx, st, status, reason, s, f)
		cancel()
		if err == nil || !queue.Transient(err) || c.ctx.Err() != nil {
			return rec, err
		}
		c.log.Warn("cannot record the end of a run yet (NATS does not answer); retrying", zap.String("run", st.id), zap.Error(err))
	}
}

func (c *Coordinator) recordEndOnce(cctx context.Context, st *runState, status stepflowv1.RunStatus, reason string, s, f int) (*stepflowv1.RunRecord, error) {
	rec, _, err := c.runStore.Modify(cctx, st.id, func(r *stepflowv1.RunRecord) error {
		if queue.Terminal(r.GetStatus()) {
			return errAlreadyTerminal
		}
		total := int(r.GetItemTotal())
		r.Status = status
		r.CompletedAt = timestamppb.Now()
		counts := &stepflowv1.ItemCounts{Completed: uint64(s), Failed: uint64(f)}
		if status == statusCancelled {
			r.CancelRequested = true
			counts.Cancelled = uint64(max(total-s-f, 0))
		}
		r.Items = counts
		if reason != "" {
			r.Error = reason
		}
		return nil
	})
	if errors.Is(err, errAlreadyTerminal) {
		rec, _, err = c.runStore.Get(cctx, st.id)
	}
	return rec, err
}

// cancelRun cancels a running run: its consumer is deleted (workers stop
// getting its items; the results of items in flight are ignored), its
// queued items are removed, and the items without a result count as
// cancelled. ErrRunFinished for a finished run.
func (c *Coordinator) cancelRun(ctx context.Context, runID string) (*stepflowv1.RunRecord, error) {
	st, rec, err := c.ensureAttached(ctx, runID)
	if err != nil {
		return nil, err
	}
	if st == nil {
		return rec, errorf(ErrRunFinished, "Execution '%s' is already %s", runID, queue.StatusName(rec.GetStatus()))
	}
	return c.terminate(ctx, st, statusCancelled, "")
}

// setConcurrency changes a running run's concurrency.
func (c *Coordinator) setConcurrency(ctx context.Context, runID string, n int) (*stepflowv1.RunRecord, error) {
	if n < 1 {
		return nil, errorf(ErrInvalidRequest, "maxConcurrency must be an integer of at least 1, not %d", n)
	}
	if err := c.checkConcurrency(n); err != nil {
		return nil, err
	}
	st, rec, err := c.ensureAttached(ctx, runID)
	if err != nil {
		return nil, err
	}
	if st == nil {
		return rec, errorf(ErrRunFinished, "Execution '%s' is already %s", runID, queue.StatusName(rec.GetStatus()))
	}
	if err := queue.UpdateRunConcurrency(ctx, c.js, runID, n); err != nil {
		if errors.Is(err, queue.ErrConsumerNotFound) {
			return nil, errorf(ErrRunFinished, "Execution '%s' has finished", runID)
		}
		return nil, err
	}
	st.setConcurrency(n)
	st.maxConc.Store(int64(n))
	rec, _, err = c.runStore.Modify(ctx, runID, func(r *stepflowv1.RunRecord) error {
		r.MaxConcurrency = uint32(n)
		return nil
	})
	return rec, err
}

// deleteRun removes a finished run: its record, result store and
// Idempotency-Key. ErrRunActive for a run that has not finished.
func (c *Coordinator) deleteRun(ctx context.Context, runID string) error {
	rec, err := c.getRecord(ctx, runID)
	if err != nil {
		return err
	}
	if !queue.Terminal(rec.GetStatus()) {
		return errorf(ErrRunActive, "Execution '%s' is %s; cancel it first", runID, queue.StatusName(rec.GetStatus()))
	}
	if err := c.runStore.Delete(ctx, runID); err != nil {
		return err
	}
	dir := c.runDir(runID)
	if h, err := os.ReadFile(filepath.Join(dir, keyFileName)); err == nil {
		if err := c.keys.release(strings.TrimSpace(string(h)), runID); err != nil {
			c.log.Warn("cannot release idempotency key", zap.String("run", runID), zap.Error(err))
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("coordinator: remove results of run %s: %w", runID, err)
	}
	return nil
}

// waitRun returns the run's record once it is no longer running, or
// ctx's error.
func (c *Coordinator) waitRun(ctx context.Context, runID string) (*stepflowv1.RunRecord, error) {
	st, rec, err := c.ensureAttached(ctx, runID)
	if err != nil || st == nil {
		return rec, err
	}
	select {
	case <-st.done:
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
	if final := st.finalRecord(); final != nil {
		return final, nil
	}
	return c.getRecord(ctx, runID)
}

// finalRecord returns the terminal record terminate wrote, nil before
// (or when it could not write it). s may be nil.
func (s *runState) finalRecord() *stepflowv1.RunRecord {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.final
}

// listRecords returns every run record.
func (c *Coordinator) listRecords(ctx context.Context) ([]*stepflowv1.RunRecord, error) {
	recs, unreadable, err := c.runStore.List(ctx)
	for _, err := range unreadable {
		c.log.Warn("unreadable run record", zap.Error(err))
	}
	return recs, err
}

// resume attaches every run a previous coordinator left running.
func (c *Coordinator) resume(ctx context.Context) error {
	recs, err := c.listRecords(ctx)
	if err != nil {
		return fmt.Errorf("coordinator: list runs: %w", err)
	}
	known := make(map[string]bool, len(recs))
	for _, rec := range recs {
		known[rec.GetRunId()] = queue.Terminal(rec.GetStatus())
		if rec.GetStatus() != statusRunning {
			continue
		}
		if _, _, err := c.ensureAttached(ctx, rec.GetRunId()); err != nil {
			c.log.Error("cannot resume run", zap.String("run", rec.GetRunId()), zap.Error(err))
		}
	}
	c.sweepConsumers(ctx, known)
	return nil
}

// sweepConsumers deletes run consumers (and items) of runs that have
// finished or no longer exist: left behind when a coordinator stopped in
// the middle of finishing a run.
func (c *Coordinator) sweepConsumers(ctx context.Context, terminal map[string]bool) {
	s, err := c.js.Stream(ctx, queue.StreamItems)
	if err != nil {
		c.log.Warn("cannot list run consumers", zap.Error(err))
		return
	}
	names := s.ConsumerNames(ctx)
	var stale []string
	for name := range names.Name() {
		runID, ok := queue.RunIDFromConsumer(name)
		if !ok {
			continue
		}
		if fin, known := terminal[runID]; fin || !known {
			stale = append(stale, runID)
		}
	}
	if err := names.Err(); err != nil {
		c.log.Warn("cannot list run consumers", zap.Error(err))
	}
	for _, runID := range stale {
		if c.active(runID) != nil {
			continue
		}
		if rec, err := c.getRecord(ctx, runID); err == nil && rec.GetStatus() == statusRunning {
			continue // created meanwhile
		}
		c.log.Info("removing the consumer of a finished run", zap.String("run", runID))
		_ = queue.DeleteRunConsumer(ctx, c.js, runID)
		_, _ = queue.PurgeRunItems(ctx, c.js, runID)
	}
}

// sweepUploads removes what uploads interrupted by a stop left behind:
// items published for a run whose record was never created.
func (c *Coordinator) sweepUploads(ctx context.Context) error {
	dirs, err := os.ReadDir(filepath.Join(c.cfg.DataDir, "runs"))
	if err != nil {
		return fmt.Errorf("coordinator: data dir: %w", err)
	}
	for _, d := range dirs {
		runID := d.Name()
		marker := filepath.Join(c.runDir(runID), uploadMarkerName)
		h, err := os.ReadFile(marker)
		if errors.Is(err, os.ErrNotExist) || queue.ValidateRunID(runID) != nil {
			continue
		}
		if err != nil {
			return fmt.Errorf("coordinator: upload marker: %w", err)
		}
		if _, _, err := c.runStore.Get(ctx, runID); err == nil {
			_ = os.Remove(marker) // the run was created; only the marker is left
			continue
		} else if !errors.Is(err, queue.ErrRunNotFound) {
			return fmt.Errorf("coordinator: %w", err)
		}
		n, err := queue.PurgeRunItems(ctx, c.js, runID)
		if err != nil {
			return fmt.Errorf("coordinator: %w", err)
		}
		_ = c.keys.release(strings.TrimSpace(string(h)), runID)
		if err := os.RemoveAll(c.runDir(runID)); err != nil {
			return fmt.Errorf("coordinator: %w", err)
		}
		c.log.Warn("discarded an interrupted upload", zap.String("run", runID), zap.Uint64("items", n))
	}
	return nil
}

// recoverExhausted fails the items of a run that reached their maximum
// deliveries while no coordinator listened to the advisory: the run's
// consumer has nothing left to deliver and nothing in flight, yet items
// are still on the work queue.
func (c *Coordinator) recoverExhausted(ctx context.Context, st *runState) {
	for _, ev := range c.exhaustedItems(ctx, st) {
		c.onMaxDeliveries(ctx, ev)
	}
}

// exhaustedItems returns the items recoverExhausted fails. It must be
// called while the run's publisher is stopped: a message it publishes
// meanwhile would pass for an exhausted one.
func (c *Coordinator) exhaustedItems(ctx context.Context, st *runState) []queue.MaxDeliveriesEvent {
	cons, err := queue.RunConsumerHandle(ctx, c.js, st.id)
	if err != nil {
		return nil
	}
	info, err := cons.Info(ctx)
	if err != nil || info.NumPending > 0 || info.NumAckPending > 0 {
		return nil
	}
	stream, err := c.js.Stream(ctx, queue.StreamItems)
	if err != nil {
		return nil
	}
	maxDeliver := info.Config.MaxDeliver
	var out []queue.MaxDeliveriesEvent
	for seq := uint64(1); ; {
		msg, err := stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(queue.ItemSubject(st.id)))
		if err != nil {
			if !errors.Is(err, jetstream.ErrMsgNotFound) {
				c.log.Warn("cannot look for exhausted items", zap.String("run", st.id), zap.Error(err))
			}
			return out
		}
		item, err := queue.DecodeItem(msg.Data)
		ev := queue.MaxDeliveriesEvent{RunID: st.id, Index: -1, StreamSeq: msg.Sequence, Deliveries: uint64(max(maxDeliver, 0)), Time: time.Now(), Item: item, Err: err}
		if item != nil {
			ev.Index = int(item.GetIndex())
		}
		out = append(out, ev)
		seq = msg.Sequence + 1
	}
}

// submission is a request for a new run, from the REST or the NATS API.
type submission struct {
	FlowID         string
	Overrides      value.Value   // nil: none
	Variables      *value.Object // nil: none
	MaxConcurrency int           // 0: the item count, capped at ConcurrencyCap
	// Items is the number of inputs when known before they are read (a
	// JSON array), 0 when not. Only an optimisation: the run's consumer
	// is then created while the inputs are spooled.
	Items          int
	ParentRunID    string // "" for a top-level run
	IdempotencyKey string // "" for none
	Inputs         inputSource
}

// inputSource calls fn with the JSON input of every item in order; it
// returns fn's error, or its own (a *InputError for a malformed line, a
// read error).
type inputSource func(fn func(data []byte) error) error

// submit creates a run. The inputs are spooled to the run's directory as
// they are read, before the run's record and consumer exist: nothing
// executes, and nothing is visible, until every input has been accepted.
// An input that fails (malformed line, too many items, client gone) thus
// rejects the whole submission and no run remains. Only then are the
// consumer and the record created (in that order: workers pull as soon
// as they see the record) and the run's publisher started (see
// publisher.go).
//
// A submission with an Idempotency-Key that was used before returns the
// existing run (created is false) without reading the inputs.
func (c *Coordinator) submit(ctx context.Context, sub submission) (rec *stepflowv1.RunRecord, created bool, err error) {
	defer func() {
		if err != nil && !errors.Is(err, ErrNoSpace) && isNoSpace(err) {
			err = &noSpaceError{err}
		}
	}()
	if sub.MaxConcurrency < 0 {
		return nil, false, errorf(ErrInvalidRequest, "maxConcurrency must be an integer of at least 1, not %d", sub.MaxConcurrency)
	}
	if sub.ParentRunID != "" {
		// A component cannot fix its request: its child run is capped.
		sub.MaxConcurrency = min(sub.MaxConcurrency, c.cfg.MaxRunConcurrency)
	} else if err := c.checkConcurrency(sub.MaxConcurrency); err != nil {
		return nil, false, err
	}
	f, flowID, err := c.loadFlow(ctx, sub.FlowID)
	if err != nil {
		return nil, false, err
	}
	rootID := ""
	if sub.ParentRunID != "" {
		parent, err := c.getRecord(ctx, sub.ParentRunID)
		if err != nil {
			return nil, false, fmt.Errorf("parent run: %w", err)
		}
		rootID = cmp.Or(parent.GetRootRunId(), parent.GetRunId())
	}
	runErr := checkRunSettings(f, sub)
	topLevel := sub.ParentRunID == ""
	if topLevel {
		if err := c.reserveRun(); err != nil {
			return nil, false, err
		}
	}
	runID := newRunID()
	keyH := ""
	if sub.IdempotencyKey != "" {
		keyH = keyHash(sub.IdempotencyKey)
		existing, claimed, err := c.keys.claim(keyH, runID)
		if err != nil || !claimed {
			if topLevel {
				c.releaseRun()
			}
			if err != nil {
				return nil, false, err
			}
			rec, err := c.idempotentRun(ctx, existing, flowID)
			return rec, false, err
		}
	}

	// With the item count known up front (a JSON request), the run's
	// consumer is created while the inputs are spooled: the two are most
	// of the time a small run takes to start.
	var early *earlyConsumer
	if sub.Items > 0 && runErr == nil {
		early = c.startConsumer(ctx, runID, c.runConcurrency(sub.MaxConcurrency, sub.Items))
	}

	dir := c.runDir(runID)
	ok := false
	defer func() {
		if ok {
			return
		}
		early.discard()
		_ = os.RemoveAll(dir)
		_ = c.keys.release(keyH, runID)
		if topLevel {
			c.releaseRun()
		}
	}()
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, false, fmt.Errorf("coordinator: run directory: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, uploadMarkerName), []byte(keyH), 0o640); err != nil {
		return nil, false, fmt.Errorf("coordinator: upload marker: %w", err)
	}
	if keyH != "" {
		if err := os.WriteFile(filepath.Join(dir, keyFileName), []byte(keyH), 0o640); err != nil {
			return nil, false, fmt.Errorf("coordinator: run directory: %w", err)
		}
	}

	cc := c.cfg.runConsumerConfig(1)
	tmpl := &stepflowv1.Item{
		FlowId:            flowID,
		ParentRunId:       sub.ParentRunID,
		RootRunId:         cmp.Or(rootID, runID),
		HeartbeatInterval: durationpb.New(cc.HeartbeatInterval()),
		MaxDeliver:        uint32(max(cc.MaxDeliver, 0)),
	}
	n, err := c.spoolInputs(ctx, runID, dir, tmpl, sub.Inputs, runErr == nil)
	if err != nil {
		return nil, false, err
	}

	conc := c.runConcurrency(sub.MaxConcurrency, n)
	now := timestamppb.Now()
	rec = &stepflowv1.RunRecord{
		RunId:          runID,
		FlowId:         flowID,
		FlowName:       f.Name,
		Status:         statusRunning,
		MaxConcurrency: uint32(conc),
		ItemTotal:      uint64(n),
		Items:          &stepflowv1.ItemCounts{Running: uint64(n)},
		ParentRunId:    sub.ParentRunID,
		RootRunId:      cmp.Or(rootID, runID),
		CreatedAt:      now,
		AckWait:        durationpb.New(cc.AckWait),
		MaxDeliver:     uint32(max(cc.MaxDeliver, 0)),
	}
	if sub.Overrides != nil {
		rec.Overrides = value.Marshal(sub.Overrides)
	}
	if sub.Variables != nil {
		rec.Variables = value.Marshal(sub.Variables)
	}
	switch {
	case runErr != nil:
		// Like upstream: the run is created, and fails without items.
		rec.Status, rec.CompletedAt, rec.Error = statusFailed, now, runErr.Error()
		rec.Items = &stepflowv1.ItemCounts{Failed: uint64(n)}
	case n == 0:
		rec.Status, rec.CompletedAt = statusCompleted, now
		rec.Items = &stepflowv1.ItemCounts{}
	}
	// A running run's state is registered before its record exists, so
	// that nothing (an idempotent replay waiting on it, the aggregator)
	// can attach a second writer to its result store.
	var st *runState
	if rec.GetStatus() == statusRunning {
		log, counts, err := openResultLog(ctx, dir)
		if err != nil {
			return nil, false, err
		}
		st = newRunState(rec, dir, log, counts)
		c.mu.Lock()
		c.runs[runID] = st // counted in topLevel by reserveRun
		c.mu.Unlock()
		// The consumer exists before the record: workers start pulling
		// when they see the record, and one that finds no consumer backs
		// off (the first retry alone would be most of a short run's
		// latency). A consumer left without a record (a stop in between)
		// is removed by sweepConsumers; the registered state keeps that
		// sweep off a run being created.
		err = early.wait(conc)
		if early == nil {
			_, err = queue.CreateRunConsumer(ctx, c.js, runID, c.cfg.runConsumerConfig(conc))
		}
		if err != nil {
			c.mu.Lock()
			delete(c.runs, runID)
			c.mu.Unlock()
			st.detach()
			return nil, false, fmt.Errorf("coordinator: run %s: %w", runID, err)
		}
	} else if early != nil {
		early.discard() // created finished: no consumer
		early = nil
	}
	if _, err := c.runStore.Create(ctx, rec); err != nil {
		if st != nil {
			c.mu.Lock()
			delete(c.runs, runID)
			c.mu.Unlock()
			st.detach()
			if early == nil {
				dctx, cancel := cleanupCtx(ctx)
				_ = queue.DeleteRunConsumer(dctx, c.js, runID)
				cancel()
			} // else the deferred discard deletes it
		}
		return nil, false, fmt.Errorf("coordinator: create run: %w", err)
	}
	ok = true
	_ = os.Remove(filepath.Join(dir, uploadMarkerName))
	if st == nil {
		if topLevel {
			c.releaseRun()
		}
		c.runFinished(recordSnapshot(rec))
		c.log.Info("run created finished", zap.String("run", runID), zap.Int("items", n), zap.String("status", queue.StatusName(rec.GetStatus())))
		return rec, true, nil
	}
	c.startPublisher(st, 0, false)
	c.log.Info("run created", zap.String("run", runID), zap.String("flow", flowID), zap.Int("items", n),
		zap.Int("max_concurrency", conc), zap.String("parent", sub.ParentRunID))
	return rec, true, nil
}

// runConcurrency is the concurrency of a run of n items that asked for
// requested (0: none).
func (c *Coordinator) runConcurrency(requested, n int) int {
	if requested > 0 {
		return requested
	}
	return max(1, min(n, c.cfg.ConcurrencyCap, c.cfg.MaxRunConcurrency))
}

// earlyConsumer is a run's consumer being created while its inputs are
// spooled. A nil *earlyConsumer is none (every method is a no-op).
type earlyConsumer struct {
	c     *Coordinator
	ctx   context.Context
	runID string
	conc  int
	done  chan struct{}
	err   error // written before done is closed
}

// startConsumer starts creating runID's consumer with concurrency conc.
func (c *Coordinator) startConsumer(ctx context.Context, runID string, conc int) *earlyConsumer {
	e := &earlyConsumer{c: c, ctx: ctx, runID: runID, conc: conc, done: make(chan struct{})}
	go func() {
		defer close(e.done)
		_, e.err = queue.CreateRunConsumer(ctx, c.js, runID, c.cfg.runConsumerConfig(conc))
	}()
	return e
}

// wait returns once the consumer exists with concurrency conc (updating
// it if the run turned out to have another), or could not be created.
func (e *earlyConsumer) wait(conc int) error {
	if e == nil {
		return nil
	}
	<-e.done
	if e.err != nil || conc == e.conc {
		return e.err
	}
	_, err := queue.CreateRunConsumer(e.ctx, e.c.js, e.runID, e.c.cfg.runConsumerConfig(conc))
	return err
}

// discard deletes the consumer of a submission that failed.
func (e *earlyConsumer) discard() {
	if e == nil {
		return
	}
	<-e.done
	ctx, cancel := cleanupCtx(e.ctx)
	defer cancel()
	if err := queue.DeleteRunConsumer(ctx, e.c.js, e.runID); err != nil {
		e.c.log.Warn("cannot delete the consumer of a rejected submission", zap.String("run", e.runID), zap.Error(err))
	}
}

// idempotentRun returns the run an Idempotency-Key maps to.
func (c *Coordinator) idempotentRun(ctx context.Context, runID, flowID string) (*stepflowv1.RunRecord, error) {
	rec, err := c.getRecord(ctx, runID)
	if errors.Is(err, ErrRunNotFound) {
		return nil, errorf(ErrIdempotencyConflict, "the first request with this Idempotency-Key (run %s) is still being accepted; retry later", runID)
	}
	if err != nil {
		return nil, err
	}
	if rec.GetFlowId() != flowID {
		return nil, errorf(ErrIdempotencyConflict, "this Idempotency-Key was used for run %s of another flow", runID)
	}
	return rec, nil
}

// reserveRun counts a new top-level run against MaxConcurrentRuns.
func (c *Coordinator) reserveRun() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.topLevel >= c.cfg.MaxConcurrentRuns {
		return errorf(ErrTooManyRuns, "%d runs are in progress, the coordinator's limit (--max-active-runs); retry when one has finished", c.topLevel)
	}
	c.topLevel++
	return nil
}

func (c *Coordinator) releaseRun() {
	c.mu.Lock()
	c.topLevel--
	c.mu.Unlock()
}

// spoolInputs encodes the inputs into the run's item spool (when spool
// is set; otherwise it only counts them) and keeps small inputs for
// RunDetails; it returns the number of items. Nothing is published: the
// run's publisher feeds the spool to the work queue once the run exists.
func (c *Coordinator) spoolInputs(ctx context.Context, runID, dir string, tmpl *stepflowv1.Item, src inputSource, spool bool) (int, error) {
	detail := newDetailInputs(filepath.Join(dir, inputsFileName), c.cfg.MaxDetailInputsBytes)
	defer detail.abort()
	var (
		enc *queue.ItemEncoder
		sw  *spoolWriter
		err error
	)
	if spool {
		enc, err = queue.NewItemEncoder(c.js, runID, queue.PublishItemsOptions{Template: tmpl, Blobs: journaledBlobs{c}})
		if err != nil {
			return 0, err
		}
		if sw, err = createSpool(filepath.Join(dir, spoolFileName)); err != nil {
			return 0, err
		}
		defer sw.abort()
	}
	n := 0
	err = src(func(data []byte) error {
		if n >= c.cfg.MaxItemsPerRun {
			return errorf(ErrTooLarge, "item %d is over the coordinator's limit of %d items per run (--max-items-per-run); the upload was rejected and no run was created",
				n, c.cfg.MaxItemsPerRun)
		}
		detail.add(data)
		if sw != nil {
			msg, err := enc.Encode(ctx, n, data)
			if err != nil {
				return fmt.Errorf("coordinator: item %d: %w", n, err)
			}
			if err := sw.add(msg); err != nil {
				return err
			}
		}
		n++
		return nil
	})
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return n, fmt.Errorf("coordinator: upload interrupted: %w", context.Cause(ctx))
		}
		return n, err
	}
	if sw != nil {
		if err := sw.finish(); err != nil {
			return n, err
		}
	}
	if err := detail.finish(); err != nil {
		c.log.Warn("cannot keep the run's inputs for its details", zap.String("run", runID), zap.Error(err))
	}
	return n, nil
}

// checkRunSettings applies the overrides and variables to the flow the
// way a worker will, so that a run that cannot start fails at once.
func checkRunSettings(f *flow.Flow, sub submission) error {
	if sub.Overrides != nil {
		ov, err := flow.ParseOverrides(sub.Overrides)
		if err != nil {
			return err
		}
		if _, err := f.ApplyOverrides(ov); err != nil {
			return err
		}
	}
	var vars map[string]value.Value
	if sub.Variables != nil {
		vars = make(map[string]value.Value, sub.Variables.Len())
		for i := range sub.Variables.Len() {
			k, v := sub.Variables.At(i)
			vars[k] = v
		}
	}
	_, err := f.Variables(vars)
	return err
}

// loadFlow returns the flow with id and the id workers load it by: a flow
// stored through POST /flows, or a blob of a flow (put_blob from a
// component), which is then stored as a flow under its canonical id.
func (c *Coordinator) loadFlow(ctx context.Context, id string) (*flow.Flow, string, error) {
	notFound := errorf(ErrFlowNotFound, "Workflow '%s' not found", id)
	if !blob.ValidID(id) {
		return nil, "", notFound
	}
	data, err := c.flows.Get(ctx, id)
	if err == nil {
		v, err := value.Parse(data)
		if err != nil {
			return nil, "", fmt.Errorf("coordinator: stored flow %s: %w", id, err)
		}
		f, err := flow.FromValue(v)
		if err != nil {
			return nil, "", fmt.Errorf("coordinator: stored flow %s: %w", id, err)
		}
		return f, id, nil
	}
	if !errors.Is(err, queue.ErrFlowNotFound) {
		return nil, "", err
	}
	b, err := (journaledBlobs{c}).Get(ctx, id)
	if errors.Is(err, blob.ErrNotFound) {
		return nil, "", notFound
	}
	if err != nil {
		return nil, "", err
	}
	if err := c.checkFlowSize(len(value.Marshal(b.Data))); err != nil {
		return nil, "", err
	}
	f, err := flow.FromValue(b.Data)
	if err != nil {
		return nil, "", errorf(ErrInvalidRequest, "blob %s is not a flow: %w", id, err)
	}
	// A flow stored through POST /flows was validated there; one from a
	// blob is checked here, or every item would fail on the workers.
	if fatal := fatalDiagnostics(flow.Validate(f)); fatal != "" {
		return nil, "", errorf(ErrInvalidRequest, "blob %s is not a valid flow: %s", id, fatal)
	}
	fid, err := c.flows.Put(ctx, value.Marshal(f.Value()))
	if err != nil {
		return nil, "", err
	}
	return f, fid, nil
}

// fatalDiagnostics formats the fatal diagnostics of a flow as
// "message (path); …", "" when there are none.
func fatalDiagnostics(ds flow.Diagnostics) string {
	var parts []string
	for _, d := range ds {
		if d.Level == flow.LevelFatal {
			parts = append(parts, d.Message+" ("+d.Path+")")
		}
	}
	return strings.Join(parts, "; ")
}

// detailInputs keeps a run's inputs for RunDetails while they stay under
// a byte budget.
type detailInputs struct {
	path    string
	limit   int64
	f       *os.File
	w       *bufio.Writer
	n       int64
	omitted bool
}

func newDetailInputs(path string, limit int64) *detailInputs {
	return &detailInputs{path: path, limit: limit, omitted: limit < 0}
}

func (d *detailInputs) add(data []byte) {
	if d.omitted {
		return
	}
	if d.n+int64(len(data))+1 > d.limit {
		d.abort()
		return
	}
	if d.f == nil {
		f, err := os.Create(d.path)
		if err != nil {
			d.omitted = true
			return
		}
		d.f, d.w = f, bufio.NewWriterSize(f, 32<<10)
	}
	_, _ = d.w.Write(data)
	_ = d.w.WriteByte('\n')
	d.n += int64(len(data)) + 1
}

// finish keeps the file (an empty run keeps none).
func (d *detailInputs) finish() error {
	if d.omitted || d.f == nil {
		return nil
	}
	err := errors.Join(d.w.Flush(), d.f.Close())
	d.f = nil
	if err != nil {
		d.omitted = true
		_ = os.Remove(d.path)
	}
	return err
}

// abort drops the file (over budget, or the upload failed).
func (d *detailInputs) abort() {
	if d.f != nil {
		_ = d.f.Close()
		_ = os.Remove(d.path)
		d.f = nil
	}
	d.omitted = true
}

// sortNewestFirst orders records by creation time, newest first (ties by
// run id, which is time-ordered for UUIDv7).
func sortNewestFirst(recs []*stepflowv1.RunRecord) {
	slices.SortFunc(recs, func(a, b *stepflowv1.RunRecord) int {
		if c := b.GetCreatedAt().AsTime().Compare(a.GetCreatedAt().AsTime()); c != 0 {
			return c
		}
		return strings.Compare(b.GetRunId(), a.GetRunId())
	})
}
