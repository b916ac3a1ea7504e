package coordinator_test

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/coordinator"
	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// The rows of docs/reliability.md ("Bad input") that the REST API answers:
// each test checks the status and the exact message, and that nothing is
// left behind (no run, no item on the work queue).

const unknownRunID = "0198c0de-0000-7000-8000-000000000000"

// requireError checks an error envelope.
func requireError(t *testing.T, r response, status int, msg string) {
	t.Helper()
	require.Equal(t, status, r.Status, "%s", r.Body)
	require.Equal(t, map[string]any{"code": float64(status), "message": msg}, r.JSON(t))
}

// diagnostic is one entry of POST /flows' diagnostics.
type diagnostic struct{ level, formatted, path string }

func diagnostics(t *testing.T, r response) (stored bool, fatal []diagnostic) {
	t.Helper()
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	m := r.JSON(t)
	d := m["diagnostics"].(map[string]any)
	for _, e := range d["diagnostics"].([]any) {
		e := e.(map[string]any)
		if e["level"] == "fatal" {
			fatal = append(fatal, diagnostic{e["level"].(string), e["formatted"].(string), e["path"].(string)})
		}
	}
	require.EqualValues(t, len(fatal), d["numFatal"])
	return m["stored"].(bool), fatal
}

// Bad flows: a decoding problem is a 400 naming the JSON path; a
// validation problem is upstream's 200 with "stored": false and the
// diagnostics naming the step and the path (the flow is not stored, so
// no run can use it: 404); a flow over --max-flow-bytes is a 413; a blob
// that is not a valid flow is refused when a run names it.
func TestBadFlows(t *testing.T) {
	t.Parallel()
	c := startCoordinator(t, func(cfg *coordinator.Config) { cfg.MaxFlowBytes = 2048 })
	cl := newClient(t, c)
	step := func(id, input string) string {
		return `{"id":"` + id + `","component":"/builtin/put_blob","input":` + input + `}`
	}

	requireError(t, cl.post("/flows", `{"flow": {"name":"x", "steps": [}`), http.StatusBadRequest,
		"malformed JSON body: 1:33: invalid character '}' looking for beginning of value")
	requireError(t, cl.post("/flows", `{"flow":{"steps":[`+step("a", `{"data":{"$step":42}}`)+`]}}`), http.StatusBadRequest,
		"invalid flow: $.steps[0].input.data.$step: invalid expression: $step must be a string step id, got number")
	requireError(t, cl.post("/flows", `{"flow":{"steps":[`+step("a", `{"data":{"$input":"$..[["}}`)+`]}}`), http.StatusBadRequest,
		`invalid flow: $.steps[0].input.data.$input: invalid expression: invalid JSON path "$..[[": unclosed bracket at position 3`)
	requireError(t, cl.post("/flows", `{"flow":{"steps":{"a":1}}}`), http.StatusBadRequest,
		"invalid flow: $.steps: invalid type for `steps`: expected an array of steps, got object")

	unknown := cl.post("/flows", `{"flow":{"name":"u","steps":[`+step("a", `{"data":{"$step":"nosuch"}}`)+`],"output":{"$step":"a"}}}`)
	stored, fatal := diagnostics(t, unknown)
	require.False(t, stored)
	require.Equal(t, []diagnostic{{"fatal", "Step 'a' references undefined step 'nosuch'", "$.steps[0].input.data"}}, fatal)
	unknownID := unknown.JSON(t)["flowId"].(string)
	requireError(t, cl.post("/runs", `{"flowId":"`+unknownID+`","input":[1]}`), http.StatusNotFound,
		"Workflow '"+unknownID+"' not found")

	cycle := cl.post("/flows", `{"flow":{"name":"c","steps":[`+step("a", `{"data":{"$step":"b"}}`)+`,`+step("b", `{"data":{"$step":"a"}}`)+`],"output":{"$step":"b"}}}`)
	stored, fatal = diagnostics(t, cycle)
	require.False(t, stored)
	require.Equal(t, []diagnostic{
		{"fatal", "Step 'a' references step 'b', which is defined later (steps may only reference earlier steps)", "$.steps[0].input.data"},
		{"fatal", "Steps form a dependency cycle: 'a' -> 'b' -> 'a'", "$.steps[0]"},
	}, fatal)

	// 2048 bytes of compact JSON is the limit: one more is refused.
	flowOfSize := func(n int) string {
		f := `{"name":"big","steps":[],"output":"`
		return f + strings.Repeat("x", n-len(f)-2) + `"}`
	}
	require.Len(t, flowOfSize(2048), 2048)
	_, fatal = diagnostics(t, cl.post("/flows", `{"flow":`+flowOfSize(2048)+`}`))
	require.Empty(t, fatal)
	requireError(t, cl.post("/flows", `{"flow":`+flowOfSize(2049)+`}`), http.StatusRequestEntityTooLarge,
		"the flow is 2049 bytes, more than the coordinator's limit of 2048 bytes (--max-flow-bytes)")

	// A run may name a flow stored as a blob (put_blob from a component):
	// it is checked like POST /flows would.
	ctx := testCtx(t)
	blobs, err := queue.OpenBlobStore(ctx, c.JetStream())
	require.NoError(t, err)
	putBlob := func(text string) string {
		v, err := value.ParseString(text)
		require.NoError(t, err)
		id, err := blobs.Put(ctx, blob.KindFlow, v)
		require.NoError(t, err)
		return id
	}
	cycleBlob := putBlob(`{"name":"c","steps":[` + step("a", `{"data":{"$step":"b"}}`) + `,` + step("b", `{"data":{"$step":"a"}}`) + `]}`)
	requireError(t, cl.post("/runs", `{"flowId":"`+cycleBlob+`","input":[1]}`), http.StatusBadRequest,
		"blob "+cycleBlob+" is not a valid flow: Step 'a' references step 'b', which is defined later (steps may only reference earlier steps) ($.steps[0].input.data); "+
			"Steps form a dependency cycle: 'a' -> 'b' -> 'a' ($.steps[0])")
	shapeBlob := putBlob(`{"steps":[` + step("a", `{"data":{"$step":42}}`) + `]}`)
	requireError(t, cl.post("/runs", `{"flowId":"`+shapeBlob+`","input":[1]}`), http.StatusBadRequest,
		"blob "+shapeBlob+" is not a flow: $.steps[0].input.data.$step: invalid expression: $step must be a string step id, got number")
	bigBlob := putBlob(flowOfSize(2049))
	requireError(t, cl.post("/runs", `{"flowId":"`+bigBlob+`","input":[1]}`), http.StatusRequestEntityTooLarge,
		"the flow is 2049 bytes, more than the coordinator's limit of 2048 bytes (--max-flow-bytes)")

	require.Empty(t, cl.get("/runs").JSON(t)["runs"], "no run was created")
	require.Zero(t, streamMsgs(t, c.JetStream(), queue.StreamItems))
}

