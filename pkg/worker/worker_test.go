package worker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/plugin"
	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/runs"
	"github.com/stepflow-go/stepflow/pkg/value"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// A flow of builtins only: each item is stored as a blob and read back,
// so a blob put on one worker must be readable from the other.
const roundTripFlow = `
name: roundtrip
steps:
  - id: put
    component: /builtin/put_blob
    input:
      data: { $input: "$" }
      blob_type: data
  - id: get
    component: /builtin/get_blob
    input:
      blob_id: { $step: put, path: blob_id }
output:
  i: { $input: i }
  back: { $step: get, path: "$.data.i" }
`

// trackFlow calls /test/track with the item.
const trackFlow = `
name: track
steps:
  - { id: track, component: /test/track, input: { $input: "$" } }
output: { $step: track }
`

// noopFlow has no steps: the output is the input.
const noopFlow = `
name: noop
output: { $input: "$" }
`

func TestBuiltinFlowTwoWorkers(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const n = 1000
	run := b.createRun(runSpec{flow: roundTripFlow, items: n, maxConc: 16})
	b.start(b.workerConfig("w1", 8, nil))
	b.start(b.workerConfig("w2", 8, nil))

	got := b.results(run, n)
	perWorker := map[string]int{}
	for i := range n {
		r, ok := got[i]
		require.True(t, ok, "no result for item %d", i)
		require.Equal(t, fmt.Sprintf(`{"i":%d,"back":%d}`, i, i), resultValue(t, r))
		require.Equal(t, uint32(1), r.GetDeliveries(), "item %d", i)
		require.Equal(t, stepflowv1.ResultSource_RESULT_SOURCE_WORKER, r.GetSource())
		require.NotZero(t, r.GetItemStreamSeq())
		require.False(t, r.GetFinishedAt().AsTime().Before(r.GetStartedAt().AsTime()))
		perWorker[r.GetWorkerId()]++
	}
	require.Len(t, perWorker, 2, "both workers took items: %v", perWorker)
	// Every item was acked: nothing left on the work queue.
	require.Eventually(t, func() bool { return b.subjectCount(queue.StreamItems, queue.ItemSubject(run)) == 0 },
		10*time.Second, 20*time.Millisecond)
}

func TestMaxAckPendingNeverExceededAndReached(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const n, limit = 60, 3
	tr := newTracker(limit)
	comps := map[string]component{"/track": tr.component}
	run := b.createRun(runSpec{flow: trackFlow, items: n, maxConc: limit})
	// 8 slots across two workers, 3 allowed: the server's MaxAckPending
	// must hold the fleet to the run's limit.
	b.start(b.workerConfig("w1", 4, comps))
	b.start(b.workerConfig("w2", 4, comps))

	got := b.results(run, n)
	require.Len(t, got, n)
	peak, calls := tr.stats(run)
	require.Equal(t, limit, peak, "peak concurrency of the run")
	require.Equal(t, n, calls, "every item executed once")
}

func TestFairnessAcrossRuns(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tr := newTracker(0)
	// Items take longer than a pull, so that a free slot always finds the
	// big run ready to pull again: only round-robin lets the small run in.
	tr.work = 2 * time.Millisecond
	comps := map[string]component{"/track": tr.component}
	const bigN, smallN = 300, 15
	// The big run alone could fill every slot of the worker.
	big := b.createRun(runSpec{flow: trackFlow, items: bigN, maxConc: 3})
	small := b.createRun(runSpec{flow: trackFlow, items: smallN, maxConc: 1})
	b.start(b.workerConfig("w1", 2, comps))

	var order []*stepflowv1.ItemResult
	_, err := readResults(testCtx(t), b.sink, []string{big, small}, bigN+smallN, &order)
	require.NoError(t, err)
	lastSmall := -1
	for i, r := range order {
		if r.GetRunId() == small {
			lastSmall = i
		}
	}
	bigBefore := lastSmall + 1 - smallN
	t.Logf("the small run finished after %d of %d items of the big run", bigBefore, bigN)
	// Round-robin alternates freed slots between the runs (the small one
	// takes one at a time, its limit), so it finishes after about smallN
	// items of the big one; taking the first run with work every time
	// makes it wait for about half of the big run here.
	require.LessOrEqual(t, bigBefore, 3*smallN, "the small run waited for the big one")

	peakBig, callsBig := tr.stats(big)
	peakSmall, callsSmall := tr.stats(small)
	require.LessOrEqual(t, peakBig, 2)
	require.Equal(t, 1, peakSmall)
	require.Equal(t, bigN, callsBig)
	require.Equal(t, smallN, callsSmall)
}

