package coordinator_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/coordinator"
)

// browserPages are the routes Handler registers that are not in the
// OpenAPI document: pages for people (the runs page and its sign-in,
// Swagger UI) and the catch-all 404. Every other route must be.
var browserPages = []string{
	"GET /ui/", "GET /ui", "GET /ui/login", "POST /ui/login", "POST /ui/logout",
	"GET /swagger-ui/", "GET /swagger-ui",
	"/",
}

// openAPIDoc is the part of an OpenAPI document the tests read.
type openAPIDoc struct {
	OpenAPI string `json:"openapi"`
	Info    struct {
		Version string `json:"version"`
	} `json:"info"`
	Paths map[string]map[string]openAPIOp `json:"paths"`
}

type openAPIOp struct {
	OperationID string                     `json:"operationId"`
	Security    *[]any                     `json:"security"`
	Parameters  []map[string]any           `json:"parameters"`
	Responses   map[string]openAPIResponse `json:"responses"`
}

type openAPIResponse struct {
	Ref     string         `json:"$ref"`
	Content map[string]any `json:"content"`
}

// public reports whether an operation is served without the token.
func (o openAPIOp) public() bool { return o.Security != nil && len(*o.Security) == 0 }

// fetchOpenAPI reads the document a coordinator serves, without a token.
func fetchOpenAPI(t *testing.T, c *coordinator.Coordinator) (openAPIDoc, map[string]any) {
	t.Helper()
	cl := newClient(t, c)
	r := cl.get("/openapi.json")
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	require.Equal(t, "application/json", r.Header.Get("Content-Type"))
	require.Equal(t, "*", r.Header.Get("Access-Control-Allow-Origin"))
	var doc openAPIDoc
	require.NoError(t, json.Unmarshal(r.Body, &doc))
	var raw map[string]any
	require.NoError(t, json.Unmarshal(r.Body, &raw))
	return doc, raw
}

// operation returns the document's operation for a route pattern
// ("METHOD /path/{param}").
func (d openAPIDoc) operation(pattern string) (openAPIOp, bool) {
	method, path, _ := strings.Cut(pattern, " ")
	op, ok := d.Paths[path][strings.ToLower(method)]
	return op, ok
}

// responseContent returns the media types of an operation's response
// (following a $ref to components.responses).
func responseContent(raw map[string]any, r openAPIResponse) map[string]any {
	if r.Ref == "" {
		return r.Content
	}
	name := strings.TrimPrefix(r.Ref, "#/components/responses/")
	resp, _ := raw["components"].(map[string]any)["responses"].(map[string]any)[name].(map[string]any)
	content, _ := resp["content"].(map[string]any)
	return content
}

// apiRoutes returns the patterns Handler registers, less browserPages
// (checking that each of those is registered, so the list stays true).
func apiRoutes(t *testing.T, c *coordinator.Coordinator) []string {
	t.Helper()
	all := c.RoutePatterns()
	for _, p := range browserPages {
		require.Contains(t, all, p, "browserPages lists a route Handler no longer registers")
	}
	var out []string
	for _, p := range all {
		if !slices.Contains(browserPages, p) {
			require.Contains(t, p, " ", "route %q has no method: document it or list it in browserPages", p)
			out = append(out, p)
		}
	}
	return out
}

