package worker

import (
	"context"
	"fmt"
	"iter"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/plugin"
	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/value"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// bundle is one test's JetStream (an embedded server with its store in
// t.TempDir(), the provisioned layout) and a client connection that plays
// the coordinator.
type bundle struct {
	t     testing.TB
	srv   *queue.Embedded
	url   string
	nc    *nats.Conn
	js    jetstream.JetStream
	runs  *queue.RunStore
	flows *queue.FlowStore
	sink  *resultSink
	// sinkSub is the sink's subscription (a test may take it out).
	sinkSub *nats.Subscription
	log     *zap.Logger
}

func setup(t testing.TB) *bundle {
	t.Helper()
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	srv := queue.NewEmbedded(queue.EmbeddedConfig{StoreDir: t.TempDir(), Logger: log})
	require.NoError(t, srv.Start(testCtx(t)))
	t.Cleanup(srv.Shutdown)
	nc, js, err := queue.Connect(testCtx(t), srv.ClientURL(), queue.ConnectOptions{Name: "coordinator", Logger: log})
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	require.NoError(t, queue.Provision(testCtx(t), js, queue.Config{Logger: log}))
	runs, err := queue.OpenRunStore(testCtx(t), js)
	require.NoError(t, err)
	flows, err := queue.OpenFlowStore(testCtx(t), js)
	require.NoError(t, err)
	sink := newResultSink()
	sub, err := queue.SubscribeResults(nc, sink.receive)
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return &bundle{t: t, srv: srv, url: srv.ClientURL(), nc: nc, js: js, runs: runs, flows: flows, sink: sink, sinkSub: sub, log: log}
}

// resultSink plays the coordinator's part in the result protocol: it
// answers every result request, keeping the first result per index in
// arrival order.
type resultSink struct {
	mu       sync.Mutex
	order    []*stepflowv1.ItemResult
	seen     map[string]bool
	received map[string]int // run id -> requests, duplicates included
	changed  chan struct{}
	// refuse, when set, is the reason given for refusing every result.
	refuse  string
	refused int
	// journaled: the ids of the blobs journaled (BlobJournal requests).
	journaled []string
}

// waitRefused waits until n result requests were refused.
func (s *resultSink) waitRefused(ctx context.Context, n int) error {
	for {
		s.mu.Lock()
		got, changed := s.refused, s.changed
		s.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("%d of %d refusals: %w", got, n, ctx.Err())
		}
	}
}

func newResultSink() *resultSink {
	return &resultSink{seen: map[string]bool{}, received: map[string]int{}, changed: make(chan struct{})}
}

func (s *resultSink) receive(m *nats.Msg) {
	if m.Subject == queue.BlobJournalSubject {
		j, err := queue.DecodeBlobJournal(m.Data)
		if err == nil {
			s.mu.Lock()
			for _, b := range j.GetBlobs() {
				s.journaled = append(s.journaled, b.GetId())
			}
			s.mu.Unlock()
		}
		_ = m.RespondMsg(queue.ResultReply(queue.ResultStored, err))
		return
	}
	if m.Subject == queue.ResultBatchSubject {
		results, err := queue.DecodeResultBatch(m.Data)
		if err != nil {
			_ = m.RespondMsg(queue.ResultReply("", err))
			return
		}
		outs := make([]queue.ResultBatchOutcome, len(results))
		for i, data := range results {
			r, err := queue.DecodeResult(data)
			if err != nil {
				outs[i].Err = err
				continue
			}
			status, err := s.store(r)
			outs[i] = queue.ResultBatchOutcome{Answer: queue.ResultAnswer{Status: status}, Err: err}
		}
		reply, err := queue.ResultBatchReply(outs)
		if err != nil {
			reply = queue.ResultReply("", err)
		}
		_ = m.RespondMsg(reply)
		return
	}
	r, err := queue.DecodeResult(m.Data)
	if err != nil {
		_ = m.RespondMsg(queue.ResultReply("", err))
		return
	}
	status, err := s.store(r)
	_ = m.RespondMsg(queue.ResultReply(status, err))
}

