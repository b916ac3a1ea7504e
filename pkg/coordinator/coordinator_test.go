package coordinator_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/coordinator"
	"github.com/stepflow-go/stepflow/pkg/queue"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// A flow is stored and validated, a single-item run is synchronous and
// answers with CreateRunResponse including the result, and the run can be
// read back, listed and deleted.
func TestFlowsAndSynchronousSingleRun(t *testing.T) {
	t.Parallel()
	c := startCoordinator(t, nil)
	startWorker(t, c.NATSURL(), nil)
	cl := newClient(t, c)

	h := cl.get("/health").JSON(t)
	require.Equal(t, "healthy", h["status"])
	require.Equal(t, "0.9.0", h["version"])
	_, err := time.Parse(time.RFC3339Nano, h["timestamp"].(string))
	require.NoError(t, err)

	comps := cl.get("/components").JSON(t)
	require.Empty(t, comps["components"])

	r := cl.post("/flows", `{"flow":`+echoFlow+`,"dryRun":true}`)
	require.Equal(t, http.StatusOK, r.Status)
	dry := r.JSON(t)
	require.Equal(t, false, dry["stored"])
	require.Len(t, dry["flowId"], 64)
	require.Equal(t, 404, cl.get("/flows/"+dry["flowId"].(string)).Status, "a dry run stores nothing")

	flowID := cl.storeFlow()
	require.Equal(t, dry["flowId"], flowID)
	stored := cl.post("/flows", `{"flow":`+echoFlow+`}`).JSON(t)
	diags := stored["diagnostics"].(map[string]any)
	require.EqualValues(t, 0, diags["numFatal"])
	require.Contains(t, diags, "diagnostics")

	got := cl.get("/flows/" + flowID).JSON(t)
	require.Equal(t, flowID, got["flowId"])
	require.Equal(t, "echo", got["flow"].(map[string]any)["name"])

	r = cl.post("/runs", `{"flowId":"`+flowID+`","input":[{"x":1}]}`)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	var created struct {
		RunID     string          `json:"runId"`
		ItemCount int             `json:"itemCount"`
		Status    string          `json:"status"`
		Result    json.RawMessage `json:"result"`
	}
	require.NoError(t, json.Unmarshal(r.Body, &created))
	require.Equal(t, 1, created.ItemCount)
	require.Equal(t, "completed", created.Status)
	require.JSONEq(t, `{"outcome":"success","result":{"x":1}}`, string(created.Result))

	details := cl.get("/runs/" + created.RunID).JSON(t)
	require.Equal(t, "completed", details["status"])
	require.Equal(t, flowID, details["flowId"])
	require.Equal(t, "echo", details["flowName"])
	require.Equal(t, created.RunID, details["rootRunId"])
	require.NotContains(t, details, "parentRunId")
	require.NotNil(t, details["completedAt"])
	require.Equal(t, []any{map[string]any{"x": float64(1)}}, details["inputs"])
	require.Equal(t, map[string]any{"total": 1.0, "completed": 1.0, "running": 0.0, "failed": 0.0, "cancelled": 0.0, "queued": 0.0, "redelivered": 0.0}, details["items"])

	runFlow := cl.get("/runs/" + created.RunID + "/flow").JSON(t)
	require.Equal(t, flowID, runFlow["flowId"])
	// The fake worker sends no step outcomes: the flow's steps are listed
	// as blocked (steps_test.go has a real worker's).
	require.Equal(t, map[string]any{"steps": map[string]any{"keep": map[string]any{"stepId": "keep", "component": "/builtin/put_blob", "status": "blocked"}}},
		cl.get("/runs/"+created.RunID+"/steps").JSON(t))

	list := cl.get("/runs").JSON(t)["runs"].([]any)
	require.Len(t, list, 1)
	require.Equal(t, created.RunID, list[0].(map[string]any)["runId"])
	require.Empty(t, cl.get("/runs?status=running").JSON(t)["runs"])

	require.Equal(t, http.StatusOK, cl.do(http.MethodDelete, "/flows/"+flowID, nil, nil).Status)
	require.Equal(t, http.StatusOK, cl.do(http.MethodDelete, "/runs/"+created.RunID, nil, nil).Status)
	require.Equal(t, http.StatusNotFound, cl.get("/runs/"+created.RunID).Status)

	// An empty batch completes at once (upstream hangs).
	r = cl.post("/runs", `{"flowId":"`+flowID+`","input":[]}`)
	require.Equal(t, http.StatusOK, r.Status)
	require.Equal(t, "completed", r.JSON(t)["status"])
}