// TestOpenAPIDocumentsEveryRoute: every route Handler registers (but the
// browser pages) is an operation of the OpenAPI document the coordinator
// serves, and every operation of the document is a registered route; the
// document is well formed (OpenAPI 3, our API version, unique operation
// ids, path parameters declared, every $ref resolves).
func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	c := startCoordinator(t, func(cfg *coordinator.Config) { cfg.AuthToken = "openapi-s3cret" })
	doc, raw := fetchOpenAPI(t, c) // without the token: the document is public
	assert.True(t, strings.HasPrefix(doc.OpenAPI, "3."), "openapi %q", doc.OpenAPI)
	assert.Equal(t, coordinator.APIVersion, doc.Info.Version)

	routes := apiRoutes(t, c)
	for _, p := range routes {
		_, ok := doc.operation(p)
		assert.True(t, ok, "route %q is not in openapi.json", p)
	}
	ids := map[string]string{}
	pathParam := regexp.MustCompile(`\{([^}]+)\}`)
	for path, ops := range doc.Paths {
		for method, op := range ops {
			pattern := strings.ToUpper(method) + " " + path
			assert.Contains(t, routes, pattern, "openapi.json documents %q, which the coordinator does not serve", pattern)
			require.NotEmpty(t, op.OperationID, pattern)
			if prev, dup := ids[op.OperationID]; dup {
				t.Errorf("operationId %q of %s is also %s's", op.OperationID, pattern, prev)
			}
			ids[op.OperationID] = pattern
			assert.NotEmpty(t, op.Responses, pattern)
			for _, m := range pathParam.FindAllStringSubmatch(path, -1) {
				declared := slices.ContainsFunc(op.Parameters, func(p map[string]any) bool {
					return p["in"] == "path" && p["name"] == m[1] && p["required"] == true
				})
				assert.True(t, declared, "%s: path parameter %s is not declared", pattern, m[1])
			}
		}
	}

	// Every $ref points at something in the document, and every
	// component is used.
	used := map[string]bool{}
	var walk func(v any)
	walk = func(v any) {
		switch t2 := v.(type) {
		case map[string]any:
			if ref, ok := t2["$ref"].(string); ok {
				used[ref] = true
				var at any = raw
				for _, seg := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
					m, _ := at.(map[string]any)
					at = m[seg]
				}
				assert.NotNil(t, at, "$ref %q does not resolve", ref)
			}
			for _, x := range t2 {
				walk(x)
			}
		case []any:
			for _, x := range t2 {
				walk(x)
			}
		}
	}
	walk(raw)
	components := raw["components"].(map[string]any)
	for _, kind := range []string{"schemas", "responses"} {
		for name := range components[kind].(map[string]any) {
			assert.True(t, used["#/components/"+kind+"/"+name], "components.%s.%s is never referenced", kind, name)
		}
	}
}

// statusRecorder sends requests to a coordinator and records, for each
// route pattern, the statuses and content types answered.
type statusRecorder struct {
	t        *testing.T
	base     string
	hc       *http.Client
	mux      *http.ServeMux // the coordinator's patterns, to name a request's route
	seen     map[string]map[int][]string
	bodies   []answer // the JSON bodies answered
	requests []answer // the JSON bodies of the requests that succeeded
	token    string
	cookie   *http.Cookie
}

