package worker

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/value"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// Timeouts of the result path.
const (
	// resultTimeout bounds one attempt to have a result stored: the
	// coordinator answers once the result is durable (a group commit), so
	// a longer wait means it is gone or overloaded; the result is then
	// sent again, to whichever coordinator leads by then.
	resultTimeout = 5 * time.Second
	// resultRetryMax is the longest pause between two attempts.
	resultRetryMax = 2 * time.Second
	// retryPause separates attempts that failed at once (no responders
	// while a server starts).
	retryPause = 200 * time.Millisecond
)

// connEpoch is a context that ends each time the NATS connection is
// re-established. A request in flight when the connection dropped (NATS,
// or a coordinator with its embedded server, restarting) is never
// answered, since the client does not resend it; without this it would
// hold its item's slot until its timeout.
type connEpoch struct {
	mu     sync.Mutex
	ctx    context.Context
	cancel context.CancelFunc
}

func newConnEpoch() *connEpoch {
	ctx, cancel := context.WithCancel(context.Background())
	return &connEpoch{ctx: ctx, cancel: cancel}
}

// current returns the context of the current connection.
func (e *connEpoch) current() context.Context {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.ctx
}

// next ends the current epoch (after a reconnect) and starts another.
func (e *connEpoch) next() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cancel()
	e.ctx, e.cancel = context.WithCancel(context.Background())
}

// sendResult has the coordinator store an encoded result, and returns its
// answer. It keeps trying, with the item's heartbeats still running, until
// the coordinator answers or ctx (the item's: its run cancelled, the
// worker giving up on its drain) ends: a coordinator that is away (no
// leader for a moment, a restart, a full disk) costs the item a wait,
// never a delivery, and the item is acked only after the answer. An
// attempt is abandoned when the NATS connection is re-established under
// it (the request is lost), and made again at once.
func (w *Worker) sendResult(ctx context.Context, subject string, data []byte, runID string, index uint64) (queue.ResultAnswer, error) {
	pause := retryPause
	for attempt := 1; ; attempt++ {
		var answer queue.ResultAnswer
		var err error
		reconnected := false
		if attempt == 1 && w.results != nil {
			// With the results that finish meanwhile: the sender bounds
			// its request (resultTimeout, a reconnect) itself.
			answer, err = w.results.send(ctx, subject, data)
		} else {
			actx, cancel := context.WithTimeout(ctx, resultTimeout)
			stop := context.AfterFunc(w.epoch.current(), cancel)
			answer, err = queue.SendResult(actx, w.nc, subject, data)
			reconnected = actx.Err() != nil && ctx.Err() == nil && w.nc.IsConnected() && !errors.Is(actx.Err(), context.DeadlineExceeded)
			stop()
			cancel()
		}
		if err == nil {
			if attempt > 1 {
				w.log.Info("result stored after retrying", zap.String("run", runID), zap.Uint64("index", index), zap.Int("attempts", attempt))
			}
			return answer, nil
		}
		if cause := context.Cause(ctx); cause != nil {
			return queue.ResultAnswer{}, cause
		}
		if errors.Is(err, queue.ErrNoBatchAnswer) {
			continue // a coordinator of an earlier release: alone, at once
		}
		lvl := zap.DebugLevel
		if attempt == 2 || attempt%20 == 0 {
			lvl = zap.WarnLevel
		}
		w.log.Log(lvl, "the coordinator has not stored a result; keeping it and sending it again",
			zap.String("run", runID), zap.Uint64("index", index), zap.Int("attempt", attempt), zap.Error(err))
		if reconnected {
			continue
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return queue.ResultAnswer{}, context.Cause(ctx)
		case <-t.C:
		}
		pause = min(2*pause, resultRetryMax)
	}
}

// More settle causes (see settle).
var (
	// errRunPaused: a message of a paused run arrived: Nak.
	errRunPaused = errors.New("run paused")
	// errMalformed: an item that cannot be executed at all: Term.
	errMalformed = errors.New("malformed item")
	// errPanic: the worker's own code panicked on the item: Nak with a
	// delay (MaxDeliver bounds the retries).
	errPanic = errors.New("worker panicked")
)

// delivery is one item message and what the scheduler knew of its run
// when it arrived.
type delivery struct {
	msg       jetstream.Msg
	runID     string
	ctx       context.Context // the run's context
	prep      *preparedRun
	heartbeat time.Duration // the consumer's heartbeat interval
}