// store keeps the first result per index (or refuses it when told to).
func (s *resultSink) store(r *stepflowv1.ItemResult) (queue.ResultStatus, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refuse != "" {
		s.refused++
		close(s.changed)
		s.changed = make(chan struct{})
		return "", fmt.Errorf("%s", s.refuse)
	}
	s.received[r.GetRunId()]++
	key := queue.MsgID(r.GetRunId(), int(r.GetIndex()))
	status := queue.ResultDuplicate
	if !s.seen[key] {
		s.seen[key] = true
		s.order = append(s.order, r)
		status = queue.ResultStored
	}
	close(s.changed)
	s.changed = make(chan struct{})
	return status, nil
}

// setRefuse makes the sink refuse every result with reason ("" accepts
// them again).
func (s *resultSink) setRefuse(reason string) {
	s.mu.Lock()
	s.refuse = reason
	s.mu.Unlock()
}

// count returns how many results of runID were stored.
func (s *resultSink) count(runID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.order {
		if r.GetRunId() == runID {
			n++
		}
	}
	return n
}

// requests returns how many result requests of runID arrived.
func (s *resultSink) requests(runID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.received[runID]
}

// snapshot returns the stored results of runIDs in arrival order and a
// channel closed at the next change.
func (s *resultSink) snapshot(runIDs []string) ([]*stepflowv1.ItemResult, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*stepflowv1.ItemResult
	for _, r := range s.order {
		for _, id := range runIDs {
			if r.GetRunId() == id {
				out = append(out, r)
				break
			}
		}
	}
	return out, s.changed
}

// testCtx returns a context bounded well below the test timeout.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// testConfig routes /builtin/* to the builtins and /test/* to a plugin
// whose components are Go functions (testFactory replaces the mock type).
const testConfig = `
plugins:
  builtin: {type: builtin}
  test:
    type: mock
    components: {}
routes:
  "/builtin/{*component}": [{plugin: builtin}]
  "/test/{*component}": [{plugin: test}]
`

// component is a test component: it returns the step's result value.
type component func(ctx context.Context, req *executor.Request, host plugin.Host) (value.Value, error)

// testFactory builds the "test" plugin from Go functions by name (/name).
func testFactory(comps map[string]component) plugin.Factory {
	return func(_ context.Context, _ *config.Plugin, host plugin.Host) (plugin.Plugin, error) {
		return &testPlugin{comps: comps, host: host}, nil
	}
}

type testPlugin struct {
	comps map[string]component
	host  plugin.Host
}

func (p *testPlugin) Start(context.Context) error { return nil }
func (p *testPlugin) Close() error                { return nil }
func (p *testPlugin) Components(context.Context) ([]plugin.ComponentInfo, error) {
	var out []plugin.ComponentInfo
	for name := range p.comps {
		out = append(out, plugin.ComponentInfo{Component: name})
	}
	return out, nil
}
func (p *testPlugin) Component(name string) (executor.Component, error) {
	fn, ok := p.comps[name]
	if !ok {
		return nil, fmt.Errorf("%w: %s", plugin.ErrUnknownComponent, name)
	}
	return testComponent{fn: fn, host: p.host}, nil
}

type testComponent struct {
	fn   component
	host plugin.Host
}

func (c testComponent) Execute(ctx context.Context, req *executor.Request) (outcome.Result, error) {
	v, err := c.fn(ctx, req, c.host)
	if err != nil {
		return outcome.Result{}, err
	}
	return outcome.Success(v), nil
}

// workerConfig returns a worker config for this bundle with the test
// plugin's components.
func (b *bundle) workerConfig(id string, concurrency int, comps map[string]component) Config {
	b.t.Helper()
	cfg, err := config.Parse([]byte(testConfig), "")
	require.NoError(b.t, err)
	return Config{
		NATSURL:         b.url,
		StepflowConfig:  cfg,
		PluginFactories: map[config.PluginType]plugin.Factory{config.TypeMock: testFactory(comps)},
		Concurrency:     concurrency,
		WorkerID:        id,
		FetchMaxWait:    200 * time.Millisecond,
		Logger:          b.log,
	}
}

