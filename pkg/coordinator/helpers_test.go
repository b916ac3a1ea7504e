package coordinator_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/stepflow-go/stepflow/pkg/coordinator"
	"github.com/stepflow-go/stepflow/pkg/queue"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// echoFlow is a valid flow; the fake worker ignores it and echoes inputs.
const echoFlow = `{"name":"echo","description":"echoes its input","steps":[{"id":"keep","component":"/builtin/put_blob",` +
	`"input":{"data":{"$input":"$"},"blob_type":"data"}}],"output":{"$input":"$"}}`

// testCtx is bounded well below the test timeout.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func testLogger(t testing.TB) *zap.Logger {
	return zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
}

// startCoordinator starts a coordinator with its own embedded NATS server
// (unless cfg says otherwise) and data in t.TempDir(); it is stopped in
// t.Cleanup.
func startCoordinator(t testing.TB, mod func(*coordinator.Config)) *coordinator.Coordinator {
	t.Helper()
	cfg := coordinator.Config{DataDir: t.TempDir(), Host: "127.0.0.1", Logger: testLogger(t)}
	if mod != nil {
		mod(&cfg)
	}
	c, err := coordinator.New(cfg)
	require.NoError(t, err)
	require.NoError(t, c.Start(testCtx(t)))
	t.Cleanup(func() { require.NoError(t, c.Stop(context.Background())) })
	return c
}

// coordinatorOn starts a coordinator on the external NATS server srv and
// dataDir, with cfg's other fields; it is stopped at cleanup (Stop is
// idempotent, so a test may stop it first).
func coordinatorOn(t testing.TB, srv *queue.Embedded, dataDir string, cfg coordinator.Config) *coordinator.Coordinator {
	t.Helper()
	cfg.DataDir, cfg.Host, cfg.NATSURL = dataDir, "127.0.0.1", srv.ClientURL()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	c, err := coordinator.New(cfg)
	require.NoError(t, err)
	require.NoError(t, c.Start(testCtx(t)))
	t.Cleanup(func() { _ = c.Stop(context.Background()) })
	return c
}

// client is an HTTP client for one coordinator.
type client struct {
	t     testing.TB
	base  string
	token string
	hc    *http.Client
}

func newClient(t testing.TB, c *coordinator.Coordinator) *client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &client{t: t, base: c.URL() + "/api/v1", hc: &http.Client{Transport: tr}}
}

// response is a completed HTTP exchange.
type response struct {
	Status int
	Header http.Header
	Body   []byte
}

// JSON decodes the body into a generic value.
func (r response) JSON(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(r.Body, &m), "body: %s", r.Body)
	return m
}

func (c *client) do(method, path string, body io.Reader, header map[string]string) response {
	c.t.Helper()
	req, err := http.NewRequestWithContext(testCtx(c.t), method, c.base+path, body)
	require.NoError(c.t, err)
	if body != nil && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	require.NoError(c.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(c.t, err)
	return response{Status: resp.StatusCode, Header: resp.Header, Body: b}
}

func (c *client) get(path string) response { return c.do(http.MethodGet, path, nil, nil) }

func (c *client) post(path, body string) response {
	return c.do(http.MethodPost, path, strings.NewReader(body), nil)
}

// storeFlow stores echoFlow and returns its id.
func (c *client) storeFlow() string {
	c.t.Helper()
	r := c.post("/flows", `{"flow":`+echoFlow+`}`)
	require.Equal(c.t, http.StatusOK, r.Status, "%s", r.Body)
	m := r.JSON(c.t)
	require.Equal(c.t, true, m["stored"])
	return m["flowId"].(string)
}

// uploadJSONL submits inputs as a JSONL upload with extra query params.
func (c *client) uploadJSONL(flowID, query string, lines []string, header map[string]string) response {
	c.t.Helper()
	h := map[string]string{"Content-Type": "application/x-ndjson"}
	for k, v := range header {
		h[k] = v
	}
	body := strings.Join(lines, "\n")
	if len(lines) > 0 {
		body += "\n"
	}
	return c.do(http.MethodPost, "/runs?flowId="+flowID+query, strings.NewReader(body), h)
}

// waitStatus polls the run until its status is want (bounded).
func (c *client) waitStatus(runID, want string) map[string]any {
	c.t.Helper()
	var last map[string]any
	waitFor(c.t, 60*time.Second, func() bool {
		r := c.get("/runs/" + runID)
		require.Equal(c.t, http.StatusOK, r.Status, "%s", r.Body)
		last = r.JSON(c.t)
		return last["status"] == want
	}, "run %s never became %s", runID, want)
	return last
}

// itemsJSONL downloads the run's results as JSONL lines.
func (c *client) itemsJSONL(runID string) []string {
	c.t.Helper()
	r := c.get("/runs/" + runID + "/items?format=jsonl")
	require.Equal(c.t, http.StatusOK, r.Status, "%s", r.Body)
	require.Equal(c.t, "application/x-ndjson", r.Header.Get("Content-Type"))
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(r.Body))
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	require.NoError(c.t, sc.Err())
	return out
}

// waitFor polls cond every 20ms until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, cond func() bool, msgAndArgs ...any) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			require.FailNow(t, "condition not met in time", msgAndArgs...)
		case <-tick.C:
		}
	}
}

// inputLines returns n JSON inputs {"i":k,"pad":"…"}.
func inputLines(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf(`{"i":%d,"name":"item-%d"}`, i, i)
	}
	return out
}