// A batch uploaded as a JSONL stream with wait=false returns at once; its
// results come back in index order as JSONL, as paged JSON and as full
// JSON, equal to the inputs.
func TestJSONLUploadAndItemsInOrder(t *testing.T) {
	t.Parallel()
	c := startCoordinator(t, nil)
	startWorker(t, c.NATSURL(), nil)
	cl := newClient(t, c)
	flowID := cl.storeFlow()

	lines := inputLines(300)
	r := cl.uploadJSONL(flowID, "&wait=false&maxConcurrency=7", lines, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	created := r.JSON(t)
	require.EqualValues(t, 300, created["itemCount"])
	runID := created["runId"].(string)
	require.NotContains(t, created, "result")

	details := cl.waitStatus(runID, "completed")
	require.EqualValues(t, 7, details["maxConcurrency"])
	// The inputs come a page at a time.
	require.Len(t, details["inputs"], coordinator.DefaultInputsPage)
	require.EqualValues(t, coordinator.DefaultInputsPage, details["inputsNextOffset"])
	inputPage := cl.get("/runs/" + runID + "?inputsOffset=250&inputsLimit=100").JSON(t)
	require.Len(t, inputPage["inputs"], 50)
	require.NotContains(t, inputPage, "inputsNextOffset")
	for i, in := range inputPage["inputs"].([]any) {
		b, err := json.Marshal(in)
		require.NoError(t, err)
		require.JSONEq(t, lines[250+i], string(b), "input %d", 250+i)
	}
	require.Len(t, cl.get("/runs/" + runID + "?inputsLimit=5000").JSON(t)["inputs"], 300, "a limit past the end answers the rest")
	require.Empty(t, cl.get("/runs/" + runID + "?inputsOffset=300").JSON(t)["inputs"])
	requireError(t, cl.get("/runs/"+runID+"?inputsLimit=-1"), http.StatusBadRequest, `inputsLimit: expected a non-negative integer, not "-1"`)
	items := details["items"].(map[string]any)
	require.EqualValues(t, 300, items["completed"])
	require.EqualValues(t, 300, items["total"])

	got := cl.itemsJSONL(runID)
	require.Len(t, got, 300)
	for i, line := range got {
		require.JSONEq(t, echoResult(lines[i]), line, "item %d", i)
	}

	page := cl.get("/runs/" + runID + "/items?offset=100&limit=50").JSON(t)
	require.EqualValues(t, 300, page["itemCount"])
	pageItems := page["items"].([]any)
	require.Len(t, pageItems, 50)
	for k, it := range pageItems {
		m := it.(map[string]any)
		i := 100 + k
		require.EqualValues(t, i, m["itemIndex"])
		require.Equal(t, "completed", m["status"])
		require.NotEmpty(t, m["completedAt"])
		want, _ := json.Marshal(m["result"])
		require.JSONEq(t, echoResult(lines[i]), string(want))
	}
	all := cl.get("/runs/" + runID + "/items").JSON(t)
	require.Len(t, all["items"], 300)
	require.Empty(t, cl.get("/runs/" + runID + "/items?offset=400").JSON(t)["items"])
}

// A result published twice for one index (a re-executed item whose second
// result escaped the server's duplicate window) is counted once, and the
// first one is kept.
func TestDuplicateResultsCountedOnce(t *testing.T) {
	t.Parallel()
	c := startCoordinator(t, nil)
	startWorker(t, c.NATSURL(), func(*stepflowv1.Item, uint64) action { return actEchoTwice })
	cl := newClient(t, c)
	flowID := cl.storeFlow()
	lines := inputLines(20)
	r := cl.uploadJSONL(flowID, "", lines, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	require.Equal(t, "completed", r.JSON(t)["status"])
	runID := r.JSON(t)["runId"].(string)

	items := cl.get("/runs/" + runID).JSON(t)["items"].(map[string]any)
	require.EqualValues(t, 20, items["total"])
	require.EqualValues(t, 20, items["completed"])
	require.EqualValues(t, 0, items["failed"])
	got := cl.itemsJSONL(runID)
	require.Len(t, got, 20)
	for i, line := range got {
		require.JSONEq(t, echoResult(lines[i]), line)
	}
}

// A submission retried with the same Idempotency-Key returns the same run,
// whether JSON or JSONL; another key makes another run; reusing a key for
// another flow is a conflict.
func TestIdempotencyKey(t *testing.T) {
	t.Parallel()
	c := startCoordinator(t, nil)
	cl := newClient(t, c) // no worker: the runs stay running
	flowID := cl.storeFlow()
	key := map[string]string{"Idempotency-Key": "batch-2026-01-28"}

	body := `{"flowId":"` + flowID + `","input":[1,2,3],"wait":false}`
	first := cl.do(http.MethodPost, "/runs", strings.NewReader(body), key)
	require.Equal(t, http.StatusOK, first.Status, "%s", first.Body)
	runID := first.JSON(t)["runId"].(string)
	require.Empty(t, first.Header.Get("Idempotent-Replayed"))

	again := cl.do(http.MethodPost, "/runs", strings.NewReader(body), key)
	require.Equal(t, http.StatusOK, again.Status)
	require.Equal(t, runID, again.JSON(t)["runId"])
	require.Equal(t, "true", again.Header.Get("Idempotent-Replayed"))

	up := cl.uploadJSONL(flowID, "&wait=false", []string{"1", "2", "3"}, key)
	require.Equal(t, http.StatusOK, up.Status)
	require.Equal(t, runID, up.JSON(t)["runId"])

	other := cl.do(http.MethodPost, "/runs", strings.NewReader(body), map[string]string{"Idempotency-Key": "another"})
	require.Equal(t, http.StatusOK, other.Status)
	require.NotEqual(t, runID, other.JSON(t)["runId"])
	listed := cl.get("/runs").JSON(t)["runs"].([]any)
	require.Len(t, listed, 2)
	require.Equal(t, other.JSON(t)["runId"], listed[0].(map[string]any)["runId"], "newest first")
	paged := cl.get("/runs?limit=1&offset=1").JSON(t)["runs"].([]any)
	require.Len(t, paged, 1)
	require.Equal(t, runID, paged[0].(map[string]any)["runId"])
	require.Len(t, cl.get("/runs?status=running").JSON(t)["runs"], 2)
	require.Len(t, cl.get("/runs?parentRunId=").JSON(t)["runs"], 2, "top-level runs")

	r := cl.post("/flows", `{"flow":{"name":"other","steps":[],"output":1}}`)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	otherFlow := r.JSON(t)["flowId"].(string)
	conflict := cl.do(http.MethodPost, "/runs", strings.NewReader(`{"flowId":"`+otherFlow+`","input":[1]}`), key)
	require.Equal(t, http.StatusConflict, conflict.Status, "%s", conflict.Body)

	// Deleting the run frees its key.
	require.Equal(t, http.StatusOK, cl.post("/runs/"+runID+"/cancel", "").Status)
	require.Equal(t, http.StatusOK, cl.do(http.MethodDelete, "/runs/"+runID, nil, nil).Status)
	fresh := cl.do(http.MethodPost, "/runs", strings.NewReader(body), key)
	require.Equal(t, http.StatusOK, fresh.Status)
	require.NotEqual(t, runID, fresh.JSON(t)["runId"])
}

// PATCH /runs/{id} changes the run consumer's MaxAckPending (the run's
// concurrency, enforced by the server) and the record.
func TestPatchConcurrency(t *testing.T) {
	t.Parallel()
	c := startCoordinator(t, nil)
	cl := newClient(t, c)
	flowID := cl.storeFlow()
	r := cl.uploadJSONL(flowID, "&wait=false&maxConcurrency=2", inputLines(10), nil)
	require.Equal(t, http.StatusOK, r.Status)
	runID := r.JSON(t)["runId"].(string)

	maxAckPending := func() int {
		cons, err := queue.RunConsumerHandle(testCtx(t), c.JetStream(), runID)
		require.NoError(t, err)
		info, err := cons.Info(testCtx(t))
		require.NoError(t, err)
		return info.Config.MaxAckPending
	}
	require.Equal(t, 2, maxAckPending())

	p := cl.do(http.MethodPatch, "/runs/"+runID, strings.NewReader(`{"maxConcurrency":5}`), nil)
	require.Equal(t, http.StatusOK, p.Status, "%s", p.Body)
	require.EqualValues(t, 5, p.JSON(t)["maxConcurrency"])
	require.Equal(t, 5, maxAckPending())
	require.EqualValues(t, 5, cl.get("/runs/" + runID).JSON(t)["maxConcurrency"])

	for _, bad := range []string{`{"maxConcurrency":0}`, `{"maxConcurrency":-3}`, `{"maxConcurrency":1.5}`, `{"maxConcurrency":"7"}`, `{}`, `{`} {
		p := cl.do(http.MethodPatch, "/runs/"+runID, strings.NewReader(bad), nil)
		require.Equal(t, http.StatusBadRequest, p.Status, bad)
		require.EqualValues(t, 400, p.JSON(t)["code"])
	}
	require.Equal(t, 5, maxAckPending())
	require.Equal(t, http.StatusNotFound, cl.do(http.MethodPatch, "/runs/0198c0de-0000-7000-8000-000000000000", strings.NewReader(`{"maxConcurrency":3}`), nil).Status)

	require.Equal(t, http.StatusOK, cl.post("/runs/"+runID+"/cancel", "").Status)
	require.Equal(t, http.StatusConflict, cl.do(http.MethodPatch, "/runs/"+runID, strings.NewReader(`{"maxConcurrency":3}`), nil).Status)
}

// Cancelling really stops a run: its consumer is deleted, its queued
// items removed, the items without a result reported cancelled; a second
// cancel is a conflict, and only then may the run be deleted.
func TestCancel(t *testing.T) {
	t.Parallel()
	c := startCoordinator(t, nil)
	startWorker(t, c.NATSURL(), func(it *stepflowv1.Item, _ uint64) action {
		if it.GetIndex() < 5 {
			return actEcho
		}
		return actHold // in flight until the run is cancelled
	})
	cl := newClient(t, c)
	flowID := cl.storeFlow()
	r := cl.uploadJSONL(flowID, "&wait=false&maxConcurrency=2", inputLines(20), nil)
	require.Equal(t, http.StatusOK, r.Status)
	runID := r.JSON(t)["runId"].(string)

	waitFor(t, 30*time.Second, func() bool {
		items := cl.get("/runs/" + runID).JSON(t)["items"].(map[string]any)
		return items["completed"] == 5.0 && items["running"] == 2.0
	}, "five items done, two in flight")
	running := cl.get("/runs/" + runID).JSON(t)["items"].(map[string]any)
	require.EqualValues(t, 13, running["queued"])

	require.Equal(t, http.StatusConflict, cl.do(http.MethodDelete, "/runs/"+runID, nil, nil).Status, "a running run cannot be deleted")

	cr := cl.post("/runs/"+runID+"/cancel", "")
	require.Equal(t, http.StatusOK, cr.Status, "%s", cr.Body)
	sum := cr.JSON(t)
	require.Equal(t, "cancelled", sum["status"])
	require.Equal(t, map[string]any{"total": 20.0, "completed": 5.0, "running": 0.0, "failed": 0.0, "cancelled": 15.0, "queued": 0.0, "redelivered": 0.0}, sum["items"])

	_, err := queue.RunConsumerHandle(testCtx(t), c.JetStream(), runID)
	require.ErrorIs(t, err, queue.ErrConsumerNotFound)
	require.Zero(t, subjectCount(t, c.JetStream(), queue.StreamItems, queue.ItemSubject(runID)))

	items := cl.get("/runs/" + runID + "/items").JSON(t)["items"].([]any)
	require.Len(t, items, 20)
	for i, it := range items {
		want := "completed"
		if i >= 5 {
			want = "cancelled"
		}
		require.Equal(t, want, it.(map[string]any)["status"], "item %d", i)
	}

	again := cl.post("/runs/"+runID+"/cancel", "")
	require.Equal(t, http.StatusConflict, again.Status)
	require.EqualValues(t, 409, again.JSON(t)["code"])
	require.Equal(t, http.StatusOK, cl.do(http.MethodDelete, "/runs/"+runID, nil, nil).Status)
	require.Equal(t, http.StatusNotFound, cl.post("/runs/"+runID+"/cancel", "").Status)
}

// sseEvent is one server-sent event.
type sseEvent struct {
	ID, Event string
	Data      map[string]any
}

// readEvents reads server-sent events until the stream ends.
func readEvents(t *testing.T, cl *client, path string, first chan<- struct{}) []sseEvent {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t), http.MethodGet, cl.base+path, nil)
	require.NoError(t, err)
	resp, err := cl.hc.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	var out []sseEvent
	var cur sseEvent
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			out = append(out, cur)
			if len(out) == 1 && first != nil {
				close(first)
			}
			cur = sseEvent{}
		case strings.HasPrefix(line, "id: "):
			cur.ID = line[4:]
		case strings.HasPrefix(line, "event: "):
			cur.Event = line[7:]
		case strings.HasPrefix(line, "data: "):
			require.NoError(t, json.Unmarshal([]byte(line[6:]), &cur.Data))
		}
	}
	require.NoError(t, sc.Err())
	return out
}