func TestCancelStopsFetchingAndAbandonsInFlight(t *testing.T) {
	t.Parallel()
	b := setup(t)
	started := make(chan int, 100)
	cancelled := make(chan error, 100)
	comps := map[string]component{
		"/block": func(ctx context.Context, req *executor.Request, _ plugin.Host) (value.Value, error) {
			started <- req.ItemIndex
			<-ctx.Done()
			cancelled <- context.Cause(ctx)
			return nil, context.Cause(ctx)
		},
	}
	const n = 50
	run := b.createRun(runSpec{flow: `
steps:
  - { id: block, component: /test/block, input: { $input: "$" } }
output: { $step: block }
`, items: n, maxConc: 2})
	b.start(b.workerConfig("w1", 4, comps))

	for range 2 {
		<-started
	}
	b.modifyRun(run, func(r *stepflowv1.RunRecord) { r.CancelRequested = true })
	for range 2 {
		require.ErrorIs(t, <-cancelled, errRunCancelled)
	}
	// Both items terminated (no longer pending an ack, gone from the
	// work queue), none fetched since, no result published.
	require.Eventually(t, func() bool {
		info := b.consumerInfo(run)
		return info.NumAckPending == 0 && b.subjectCount(queue.StreamItems, queue.ItemSubject(run)) == n-2
	}, 10*time.Second, 20*time.Millisecond)

	// The worker goes on with other runs; the cancelled one stays put.
	other := b.createRun(runSpec{flow: noopFlow, items: 20, maxConc: 4})
	b.results(other, 20)
	require.Len(t, started, 0, "items of the cancelled run started after the cancellation")
	require.Equal(t, uint64(n-2), b.consumerInfo(run).NumPending)
	require.Zero(t, b.sink.requests(run))
}