func newStatusRecorder(t *testing.T, c *coordinator.Coordinator, token string) *statusRecorder {
	mux := http.NewServeMux()
	for _, p := range c.RoutePatterns() {
		mux.Handle(p, http.NotFoundHandler())
	}
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &statusRecorder{t: t, base: c.URL(), mux: mux, token: token, seen: map[string]map[int][]string{},
		hc: &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// auth says how a request authenticates.
type auth int

const (
	withToken auth = iota
	noAuth
	cookieOnly // the runs page's session cookie, without X-Stepflow-UI
)

// do sends a request, records its route's status and content type, and
// returns the status and body.
func (s *statusRecorder) do(a auth, method, path, body string, header map[string]string) (int, []byte) {
	s.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(testCtx(s.t), method, s.base+path, rd)
	require.NoError(s.t, err)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	switch a {
	case withToken:
		req.Header.Set("Authorization", "Bearer "+s.token)
	case cookieOnly:
		req.AddCookie(s.cookie)
	}
	_, pattern := s.mux.Handler(req)
	require.NotEqual(s.t, "/", pattern, "%s %s reaches no route", method, path)
	resp, err := s.hc.Do(req)
	require.NoError(s.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(s.t, err)
	if s.seen[pattern] == nil {
		s.seen[pattern] = map[int][]string{}
	}
	mt := ""
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		mt, _, err = mime.ParseMediaType(ct)
		require.NoError(s.t, err, ct)
	}
	s.seen[pattern][resp.StatusCode] = append(s.seen[pattern][resp.StatusCode], mt+" ← "+method+" "+path)
	if mt == "application/json" {
		s.bodies = append(s.bodies, answer{pattern: pattern, status: resp.StatusCode, request: method + " " + path, body: b})
	}
	if resp.StatusCode/100 == 2 && body != "" && req.Header.Get("Content-Type") == "application/json" {
		s.requests = append(s.requests, answer{pattern: pattern, status: resp.StatusCode, request: method + " " + path, body: []byte(body)})
	}
	return resp.StatusCode, b
}

// answer is a JSON response to a request of a route.
type answer struct {
	pattern, request string
	status           int
	body             []byte
}

// expect sends a request that must answer want.
func (s *statusRecorder) expect(want int, a auth, method, path, body string, header map[string]string) []byte {
	s.t.Helper()
	got, b := s.do(a, method, path, body, header)
	require.Equal(s.t, want, got, "%s %s: %s", method, path, b)
	return b
}

// concrete fills a pattern's path parameters.
func concrete(path string) string {
	path = strings.ReplaceAll(path, "{runId}", uuid.NewString())
	return strings.ReplaceAll(path, "{flowId}", strings.Repeat("ab", 32))
}

// TestOpenAPIDocumentsEveryStatus exercises every route of a real
// coordinator (with a token) with requests that succeed and that fail
// (no token, a session cookie without the CSRF header, unknown and
// malformed ids, malformed bodies, conflicts, an oversized body, too many
// runs) and checks that every status answered, and the media type it
// came with, is documented for that operation in openapi.json, and that
// every JSON body matches the documented schema with no undocumented
// field (checkBodies). Every operation must have answered at least one
// 2xx.
func TestOpenAPIDocumentsEveryStatus(t *testing.T) {
	const token = "openapi-s3cret"
	c := startCoordinator(t, func(cfg *coordinator.Config) {
		cfg.AuthToken = token
		cfg.MaxConcurrentRuns = 2
		cfg.MaxBodyBytes = 64 << 10
	})
	doc, raw := fetchOpenAPI(t, c)
	s := newStatusRecorder(t, c, token)
	ui := newUIClient(t, c)
	s.cookie = sessionCookie(ui.login(token, nil))
	require.NotNil(t, s.cookie)

	// Each route without credentials (401 unless public) and, for the
	// mutating ones, on the session cookie alone (403).
	for _, p := range apiRoutes(t, c) {
		method, path, _ := strings.Cut(p, " ")
		op, ok := doc.operation(p)
		require.True(t, ok, p)
		want := http.StatusUnauthorized
		if op.public() {
			want = http.StatusOK
		}
		if method == http.MethodGet && strings.HasPrefix(path, "/debug/pprof/") && want == http.StatusOK {
			continue // none is public; a CPU profile takes a second
		}
		s.expect(want, noAuth, method, concrete(path), "", nil)
		if method != http.MethodGet {
			s.expect(http.StatusForbidden, cookieOnly, method, concrete(path), "", nil)
		}
	}

	// Probes, metrics, documentation, operations.
	for _, path := range []string{"/healthz", "/readyz", "/metrics", "/api/v1/health", "/api/v1/openapi.json",
		"/api/v1/backlog", "/api/v1/cluster", "/api/v1/components",
		"/debug/pprof/", "/debug/pprof/goroutine?debug=1", "/debug/pprof/heap", "/debug/pprof/symbol", "/debug/pprof/trace?seconds=0.01", "/debug/pprof/profile?seconds=1"} {
		s.expect(http.StatusOK, withToken, http.MethodGet, path, "", nil)
	}
	s.expect(http.StatusOK, withToken, http.MethodPost, "/debug/pprof/symbol", "0x1", map[string]string{"Content-Type": "text/plain"})
	s.expect(http.StatusNotFound, withToken, http.MethodGet, "/debug/pprof/cmdline", "", nil)
	s.expect(http.StatusBadRequest, withToken, http.MethodGet, "/api/v1/cluster?recent=many", "", nil)

	// Flows.
	storeFlow := func(f string) string {
		var out struct{ FlowID string }
		require.NoError(t, json.Unmarshal(s.expect(http.StatusOK, withToken, http.MethodPost, "/api/v1/flows", `{"flow":`+f+`}`, nil), &out))
		return out.FlowID
	}
	flowID := storeFlow(echoFlow)
	otherFlow := storeFlow(strings.Replace(echoFlow, `"name":"echo"`, `"name":"echo2"`, 1))
	s.expect(http.StatusOK, withToken, http.MethodPost, "/api/v1/flows", `{"flow":`+echoFlow+`,"dryRun":true}`, nil)
	s.expect(http.StatusBadRequest, withToken, http.MethodPost, "/api/v1/flows", `{"flow":`, nil)
	s.expect(http.StatusBadRequest, withToken, http.MethodPost, "/api/v1/flows", `{}`, nil)
	s.expect(http.StatusBadRequest, withToken, http.MethodPost, "/api/v1/flows", `{"flow":{"steps":7}}`, nil)
	big := `{"flow":` + echoFlow + `,"pad":"` + strings.Repeat("x", 65<<10) + `"}`
	s.expect(http.StatusRequestEntityTooLarge, withToken, http.MethodPost, "/api/v1/flows", big, nil)
	s.expect(http.StatusOK, withToken, http.MethodGet, "/api/v1/flows/"+flowID, "", nil)
	s.expect(http.StatusNotFound, withToken, http.MethodGet, "/api/v1/flows/"+strings.Repeat("0", 64), "", nil)
	s.expect(http.StatusNotFound, withToken, http.MethodGet, "/api/v1/flows/not-a-hash", "", nil)
	s.expect(http.StatusOK, withToken, http.MethodDelete, "/api/v1/flows/"+otherFlow, "", nil)

	// Runs: nothing executes them (no worker), so they stay running
	// until cancelled.
	create := func(want int, body string, header map[string]string) string {
		b := s.expect(want, withToken, http.MethodPost, "/api/v1/runs", body, header)
		var out struct{ RunID string }
		require.NoError(t, json.Unmarshal(b, &out))
		return out.RunID
	}
	key := map[string]string{"Idempotency-Key": "openapi-test-1"}
	runA := create(http.StatusOK, `{"flowId":"`+flowID+`","input":[{"i":0},{"i":1}],"wait":false}`, key)
	require.Equal(t, runA, create(http.StatusOK, `{"flowId":"`+flowID+`","input":[{"i":0},{"i":1}],"wait":false}`, key))
	create(http.StatusConflict, `{"flowId":"`+otherFlow+`","input":[{"i":0}],"wait":false}`, key)
	jsonl := map[string]string{"Content-Type": "application/x-ndjson"}
	create(http.StatusBadRequest, "{\"i\":0}\n", jsonl) // a JSONL upload names its flow in the query
	runB := func() string {
		b := s.expect(http.StatusOK, withToken, http.MethodPost, "/api/v1/runs?wait=false&flowId="+flowID, "{\"i\":0}\n{\"i\":1}\n", jsonl)
		var out struct{ RunID string }
		require.NoError(t, json.Unmarshal(b, &out))
		return out.RunID
	}()
	// Two top-level runs are running: the limit.
	create(http.StatusTooManyRequests, `{"flowId":"`+flowID+`","input":[{"i":0}],"wait":false}`, nil)
	create(http.StatusNotFound, `{"flowId":"`+strings.Repeat("0", 64)+`","input":[{"i":0}],"wait":false}`, nil)
	create(http.StatusBadRequest, `{"flowId":"`+flowID+`","input":{"i":0}}`, nil)
	create(http.StatusBadRequest, `[`, nil)
	create(http.StatusRequestEntityTooLarge, `{"flowId":"`+flowID+`","input":["`+strings.Repeat("x", 65<<10)+`"]}`, nil)

	unknown, malformed := "/api/v1/runs/"+uuid.NewString(), "/api/v1/runs/not-a-uuid"
	run := func(id string) string { return "/api/v1/runs/" + id }

	s.expect(http.StatusOK, withToken, http.MethodPatch, run(runB), `{"maxConcurrency":2}`, nil)
	s.expect(http.StatusBadRequest, withToken, http.MethodPatch, run(runB), `{}`, nil)
	s.expect(http.StatusBadRequest, withToken, http.MethodPatch, run(runB), `{"maxConcurrency":0}`, nil)
	s.expect(http.StatusBadRequest, withToken, http.MethodPatch, run(runB), `{"maxConcurrency":`, nil)
	s.expect(http.StatusRequestEntityTooLarge, withToken, http.MethodPatch, run(runB), `{"maxConcurrency":2,"pad":"`+strings.Repeat("x", 65<<10)+`"}`, nil)
	s.expect(http.StatusNotFound, withToken, http.MethodPatch, unknown, `{"maxConcurrency":2}`, nil)
	s.expect(http.StatusBadRequest, withToken, http.MethodPatch, malformed, `{"maxConcurrency":2}`, nil)
	s.expect(http.StatusConflict, withToken, http.MethodDelete, run(runB), "", nil)

	s.expect(http.StatusOK, withToken, http.MethodPost, run(runA)+"/cancel", "", nil)
	s.expect(http.StatusConflict, withToken, http.MethodPost, run(runA)+"/cancel", "", nil)
	s.expect(http.StatusConflict, withToken, http.MethodPatch, run(runA), `{"maxConcurrency":2}`, nil)
	s.expect(http.StatusNotFound, withToken, http.MethodPost, unknown+"/cancel", "", nil)
	s.expect(http.StatusBadRequest, withToken, http.MethodPost, malformed+"/cancel", "", nil)

	for _, q := range []string{"", "?status=cancelled", "?limit=1&offset=1", "?rootRunId=" + runA, "?parentRunId="} {
		s.expect(http.StatusOK, withToken, http.MethodGet, "/api/v1/runs"+q, "", nil)
	}
	s.expect(http.StatusBadRequest, withToken, http.MethodGet, "/api/v1/runs?status=sleeping", "", nil)
	s.expect(http.StatusBadRequest, withToken, http.MethodGet, "/api/v1/runs?limit=-1", "", nil)

	for _, id := range []string{runA, runB} {
		for _, sub := range []string{"", "/items", "/items?format=jsonl", "/items?status=cancelled&limit=1", "/steps", "/flow"} {
			s.expect(http.StatusOK, withToken, http.MethodGet, run(id)+sub, "", nil)
		}
	}
	s.expect(http.StatusOK, withToken, http.MethodGet, run(runA)+"/events", "", nil) // a finished run's stream ends
	s.expect(http.StatusBadRequest, withToken, http.MethodGet, run(runA)+"/items?format=xml", "", nil)
	s.expect(http.StatusBadRequest, withToken, http.MethodGet, run(runA)+"/items?status=sleeping", "", nil)
	s.expect(http.StatusBadRequest, withToken, http.MethodGet, run(runA)+"/items?offset=x", "", nil)
	for _, sub := range []string{"", "/items", "/steps", "/flow", "/events"} {
		s.expect(http.StatusNotFound, withToken, http.MethodGet, unknown+sub, "", nil)
		s.expect(http.StatusBadRequest, withToken, http.MethodGet, malformed+sub, "", nil)
	}

	s.expect(http.StatusOK, withToken, http.MethodDelete, run(runA), "", nil)
	s.expect(http.StatusNotFound, withToken, http.MethodDelete, run(runA), "", nil)
	s.expect(http.StatusBadRequest, withToken, http.MethodDelete, malformed, "", nil)
	s.expect(http.StatusOK, withToken, http.MethodPost, run(runB)+"/cancel", "", nil)

	// Every status answered, with its media type, is documented.
	for _, p := range sortedKeys(s.seen) {
		op, ok := doc.operation(p)
		require.True(t, ok, p)
		ok2xx := false
		for status, reqs := range s.seen[p] {
			ok2xx = ok2xx || status/100 == 2
			resp, documented := op.Responses[strconv.Itoa(status)]
			if !assert.True(t, documented, "%s answered %d, which openapi.json does not list (%s)", p, status, reqs) {
				continue
			}
			content := responseContent(raw, resp)
			for _, r := range reqs {
				mt, _, _ := strings.Cut(r, " ← ")
				if mt == "" || content == nil {
					assert.True(t, mt == "" || content == nil, "%s %d: %s", p, status, r)
					continue
				}
				assert.Contains(t, sortedKeys(content), mt, "%s %d: media type of %s not documented", p, status, r)
			}
		}
		assert.True(t, ok2xx, "%s never succeeded in this test", p)
	}
	for _, p := range apiRoutes(t, c) {
		assert.Contains(t, s.seen, p, "route %s not exercised", p)
	}
	checkBodies(t, c, doc, raw, s.bodies, s.requests)
}

// checkBodies validates every JSON body answered against the schema its
// operation documents for its status (JSON Schema 2020-12, as OpenAPI
// 3.1), and requires every field of it to be documented: a property of
// an object schema that lists properties, recursively (oneOf and schemas
// without properties, such as Value, are not descended into).
//
// The JSON bodies of the requests that succeeded are checked the same way
// against their operation's requestBody.
func checkBodies(t *testing.T, c *coordinator.Coordinator, doc openAPIDoc, raw map[string]any, answers, requests []answer) {
	t.Helper()
	r := newClient(t, c).get("/openapi.json")
	require.Equal(t, http.StatusOK, r.Status)
	res, err := jsonschema.UnmarshalJSON(bytes.NewReader(r.Body))
	require.NoError(t, err)
	comp := jsonschema.NewCompiler()
	comp.DefaultDraft(jsonschema.Draft2020)
	require.NoError(t, comp.AddResource("openapi.json", res))
	escape := strings.NewReplacer("~", "~0", "/", "~1").Replace
	compiled := map[string]*jsonschema.Schema{}
	for i, a := range slices.Concat(answers, requests) {
		isRequest := i >= len(answers)
		op, _ := doc.operation(a.pattern)
		code := strconv.Itoa(a.status)
		method, path, _ := strings.Cut(a.pattern, " ")
		ptr := "/paths/" + escape(path) + "/" + strings.ToLower(method)
		what := fmt.Sprintf("%s answered %d with", a.request, a.status)
		if isRequest {
			ptr += "/requestBody"
			what = fmt.Sprintf("%s succeeded with the request", a.request)
		} else if resp := op.Responses[code]; resp.Ref != "" {
			ptr = strings.TrimPrefix(resp.Ref, "#")
		} else {
			ptr += "/responses/" + code
		}
		ptr += "/content/application~1json/schema"
		sch, ok := compiled[ptr]
		if !ok {
			sch, err = comp.Compile("openapi.json#" + ptr)
			require.NoError(t, err, "%s %d", a.pattern, a.status)
			compiled[ptr] = sch
		}
		v, err := jsonschema.UnmarshalJSON(bytes.NewReader(a.body))
		require.NoError(t, err, "%s: %s", a.request, a.body)
		assert.NoError(t, sch.Validate(v), "%s body its schema refuses: %s", what, a.body)

		var node any = raw
		for _, seg := range strings.Split(strings.TrimPrefix(ptr, "/"), "/") {
			seg = strings.NewReplacer("~1", "/", "~0", "~").Replace(seg)
			node = node.(map[string]any)[seg]
		}
		var body any
		require.NoError(t, json.Unmarshal(a.body, &body))
		for _, f := range undocumentedFields(raw, node, body, "") {
			t.Errorf("%s field %s, which openapi.json does not document", what, f)
		}
	}
}

// undocumentedFields returns the paths of the fields of v that schema
// does not list.
func undocumentedFields(raw map[string]any, schema any, v any, at string) []string {
	sch, _ := schema.(map[string]any)
	if ref, ok := sch["$ref"].(string); ok {
		var node any = raw
		for _, seg := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
			node = node.(map[string]any)[seg]
		}
		return undocumentedFields(raw, node, v, at)
	}
	var out []string
	switch x := v.(type) {
	case map[string]any:
		props := map[string]any{}
		parts := []map[string]any{sch}
		if all, ok := sch["allOf"].([]any); ok {
			for _, p := range all {
				pm, _ := p.(map[string]any)
				if ref, ok := pm["$ref"].(string); ok {
					var node any = raw
					for _, seg := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
						node = node.(map[string]any)[seg]
					}
					pm = node.(map[string]any)
				}
				parts = append(parts, pm)
			}
		}
		for _, p := range parts {
			if ps, ok := p["properties"].(map[string]any); ok {
				for k, s := range ps {
					props[k] = s
				}
			}
		}
		extra, _ := sch["additionalProperties"].(map[string]any)
		for k, fv := range x {
			switch ps, ok := props[k]; {
			case ok:
				out = append(out, undocumentedFields(raw, ps, fv, at+"."+k)...)
			case extra != nil:
				out = append(out, undocumentedFields(raw, extra, fv, at+"."+k)...)
			case len(props) > 0:
				out = append(out, at+"."+k)
			}
		}
	case []any:
		for i, item := range x {
			out = append(out, undocumentedFields(raw, sch["items"], item, fmt.Sprintf("%s[%d]", at, i))...)
		}
	}
	return out
}

// sortedKeys returns a map's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