// start starts a worker and stops it at cleanup.
func (b *bundle) start(cfg Config) *Worker {
	b.t.Helper()
	w, err := New(cfg)
	require.NoError(b.t, err)
	require.NoError(b.t, w.Start(testCtx(b.t)))
	b.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		require.NoError(b.t, w.Stop(ctx))
	})
	return w
}

// runSpec describes a run the test coordinator creates.
type runSpec struct {
	flow    string // YAML
	items   int    // inputs {"i":<index>}
	inputs  [][]byte
	maxConc int
	ackWait time.Duration
	parent  string
	// maxDeliver is the consumer's MaxDeliver, also carried by the items
	// as the coordinator does; 0 = the default consumer, items without it.
	maxDeliver int
}

// flowID stores a flow given as YAML and returns its id.
func (b *bundle) flowID(yaml string) string {
	b.t.Helper()
	f, err := flow.Parse([]byte(yaml), "flow.yaml")
	require.NoError(b.t, err)
	id, err := b.flows.Put(testCtx(b.t), value.Marshal(f.Value()))
	require.NoError(b.t, err)
	return id
}

// createRun does what the coordinator does for a new run: store the
// flow, create the run consumer and the run record, publish the items.
func (b *bundle) createRun(spec runSpec) string {
	b.t.Helper()
	inputs := spec.inputs
	for i := range spec.items {
		inputs = append(inputs, fmt.Appendf(nil, `{"i":%d}`, i))
	}
	runID, err := b.createRunFor(testCtx(b.t), b.flowID(spec.flow), inputs, spec.maxConc, spec.ackWait, spec.parent, spec.maxDeliver)
	require.NoError(b.t, err)
	return runID
}

// createRunFor creates a run of a stored flow; it does not use require
// so that the fake run API can call it from its handlers.
func (b *bundle) createRunFor(ctx context.Context, flowID string, inputs [][]byte, maxConc int, ackWait time.Duration, parent string, maxDeliver int) (string, error) {
	runID := executor.NewRunID()
	if _, err := queue.CreateRunConsumer(ctx, b.js, runID, queue.RunConsumerConfig{MaxAckPending: maxConc, AckWait: ackWait, MaxDeliver: maxDeliver}); err != nil {
		return "", err
	}
	root := runID
	if parent != "" {
		root = parent
	}
	rec := &stepflowv1.RunRecord{
		RunId: runID, FlowId: flowID, Status: stepflowv1.RunStatus_RUN_STATUS_RUNNING,
		MaxConcurrency: uint32(maxConc), ItemTotal: uint64(len(inputs)), ParentRunId: parent, RootRunId: root,
		CreatedAt: timestamppb.Now(),
	}
	if _, err := b.runs.Create(ctx, rec); err != nil {
		return "", err
	}
	seq := func(yield func(int, []byte) bool) {
		for i, in := range inputs {
			if !yield(i, in) {
				return
			}
		}
	}
	n, err := queue.PublishItems(ctx, b.js, runID, iter.Seq2[int, []byte](seq), queue.PublishItemsOptions{
		Template: &stepflowv1.Item{FlowId: flowID, ParentRunId: parent, RootRunId: root, MaxDeliver: uint32(max(maxDeliver, 0))},
	})
	if err != nil {
		return "", err
	}
	if n != len(inputs) {
		return "", fmt.Errorf("published %d of %d items", n, len(inputs))
	}
	return runID, nil
}

// setStatus updates a run record as the coordinator would.
func (b *bundle) modifyRun(runID string, fn func(*stepflowv1.RunRecord)) {
	b.t.Helper()
	_, _, err := b.runs.Modify(testCtx(b.t), runID, func(r *stepflowv1.RunRecord) error {
		fn(r)
		return nil
	})
	require.NoError(b.t, err)
}

// results waits for n results of runID and returns them by index,
// failing on a duplicate index or a result beyond n.
func (b *bundle) results(runID string, n int) map[int]*stepflowv1.ItemResult {
	b.t.Helper()
	return b.resultsWithin(runID, n, time.Minute)
}