func TestStopDrainsAndHandsBack(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var (
		calls     atomic.Int32
		mu        sync.Mutex
		stuck     = map[int]bool{}
		started   = make(chan struct{}, 100)
		abandoned = make(chan error, 10)
		gate      = make(chan struct{})
	)
	// On w1 the first two items never finish by themselves; the others
	// finish once the gate opens.
	w1Comps := map[string]component{
		"/work": func(ctx context.Context, req *executor.Request, _ plugin.Host) (value.Value, error) {
			if calls.Add(1) <= 2 {
				mu.Lock()
				stuck[req.ItemIndex] = true
				mu.Unlock()
				started <- struct{}{}
				<-ctx.Done()
				abandoned <- context.Cause(ctx)
				return nil, context.Cause(ctx)
			}
			started <- struct{}{}
			select {
			case <-gate:
				return req.Input, nil
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
		},
	}
	w2Comps := map[string]component{
		"/work": func(_ context.Context, req *executor.Request, _ plugin.Host) (value.Value, error) {
			return req.Input, nil
		},
	}
	const n = 20
	run := b.createRun(runSpec{flow: `
steps:
  - { id: work, component: /test/work, input: { $input: "$" } }
output: { $step: work }
`, items: n, maxConc: 4})

	cfg := b.workerConfig("w1", 4, w1Comps)
	cfg.DrainTimeout = time.Second
	w1, err := New(cfg)
	require.NoError(t, err)
	drainStarted := make(chan struct{})
	w1.onDrainStart = func() { close(drainStarted) }
	require.NoError(t, w1.Start(testCtx(t)))
	for range 4 {
		<-started
	}

	stopped := make(chan error, 1)
	go func() { stopped <- w1.Stop(testCtx(t)) }()
	<-drainStarted
	close(gate) // the two gated items finish during the drain
	require.NoError(t, <-stopped)
	<-w1.Stopped()
	for range 2 {
		require.ErrorIs(t, <-abandoned, errWorkerStopping)
	}
	require.Equal(t, int32(4), calls.Load(), "w1 fetched nothing after Stop")
	require.Equal(t, 2, b.sink.count(run))

	// Another worker takes the rest, including the handed-back items, at
	// once: they were nak'ed, not left to time out (AckWait 30s).
	b.start(b.workerConfig("w2", 4, w2Comps))
	got := b.resultsWithin(run, n, 10*time.Second)
	for i, r := range got {
		switch {
		case stuck[i]:
			require.Equal(t, "w2", r.GetWorkerId(), "item %d", i)
			require.Equal(t, uint32(2), r.GetDeliveries(), "item %d", i)
		case r.GetWorkerId() == "w1":
			require.Equal(t, uint32(1), r.GetDeliveries(), "item %d", i)
		}
		require.Equal(t, fmt.Sprintf(`{"i":%d}`, i), resultValue(t, r))
	}
}

func TestInProgressKeepsSlowItemAlive(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var calls atomic.Int32
	comps := map[string]component{
		// Simulated work: 2.5 times the consumer's AckWait.
		"/slow": func(ctx context.Context, req *executor.Request, _ plugin.Host) (value.Value, error) {
			calls.Add(1)
			t := time.NewTimer(2500 * time.Millisecond)
			defer t.Stop()
			select {
			case <-t.C:
				return req.Input, nil
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
		},
	}
	run := b.createRun(runSpec{flow: `
steps:
  - { id: slow, component: /test/slow, input: { $input: "$" } }
output: { $step: slow }
`, items: 1, maxConc: 1, ackWait: time.Second})
	// Two workers: a redelivery would go to the idle one.
	b.start(b.workerConfig("w1", 1, comps))
	b.start(b.workerConfig("w2", 1, comps))

	got := b.results(run, 1)
	require.Equal(t, uint32(1), got[0].GetDeliveries())
	require.Equal(t, int32(1), calls.Load(), "executed once")
	info := b.consumerInfo(run)
	require.Zero(t, info.NumRedelivered)
	require.Equal(t, uint64(1), info.Delivered.Consumer)
}

func TestNestedRunLendsSlot(t *testing.T) {
	t.Parallel()
	b := setup(t)
	api := b.serveRunsAPI()
	childFlow := b.flowID(noopFlow)
	const children = 10
	comps := map[string]component{
		// Submits a child batch and waits for it, as a component server
		// does through runs/submit with wait.
		"/parent": func(ctx context.Context, req *executor.Request, host plugin.Host) (value.Value, error) {
			inputs := make([]value.Value, children)
			for i := range inputs {
				inputs[i] = value.ObjectOf("child", value.Int(int64(i)))
			}
			st, err := host.Runs.Submit(ctx, runs.Request{FlowID: childFlow, Inputs: inputs, Wait: true, MaxConcurrency: 3})
			if err != nil {
				return nil, err
			}
			sum := int64(0)
			for _, r := range st.Results {
				o := r.Result.Value.(*value.Object)
				c, _ := o.Get("child")
				n, _ := c.(value.Number).Int64()
				sum += n
			}
			return value.ObjectOf("status", st.Status, "results", value.Int(int64(len(st.Results))), "sum", value.Int(sum), "child", st.RunID), nil
		},
	}
	parent := b.createRun(runSpec{flow: `
steps:
  - { id: parent, component: /test/parent, input: { $input: "$" } }
output: { $step: parent }
`, items: 1, maxConc: 1})
	w := b.start(b.workerConfig("w1", 1, comps))

	got := b.resultsWithin(parent, 1, 20*time.Second)
	v, err := value.Parse([]byte(resultValue(t, got[0])))
	require.NoError(t, err)
	o := v.(*value.Object)
	status, _ := o.Get("status")
	require.Equal(t, "completed", status)
	n, _ := o.Get("results")
	require.Equal(t, value.Int(children), n)
	sum, _ := o.Get("sum")
	require.Equal(t, value.Int(45), sum)
	childID, _ := o.Get("child")
	rec, _, err := b.runs.Get(testCtx(t), childID.(string))
	require.NoError(t, err)
	require.Equal(t, parent, rec.GetParentRunId(), "the child's parent is the calling item's run")
	require.Len(t, b.results(childID.(string), children), children)
	require.Equal(t, 1, api.submits())
	require.Zero(t, w.slots.Lent(), "the lent slot was given back")
}

func TestMalformedItemsAndPanics(t *testing.T) {
	t.Parallel()
	b := setup(t)
	comps := map[string]component{
		"/boom": func(_ context.Context, req *executor.Request, _ plugin.Host) (value.Value, error) {
			if req.ItemIndex%2 == 0 {
				panic("component exploded")
			}
			return req.Input, nil
		},
	}
	const n = 6
	run := b.createRun(runSpec{flow: `
steps:
  - { id: boom, component: /test/boom, input: { $input: "$" } }
output: { $step: boom }
`, items: n, maxConc: 2})
	// A message that is not an Item on the run's subject, and a well-formed
	// item of another run (a misrouted message).
	_, err := b.js.Publish(testCtx(t), queue.ItemSubject(run), []byte("\xff\xffnot a protobuf item"))
	require.NoError(t, err)
	misrouted, err := proto.Marshal(&stepflowv1.Item{RunId: "another-run", Index: 99, Input: []byte(`{}`)})
	require.NoError(t, err)
	_, err = b.js.Publish(testCtx(t), queue.ItemSubject(run), misrouted)
	require.NoError(t, err)
	b.start(b.workerConfig("w1", 2, comps))

	got := b.results(run, n)
	for i, r := range got {
		require.Equal(t, i%2 == 0, r.GetFailed(), "item %d", i)
		if i%2 == 0 {
			require.Contains(t, string(r.GetResult()), "component exploded")
		}
	}
	// The malformed message was terminated, not redelivered.
	require.Eventually(t, func() bool {
		info := b.consumerInfo(run)
		return info.NumAckPending == 0 && info.NumPending == 0 && b.subjectCount(queue.StreamItems, queue.ItemSubject(run)) == 0
	}, 10*time.Second, 20*time.Millisecond)
	require.Zero(t, b.consumerInfo(run).NumRedelivered)

	// The worker survived the panics.
	other := b.createRun(runSpec{flow: noopFlow, items: 3, maxConc: 3})
	b.results(other, 3)
}

// unavailableErr is what a component server plugin returns when the
// server failed under a call (stepflow.ServerError).
type unavailableErr struct{}

func (unavailableErr) Error() string {
	return "component server \"py\" failed: process exited: exit status 1; restarting"
}
func (unavailableErr) Is(target error) bool { return target == executor.ErrUnavailable }

// An item whose component server fails under it runs again at once,
// alone among such items; only when that fails too is it handed back
// (a delivery), and on its last delivery the failure is its result.
func TestUnavailableComponentHandsItemBack(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var mu sync.Mutex
	calls := map[int]int{}
	comps := map[string]component{
		"/flaky": func(_ context.Context, req *executor.Request, _ plugin.Host) (value.Value, error) {
			mu.Lock()
			calls[req.ItemIndex]++
			n := calls[req.ItemIndex]
			mu.Unlock()
			// Item 0 crashes its server every time; item 1 is caught by a
			// crash once; the others never.
			if req.ItemIndex == 0 || (req.ItemIndex == 1 && n == 1) {
				return nil, unavailableErr{}
			}
			return req.Input, nil
		},
	}
	const n = 4
	run := b.createRun(runSpec{flow: `
steps:
  - { id: flaky, component: /test/flaky, input: { $input: "$" } }
output: { $step: flaky }
`, items: n, maxConc: n, maxDeliver: 3})
	cfg := b.workerConfig("w1", n, comps)
	cfg.RetryDelay = 10 * time.Millisecond
	b.start(cfg)

	got := b.results(run, n)
	require.True(t, got[0].GetFailed())
	require.Equal(t, uint32(3), got[0].GetDeliveries())
	require.Contains(t, string(got[0].GetResult()),
		`item 0 exceeded its maximum deliveries (3); last error: step \"flaky\" failed: component server \"py\" failed: process exited: exit status 1; restarting`)
	for i := 1; i < n; i++ {
		require.False(t, got[i].GetFailed(), "item %d: %s", i, got[i].GetResult())
	}
	require.Equal(t, uint32(1), got[1].GetDeliveries(), "the item caught by a crash ran again at once, on the same delivery")
	mu.Lock()
	defer mu.Unlock()
	// Each delivery of the item that crashes every time runs twice (the
	// second time alone); the one caught once runs twice in one delivery.
	require.Equal(t, map[int]int{0: 6, 1: 2, 2: 1, 3: 1}, calls)
}

func TestRunUnusableFailsItems(t *testing.T) {
	t.Parallel()
	b := setup(t)
	run := b.createRun(runSpec{flow: noopFlow, items: 3, maxConc: 3})
	b.modifyRun(run, func(r *stepflowv1.RunRecord) { r.Overrides = []byte(`{"nope":{"value":{"input":1}}}`) })
	b.start(b.workerConfig("w1", 2, nil))
	for _, r := range b.results(run, 3) {
		require.True(t, r.GetFailed())
		require.Contains(t, string(r.GetResult()), "run cannot start")
	}
}

func TestLifecycle(t *testing.T) {
	t.Parallel()
	b := setup(t)

	// Stop before Start: the worker never starts.
	w, err := New(b.workerConfig("early", 1, nil))
	require.NoError(t, err)
	require.NoError(t, w.Stop(testCtx(t)))
	<-w.Stopped()
	require.ErrorIs(t, w.Start(testCtx(t)), ErrStopped)
	require.NoError(t, w.Stop(testCtx(t)))

	// A failed Start reports why and leaves a stopped worker.
	cfg := b.workerConfig("bad", 1, nil)
	cfg.StepflowConfig, cfg.ConfigPath = nil, "/nonexistent/stepflow-config.yml"
	w, err = New(cfg)
	require.NoError(t, err)
	require.ErrorContains(t, w.Start(testCtx(t)), "nonexistent")
	<-w.Stopped()
	require.NoError(t, w.Stop(testCtx(t)))

	// Stop aborts a Start that waits for NATS.
	cfg = b.workerConfig("waiting", 1, nil)
	cfg.NATSURL = "nats://127.0.0.1:1"
	w, err = New(cfg)
	require.NoError(t, err)
	startErr := make(chan error, 1)
	go func() { startErr <- w.Start(testCtx(t)) }()
	require.NoError(t, w.Stop(testCtx(t)))
	require.Error(t, <-startErr)

	// A normal life, with health probes.
	cfg = b.workerConfig("w1", 1, nil)
	cfg.HealthPort = -1
	w, err = New(cfg)
	require.NoError(t, err)
	require.NoError(t, w.Start(testCtx(t)))
	require.NoError(t, w.Start(testCtx(t)), "Start is idempotent")
	<-w.Started()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	probe := func(path string) int {
		resp, err := client.Get("http://" + w.HealthAddr() + path)
		require.NoError(t, err)
		require.NoError(t, resp.Body.Close())
		return resp.StatusCode
	}
	require.Equal(t, http.StatusOK, probe("/healthz"))
	require.Eventually(t, func() bool { return probe("/readyz") == http.StatusOK }, 10*time.Second, 10*time.Millisecond)
	require.Equal(t, "w1", w.ID())

	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() { require.NoError(t, w.Stop(testCtx(t))) })
	}
	wg.Wait()
	<-w.Stopped()
	require.False(t, w.ready())
	_, err = client.Get("http://" + w.HealthAddr() + "/healthz")
	require.Error(t, err, "the health server is closed")

	// Stop's caller giving up: in-flight items are handed back at once.
	block := map[string]component{"/block": func(ctx context.Context, _ *executor.Request, _ plugin.Host) (value.Value, error) {
		<-ctx.Done()
		return nil, context.Cause(ctx)
	}}
	cfg = b.workerConfig("w2", 1, block)
	w, err = New(cfg)
	require.NoError(t, err)
	require.NoError(t, w.Start(testCtx(t)))
	run := b.createRun(runSpec{flow: `
steps:
  - { id: block, component: /test/block, input: { $input: "$" } }
output: { $step: block }
`, items: 1, maxConc: 1})
	require.Eventually(t, func() bool { return b.consumerInfo(run).NumAckPending == 1 }, 10*time.Second, 10*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, w.Stop(ctx), context.Canceled)
	<-w.Stopped()
	// Handed back at once (nak), not after AckWait (30s).
	b.start(b.workerConfig("w3", 1, map[string]component{"/block": func(_ context.Context, req *executor.Request, _ plugin.Host) (value.Value, error) {
		return req.Input, nil
	}}))
	got := b.resultsWithin(run, 1, 10*time.Second)
	require.Equal(t, "w3", got[0].GetWorkerId())
	require.Equal(t, uint32(2), got[0].GetDeliveries())
}