// The event stream sends counts on every change and one event per item,
// then done with the final summary.
func TestEventsStreamToTheEnd(t *testing.T) {
	t.Parallel()
	c := startCoordinator(t, nil)
	gate := make(chan struct{})
	startWorker(t, c.NATSURL(), func(*stepflowv1.Item, uint64) action {
		<-gate
		return actEcho
	})
	cl := newClient(t, c)
	flowID := cl.storeFlow()
	const n = 40
	r := cl.uploadJSONL(flowID, "&wait=false&maxConcurrency=4", inputLines(n), nil)
	require.Equal(t, http.StatusOK, r.Status)
	runID := r.JSON(t)["runId"].(string)

	first := make(chan struct{})
	go func() {
		select {
		case <-first:
		case <-testCtx(t).Done():
		}
		close(gate) // the stream is open: let the items run
	}()
	events := readEvents(t, cl, "/runs/"+runID+"/events", first)

	require.Equal(t, "counts", events[0].Event)
	require.Equal(t, "running", events[0].Data["status"])
	require.EqualValues(t, 0, events[0].Data["items"].(map[string]any)["completed"])
	last := events[len(events)-1]
	require.Equal(t, "done", last.Event)
	require.Equal(t, "completed", last.Data["status"])
	require.EqualValues(t, n, last.Data["items"].(map[string]any)["completed"])

	seen := map[int]bool{}
	prev, counts := -1.0, 0
	for _, ev := range events {
		switch ev.Event {
		case "item":
			i := int(ev.Data["itemIndex"].(float64))
			require.False(t, seen[i], "item %d twice", i)
			seen[i] = true
			require.Equal(t, "completed", ev.Data["status"])
			require.Equal(t, "success", ev.Data["outcome"])
			require.NotEmpty(t, ev.ID)
		case "counts":
			counts++
			done := ev.Data["items"].(map[string]any)["completed"].(float64)
			require.GreaterOrEqual(t, done, prev, "counts never go back")
			prev = done
		}
	}
	require.Len(t, seen, n)
	require.GreaterOrEqual(t, counts, 2)

	// A finished run replays everything; Last-Event-ID resumes after an item.
	replay := readEvents(t, cl, "/runs/"+runID+"/events", nil)
	require.Equal(t, "done", replay[len(replay)-1].Event)
	items := 0
	var mid string
	for _, ev := range replay {
		if ev.Event == "item" {
			items++
			if items == 10 {
				mid = ev.ID
			}
		}
	}
	require.Equal(t, n, items)
	req, err := http.NewRequestWithContext(testCtx(t), http.MethodGet, cl.base+"/runs/"+runID+"/events", nil)
	require.NoError(t, err)
	req.Header.Set("Last-Event-ID", mid)
	resp, err := cl.hc.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	rest := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if sc.Text() == "event: item" {
			rest++
		}
	}
	require.Equal(t, n-10, rest)
}