// process executes one delivery and settles it. It never panics.
func (w *Worker) process(d delivery) {
	w.stats.begin(d.runID)
	defer w.stats.end(d.runID)
	start := time.Now()
	failed, acked, err := w.handle(d)
	defer func() {
		if p := recover(); p != nil {
			w.log.Error("panic while settling an item", zap.String("run", d.runID), zap.Any("panic", p))
		}
	}()
	if !acked {
		w.settle(d.msg, err)
	}
	w.metrics.countItem(err, failed, time.Since(start))
}

// settle is the one place that acknowledges item messages; it decides
// from handle's error:
//
//	nil                     Ack (the result is already stored: the
//	                        coordinator answered that it is durable)
//	errRunCancelled         TermWithReason("run cancelled"): the run is
//	                        over, no result is published, and the coordinator
//	                        reports the item as cancelled
//	errMalformed,
//	queue.ErrBadMessage     TermWithReason: redelivering cannot help
//	errWorkerStopping,
//	errRunPaused            Nak: hand the item back for another worker (or
//	                        for later) right away
//	anything else           NakWithDelay(RetryDelay): a failure outside the
//	                        item (the result could not be published, the
//	                        flow could not be loaded, a component server
//	                        failed under it: executor.ErrUnavailable);
//	                        MaxDeliver bounds it
func (w *Worker) settle(msg jetstream.Msg, cause error) {
	var err error
	action := "ack"
	switch {
	case cause == nil:
		// A plain ack: the result is stored, so an ack that gets lost
		// (a reconnect) costs a redelivery after AckWait whose result is
		// dropped, and waiting for the server's confirmation would hold
		// the slot a round trip longer for every item.
		err = msg.Ack()
	case errors.Is(cause, errRunCancelled):
		action = "term"
		err = msg.TermWithReason("run cancelled")
	case errors.Is(cause, errMalformed), errors.Is(cause, queue.ErrBadMessage):
		action = "term"
		w.log.Warn("malformed item terminated", zap.Error(cause))
		err = msg.TermWithReason(truncate("malformed item: "+cause.Error(), 200))
	case errors.Is(cause, errWorkerStopping), errors.Is(cause, errRunPaused):
		action = "nak"
		w.stats.handedBack()
		err = msg.Nak()
	default:
		action = "nak-delay"
		w.stats.handedBack()
		w.log.Warn("item not completed; handing it back", zap.Error(cause), zap.Duration("delay", w.cfg.RetryDelay))
		err = msg.NakWithDelay(w.cfg.RetryDelay)
	}
	if err != nil {
		// The item is redelivered after AckWait; a re-executed item's
		// result is dropped as a duplicate.
		w.log.Warn("cannot settle item message", zap.String("action", action), zap.Error(err), zap.NamedError("cause", cause))
	}
}