func TestConfig(t *testing.T) {
	t.Parallel()
	c := Config{NATSURL: "nats://x"}.WithDefaults()
	require.NoError(t, c.Validate())
	require.Positive(t, c.Concurrency)
	require.Equal(t, DefaultDrainTimeout, c.DrainTimeout)
	require.Equal(t, DefaultFetchMaxWait, c.FetchMaxWait)
	require.Equal(t, DefaultHealthHost, c.HealthHost)
	require.Equal(t, DefaultStatusInterval, c.StatusInterval)
	require.NotEmpty(t, c.Version)
	require.NotEmpty(t, c.WorkerID)
	require.Equal(t, "stepflow-worker-"+c.WorkerID, c.NATS.Name)
	require.NotNil(t, c.Logger)

	for name, bad := range map[string]Config{
		"no url":      {},
		"concurrency": {NATSURL: "x", Concurrency: -1},
		"health port": {NATSURL: "x", HealthPort: 70000},
		"fetch wait":  {NATSURL: "x", FetchMaxWait: time.Millisecond},
		"status slow": {NATSURL: "x", StatusInterval: time.Minute},
	} {
		_, err := New(bad)
		require.ErrorIs(t, err, ErrInvalidConfig, name)
	}
}

func TestSlotsLend(t *testing.T) {
	t.Parallel()
	s := newSlots(2)
	require.Equal(t, 2, s.Capacity())
	give1 := s.Lend()
	give2 := s.Lend()
	require.Equal(t, 4, s.Capacity())
	require.Equal(t, 2, s.Lent())
	<-s.Changed() // coalesced notifications
	give1()
	give1() // giving back twice is a no-op
	require.Equal(t, 3, s.Capacity())
	<-s.Changed()
	give2()
	require.Equal(t, 2, s.Capacity())

	var wg sync.WaitGroup
	for range 100 {
		wg.Go(func() { defer s.Lend()() })
	}
	wg.Wait()
	require.Equal(t, 2, s.Capacity())
	require.Zero(t, s.Lent())
}