// The error cases of the REST API, with upstream's envelope.
func TestErrors(t *testing.T) {
	t.Parallel()
	c := startCoordinator(t, func(cfg *coordinator.Config) {
		cfg.MaxBodyBytes = 1024
		cfg.MaxItemsPerRun = 5
		cfg.MaxConcurrentRuns = 1
		cfg.AuthToken = "s3cret"
		cfg.MaxDetailInputsBytes = 30
	})
	cl := newClient(t, c)

	// 401 without the token; the health check needs none.
	require.Equal(t, http.StatusOK, cl.get("/health").Status)
	unauth := cl.get("/runs")
	require.Equal(t, http.StatusUnauthorized, unauth.Status)
	require.EqualValues(t, 401, unauth.JSON(t)["code"])
	cl.token = "wrong"
	require.Equal(t, http.StatusUnauthorized, cl.get("/runs").Status)
	cl.token = "s3cret"
	require.Equal(t, http.StatusOK, cl.get("/runs").Status)
	// The scheme's name is case-insensitive (RFC 7235); another scheme
	// or no token is refused.
	cl.token = ""
	for authz, want := range map[string]int{
		"bearer s3cret": http.StatusOK, "BEARER  s3cret ": http.StatusOK, "Bearer s3cret": http.StatusOK,
		"Basic s3cret": http.StatusUnauthorized, "Bearer": http.StatusUnauthorized, "s3cret": http.StatusUnauthorized,
		"Bearers3cret": http.StatusUnauthorized,
	} {
		require.Equal(t, want, cl.do(http.MethodGet, "/runs", nil, map[string]string{"Authorization": authz}).Status, "Authorization: %s", authz)
	}
	cl.token = "s3cret"

	flowID := cl.storeFlow()
	const unknownRun = "0198c0de-0000-7000-8000-000000000000"
	unknownFlow := strings.Repeat("ab", 32)

	// 404
	nf := cl.get("/runs/" + unknownRun)
	require.Equal(t, http.StatusNotFound, nf.Status)
	require.Equal(t, map[string]any{"code": 404.0, "message": "Execution '" + unknownRun + "' not found"}, nf.JSON(t))
	require.Equal(t, http.StatusNotFound, cl.get("/runs/"+unknownRun+"/items").Status)
	require.Equal(t, http.StatusNotFound, cl.get("/runs/"+unknownRun+"/events").Status)
	require.Equal(t, http.StatusNotFound, cl.post("/runs/"+unknownRun+"/cancel", "").Status)
	require.Equal(t, http.StatusNotFound, cl.do(http.MethodDelete, "/runs/"+unknownRun, nil, nil).Status)
	ff := cl.get("/flows/" + unknownFlow)
	require.Equal(t, http.StatusNotFound, ff.Status)
	require.Equal(t, "Flow not found", ff.JSON(t)["message"])
	rf := cl.post("/runs", `{"flowId":"`+unknownFlow+`","input":[1]}`)
	require.Equal(t, http.StatusNotFound, rf.Status)
	require.Equal(t, "Workflow '"+unknownFlow+"' not found", rf.JSON(t)["message"])

	// 400
	for _, body := range []string{`{`, `[1]`, `{"flowId":"` + flowID + `"}`, `{"flowId":"` + flowID + `","input":{}}`,
		`{"flowId":"` + flowID + `","input":[1],"maxConcurrency":0}`, `{"input":[1]}`} {
		r := cl.post("/runs", body)
		require.Equal(t, http.StatusBadRequest, r.Status, body)
		require.EqualValues(t, 400, r.JSON(t)["code"], body)
	}
	require.Equal(t, http.StatusBadRequest, cl.post("/flows", `{"flow":`).Status)
	require.Equal(t, http.StatusBadRequest, cl.post("/flows", `{"flow":{"steps":"nope"}}`).Status)
	require.Equal(t, http.StatusBadRequest, cl.get("/runs/not.a.run").Status)
	require.Equal(t, http.StatusBadRequest, cl.get("/runs?status=sleeping").Status)

	// A malformed JSONL line rejects the whole upload, naming the line;
	// nothing is left behind.
	bad := cl.uploadJSONL(flowID, "&wait=false", []string{`{"a":1}`, `{"a":2}`, `{"a":`, `{"a":4}`}, nil)
	require.Equal(t, http.StatusBadRequest, bad.Status, "%s", bad.Body)
	require.Contains(t, bad.JSON(t)["message"], "line 3")
	require.Empty(t, cl.get("/runs").JSON(t)["runs"])
	require.Zero(t, streamMsgs(t, c.JetStream(), queue.StreamItems))

	// 413
	big := cl.post("/runs", `{"flowId":"`+flowID+`","input":["`+strings.Repeat("x", 2000)+`"]}`)
	require.Equal(t, http.StatusRequestEntityTooLarge, big.Status)
	require.EqualValues(t, 413, big.JSON(t)["code"])
	longLine := cl.uploadJSONL(flowID, "", []string{`"` + strings.Repeat("x", 2000) + `"`}, nil)
	require.Equal(t, http.StatusRequestEntityTooLarge, longLine.Status, "%s", longLine.Body)
	tooMany := cl.uploadJSONL(flowID, "", inputLines(6), nil)
	require.Equal(t, http.StatusRequestEntityTooLarge, tooMany.Status, "%s", tooMany.Body)
	require.Contains(t, tooMany.JSON(t)["message"], "item 5 is over the coordinator's limit of 5 items per run")
	require.Zero(t, streamMsgs(t, c.JetStream(), queue.StreamItems))

	// 429: one top-level run at a time (no worker: it stays running).
	first := cl.uploadJSONL(flowID, "&wait=false", inputLines(2), nil)
	require.Equal(t, http.StatusOK, first.Status)
	runID := first.JSON(t)["runId"].(string)
	details := cl.get("/runs/" + runID).JSON(t)
	require.Equal(t, true, details["inputsOmitted"], "46 bytes of inputs, more than MaxDetailInputsBytes")
	require.NotContains(t, details, "inputs")
	limited := cl.uploadJSONL(flowID, "&wait=false", inputLines(2), nil)
	require.Equal(t, http.StatusTooManyRequests, limited.Status)
	require.Equal(t, "5", limited.Header.Get("Retry-After"))
	require.EqualValues(t, 429, limited.JSON(t)["code"])

	// 409: deleting a running run.
	require.Equal(t, http.StatusConflict, cl.do(http.MethodDelete, "/runs/"+runID, nil, nil).Status)
	require.Equal(t, http.StatusOK, cl.post("/runs/"+runID+"/cancel", "").Status)

	// Invalid overrides do not fail the request: the run is created and
	// fails without items, like upstream.
	ov := cl.post("/runs", `{"flowId":"`+flowID+`","input":[1],"overrides":{"nope":{"value":{}}}}`)
	require.Equal(t, http.StatusOK, ov.Status, "%s", ov.Body)
	require.Equal(t, "failed", ov.JSON(t)["status"])
	require.NotContains(t, ov.JSON(t), "result")
	failed := cl.get("/runs/" + ov.JSON(t)["runId"].(string)).JSON(t)
	require.Contains(t, failed["error"], "nope")
}