// handle executes one item and publishes its result. It returns nil when
// the result is stored (failed tells whether that result is a failure),
// and otherwise the reason the item was not completed, for settle. It
// never acknowledges anything itself.
func (w *Worker) handle(d delivery) (failed, acked bool, err error) {
	defer func() {
		if p := recover(); p != nil {
			w.log.Error("panic while handling an item", zap.String("run", d.runID), zap.Any("panic", p), zap.ByteString("stack", debug.Stack()))
			failed, acked, err = false, false, fmt.Errorf("%w: %v", errPanic, p)
		}
	}()
	startedAt := time.Now()
	it, err := queue.DecodeItem(d.msg.Data())
	if err != nil {
		return false, false, err
	}
	if it.GetRunId() != d.runID {
		return false, false, fmt.Errorf("%w: item of run %s delivered by the consumer of run %s", errMalformed, it.GetRunId(), d.runID)
	}
	md, err := d.msg.Metadata()
	if err != nil {
		return false, false, fmt.Errorf("%w: %w", errMalformed, err)
	}
	every := d.heartbeat
	if every <= 0 {
		every = queue.RunConsumerConfig{}.HeartbeatInterval()
	}
	if hb := it.GetHeartbeatInterval(); hb != nil && hb.AsDuration() > 0 {
		every = hb.AsDuration()
	}
	stopHeartbeat := heartbeat(d.msg, every, w.log)
	defer stopHeartbeat()

	ctx := withItemRunID(d.ctx, d.runID)
	res, steps, err := w.execute(ctx, d, it)
	// An item whose run was cancelled, or that the worker abandoned while
	// draining, has a "cancelled" result (or error) that must not be
	// published.
	if cause := context.Cause(d.ctx); cause != nil {
		return false, false, cause
	}
	if err == nil && res.Failed() && errors.Is(res.Err, executor.ErrUnavailable) {
		// A component server failed under the item (crashed, its
		// connection broke) and gave no answer: the crash may be another
		// item's doing. A poison item crashes every call in flight on its
		// server, and handed back together, it and its victims would be
		// delivered together again until every one of them ran out of
		// deliveries. So the item runs again here first, once, and alone
		// among the items this happened to: a poison item then crashes
		// the server on its own, and an innocent item completes without
		// losing a delivery.
		res, steps, err = w.runAlone(ctx, d, it)
		if cause := context.Cause(d.ctx); cause != nil {
			return false, false, cause
		}
		if err == nil && res.Failed() && errors.Is(res.Err, executor.ErrUnavailable) {
			err = res.Err // no result of the item's: hand it back
		}
	}
	if err != nil {
		// Transient trouble is retried through a nak, except on the last
		// delivery the consumer allows: then it is the item's result.
		if last := it.GetMaxDeliver(); last == 0 || uint64(md.NumDelivered) < uint64(last) {
			return false, false, err
		}
		res, steps = exhausted(it.GetIndex(), md.NumDelivered, err), nil
	}

	out := &stepflowv1.ItemResult{
		RunId:         d.runID,
		Index:         it.GetIndex(),
		Result:        res.AppendJSON(nil),
		Failed:        res.Failed(),
		Source:        stepflowv1.ResultSource_RESULT_SOURCE_WORKER,
		WorkerId:      w.cfg.WorkerID,
		Deliveries:    uint32(md.NumDelivered),
		StartedAt:     timestamppb.New(startedAt),
		FinishedAt:    timestamppb.Now(),
		ItemStreamSeq: md.Sequence.Stream,
		// The coordinator acks the item with its answer.
		ItemAckSubject: d.msg.Reply(),
		Steps:          steps,
	}
	// Blobs put here that the result refers to travel with it to the
	// coordinator's journal.
	refs := out.Result
	if len(steps) > 0 {
		// The steps view shows the blobs its steps put, too.
		refs = append(append(slices.Clip(refs), ','), steps...)
	}
	if out.Blobs, err = w.blobs.UnjournaledBlobs(d.ctx, refs); err != nil {
		return false, false, fmt.Errorf("send result %d of run %s: %w", it.GetIndex(), d.runID, err)
	}
	subject, data, err := queue.EncodeResult(d.ctx, w.nc, out, queue.ResultOptions{Subject: it.GetReplySubject(), Blobs: w.blobs})
	if err != nil {
		return false, false, fmt.Errorf("send result %d of run %s: %w", it.GetIndex(), d.runID, err)
	}
	// Once the result exists it is delivered whatever becomes of the run
	// meanwhile: its last results complete it, and the record turns
	// terminal (which cancels the run's items here) as their answers are
	// on their way. The coordinator drops results of a run that is over.
	// Only a worker giving up on its drain stops the wait.
	answer, err := w.sendResult(w.workCtx, subject, data, d.runID, it.GetIndex())
	if err != nil {
		return false, false, err
	}
	w.stats.finished(time.Since(startedAt), out.Failed, time.Now())
	if answer.Status != queue.ResultDropped {
		w.blobs.BlobsJournaled(out.Blobs)
	}
	if answer.Status == queue.ResultDuplicate {
		w.log.Debug("result already stored (item re-executed); the first one counts",
			zap.String("run", d.runID), zap.Uint64("index", it.GetIndex()), zap.Uint64("deliveries", md.NumDelivered))
	}
	return res.Failed(), answer.ItemAcked, nil
}

// runAlone executes the item again once no other item whose server died
// under it is doing so (see handle).
func (w *Worker) runAlone(ctx context.Context, d delivery, it *stepflowv1.Item) (outcome.Result, []byte, error) {
	select {
	case w.alone <- struct{}{}:
	case <-ctx.Done():
		return outcome.Result{}, nil, context.Cause(ctx)
	}
	defer func() { <-w.alone }()
	w.log.Info("running an item again alone: a component server died under it",
		zap.String("run", d.runID), zap.Uint64("index", it.GetIndex()))
	return w.execute(ctx, d, it)
}

// exhausted is the failed result of an item whose last allowed delivery
// ended in err: it names the deliveries and the error, and keeps the
// failed step's data (its error stack) when there is one.
func exhausted(index, deliveries uint64, err error) outcome.Result {
	last := err.Error()
	var oe *outcome.Error
	if errors.As(err, &oe) {
		last = oe.Message
		if oe.Cause != nil {
			last += ": " + oe.Cause.Error()
		}
	}
	f := outcome.Errorf(outcome.CodeComponent, "item %d exceeded its maximum deliveries (%d); last error: %s", index, deliveries, last)
	if oe != nil {
		f.Data = oe.Data
	}
	return outcome.Failure(f)
}