// echoResult is the FlowResult the fake worker produces for input.
func echoResult(input string) string { return `{"outcome":"success","result":` + input + `}` }

// action is what the fake worker does with one delivery.
type action int

const (
	actEcho      action = iota // publish the echo result, then ack
	actNak                     // nak (no result)
	actHold                    // neither result nor ack: the item stays in flight
	actEchoTwice               // echo, plus a second, different result for the same index published without a message id
	actFail                    // publish a failed result, then ack
)

// fakeWorker is the smallest worker: it watches the run records, pulls
// the items of every running run from its consumer and answers them as
// its policy says.
type fakeWorker struct {
	t      testing.TB
	nc     *nats.Conn
	js     jetstream.JetStream
	policy func(it *stepflowv1.Item, delivery uint64) action
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	serving map[string]bool

	delivered atomic.Int64 // deliveries seen
}

// startWorker connects a fake worker to natsURL; it stops in t.Cleanup.
func startWorker(t testing.TB, natsURL string, policy func(*stepflowv1.Item, uint64) action) *fakeWorker {
	t.Helper()
	if policy == nil {
		policy = func(*stepflowv1.Item, uint64) action { return actEcho }
	}
	ctx, cancel := context.WithCancel(context.Background())
	nc, js, err := queue.Connect(testCtx(t), natsURL, queue.ConnectOptions{Name: "fake-worker", Logger: testLogger(t)})
	require.NoError(t, err)
	store, err := queue.OpenRunStore(testCtx(t), js)
	require.NoError(t, err)
	w := &fakeWorker{t: t, nc: nc, js: js, policy: policy, ctx: ctx, cancel: cancel, serving: map[string]bool{}}
	watch, err := store.Watch(ctx, queue.WatchOptions{})
	require.NoError(t, err)
	w.wg.Go(func() {
		for ev := range watch.Events() {
			if ev.Record == nil || ev.Record.GetStatus() != stepflowv1.RunStatus_RUN_STATUS_RUNNING {
				continue
			}
			w.mu.Lock()
			if !w.serving[ev.RunID] {
				w.serving[ev.RunID] = true
				id := ev.RunID
				w.wg.Go(func() { w.serve(id, store) })
			}
			w.mu.Unlock()
		}
	})
	t.Cleanup(func() {
		cancel()
		_ = watch.Stop()
		w.wg.Wait()
		nc.Close()
	})
	return w
}

// serve works on one run until it has finished.
func (w *fakeWorker) serve(runID string, store *queue.RunStore) {
	for w.ctx.Err() == nil {
		cons, err := queue.RunConsumerHandle(w.ctx, w.js, runID)
		if err != nil {
			rec, _, gerr := store.Get(w.ctx, runID)
			if gerr != nil || rec.GetStatus() != stepflowv1.RunStatus_RUN_STATUS_RUNNING {
				return
			}
			if !w.pause(50 * time.Millisecond) {
				return
			}
			continue
		}
		batch, err := cons.Fetch(16, jetstream.FetchMaxWait(200*time.Millisecond))
		if err != nil {
			if !w.pause(50 * time.Millisecond) {
				return
			}
			continue
		}
		for m := range batch.Messages() {
			w.handle(m)
		}
	}
}

// send has the coordinator store res, as a worker does: it sends it
// again until a coordinator answers.
func (w *fakeWorker) send(res *stepflowv1.ItemResult, subject string) error {
	subject, data, err := queue.EncodeResult(w.ctx, w.nc, res, queue.ResultOptions{Subject: subject})
	if err != nil {
		return err
	}
	for {
		ctx, cancel := context.WithTimeout(w.ctx, 5*time.Second)
		_, err := queue.SendResult(ctx, w.nc, subject, data)
		cancel()
		if err == nil || w.ctx.Err() != nil {
			return err
		}
		if !w.pause(50 * time.Millisecond) {
			return w.ctx.Err()
		}
	}
}

// pause waits d unless the worker stops; it reports whether to go on.
func (w *fakeWorker) pause(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-w.ctx.Done():
		return false
	}
}

func (w *fakeWorker) handle(m jetstream.Msg) {
	w.delivered.Add(1)
	it, err := queue.DecodeItem(m.Data())
	if err != nil {
		_ = m.Term()
		return
	}
	md, err := m.Metadata()
	if err != nil {
		return
	}
	res := &stepflowv1.ItemResult{
		RunId: it.GetRunId(), Index: it.GetIndex(),
		Result:        []byte(echoResult(string(it.GetInput()))),
		Source:        stepflowv1.ResultSource_RESULT_SOURCE_WORKER,
		WorkerId:      "fake",
		Deliveries:    uint32(md.NumDelivered),
		ItemStreamSeq: md.Sequence.Stream,
		FinishedAt:    timestamppb.Now(),
	}
	act := w.policy(it, md.NumDelivered)
	switch act {
	case actNak:
		_ = m.Nak()
		return
	case actHold:
		return
	case actFail:
		res.Failed = true
		res.Result = []byte(`{"outcome":"failed","error":{"code":500,"message":"boom"}}`)
	}
	if err := w.send(res, it.GetReplySubject()); err != nil {
		if !errors.Is(err, context.Canceled) {
			w.t.Logf("fake worker: send result: %v", err)
		}
		return
	}
	if act == actEchoTwice {
		// A late duplicate: only the coordinator can drop it.
		dup := proto.CloneOf(res)
		dup.Result = []byte(`{"outcome":"success","result":"second"}`)
		_ = w.send(dup, it.GetReplySubject())
	}
	_ = m.Ack()
}