// streamMsgs returns the messages a stream holds.
func streamMsgs(t testing.TB, js jetstream.JetStream, stream string) uint64 {
	t.Helper()
	s, err := js.Stream(testCtx(t), stream)
	require.NoError(t, err)
	info, err := s.Info(testCtx(t))
	require.NoError(t, err)
	return info.State.Msgs
}

// subjectCount returns the messages a stream holds on subject.
func subjectCount(t testing.TB, js jetstream.JetStream, stream, subject string) uint64 {
	t.Helper()
	s, err := js.Stream(testCtx(t), stream)
	require.NoError(t, err)
	info, err := s.Info(testCtx(t), jetstream.WithSubjectFilter(subject))
	require.NoError(t, err)
	return info.State.Subjects[subject]
}

// An item that keeps failing its deliveries becomes a failed item with a
// clear error once JetStream gives up on it; its message is removed.
func TestMaxDeliveriesFailsThePoisonItem(t *testing.T) {
	t.Parallel()
	c := startCoordinator(t, func(cfg *coordinator.Config) { cfg.RunMaxDeliver = 2 })
	startWorker(t, c.NATSURL(), func(it *stepflowv1.Item, _ uint64) action {
		if it.GetIndex() == 3 {
			return actNak
		}
		return actEcho
	})
	cl := newClient(t, c)
	flowID := cl.storeFlow()
	lines := inputLines(6)
	r := cl.uploadJSONL(flowID, "&wait=false", lines, nil)
	require.Equal(t, http.StatusOK, r.Status)
	runID := r.JSON(t)["runId"].(string)

	details := cl.waitStatus(runID, "failed")
	items := details["items"].(map[string]any)
	require.EqualValues(t, 5, items["completed"])
	require.EqualValues(t, 1, items["failed"])

	all := cl.get("/runs/" + runID + "/items").JSON(t)["items"].([]any)
	poison := all[3].(map[string]any)
	require.Equal(t, "failed", poison["status"])
	res := poison["result"].(map[string]any)
	require.Equal(t, "failed", res["outcome"])
	msg := res["error"].(map[string]any)["message"].(string)
	require.True(t, strings.HasPrefix(msg, "item 3 exceeded its maximum deliveries (2); last error: "), msg)
	for i, it := range all {
		if i != 3 {
			require.Equal(t, "completed", it.(map[string]any)["status"])
		}
	}
	waitFor(t, 10*time.Second, func() bool {
		return subjectCount(t, c.JetStream(), queue.StreamItems, queue.ItemSubject(runID)) == 0
	}, "the poison item removed from the work queue")
}

