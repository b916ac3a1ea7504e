package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/value"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// Aggregation settings.
const (
	// aggBatch is the most results committed together: one fsync per run
	// touched per batch (SyncResults). A batch is whatever arrived while
	// the previous one was committed, so a lone result waits for nothing
	// but its own fsync, and a busy coordinator commits many at once.
	aggBatch = 1024
	// aggQueue bounds the results received and not yet committed; the
	// subscription holds more (queue.SubscribeResults) before it drops
	// any, and a dropped result is sent again by its worker.
	aggQueue = 4 * aggBatch
	// countsEvery is the least time between two writes of a run's
	// counters to its record: the record is for progress displays (the
	// coordinator answers from its own counters), so it lags a little.
	countsEvery = 200 * time.Millisecond
)

// errNotLeading refuses results a coordinator receives while stopping.
var errNotLeading = errors.New("this coordinator is stopping; send the result again")

// resultReq is one result to store: from a worker (msg is the request to
// answer) or made by the coordinator itself (done receives the outcome).
type resultReq struct {
	msg  *nats.Msg
	res  *stepflowv1.ItemResult
	done chan error
	// batch is the result batch r came in (msg is nil then), pos its
	// place there.
	batch *resultBatch
	pos   int
	// blobs is a BlobJournal request's (res is nil then).
	blobs []*stepflowv1.Blob
	// journaled: blobs of this request went to the journal in this batch.
	journaled bool

	st     *runState // the run it was stored into (or found in)
	status queue.ResultStatus
	err    error
	finish time.Time // the worker's finish time, for the aggregation lag
}

// aggregator receives the workers' results (core NATS requests on
// queue.ResultSubjects, in queue.ResultsQueueGroup), stores each in its
// run's result log and answers it once the log is durable: one group
// commit, one fsync per run per batch, for everything that arrived
// together. The worker acks its item only after the answer, so nothing
// answered is lost by a crash of any process, and the log keeps the first
// result per index.
type aggregator struct {
	c    *Coordinator
	sub  *nats.Subscription
	in   chan *resultReq
	quit chan struct{}
	once sync.Once
	ctx  context.Context // not cancelled by stop: the last batch is finished
	stop context.CancelFunc

	batch   []*resultReq
	touched map[*runState]struct{}
	// journalDirty: blobs were journaled in this batch, from journalEpoch.
	journalDirty bool
	journalEpoch uint64
	// written carries each batch, written to the logs, to the goroutine
	// that makes it durable and answers it (syncer), so that the next
	// batch is written while the disk syncs this one.
	written chan *writtenBatch
	// gone remembers runs whose results are dropped (finished or
	// unknown), so that stragglers do not cost a record lookup each.
	gone map[string]struct{}

	finishing sync.WaitGroup // runs being finished (terminate)

	countsMu    sync.Mutex
	countsDirty map[*runState]struct{}
	countsWake  chan struct{}
}

// newAggregator subscribes to the results.
func newAggregator(c *Coordinator) (*aggregator, error) {
	actx, cancel := context.WithCancel(context.WithoutCancel(c.ctx))
	a := &aggregator{
		c: c, in: make(chan *resultReq, aggQueue), quit: make(chan struct{}), ctx: actx, stop: cancel,
		touched: map[*runState]struct{}{}, gone: map[string]struct{}{}, written: make(chan *writtenBatch, 1),
		countsDirty: map[*runState]struct{}{}, countsWake: make(chan struct{}, 1),
	}
	sub, err := queue.SubscribeResults(c.nc, a.receive)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	a.sub = sub
	return a, nil
}