// Bad inputs over the API reject the whole upload before any run exists:
// a malformed JSONL line (naming its line, column and item), a line over
// --max-body-bytes, an item over --max-items-per-run (naming the first
// item over the limit). Nothing of a rejected upload is published (it is
// only spooled); a run accepted before is untouched and completes.
func TestBadInputsRejectTheUploadOnly(t *testing.T) {
	t.Parallel()
	c := startCoordinator(t, func(cfg *coordinator.Config) {
		cfg.MaxBodyBytes = 400
		cfg.MaxItemsPerRun = 5
	})
	cl := newClient(t, c)
	flowID := cl.storeFlow()

	// A run accepted earlier; no worker yet, so its 3 items wait.
	earlier := cl.uploadJSONL(flowID, "&wait=false", inputLines(3), nil)
	require.Equal(t, http.StatusOK, earlier.Status, "%s", earlier.Body)
	earlierID := earlier.JSON(t)["runId"].(string)
	itemsOf := func(runID string) uint64 {
		return subjectCount(t, c.JetStream(), queue.StreamItems, queue.ItemSubject(runID))
	}
	// Its publisher puts them on the queue once the run exists.
	waitFor(t, 10*time.Second, func() bool { return itemsOf(earlierID) == 3 }, "the earlier run's items published")

	for _, tc := range []struct {
		name   string
		body   []string
		query  string
		status int
		msg    string
	}{
		{"malformed line", []string{`{"a":1}`, `{"a":2}`, `{"a":`, `{"a":4}`}, "", http.StatusBadRequest,
			"malformed input: line 3, column 5: invalid JSON: unexpected end of JSON input (item 2); the upload was rejected and no run was created"},
		{"trailing garbage", []string{`{"a":1} x`}, "", http.StatusBadRequest,
			"malformed input: line 1, column 9: invalid JSON: invalid character 'x' after top-level value (item 0); the upload was rejected and no run was created"},
		{"blank line", []string{`{"a":1}`, ``, `{"a":2}`}, "", http.StatusBadRequest,
			"malformed input: line 2: blank line (item 1); the upload was rejected and no run was created"},
		{"line too long", []string{`1`, `"` + strings.Repeat("x", 500) + `"`}, "", http.StatusRequestEntityTooLarge,
			"input line 2 (item 1) is longer than 400 bytes (the coordinator's --max-body-bytes); the upload was rejected and no run was created"},
		{"too many items", inputLines(7), "", http.StatusRequestEntityTooLarge,
			"item 5 is over the coordinator's limit of 5 items per run (--max-items-per-run); the upload was rejected and no run was created"},
		{"too many items, wait", inputLines(6), "&wait=true", http.StatusRequestEntityTooLarge,
			"item 5 is over the coordinator's limit of 5 items per run (--max-items-per-run); the upload was rejected and no run was created"},
	} {
		r := cl.uploadJSONL(flowID, "&wait=false"+tc.query, tc.body, nil)
		requireError(t, r, tc.status, tc.msg)
		runs := cl.get("/runs").JSON(t)["runs"].([]any)
		require.Len(t, runs, 1, "%s: no run was created", tc.name)
		require.Equal(t, uint64(3), streamMsgs(t, c.JetStream(), queue.StreamItems), "%s: only the earlier run's items are queued", tc.name)
		require.Equal(t, 1, consumers(t, c), "%s: only the earlier run has a consumer", tc.name)
	}
	// The same limit applies to a JSON body.
	requireError(t, cl.post("/runs", `{"flowId":"`+flowID+`","input":[1,2,3,4,5,6]}`), http.StatusRequestEntityTooLarge,
		"item 5 is over the coordinator's limit of 5 items per run (--max-items-per-run); the upload was rejected and no run was created")
	// Exactly the limit is accepted.
	atLimit := cl.uploadJSONL(flowID, "&wait=false", []string{"1", "2", "3", "4", "5"}, nil)
	require.Equal(t, http.StatusOK, atLimit.Status, "%s", atLimit.Body)
	atLimitID := atLimit.JSON(t)["runId"].(string)

	startWorker(t, c.NATSURL(), nil)
	cl.waitStatus(earlierID, "completed")
	cl.waitStatus(atLimitID, "completed")
	lines := inputLines(3)
	want := make([]string, len(lines))
	for i, l := range lines {
		want[i] = echoResult(l)
	}
	require.Equal(t, want, cl.itemsJSONL(earlierID))
	require.Zero(t, streamMsgs(t, c.JetStream(), queue.StreamItems))
}