// Lifecycle: Stop before Start, Stop twice, the signal channels.
func TestLifecycle(t *testing.T) {
	t.Parallel()
	_, err := coordinator.New(coordinator.Config{})
	require.ErrorIs(t, err, coordinator.ErrInvalidConfig)
	_, err = coordinator.New(coordinator.Config{DataDir: t.TempDir(), Port: 70000})
	require.ErrorIs(t, err, coordinator.ErrInvalidConfig)

	early, err := coordinator.New(coordinator.Config{DataDir: t.TempDir()})
	require.NoError(t, err)
	require.NoError(t, early.Stop(context.Background()))
	require.NoError(t, early.Stop(context.Background()))
	require.ErrorIs(t, early.Start(testCtx(t)), coordinator.ErrStopped)
	<-early.Stopped()

	c, err := coordinator.New(coordinator.Config{DataDir: t.TempDir(), Host: "127.0.0.1", Logger: testLogger(t)})
	require.NoError(t, err)
	require.NoError(t, c.Start(testCtx(t)))
	require.NoError(t, c.Start(testCtx(t)), "Start again is a no-op")
	<-c.Started()
	require.NotZero(t, c.Port())
	require.True(t, strings.HasPrefix(c.NATSURL(), "nats://127.0.0.1:"), c.NATSURL())
	require.NoError(t, c.Stop(context.Background()))
	require.NoError(t, c.Stop(context.Background()))
	<-c.Stopped()

	cfg := coordinator.Config{DataDir: "x"}.WithDefaults()
	require.Equal(t, coordinator.DefaultMaxBodyBytes, int(cfg.MaxBodyBytes))
	require.Equal(t, coordinator.DefaultMaxConcurrentRuns, cfg.MaxConcurrentRuns)
	require.NoError(t, cfg.Validate())

}

