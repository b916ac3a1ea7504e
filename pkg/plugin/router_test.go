package plugin_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/plugin"
	"github.com/stepflow-go/stepflow/pkg/value"
)

func parseConfig(t *testing.T, src string) *config.Config {
	t.Helper()
	c, err := config.Parse([]byte(src), "stepflow-config.yml")
	require.NoError(t, err)
	return c
}

func router(t *testing.T, src string) *plugin.Router {
	t.Helper()
	r, err := plugin.NewRouter(parseConfig(t, src))
	require.NoError(t, err)
	return r
}

const plugins3 = "plugins:\n  a: {type: builtin}\n  b: {type: builtin}\n  c: {type: builtin}\n"

func TestRouterResolve(t *testing.T) {
	t.Parallel()
	type want struct{ plugin, component, err string }
	tests := []struct {
		name   string
		routes string
		path   string
		input  string
		want   want
	}{
		{"catch-all strips prefix", `"/builtin/{*component}": [{plugin: a}]`, "/builtin/eval", `{}`, want{"a", "/eval", ""}},
		{"catch-all takes the rest", `"/builtin/{*component}": [{plugin: a}]`, "/builtin/x/y", `{}`, want{"a", "/x/y", ""}},
		{"catch-all needs a segment", `"/builtin/{*component}": [{plugin: a}]`, "/builtin/", `{}`,
			want{err: "no route matches component /builtin/ (routes: /builtin/{*component})"}},
		{"root catch-all", `"/{*component}": [{plugin: a}]`, "/eval", `{}`, want{"a", "/eval", ""}},
		{"root catch-all keeps prefix", `"/{*component}": [{plugin: a}]`, "/builtin/eval", `{}`, want{"a", "/builtin/eval", ""}},
		{"param is one segment", `"/builtin/{component}": [{plugin: a}]`, "/builtin/eval", `{}`, want{"a", "/eval", ""}},
		{"param does not take two", `"/builtin/{component}": [{plugin: a}]`, "/builtin/x/y", `{}`,
			want{err: "no route matches component /builtin/x/y (routes: /builtin/{component})"}},
		{"no match lists routes", `{"/builtin/{*component}": [{plugin: a}], "/m/{component}": [{plugin: b}]}`, "/foo/bar", `{}`,
			want{err: "no route matches component /foo/bar (routes: /builtin/{*component}, /m/{component})"}},
		{"relative path never matches", `"/{*component}": [{plugin: a}]`, "eval", `{}`,
			want{err: "no route matches component eval (routes: /{*component})"}},
		{"static beats param", `{"/x/{component}": [{plugin: a}], "/x/special": [{plugin: b, component: /sp}]}`, "/x/special", `{}`, want{"b", "/sp", ""}},
		{"param beats catch-all", `{"/{*component}": [{plugin: a}], "/x/{component}": [{plugin: b}]}`, "/x/y", `{}`, want{"b", "/y", ""}},
		{"catch-all still serves the rest", `{"/{*component}": [{plugin: a}], "/x/{component}": [{plugin: b}]}`, "/x/y/z", `{}`, want{"a", "/x/y/z", ""}},
		{"longest static prefix", `{"/test-mcp/{*component}": [{plugin: b}], "/{*component}": [{plugin: a}]}`, "/test-mcp/read", `{}`, want{"b", "/read", ""}},
		{"specificity backtracks", `{"/a/{x}/c": [{plugin: a, component: "/{x}"}], "/{y}/b/{*component}": [{plugin: b}]}`, "/a/b/d", `{}`, want{"b", "/d", ""}},
		{"template", `"/t/{x}/{*rest}": [{plugin: a, component: "/{rest}-{x}"}]`, "/t/one/two/three", `{}`, want{"a", "/two/three-one", ""}},
		{"prefix route names no component", `"/ai/chat": [{plugin: a}]`, "/ai/chat", `{}`,
			want{err: `cannot route component /ai/chat: route /ai/chat is a prefix route and the path names no component below it (/ai/chat/<component>)`}},
		{"no component placeholder", `"/ai/{x}": [{plugin: a}]`, "/ai/chat", `{}`,
			want{err: `cannot route component /ai/chat: route /ai/{x} has no {component} placeholder and its rule for plugin "a" gives no ` + "`component`"}},
		{"prefix route (0.13)", `"/python": [{plugin: a}]`, "/python/echo", `{}`, want{"a", "/echo", ""}},
		{"prefix route keeps the rest", `"/python": [{plugin: a}]`, "/python/core/x", `{}`, want{"a", "/core/x", ""}},
		{"root prefix route", `{"/": [{plugin: b}], "/python": [{plugin: a}]}`, "/builtin/eval", `{}`, want{"b", "/builtin/eval", ""}},
		{"longer prefix wins over root", `{"/": [{plugin: b}], "/python": [{plugin: a}]}`, "/python/echo", `{}`, want{"a", "/echo", ""}},
		{"static route with component stays exact", `"/ai/chat": [{plugin: a, component: "/c"}]`, "/ai/chat/x", `{}`,
			want{err: "no route matches component /ai/chat/x (routes: /ai/chat)"}},
		{"condition matches", `"/ai/{component}": [{plugin: a, conditions: [{path: "$.model", value: "gpt-4"}]}, {plugin: b}]`,
			"/ai/chat", `{"model":"gpt-4"}`, want{"a", "/chat", ""}},
		{"condition falls through", `"/ai/{component}": [{plugin: a, conditions: [{path: "$.model", value: "gpt-4"}]}, {plugin: b}]`,
			"/ai/chat", `{"model":"gpt-3"}`, want{"b", "/chat", ""}},
		{"condition compares JSON", `"/ai/{component}": [{plugin: a, conditions: [{path: "cfg", value: {n: 1, m: [true]}}]}, {plugin: b}]`,
			"/ai/chat", `{"cfg":{"m":[true],"n":1}}`, want{"a", "/chat", ""}},
		{"condition integer vs float", `"/ai/{component}": [{plugin: a, conditions: [{path: "$.n", value: 15}]}, {plugin: b}]`,
			"/ai/chat", `{"n":15.0}`, want{"b", "/chat", ""}},
		{"all conditions must hold", `"/ai/{component}": [{plugin: a, conditions: [{path: "$.x", value: 1}, {path: "$.y", value: 2}]}, {plugin: b}]`,
			"/ai/chat", `{"x":1,"y":3}`, want{"b", "/chat", ""}},
		{"missing condition path is an error", `"/ai/{component}": [{plugin: a, conditions: [{path: "$.model", value: "gpt-4"}]}, {plugin: b}]`,
			"/ai/chat", `{"other":1}`, want{err: "cannot route component /ai/chat: condition path $.model of route /ai/{component} is not in the step input"}},
		{"single conditional rule that fails", `"/ai/{component}": [{plugin: a, conditions: [{path: "$.model", value: "gpt-4"}]}]`,
			"/ai/chat", `{"model":"x"}`, want{err: "no rule of route /ai/{component} applies to component /ai/chat (1 rules: conditions or componentAllow/componentDeny exclude it)"}},
		{"deny skips rule", `"/p/{component}": [{plugin: a, componentDeny: [/legacy]}, {plugin: b}]`, "/p/legacy", `{}`, want{"b", "/legacy", ""}},
		{"allow skips rule", `"/p/{component}": [{plugin: a, componentAllow: [/chat]}, {plugin: b}]`, "/p/other", `{}`, want{"b", "/other", ""}},
		{"allow admits", `"/p/{component}": [{plugin: a, componentAllow: [/chat]}, {plugin: b}]`, "/p/chat", `{}`, want{"a", "/chat", ""}},
		{"allow uses resolved name", `"/p/{component}": [{plugin: a, component: "/x_{component}", componentAllow: [/x_chat]}, {plugin: b}]`, "/p/chat", `{}`, want{"a", "/x_chat", ""}},
		{"quirk: single unconditional rule ignores deny", `"/p/{component}": [{plugin: a, componentDeny: [/legacy]}]`, "/p/legacy", `{}`, want{"a", "/legacy", ""}},
		{"quirk: single unconditional rule ignores allow", `"/p/{component}": [{plugin: a, componentAllow: [/chat]}]`, "/p/other", `{}`, want{"a", "/other", ""}},
		{"deny with conditions is checked", `"/p/{component}": [{plugin: a, componentDeny: [/legacy], conditions: [{path: x, value: 1}]}]`, "/p/legacy", `{"x":1}`,
			want{err: "no rule of route /p/{component} applies to component /p/legacy (1 rules: conditions or componentAllow/componentDeny exclude it)"}},
		{"empty rule list", `"/p/{component}": []`, "/p/x", `{}`,
			want{err: "no rule of route /p/{component} applies to component /p/x (0 rules: conditions or componentAllow/componentDeny exclude it)"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			routes := tc.routes
			if !strings.HasPrefix(routes, "{") {
				routes = "{" + routes + "}"
			}
			r := router(t, plugins3+"routes: "+routes+"\n")
			got, err := r.Resolve(tc.path, value.MustParse(tc.input))
			if tc.want.err != "" {
				require.EqualError(t, err, tc.want.err)
				var re *plugin.RouteError
				require.ErrorAs(t, err, &re)
				require.Equal(t, tc.path, re.Path)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want.plugin, got.Plugin)
			require.Equal(t, tc.want.component, got.Component)
			require.NotNil(t, got.Rule)
		})
	}
}