// execute loads the item's input and run and executes the flow. A
// problem of the item or the run itself is a failed result; an error is
// returned only for transient trouble (NATS) and cancellation. steps is
// the JSON of ItemResult.steps for the item of a single-item run whose
// flow ran (nil otherwise).
func (w *Worker) execute(ctx context.Context, d delivery, it *stepflowv1.Item) (res outcome.Result, steps []byte, err error) {
	if dl := it.GetDeadline(); dl != nil {
		if !time.Now().Before(dl.AsTime()) {
			return outcome.Failure(outcome.Errorf(outcome.CodeComponent, "item deadline %s passed before it started", dl.AsTime().UTC().Format(time.RFC3339))), nil, nil
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadlineCause(ctx, dl.AsTime(), errors.New("item deadline exceeded"))
		defer cancel()
	}
	raw, err := queue.ItemInput(ctx, it, w.itemBlobs)
	switch {
	case errors.Is(err, blob.ErrNotFound):
		return outcome.Failure(outcome.Errorf(outcome.CodeInvalidInput, "item %d: %v", it.GetIndex(), err)), nil, nil
	case err != nil:
		return outcome.Result{}, nil, err
	}
	input, err := value.Parse(raw)
	if err != nil {
		return outcome.Failure(outcome.Errorf(outcome.CodeInvalidInput, "item %d: input is not JSON: %v", it.GetIndex(), err)), nil, nil
	}
	run, err := d.prep.get(ctx, it.GetFlowId())
	switch {
	case errors.Is(err, errRunUnusable):
		return outcome.Failure(outcome.Errorf(outcome.CodeInvalidInput, "%v", err)), nil, nil
	case err != nil:
		return outcome.Result{}, nil, err
	}
	// Only a single-item run reports its steps (upstream's per-run step
	// view): a batch item carries nothing more than its result.
	withSteps := d.prep.rec.GetItemTotal() == 1
	res, outs := runItem(ctx, run, int(it.GetIndex()), input, withSteps)
	if withSteps {
		steps = stepsJSON(run, outs, secretStrings(run, input), maxStepsBytes)
	}
	return res, steps, nil
}

// runItem executes the flow, with each step's outcome when withSteps; a
// panic that escapes the executor's own recovery fails the item rather
// than the worker.
func runItem(ctx context.Context, run *executor.Run, index int, input value.Value, withSteps bool) (res outcome.Result, steps []executor.StepOutcome) {
	defer func() {
		if p := recover(); p != nil {
			res, steps = outcome.Failure(outcome.Errorf(outcome.CodeComponent, "item panicked: %v", p)), nil
		}
	}()
	if withSteps {
		return run.ExecuteSteps(ctx, index, input)
	}
	return run.Execute(ctx, index, input), nil
}

// maxStepsBytes bounds ItemResult.steps: past it, the step results are
// left out and only the statuses sent (a result message must stay well
// under NATS's max_payload, the item's own result taking the rest).
const maxStepsBytes = 64 << 10

// stepsJSON renders the steps of an item for ItemResult.steps: in flow
// order, step id -> {"stepId","component","status","result"?}, the
// result (a FlowResult) for completed and failed steps, with the values
// of secrets (secretStrings) redacted. outs nil (the input was refused
// before any step) reports every step blocked. When the results would
// exceed limit bytes, they are all left out.
func stepsJSON(run *executor.Run, outs []executor.StepOutcome, secrets []string, limit int) []byte {
	render := func(withResults bool) []byte {
		o := value.NewObject(len(run.Flow.Steps))
		for i, s := range run.Flow.Steps {
			st := value.ObjectOf("stepId", s.ID, "component", s.Component)
			status := executor.StepBlocked
			if i < len(outs) {
				status = outs[i].Status
			}
			st.Set("status", status.String())
			if withResults && (status == executor.StepCompleted || status == executor.StepFailed) {
				st.Set("result", redactSecrets(outs[i].Result.JSON(), secrets))
			}
			o.Set(s.ID, st)
		}
		return value.Marshal(o)
	}
	if out := render(true); len(out) <= limit {
		return out
	}
	return render(false)
}

// heartbeat sends an in-progress ack every interval until the returned
// function is called (which waits for a heartbeat being sent), so that
// JetStream does not redeliver a long item to another worker. It costs a
// timer, not a goroutine: most items end long before their first beat.
func heartbeat(msg jetstream.Msg, every time.Duration, log *zap.Logger) (stop func()) {
	if every <= 0 {
		return func() {}
	}
	var (
		mu      sync.Mutex
		stopped bool
		t       *time.Timer
	)
	t = time.AfterFunc(every, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		if err := msg.InProgress(); err != nil {
			log.Debug("in-progress ack failed", zap.Error(err))
		}
		t.Reset(every)
	})
	return func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		t.Stop()
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