// A failed item fails the run, not its siblings; a batch's synchronous
// response has no result (fetch the items).
func TestFailedItemsFailTheRunOnly(t *testing.T) {
	t.Parallel()
	c := startCoordinator(t, nil)
	startWorker(t, c.NATSURL(), func(it *stepflowv1.Item, _ uint64) action {
		if it.GetIndex()%5 == 0 {
			return actFail
		}
		return actEcho
	})
	cl := newClient(t, c)
	flowID := cl.storeFlow()
	r := cl.post("/runs", `{"flowId":"`+flowID+`","input":[0,1,2,3,4,5,6,7,8,9],"maxConcurrency":3}`)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	created := r.JSON(t)
	require.Equal(t, "failed", created["status"])
	require.EqualValues(t, 10, created["itemCount"])
	require.NotContains(t, created, "result")

	items := cl.get("/runs/" + created["runId"].(string)).JSON(t)["items"].(map[string]any)
	require.EqualValues(t, 8, items["completed"])
	require.EqualValues(t, 2, items["failed"])
	got := cl.itemsJSONL(created["runId"].(string))
	require.Len(t, got, 10)
	for i, line := range got {
		if i%5 == 0 {
			require.JSONEq(t, `{"outcome":"failed","error":{"code":500,"message":"boom"}}`, line)
		} else {
			require.JSONEq(t, echoResult(fmt.Sprint(i)), line)
		}
	}
	require.Len(t, cl.get("/runs?status=failed").JSON(t)["runs"], 1)
}