func TestRunsAPIMessages(t *testing.T) {
	t.Parallel()
	created := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	res := []runs.ItemResult{{Index: 0, Status: runs.StatusCompleted, CompletedAt: created}, {Index: 1, Status: runs.StatusRunning}}
	ok := outcome.Success(value.ObjectOf("x", value.Int(1)))
	res[0].Result = &ok
	st := runs.Status{RunID: "r1", FlowID: "f", FlowName: "n", Status: runs.StatusRunning,
		Items: runs.ItemStatistics{Total: 2, Completed: 1, Running: 1}, CreatedAt: created, Results: res}
	got, err := parseStatus(st.Value())
	require.NoError(t, err)
	require.Equal(t, value.String(st.Value()), value.String(got.Value()))

	_, err = parseStatus(value.ObjectOf("status", "running"))
	require.Error(t, err, "runId is required")

	require.ErrorIs(t, apiError(value.ObjectOf("code", value.Int(apiCodeNotFound), "message", "x"), runs.ErrRunNotFound), runs.ErrRunNotFound)
	require.ErrorIs(t, apiError(value.ObjectOf("code", value.Int(apiCodeInvalidParams), "message", "x"), runs.ErrFlowNotFound), runs.ErrInvalidRequest)
	require.EqualError(t, apiError(value.ObjectOf("code", value.Int(-32000), "message", "boom"), nil), "coordinator: boom (code -32000)")

	req := submitRequest(runs.Request{FlowID: "f", Inputs: []value.Value{value.Int(1)}, Variables: map[string]value.Value{"b": "2", "a": "1"}, ParentRunID: "p"})
	require.Equal(t, `{"flowId":"f","inputs":[1],"wait":false,"maxConcurrency":null,"overrides":null,"variables":{"a":"1","b":"2"},"parentRunId":"p"}`, value.String(req))

	// Without a parent, the calling item's run is the parent.
	require.Equal(t, "run-7", itemRunID(withItemRunID(context.Background(), "run-7")))
}