// receive runs on the subscription's goroutine: it hands each result to
// the committer, or refuses it when stopping.
func (a *aggregator) receive(m *nats.Msg) {
	if m.Subject == queue.BlobGetSubject {
		raw, kind, found, err := a.c.journal.get(string(m.Data))
		if err != nil {
			a.c.log.Warn("cannot read a journaled blob", zap.Error(err))
		}
		_ = m.RespondMsg(queue.BlobGetReply(raw, kind, found, err))
		return
	}
	if m.Subject == queue.BlobJournalSubject {
		j, err := queue.DecodeBlobJournal(m.Data)
		if err != nil {
			a.c.log.Warn("dropping a malformed blob journal request", zap.Error(err))
			_ = m.RespondMsg(queue.ResultReply("", err))
			return
		}
		select {
		case a.in <- &resultReq{msg: m, blobs: j.GetBlobs()}:
		case <-a.quit:
			_ = m.RespondMsg(queue.ResultReply("", errNotLeading))
		}
		return
	}
	if m.Subject == queue.ResultBatchSubject {
		a.receiveBatch(m)
		return
	}
	r, err := queue.DecodeResult(m.Data)
	if err != nil {
		a.c.log.Warn("dropping a malformed result", zap.String("subject", m.Subject), zap.Error(err))
		a.c.metrics.results.WithLabelValues(resultDropped).Inc()
		_ = m.RespondMsg(queue.ResultReply(queue.ResultDropped, nil))
		return
	}
	select {
	case a.in <- &resultReq{msg: m, res: r}:
	case <-a.quit:
		_ = m.RespondMsg(queue.ResultReply("", errNotLeading))
	}
}

// resultBatch is a batch of results (queue.ResultBatchSubject) being
// stored: it is answered once every result in it is.
type resultBatch struct {
	msg *nats.Msg

	mu        sync.Mutex
	outcomes  []queue.ResultBatchOutcome
	remaining int
}

// answer records the outcome of the result at pos, and answers the batch
// once it has them all.
func (b *resultBatch) answer(pos int, o queue.ResultBatchOutcome, log *zap.Logger) {
	b.mu.Lock()
	b.outcomes[pos] = o
	b.remaining--
	done := b.remaining == 0
	b.mu.Unlock()
	if !done {
		return
	}
	reply, err := queue.ResultBatchReply(b.outcomes)
	if err != nil {
		reply = queue.ResultReply("", err)
	}
	if err := b.msg.RespondMsg(reply); err != nil {
		log.Debug("answering a result batch", zap.Error(err))
	}
}

// receiveBatch hands each result of a batch to the committer, as if it
// came alone.
func (a *aggregator) receiveBatch(m *nats.Msg) {
	results, err := queue.DecodeResultBatch(m.Data)
	if err == nil && len(results) == 0 {
		err = fmt.Errorf("%w: an empty result batch", queue.ErrBadMessage)
	}
	if err != nil {
		a.c.log.Warn("refusing a malformed result batch", zap.Error(err))
		_ = m.RespondMsg(queue.ResultReply("", err))
		return
	}
	b := &resultBatch{msg: m, outcomes: make([]queue.ResultBatchOutcome, len(results)), remaining: len(results)}
	for i, data := range results {
		r, err := queue.DecodeResult(data)
		if err != nil {
			a.c.log.Warn("dropping a malformed result of a batch", zap.Error(err))
			a.c.metrics.results.WithLabelValues(resultDropped).Inc()
			b.answer(i, queue.ResultBatchOutcome{Answer: queue.ResultAnswer{Status: queue.ResultDropped}}, a.c.log)
			continue
		}
		select {
		case a.in <- &resultReq{res: r, batch: b, pos: i}:
		case <-a.quit:
			b.answer(i, queue.ResultBatchOutcome{Err: errNotLeading}, a.c.log)
		}
	}
}