// resultsWithin is results, failing if they take longer than d.
func (b *bundle) resultsWithin(runID string, n int, d time.Duration) map[int]*stepflowv1.ItemResult {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(testCtx(b.t), d)
	defer cancel()
	got, err := readResults(ctx, b.sink, []string{runID}, n, nil)
	require.NoError(b.t, err)
	require.Len(b.t, got, n)
	require.Equal(b.t, n, b.sink.count(runID), "results stored")
	out := make(map[int]*stepflowv1.ItemResult, n)
	for _, r := range got {
		out[int(r.GetIndex())] = r
	}
	return out
}

// readResults waits until n results of the runs have been stored by sink
// (or ctx ends) and returns them in arrival order; order, when not nil,
// receives them too.
func readResults(ctx context.Context, sink *resultSink, runIDs []string, n int, order *[]*stepflowv1.ItemResult) ([]*stepflowv1.ItemResult, error) {
	for {
		got, changed := sink.snapshot(runIDs)
		if len(got) >= n {
			got = got[:n]
			if order != nil {
				*order = append(*order, got...)
			}
			return got, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return got, fmt.Errorf("%d of %d results: %w", len(got), n, ctx.Err())
		}
	}
}

// subjectCount returns how many messages stream holds on subject.
func (b *bundle) subjectCount(stream, subject string) uint64 {
	b.t.Helper()
	s, err := b.js.Stream(testCtx(b.t), stream)
	require.NoError(b.t, err)
	info, err := s.Info(testCtx(b.t), jetstream.WithSubjectFilter(subject))
	require.NoError(b.t, err)
	return info.State.Subjects[subject]
}

// consumerInfo returns the run consumer's state.
func (b *bundle) consumerInfo(runID string) *jetstream.ConsumerInfo {
	b.t.Helper()
	c, err := queue.RunConsumerHandle(testCtx(b.t), b.js, runID)
	require.NoError(b.t, err)
	info, err := c.Info(testCtx(b.t))
	require.NoError(b.t, err)
	return info
}

// resultValue returns a successful result's value as JSON text.
func resultValue(t testing.TB, r *stepflowv1.ItemResult) string {
	t.Helper()
	v, err := value.Parse(r.GetResult())
	require.NoError(t, err)
	res, err := outcome.Parse(v)
	require.NoError(t, err)
	require.False(t, res.Failed(), "item %d failed: %s", r.GetIndex(), r.GetResult())
	return value.String(res.Value)
}

// tracker records how many executions of each run overlap.
type tracker struct {
	mu      sync.Mutex
	cur     map[string]int
	peak    map[string]int
	calls   map[string]int
	target  int           // hold executions until this many overlap...
	reached chan struct{} // ...closed when they did
	once    sync.Once
	work    time.Duration // simulated work per execution
}

func newTracker(target int) *tracker {
	return &tracker{cur: map[string]int{}, peak: map[string]int{}, calls: map[string]int{}, target: target, reached: make(chan struct{})}
}

// component counts the execution while it runs. With a target, it holds
// each execution until target executions of the run overlapped (bounded
// by a timer, so that a worker that never reaches it fails the test
// rather than hanging it).
func (tr *tracker) component(ctx context.Context, req *executor.Request, _ plugin.Host) (value.Value, error) {
	tr.mu.Lock()
	tr.cur[req.RunID]++
	tr.calls[req.RunID]++
	tr.peak[req.RunID] = max(tr.peak[req.RunID], tr.cur[req.RunID])
	if tr.target > 0 && tr.cur[req.RunID] >= tr.target {
		tr.once.Do(func() { close(tr.reached) })
	}
	tr.mu.Unlock()
	defer func() {
		tr.mu.Lock()
		tr.cur[req.RunID]--
		tr.mu.Unlock()
	}()
	if tr.work > 0 {
		t := time.NewTimer(tr.work)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
	if tr.target > 0 {
		t := time.NewTimer(5 * time.Second)
		defer t.Stop()
		select {
		case <-tr.reached:
		case <-t.C:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
	return req.Input, nil
}

func (tr *tracker) stats(runID string) (peak, calls int) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.peak[runID], tr.calls[runID]
}