func TestRouterNoRoutes(t *testing.T) {
	t.Parallel()
	r := router(t, "plugins: {}\nroutes: {}\n")
	_, err := r.Resolve("/builtin/eval", nil)
	require.EqualError(t, err, "no route matches component /builtin/eval (no routes configured)")
	require.False(t, r.Match("/builtin/eval"))
}

func TestRouterMatch(t *testing.T) {
	t.Parallel()
	r := router(t, plugins3+`routes: {"/ai/{component}": [{plugin: a, conditions: [{path: x, value: 1}]}], "/b/{*component}": [{plugin: b}]}`+"\n")
	require.True(t, r.Match("/ai/chat"), "conditions are ignored")
	require.True(t, r.Match("/b/x/y"))
	require.False(t, r.Match("/ai/x/y"))
	require.False(t, r.Match("/c"))
}

func TestRouterUnknownBuiltin(t *testing.T) {
	t.Parallel()
	r := router(t, "plugins:\n  builtin: {type: builtin}\n  m: {type: mock, components: {}}\n"+`routes: {`+
		`"/builtin/{*component}": [{plugin: builtin}], `+
		`"/mixed/{component}": [{plugin: builtin, conditions: [{path: x, value: 1}]}, {plugin: m}], `+
		`"/both/{component}": [{plugin: builtin, conditions: [{path: x, value: 1}]}, {plugin: builtin, component: "/eval"}], `+
		`"/alias/{component}": [{plugin: builtin, component: "/{component}_blob"}], `+
		`"/m/{*component}": [{plugin: m}]}`+"\n")
	tests := []struct {
		path string
		name string
		bad  bool
	}{
		{"/builtin/get_blb", "/get_blb", true},
		{"/builtin/get_blob", "", false},
		{"/builtin/eval/x", "/eval/x", true},
		{"/alias/get", "", false},
		{"/alias/got", "/got_blob", true},
		{"/mixed/nope", "", false}, // the mock plugin may have it
		{"/both/nope", "", false},  // the second rule reaches /eval
		{"/m/nope", "", false},     // not a builtin plugin
		{"/other/x", "", false},    // no route: Match's business
	}
	for _, tc := range tests {
		name, bad := r.UnknownBuiltin(tc.path)
		require.Equal(t, tc.bad, bad, tc.path)
		require.Equal(t, tc.name, name, tc.path)
	}
}