// store stores a result the coordinator made itself (an item that
// exceeded its maximum deliveries), through the same commits as the
// workers' results.
func (a *aggregator) store(ctx context.Context, res *stepflowv1.ItemResult) error {
	r := &resultReq{res: res, done: make(chan error, 1)}
	select {
	case a.in <- r:
	case <-a.quit:
		return errNotLeading
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// close stops receiving; run commits what it holds and returns.
func (a *aggregator) close() {
	a.once.Do(func() {
		_ = a.sub.Unsubscribe()
		close(a.quit)
	})
}

// run commits batches until close, then answers what is left.
func (a *aggregator) run() {
	defer a.stop()
	var wg sync.WaitGroup
	wg.Go(a.flushCountsLoop)
	defer wg.Wait()
	defer a.finishing.Wait()
	var syncer sync.WaitGroup
	syncer.Go(a.syncer)
	defer syncer.Wait()
	defer close(a.written)
	for {
		select {
		case r := <-a.in:
			a.batch = append(a.batch, r)
		case <-a.quit:
			// Results already received are committed and answered; the
			// workers of any still on the subscription send them again
			// to the next leader.
			for {
				select {
				case r := <-a.in:
					a.batch = append(a.batch, r)
					if len(a.batch) >= aggBatch {
						a.commit()
					}
					continue
				default:
				}
				break
			}
			a.commit()
			return
		}
	more:
		for len(a.batch) < aggBatch {
			select {
			case r := <-a.in:
				a.batch = append(a.batch, r)
			default:
				break more
			}
		}
		a.commit()
	}
}

// handle stores one result in its run's log (not yet synced).
func (a *aggregator) handle(r *resultReq) {
	if r.res == nil {
		if r.err = a.journal(r.blobs); r.err == nil {
			r.journaled = true
			r.status = queue.ResultStored
		}
		return
	}
	log := a.c.log
	results := a.c.metrics.results
	runID := r.res.GetRunId()
	st, err := a.runFor(runID)
	if err != nil {
		log.Warn("cannot look up the run of a result; the worker sends it again", zap.String("run", runID), zap.Error(err))
		r.err = fmt.Errorf("cannot look up run %s: %w", runID, err)
		return
	}
	if st == nil {
		results.WithLabelValues(resultDropped).Inc()
		r.status = queue.ResultDropped // finished or unknown run
		return
	}
	data, err := queue.ResultJSON(a.ctx, r.res, journaledBlobs{a.c})
	switch {
	case err != nil:
		data = failureJSON(fmt.Sprintf("the result of item %d could not be read: %v", r.res.GetIndex(), err))
		r.res.Failed = true
	case !json.Valid(data):
		data = failureJSON(fmt.Sprintf("the worker produced a malformed result for item %d", r.res.GetIndex()))
		r.res.Failed = true
	}
	completed := time.Now()
	if ts := r.res.GetFinishedAt(); ts != nil {
		completed = ts.AsTime()
	}
	if blobs := r.res.GetBlobs(); len(blobs) > 0 {
		// The blobs the result refers to are journaled first, and synced
		// with it (a duplicate's too: its answer says they are durable).
		if err := a.journal(blobs); err != nil {
			log.Error("cannot journal the blobs of a result; the worker sends it again", zap.String("run", runID), zap.Error(err))
			r.err = fmt.Errorf("cannot journal the blobs of item %d of run %s: %w", r.res.GetIndex(), runID, err)
			return
		}
		r.journaled = true
	}
	rec := &resultRecord{Index: int(r.res.GetIndex()), Failed: r.res.GetFailed(), Source: uint8(r.res.GetSource()), CompletedAt: completed, Result: data}
	if steps := r.res.GetSteps(); len(steps) > 0 && len(steps) <= maxStepsBytes && json.Valid(steps) {
		rec.Steps = steps
	}
	added, err := st.add(rec)
	switch {
	case errors.Is(err, errIndexRange):
		log.Warn("dropping a result for an item the run does not have", zap.Error(err))
		results.WithLabelValues(resultDropped).Inc()
		r.status = queue.ResultDropped
		return
	case err != nil:
		log.Error("cannot store a result; the worker sends it again", zap.String("run", runID), zap.Uint64("index", r.res.GetIndex()), zap.Error(err))
		r.err = fmt.Errorf("cannot store the result of item %d of run %s: %w", r.res.GetIndex(), runID, err)
		return
	case added:
		results.WithLabelValues(resultStored).Inc()
		st.redeliveries.Add(uint64(max(r.res.GetDeliveries(), 1) - 1))
		r.status = queue.ResultStored
		if r.res.GetFinishedAt() != nil {
			r.finish = completed
		}
	default:
		results.WithLabelValues(resultDuplicate).Inc()
		log.Debug("dropping a duplicate result", zap.String("run", runID), zap.Uint64("index", r.res.GetIndex()))
		r.status = queue.ResultDuplicate
	}
	// A duplicate is answered after the same sync: the first result may
	// be in this very batch, or in one whose sync failed.
	r.st = st
	a.touched[st] = struct{}{}
}

// journal appends blobs to the blob journal (synced by commit), reading
// from the blob store those that came without their data.
func (a *aggregator) journal(blobs []*stepflowv1.Blob) error {
	for _, b := range blobs {
		if !blob.ValidID(b.GetId()) {
			return fmt.Errorf("%w: blob id %q", queue.ErrBadMessage, b.GetId())
		}
		if len(b.GetData()) > 0 {
			continue
		}
		got, err := journaledBlobs{a.c}.Get(a.ctx, b.GetId())
		if err != nil {
			return err
		}
		b.Data, b.Kind = value.Marshal(got.Data), string(got.Kind)
	}
	epoch, err := a.c.journal.append(blobs)
	if err != nil {
		return err
	}
	if !a.journalDirty {
		// The batch's blobs are durable if the segment they started in
		// was not dropped before the batch's sync (a later append's
		// epoch would hide that).
		a.journalEpoch = epoch
	}
	a.journalDirty = true
	return nil
}

// ackItem acks an item message whose result is durable (or not wanted),
// on its worker's behalf: the ack reaches the server as the answer goes
// out, a hop sooner than the worker's would. Only ack subjects of items
// are published to (the subject comes from the worker).
func (a *aggregator) ackItem(subject string) bool {
	if subject == "" {
		return false
	}
	if !queue.ValidItemAckSubject(subject) {
		a.c.log.Warn("a result names something that is no item ack subject; not acking it", zap.String("subject", subject))
		return false
	}
	return a.c.nc.Publish(subject, ackPayload) == nil
}

// ackPayload is JetStream's ack.
var ackPayload = []byte("+ACK")

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

// writtenBatch is a batch whose results are written to their runs' logs
// (and blobs to the journal), to be made durable and answered.
type writtenBatch struct {
	reqs    []*resultReq
	touched map[*runState]struct{}
	// failed are the runs whose log write failed.
	failed       map[*runState]error
	journal      bool
	journalEpoch uint64
}

// commit writes the batch to the logs and hands it to the syncer, which
// makes it durable and answers it while the next batch is written: a
// result waits for one fsync that starts after its write, not for the
// fsync of the batch before it too. At most one batch waits for the
// syncer.
func (a *aggregator) commit() {
	if len(a.batch) == 0 {
		return
	}
	for _, r := range a.batch {
		a.handle(r)
	}
	wb := &writtenBatch{reqs: a.batch, touched: a.touched, failed: a.writeAll(), journal: a.journalDirty, journalEpoch: a.journalEpoch}
	a.batch, a.touched, a.journalDirty = make([]*resultReq, 0, aggBatch), map[*runState]struct{}{}, false
	a.written <- wb
}

// syncer makes each written batch durable, answers it, and finishes the
// runs it completed, until run closes a.written.
func (a *aggregator) syncer() {
	for wb := range a.written {
		a.finish(wb)
	}
}

// finish makes a written batch durable, answers it, and finishes the
// runs it completed.
func (a *aggregator) finish(wb *writtenBatch) {
	failed, journalErr := a.syncAll(wb)
	if len(failed) == 0 && len(wb.touched) > 0 {
		a.c.noteStored()
	}
	now := time.Now()
	for _, r := range wb.reqs {
		if r.err == nil && r.st != nil {
			r.err = failed[r.st]
		}
		if r.err == nil && r.journaled {
			r.err = journalErr
		}
		if r.err == nil && !r.finish.IsZero() {
			a.c.metrics.aggLag.Observe(max(now.Sub(r.finish).Seconds(), 0))
		}
		switch {
		case r.msg != nil:
			answer := queue.ResultReply(r.status, r.err)
			if r.err == nil && a.ackItem(r.res.GetItemAckSubject()) {
				answer = queue.ResultReplyAcked(r.status)
			}
			if err := r.msg.RespondMsg(answer); err != nil {
				a.c.log.Debug("answering a result", zap.Error(err))
			}
		case r.batch != nil:
			o := queue.ResultBatchOutcome{Err: r.err}
			if r.err == nil {
				o.Answer = queue.ResultAnswer{Status: r.status, ItemAcked: a.ackItem(r.res.GetItemAckSubject())}
			}
			r.batch.answer(r.pos, o, a.c.log)
		default:
			r.done <- r.err
		}
	}
	for st := range wb.touched {
		if failed[st] != nil {
			continue
		}
		if st.complete() {
			// Finishing writes the record and cleans up the stream: round
			// trips the next batch need not wait for. Results that still
			// come for the run are dropped (st.add refuses them once the
			// run is marked finished, which terminate does first).
			a.finishing.Go(func() {
				if _, err := a.c.terminate(a.ctx, st, outcomeStatus(st), ""); err != nil && !errors.Is(err, ErrRunFinished) {
					a.c.log.Warn("finishing run", zap.String("run", st.id), zap.Error(err))
				}
			})
			continue
		}
		st.notify()
		a.countsMu.Lock()
		a.countsDirty[st] = struct{}{}
		a.countsMu.Unlock()
	}
	select {
	case a.countsWake <- struct{}{}:
	default:
	}
}

// writeAll writes each touched run's results of the batch in one write;
// readers see them once written. It returns the runs whose write failed.
func (a *aggregator) writeAll() map[*runState]error {
	failed := map[*runState]error{}
	for st := range a.touched {
		logErr, slotErr := st.flush()
		if slotErr != nil {
			a.c.log.Warn("cannot write result index slots; the index is repaired from the log at the next open", zap.String("run", st.id), zap.Error(slotErr))
		}
		if logErr != nil {
			a.c.noteStoreError("cannot write results; their workers send them again", st.id, logErr)
			failed[st] = fmt.Errorf("cannot store the results of run %s: %w", st.id, logErr)
		}
	}
	return failed
}

// syncAll makes a written batch durable: the blob journal and each
// touched run's log, their fsyncs in parallel (each is a wait on the
// disk, and the disk takes them together). It returns the runs whose log
// could not be written or synced, and the journal's error.
func (a *aggregator) syncAll(wb *writtenBatch) (failed map[*runState]error, journalErr error) {
	failed = wb.failed
	journal := wb.journal
	if !a.c.cfg.SyncResults {
		if journal {
			// Written to the kernel, like the result logs.
			if err := a.c.journal.sync(wb.journalEpoch, false); err != nil {
				journalErr = fmt.Errorf("cannot journal blobs: %w", err)
			}
		}
		return failed, journalErr
	}
	var (
		wg sync.WaitGroup
		mu sync.Mutex
	)
	// One fsync (the common case: one run, no blobs) needs no goroutine.
	async := wg.Go
	if len(wb.touched)+btoi(journal) == 1 {
		async = func(f func()) { f() }
	}
	if journal {
		async(func() {
			if err := a.c.journal.sync(wb.journalEpoch, true); err != nil {
				a.c.log.Error("cannot sync the blob journal; the results that refer to blobs are sent again", zap.Error(err))
				journalErr = fmt.Errorf("cannot make blobs durable: %w", err)
			}
		})
	}
	for st := range wb.touched {
		if failed[st] != nil {
			continue
		}
		async(func() {
			if err := st.syncWritten(); err != nil {
				a.c.noteStoreError("cannot sync results; their workers send them again", st.id, err)
				mu.Lock()
				failed[st] = fmt.Errorf("cannot make the results of run %s durable: %w", st.id, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return failed, journalErr
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// flushCountsLoop writes the counters of the runs that had results to
// their records, at most every countsEvery, off the commit path.
func (a *aggregator) flushCountsLoop() {
	for {
		select {
		case <-a.quit:
			a.flushCounts()
			return
		case <-a.countsWake:
		}
		a.flushCounts()
		t := time.NewTimer(countsEvery)
		select {
		case <-a.quit:
			t.Stop()
			a.flushCounts()
			return
		case <-t.C:
		}
	}
}

func (a *aggregator) flushCounts() {
	a.countsMu.Lock()
	dirty := make([]*runState, 0, len(a.countsDirty))
	for st := range a.countsDirty {
		dirty = append(dirty, st)
	}
	clear(a.countsDirty)
	a.countsMu.Unlock()
	for _, st := range dirty {
		a.c.flushCounts(a.ctx, st)
	}
}

// failureJSON is a FlowResult failure with message.
func failureJSON(message string) []byte {
	return outcome.Failure(&outcome.Error{Code: outcome.CodeComponent, Message: message}).AppendJSON(nil)
}

// onMaxDeliveries turns an item JetStream gave up on into a failed result
// (stored like a worker's result, so the first result per index still
// wins), then deletes the item message from the work queue.
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
	agg := c.aggregator()
	if agg == nil {
		log.Debug("max-deliveries advisory while not leading")
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
	if err := agg.store(ctx, res); err != nil {
		log.Error("cannot fail an item that exceeded its maximum deliveries", zap.Error(err))
		return
	}
	c.metrics.exhausted.Inc()
	if err := queue.DeleteItemMsg(ctx, c.js, ev.StreamSeq); err != nil {
		log.Warn("cannot delete an exhausted item", zap.Error(err))
	}
	log.Warn("item failed: maximum deliveries exceeded", zap.Uint64("deliveries", ev.Deliveries))
}

// aggregator returns the running aggregator (nil unless leading).
func (c *Coordinator) aggregator() *aggregator {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.agg
}