// Malformed requests, unknown ids, over-large bodies, too many runs and
// invalid concurrency, with their exact messages.
func TestBadRequests(t *testing.T) {
	t.Parallel()
	c := startCoordinator(t, func(cfg *coordinator.Config) {
		cfg.MaxBodyBytes = 1024
		cfg.MaxConcurrentRuns = 1
		cfg.MaxRunConcurrency = 100
	})
	cl := newClient(t, c)
	flowID := cl.storeFlow()

	// Malformed JSON bodies name the line and column.
	requireError(t, cl.post("/runs", "{\n  \"flowId\": 12,\n"), http.StatusBadRequest,
		"malformed JSON body: 3:1: expected string object key")
	requireError(t, cl.post("/runs", `{"flowId" "x"}`), http.StatusBadRequest,
		"malformed JSON body: 1:11: expected ':' after object key")
	requireError(t, cl.post("/runs", `[1]`), http.StatusBadRequest, "the request body must be a JSON object, not array")
	// What a parser would change silently is refused with its place: a
	// repeated key (upstream's serde keeps the last), invalid UTF-8, an
	// unpaired surrogate.
	requireError(t, cl.post("/runs", `{"flowId":"`+flowID+`","input":[1],`+"\n"+`"input":[2]}`), http.StatusBadRequest,
		`malformed JSON body: 2:1: duplicate key "input" in object`)
	requireError(t, cl.post("/runs", `{"flowId":"`+flowID+`","input":["a`+"\xff"+`"]}`), http.StatusBadRequest,
		"malformed JSON body: 1:"+strconv.Itoa(len(`{"flowId":"`+flowID+`","input":["a`)+1)+": invalid UTF-8 in string")
	requireError(t, cl.post("/runs", `{"flowId":"`+flowID+`","input":["\ud800"]}`), http.StatusBadRequest,
		"malformed JSON body: 1:"+strconv.Itoa(len(`{"flowId":"`+flowID+`","input":["`)+1)+": unpaired UTF-16 surrogate escape in string")
	// A JSONL upload names the line and column (line N is item N-1).
	requireError(t, cl.uploadJSONL(flowID, "", []string{`{"a":1}`, `{"a":1,"a":2}`}, nil), http.StatusBadRequest,
		`malformed input: line 2, column 8: invalid JSON: duplicate key "a" in object (item 1); the upload was rejected and no run was created`)
	requireError(t, cl.post("/runs", `{"flowId":"`+flowID+`"}`), http.StatusBadRequest, `"input" must be an array with one input per item`)
	requireError(t, cl.post("/flows", `{"flow":`), http.StatusBadRequest, "malformed JSON body: 1:9: unexpected end of JSON input")

	// Over-large JSON bodies: 413 naming the limit.
	requireError(t, cl.post("/runs", `{"flowId":"`+flowID+`","input":["`+strings.Repeat("x", 2000)+`"]}`), http.StatusRequestEntityTooLarge,
		"request body larger than 1024 bytes (the coordinator's --max-body-bytes)")
	requireError(t, cl.post("/flows", `{"flow":{"name":"`+strings.Repeat("x", 2000)+`"}}`), http.StatusRequestEntityTooLarge,
		"request body larger than 1024 bytes (the coordinator's --max-body-bytes)")

	// Invalid concurrency: JSON, the JSONL query and PATCH agree.
	for _, tc := range []struct{ json, query, msg string }{
		{`0`, `0`, "maxConcurrency must be an integer of at least 1, not 0"},
		{`-3`, `-3`, "maxConcurrency must be an integer of at least 1, not -3"},
		{`1.5`, `1.5`, "maxConcurrency must be an integer of at least 1, not 1.5"},
		{`"4"`, `four`, `maxConcurrency must be an integer of at least 1, not "four"`},
		{`4294967297`, `4294967297`, "maxConcurrency must be an integer of at least 1, not 4294967297"},
		{`101`, `101`, "maxConcurrency 101 is more than the coordinator's limit of 100 (--max-run-concurrency)"},
	} {
		jsonMsg := tc.msg
		if tc.json == `"4"` {
			jsonMsg = `maxConcurrency must be an integer of at least 1, not "4"`
		}
		requireError(t, cl.post("/runs", `{"flowId":"`+flowID+`","input":[1],"maxConcurrency":`+tc.json+`}`), http.StatusBadRequest, jsonMsg)
		requireError(t, cl.uploadJSONL(flowID, "&maxConcurrency="+tc.query, []string{"1"}, nil), http.StatusBadRequest, tc.msg)
	}
	require.Empty(t, cl.get("/runs").JSON(t)["runs"])

	// 429 with Retry-After once --max-active-runs runs are in progress
	// (no worker: the first stays running).
	first := cl.uploadJSONL(flowID, "&wait=false&maxConcurrency=2", inputLines(2), nil)
	require.Equal(t, http.StatusOK, first.Status, "%s", first.Body)
	runID := first.JSON(t)["runId"].(string)
	limited := cl.uploadJSONL(flowID, "&wait=false", inputLines(2), nil)
	requireError(t, limited, http.StatusTooManyRequests,
		"1 runs are in progress, the coordinator's limit (--max-active-runs); retry when one has finished")
	require.Equal(t, "5", limited.Header.Get("Retry-After"))
	waitFor(t, 10*time.Second, func() bool { return streamMsgs(t, c.JetStream(), queue.StreamItems) == 2 }, "the first run's items published")
	require.Empty(t, cl.get("/runs?status=running").JSON(t)["runs"].([]any)[1:], "the refused run does not exist")

	patch := func(id, body string) response {
		return cl.do(http.MethodPatch, "/runs/"+id, strings.NewReader(body), nil)
	}
	for _, tc := range []struct{ body, msg string }{
		{`{"maxConcurrency":0}`, "maxConcurrency must be an integer of at least 1, not 0"},
		{`{"maxConcurrency":-1}`, "maxConcurrency must be an integer of at least 1, not -1"},
		{`{"maxConcurrency":2.5}`, "maxConcurrency must be an integer of at least 1, not 2.5"},
		{`{"maxConcurrency":"3"}`, `maxConcurrency must be an integer of at least 1, not "3"`},
		{`{"maxConcurrency":101}`, "maxConcurrency 101 is more than the coordinator's limit of 100 (--max-run-concurrency)"},
		{`{}`, `missing "maxConcurrency"`},
		{`{"maxConcurrency":3`, "malformed JSON body: 1:20: unexpected end of JSON input in object"},
	} {
		requireError(t, patch(runID, tc.body), http.StatusBadRequest, tc.msg)
	}
	require.EqualValues(t, 2, cl.get("/runs/" + runID).JSON(t)["maxConcurrency"], "unchanged")

	// 404 on every route that takes an id.
	notFound := "Execution '" + unknownRunID + "' not found"
	for _, r := range cl.everyRunRoute(unknownRunID) {
		requireError(t, r, http.StatusNotFound, notFound)
	}
	unknownFlow := strings.Repeat("ab", 32)
	requireError(t, cl.get("/flows/"+unknownFlow), http.StatusNotFound, "Flow not found")
	requireError(t, cl.post("/runs", `{"flowId":"`+unknownFlow+`","input":[1]}`), http.StatusNotFound, "Workflow '"+unknownFlow+"' not found")
	requireError(t, cl.uploadJSONL(unknownFlow, "", []string{"1"}, nil), http.StatusNotFound, "Workflow '"+unknownFlow+"' not found")
	// 400 on every route that takes an id, for an id that is not a UUID
	// (upstream's answer to a bad UUID in the path).
	for _, bad := range []string{"not-a-uuid", "not.a.run", "0198c0de-0000-7000-8000-00000000000", "0198c0de-0000-7000-8000-000000000000x"} {
		msg := "invalid run id '" + bad + "' (not a UUID: run ids look like 0198c0de-0000-7000-8000-000000000000)"
		for _, r := range cl.everyRunRoute(bad) {
			requireError(t, r, http.StatusBadRequest, msg)
		}
	}
	long := strings.Repeat("x", 200)
	requireError(t, cl.get("/runs/"+long), http.StatusBadRequest,
		"invalid run id '"+long[:64]+"…' (not a UUID: run ids look like 0198c0de-0000-7000-8000-000000000000)")
	// A UUID in another spelling names the same run.
	upper := cl.get("/runs/" + strings.ToUpper(runID))
	require.Equal(t, http.StatusOK, upper.Status, "%s", upper.Body)
	require.Equal(t, runID, upper.JSON(t)["runId"])
	require.Len(t, cl.get("/runs").JSON(t)["runs"], 1)
}