func TestRouterConstructionErrors(t *testing.T) {
	t.Parallel()
	tests := []struct{ routes, want string }{
		{`{"a/b": [{plugin: a}]}`, `stepflow-config.yml:5:17: invalid route pattern "a/b": a pattern must start with /`},
		{`{"/{*x}/y": [{plugin: a}]}`, `stepflow-config.yml:5:21: invalid route pattern "/{*x}/y": catch-all {*x} must be the last segment`},
		{`{"/a{b}": [{plugin: a}]}`, `stepflow-config.yml:5:19: invalid route pattern "/a{b}": segment "a{b}": a placeholder must be a whole segment ({name} or {*name})`},
		{`{"/{}": [{plugin: a}]}`, `stepflow-config.yml:5:17: invalid route pattern "/{}": invalid placeholder "{}"`},
		{`{"/{x}/{x}": [{plugin: a}]}`, `stepflow-config.yml:5:22: invalid route pattern "/{x}/{x}": placeholder {x} appears twice`},
		{`{"/a/{x}": [{plugin: a}], "/a/{y}": [{plugin: b}]}`, `stepflow-config.yml:5:45: route pattern "/a/{y}" conflicts with "/a/{x}" (they match the same paths)`},
		{`{"/a/{*x}": [{plugin: a}], "/a/{*component}": [{plugin: b}]}`, `stepflow-config.yml:5:55: route pattern "/a/{*component}" conflicts with "/a/{*x}" (they match the same paths)`},
		{`{"/a/{x}": [{plugin: a}, {plugin: ghost}]}`, `stepflow-config.yml:5:43: route "/a/{x}" references unknown plugin "ghost"`},
	}
	for _, tc := range tests {
		_, err := plugin.NewRouter(parseConfig(t, plugins3+"routes: "+tc.routes+"\n"))
		require.EqualError(t, err, tc.want, tc.routes)
		require.ErrorIs(t, err, plugin.ErrInvalidRoute)
		require.ErrorIs(t, err, config.ErrInvalidConfig)
		var ce *config.Error
		require.True(t, errors.As(err, &ce))
	}
	// Different shapes do not conflict.
	_ = router(t, plugins3+`routes: {"/a/{x}": [{plugin: a}], "/a/{*y}": [{plugin: b}], "/a/b": [{plugin: c}], "/{z}/b": [{plugin: c}]}`+"\n")
}

func TestRoutesFor(t *testing.T) {
	t.Parallel()
	r := router(t, plugins3+`routes:
  "/builtin/{*component}": [{plugin: a}]
  "/b/{component}": [{plugin: a, conditions: [{path: "$.m", value: x}]}, {plugin: b}]
  "/{component}": [{plugin: a, componentDeny: [/eval]}]
  "/fixed": [{plugin: a, component: /eval}]
`)
	got := r.RoutesFor("a", "/eval")
	vals := make([]string, len(got))
	for i, ri := range got {
		vals[i] = value.String(ri.Value())
	}
	require.Equal(t, []string{
		`{"pathPattern":"/builtin/{*component}","resolvedPath":"/builtin/eval","conditions":[],"isConditional":false}`,
		`{"pathPattern":"/b/{component}","resolvedPath":"/b/eval","conditions":[{"path":"$.m","value":"x"}],"isConditional":true}`,
	}, vals)
	got = r.RoutesFor("a", "/map")
	require.Len(t, got, 3)
	require.Equal(t, "/map", got[2].ResolvedPath)
	require.Empty(t, r.RoutesFor("c", "/eval"))
}