func TestRunsWithoutCoordinator(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := &natsRuns{nc: b.nc, slots: newSlots(1), timeout: time.Second, log: b.log}
	_, err := r.Submit(testCtx(t), runs.Request{FlowID: "f", Inputs: []value.Value{value.Int(1)}})
	require.ErrorIs(t, err, ErrNoCoordinator)
	// A waiting Get keeps polling while no coordinator answers, until its
	// caller gives up, with the slot lent meanwhile.
	ctx, cancel := context.WithCancel(testCtx(t))
	done := make(chan error, 1)
	go func() {
		_, err := r.Get(ctx, "run-1", runs.GetOptions{Wait: true})
		done <- err
	}()
	require.Eventually(t, func() bool { return r.slots.Lent() == 1 }, 10*time.Second, 5*time.Millisecond)
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	require.Zero(t, r.slots.Lent())
}

// runsAPI is a tiny stand-in for the coordinator's run API: it creates
// child runs exactly as a coordinator does (record, consumer, items) and
// answers status from the results stream.
type runsAPI struct {
	b  *bundle
	mu sync.Mutex
	n  int
}

func (a *runsAPI) submits() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.n
}

func (b *bundle) serveRunsAPI() *runsAPI {
	b.t.Helper()
	api := &runsAPI{b: b}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	handle := func(fn func(context.Context, *value.Object) (value.Value, error)) nats.MsgHandler {
		return func(m *nats.Msg) {
			wg.Go(func() {
				v, err := value.Parse(m.Data)
				var reply value.Value
				if err == nil {
					o, _ := v.(*value.Object)
					reply, err = fn(ctx, o)
				}
				if err != nil {
					code := -32000
					if errors.Is(err, queue.ErrRunNotFound) {
						code = apiCodeNotFound
					}
					reply = value.ObjectOf("error", value.ObjectOf("code", value.Int(int64(code)), "message", err.Error()))
				}
				_ = m.Respond(value.Marshal(reply))
			})
		}
	}
	sub1, err := b.nc.QueueSubscribe(queue.SubjectRunsSubmit, queue.APIQueueGroup, handle(api.submit))
	require.NoError(b.t, err)
	sub2, err := b.nc.QueueSubscribe(queue.SubjectRunsGet, queue.APIQueueGroup, handle(api.get))
	require.NoError(b.t, err)
	b.t.Cleanup(func() {
		_ = sub1.Unsubscribe()
		_ = sub2.Unsubscribe()
		cancel()
		wg.Wait()
	})
	return api
}