// A run's consumer exists before its record: workers start pulling when
// they see the record, and one that finds no consumer backs off (which
// cost a synchronous one-item run 100 ms). Both ways of submitting: a
// JSON request (the consumer is created while the inputs are spooled,
// with the concurrency its item count gives) and a JSONL upload; and a
// rejected upload leaves no consumer behind.
func TestConsumerBeforeRecord(t *testing.T) {
	t.Parallel()
	c := startCoordinator(t, func(cfg *coordinator.Config) { cfg.MaxItemsPerRun = 5 })
	cl := newClient(t, c)
	flowID := cl.storeFlow()
	store, err := queue.OpenRunStore(testCtx(t), c.JetStream())
	require.NoError(t, err)
	rw, err := store.Watch(testCtx(t), queue.WatchOptions{UpdatesOnly: true})
	require.NoError(t, err)
	defer func() { require.NoError(t, rw.Stop()) }()
	seen := map[string]bool{}
	firstSight := func() (string, error) {
		for ev := range rw.Events() {
			if ev.Ready || ev.Record == nil || seen[ev.RunID] {
				continue // later updates of a run seen before
			}
			seen[ev.RunID] = true
			_, err := queue.RunConsumerHandle(testCtx(t), c.JetStream(), ev.RunID)
			return ev.RunID, err
		}
		return "", errors.New("watch ended")
	}

	r := cl.post("/runs", `{"flowId":"`+flowID+`","input":[1,2,3],"wait":false}`)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	runID, err := firstSight()
	require.NoError(t, err, "the consumer exists when the record appears")
	require.Equal(t, r.JSON(t)["runId"], runID)
	cons, err := queue.RunConsumerHandle(testCtx(t), c.JetStream(), runID)
	require.NoError(t, err)
	require.Equal(t, 3, cons.CachedInfo().Config.MaxAckPending, "the item count")

	r = cl.post("/runs", `{"flowId":"`+flowID+`","input":[1,2],"maxConcurrency":7,"wait":false}`)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	runID, err = firstSight()
	require.NoError(t, err)
	cons, err = queue.RunConsumerHandle(testCtx(t), c.JetStream(), runID)
	require.NoError(t, err)
	require.Equal(t, 7, cons.CachedInfo().Config.MaxAckPending)

	r = cl.uploadJSONL(flowID, "&wait=false", inputLines(4), nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	runID, err = firstSight()
	require.NoError(t, err)
	cons, err = queue.RunConsumerHandle(testCtx(t), c.JetStream(), runID)
	require.NoError(t, err)
	require.Equal(t, 4, cons.CachedInfo().Config.MaxAckPending)

	// Rejected: a run whose consumer was being created while its inputs
	// were read (one too many) leaves no consumer.
	before := consumerCount(t, c.JetStream())
	big := cl.post("/runs", `{"flowId":"`+flowID+`","input":[1,2,3,4,5,6]}`)
	require.Equal(t, http.StatusRequestEntityTooLarge, big.Status, "%s", big.Body)
	require.Equal(t, before, consumerCount(t, c.JetStream()))
}

// consumerCount returns the number of consumers on STEPFLOW_ITEMS.
func consumerCount(t testing.TB, js jetstream.JetStream) int {
	t.Helper()
	s, err := js.Stream(testCtx(t), queue.StreamItems)
	require.NoError(t, err)
	info, err := s.Info(testCtx(t))
	require.NoError(t, err)
	return info.State.Consumers
}