// consumers returns the number of consumers on the work queue.
func consumers(t testing.TB, c *coordinator.Coordinator) int {
	t.Helper()
	s, err := c.JetStream().Stream(testCtx(t), queue.StreamItems)
	require.NoError(t, err)
	info, err := s.Info(testCtx(t))
	require.NoError(t, err)
	return info.State.Consumers
}

// runs.submit over NATS checks concurrency like POST /runs, except that a
// child run's concurrency (asked by a component, which cannot fix its
// request) is capped at --max-run-concurrency instead of refused.
func TestNATSAPIConcurrency(t *testing.T) {
	t.Parallel()
	c := startCoordinator(t, func(cfg *coordinator.Config) { cfg.MaxRunConcurrency = 100 })
	cl := newClient(t, c)
	flowID := cl.storeFlow()
	parent := cl.uploadJSONL(flowID, "&wait=false", inputLines(1), nil)
	require.Equal(t, http.StatusOK, parent.Status, "%s", parent.Body)
	parentID := parent.JSON(t)["runId"].(string)

	nc, err := nats.Connect(c.NATSURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	for conc, msg := range map[string]string{
		"0":   "maxConcurrency must be an integer of at least 1, not 0",
		"2.5": "maxConcurrency must be an integer of at least 1, not 2.5",
		"101": "maxConcurrency 101 is more than the coordinator's limit of 100 (--max-run-concurrency)",
	} {
		got := natsRequest(t, nc, queue.SubjectRunsSubmit, `{"flowId":"`+flowID+`","inputs":[1],"maxConcurrency":`+conc+`}`)
		require.Equal(t, map[string]any{"error": map[string]any{"code": -32602.0, "message": msg}}, got, conc)
	}
	child := natsRequest(t, nc, queue.SubjectRunsSubmit,
		`{"flowId":"`+flowID+`","inputs":[1,2],"maxConcurrency":5000,"parentRunId":"`+parentID+`"}`)
	require.Zero(t, apiError(child), "%v", child)
	require.EqualValues(t, 100, cl.get("/runs/" + child["runId"].(string)).JSON(t)["maxConcurrency"])
}

// everyRunRoute calls every route that takes a run id with runID and
// returns the answers.
func (c *client) everyRunRoute(runID string) []response {
	var out []response
	for _, rt := range []struct{ method, path, body string }{
		{http.MethodGet, "/runs/" + runID, ""},
		{http.MethodPatch, "/runs/" + runID, `{"maxConcurrency":3}`},
		{http.MethodDelete, "/runs/" + runID, ""},
		{http.MethodPost, "/runs/" + runID + "/cancel", ""},
		{http.MethodGet, "/runs/" + runID + "/items", ""},
		{http.MethodGet, "/runs/" + runID + "/steps", ""},
		{http.MethodGet, "/runs/" + runID + "/flow", ""},
		{http.MethodGet, "/runs/" + runID + "/events", ""},
	} {
		if rt.body != "" {
			out = append(out, c.do(rt.method, rt.path, strings.NewReader(rt.body), nil))
		} else {
			out = append(out, c.do(rt.method, rt.path, nil, nil))
		}
	}
	return out
}