func (a *runsAPI) submit(ctx context.Context, req *value.Object) (value.Value, error) {
	flowID, _ := req.Get("flowId")
	parent, _ := req.Get("parentRunId")
	in, _ := req.Get("inputs")
	items := in.([]value.Value)
	inputs := make([][]byte, len(items))
	for i, v := range items {
		inputs[i] = value.Marshal(v)
	}
	conc := len(inputs)
	if mc, ok := req.Get("maxConcurrency"); ok && mc != nil {
		n, _ := mc.(value.Number).Int64()
		conc = int(n)
	}
	runID, err := a.b.createRunFor(ctx, flowID.(string), inputs, conc, 0, parent.(string), 0)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	a.n++
	a.mu.Unlock()
	return a.status(ctx, runID, false, false)
}

func (a *runsAPI) get(ctx context.Context, req *value.Object) (value.Value, error) {
	runID, _ := req.Get("runId")
	wait, _ := req.Get("wait")
	incl, _ := req.Get("includeResults")
	return a.status(ctx, runID.(string), wait == true, incl == true)
}

// status reads the run's results; with wait it first waits for all of
// them (bounded) and marks the run completed, as the coordinator would.
func (a *runsAPI) status(ctx context.Context, runID string, wait, includeResults bool) (value.Value, error) {
	rec, _, err := a.b.runs.Get(ctx, runID)
	if err != nil {
		return nil, err
	}
	total := int(rec.GetItemTotal())
	want := 0
	if wait {
		want = total
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	got, err := readResults(wctx, a.b.sink, []string{runID}, want, nil)
	if err != nil && wctx.Err() == nil {
		return nil, err
	}
	st := runs.Status{RunID: runID, FlowID: rec.GetFlowId(), Status: runs.StatusRunning, CreatedAt: rec.GetCreatedAt().AsTime(),
		Items: runs.ItemStatistics{Total: total, Running: total - len(got)}}
	if includeResults {
		st.Results = make([]runs.ItemResult, total)
		for i := range st.Results {
			st.Results[i] = runs.ItemResult{Index: i, Status: runs.StatusRunning}
		}
	}
	for _, r := range got {
		v, err := value.Parse(r.GetResult())
		if err != nil {
			return nil, err
		}
		status := runs.StatusCompleted
		if r.GetFailed() {
			status = runs.StatusFailed
			st.Items.Failed++
		} else {
			st.Items.Completed++
		}
		if includeResults {
			res, err := outcome.Parse(v)
			if err != nil {
				return nil, err
			}
			st.Results[r.GetIndex()] = runs.ItemResult{Index: int(r.GetIndex()), Status: status, Result: &res, CompletedAt: r.GetFinishedAt().AsTime()}
		}
	}
	if len(got) == total {
		st.Status, st.CompletedAt = runs.StatusCompleted, time.Now()
		if st.Items.Failed > 0 {
			st.Status = runs.StatusFailed
		}
		if _, _, err := a.b.runs.Modify(ctx, runID, func(r *stepflowv1.RunRecord) error {
			r.Status = stepflowv1.RunStatus_RUN_STATUS_COMPLETED
			return nil
		}); err != nil {
			return nil, err
		}
	}
	return st.Value(), nil
}

// A coordinator that cannot store results (a full disk, say) refuses
// them: the worker keeps each result, heartbeating its item, and sends it
// again until it is stored; the item is not handed back, so the refusals
// cost it no delivery, and it is acked only after the result is stored.
func TestResultKeptUntilStored(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.sink.setRefuse("no space left on device")
	const n = 3
	run := b.createRun(runSpec{flow: noopFlow, items: n, maxConc: n})
	b.start(b.workerConfig("w1", 4, nil))

	// Every item is refused at least twice, and stays in flight.
	require.NoError(t, b.sink.waitRefused(testCtx(t), 2*n))
	info := b.consumerInfo(run)
	require.Equal(t, n, info.NumAckPending)
	require.Zero(t, info.NumRedelivered)

	b.sink.setRefuse("")
	got := b.results(run, n)
	for i := range n {
		require.Equal(t, uint32(1), got[i].GetDeliveries(), "item %d", i)
	}
	require.Eventually(t, func() bool { return b.subjectCount(queue.StreamItems, queue.ItemSubject(run)) == 0 },
		10*time.Second, 20*time.Millisecond)
	require.Zero(t, b.consumerInfo(run).NumRedelivered)
}

// A nested run whose inputs refer to a blob put here a moment ago is
// submitted only after the coordinator journaled that blob: the run's
// items may execute anywhere, after a power loss of NATS too.
func TestNestedRunJournalsTheBlobsItRefersTo(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testCtx(t)
	store, err := queue.OpenBlobStore(ctx, b.js, queue.WithPutTracking(0))
	require.NoError(t, err)
	id, err := store.Put(ctx, blob.KindData, value.MustParse(`{"doc":1}`))
	require.NoError(t, err)

	// The coordinator's run API: it records what the sink had journaled
	// when the submit came.
	journaledAtSubmit := make(chan []string, 2)
	sub, err := b.nc.Subscribe(queue.SubjectRunsSubmit, func(m *nats.Msg) {
		b.sink.mu.Lock()
		journaledAtSubmit <- slices.Clone(b.sink.journaled)
		b.sink.mu.Unlock()
		_ = m.Respond([]byte(`{"runId":"r1","status":"running"}`))
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Unsubscribe() })

	r := &natsRuns{nc: b.nc, blobs: store, slots: newSlots(1), timeout: 10 * time.Second, log: b.log}
	_, err = r.Submit(ctx, runs.Request{FlowID: "f", Inputs: []value.Value{value.ObjectOf("doc", id)}})
	require.NoError(t, err)
	require.Equal(t, []string{id}, <-journaledAtSubmit)

	// Journaled once: a second run referring to it sends nothing again.
	_, err = r.Submit(ctx, runs.Request{FlowID: "f", Inputs: []value.Value{value.ObjectOf("doc", id)}})
	require.NoError(t, err)
	require.Equal(t, []string{id}, <-journaledAtSubmit)
}
