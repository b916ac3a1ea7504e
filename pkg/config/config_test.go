package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// upstreamTests is upstream Stepflow 0.9.0's tests directory, kept in the
// repository (relative to this package's directory, where go test runs).
const upstreamTests = "../../test/conformance/upstream"

func upstreamDir(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(upstreamTests); err != nil {
		t.Fatalf("upstream tests missing from the repository: %v", err)
	}
	return upstreamTests
}

func env(kv ...string) config.Option {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return config.WithLookupEnv(func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	})
}

func TestLoadUpstreamConfigs(t *testing.T) {
	t.Parallel()
	dir := upstreamDir(t)
	var files []string
	require.NoError(t, filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && d.Name() == "stepflow-config.yml" {
			files = append(files, p)
		}
		return err
	}))
	require.Len(t, files, 8)
	for _, f := range files {
		c, err := config.Load(f, env())
		require.NoError(t, err, f)
		require.NotEmpty(t, c.Plugins, f)
		require.NotEmpty(t, c.Routes, f)
		abs, _ := filepath.Abs(filepath.Dir(f))
		require.Equal(t, abs, c.Dir)
		require.Empty(t, c.Validate(), f)
	}
}

func TestMockConfig(t *testing.T) {
	t.Parallel()
	c, err := config.Load(filepath.Join(upstreamDir(t), "mock", "stepflow-config.yml"))
	require.NoError(t, err)
	require.Len(t, c.Plugins, 1)
	p := c.Plugins[0]
	require.Equal(t, "mock", p.Name)
	require.Equal(t, config.TypeMock, p.Type)
	require.Equal(t, value.Pos{Line: 3, Col: 5}, p.Pos)
	require.Len(t, p.Mock.Components, 4)
	one := p.Mock.Components[0]
	require.Equal(t, "/one_output", one.Name)
	require.Equal(t, `{"type":"object","properties":{"input":{"type":"string"}}}`, value.String(one.InputSchema))
	require.Len(t, one.Behaviors, 3)
	b := one.Behaviors[0]
	require.Equal(t, `{"input":"a"}`, value.String(b.Input))
	require.NotNil(t, b.Result)
	require.Equal(t, `{"outcome":"success","result":{"output":"b"}}`, value.String(b.Result.JSON()))
	require.Equal(t, 18, b.Pos.Line)

	errComp := p.Mock.Components[2]
	require.Equal(t, "/error", errComp.Name)
	fb := errComp.Behaviors[0]
	require.Equal(t, `{"mode":"error"}`, value.String(fb.Input))
	require.True(t, fb.Result.Failed())
	require.Equal(t, int64(8), fb.Result.Err.Code)
	require.Equal(t, "error", fb.Result.Err.Message)

	skip := p.Mock.Components[3]
	require.Equal(t, `{"input":null}`, value.String(skip.Behaviors[2].Input))

	// Raw keeps complex keys as their JSON text.
	comps, _ := p.Raw.Get("components")
	oneRaw, _ := comps.(*value.Object).Get("/one_output")
	beh, _ := oneRaw.(*value.Object).Get("behaviors")
	require.Equal(t, []string{`{"input":"a"}`, `{"input":"hello"}`, `{"input":"b"}`}, beh.(*value.Object).Keys())

	require.Equal(t, "/mock/{component}", c.Routes[0].Pattern)
	require.Equal(t, "mock", c.Routes[0].Rules[0].Plugin)
}

func TestMockBehaviorKinds(t *testing.T) {
	t.Parallel()
	src := `
plugins:
  m:
    type: mock
    components:
      /c:
        input_schema: {}
        output_schema: {}
        behaviors:
          { mode: "boom" }: { error: "internal failure" }
          [1, 2]: { outcome: success, result: 3 }
          7: { outcome: success, result: seven }
          "8": { outcome: success, result: text eight }
          plain: { outcome: success, result: p }
          null: { outcome: failed, error: { code: 3, message: m, data: { x: 1 } } }
routes: {}
`
	c, err := config.Parse([]byte(src), "cfg.yml")
	require.NoError(t, err)
	bs := c.Plugins[0].Mock.Components[0].Behaviors
	require.Len(t, bs, 6)
	require.Nil(t, bs[0].Result)
	require.Equal(t, "internal failure", bs[0].Error)
	require.Equal(t, `{"mode":"boom"}`, value.String(bs[0].Input))
	require.Equal(t, `[1,2]`, value.String(bs[1].Input))
	require.Equal(t, `7`, value.String(bs[2].Input))
	require.Equal(t, `"8"`, value.String(bs[3].Input))
	require.Equal(t, `"plain"`, value.String(bs[4].Input))
	require.Nil(t, bs[5].Input)
	require.Equal(t, `{"outcome":"failed","error":{"code":3,"message":"m","data":{"x":1}}}`, value.String(bs[5].Result.JSON()))

	// 7 and "7" have the same JSON key text.
	_, err = config.Parse([]byte(strings.Replace(src, `"8"`, `"7"`, 1)), "cfg.yml")
	require.EqualError(t, err, `cfg.yml:13:11: duplicate mapping key "7"`)
	_, err = config.Parse([]byte("plugins: {}\nroutes: {}\nplugins: {}\n"), "cfg.yml")
	require.EqualError(t, err, `cfg.yml:3:1: duplicate mapping key "plugins"`)
}

func TestMockAliasedBehaviors(t *testing.T) {
	t.Parallel()
	src := `
plugins:
  m:
    type: mock
    components:
      /a:
        input_schema: {}
        output_schema: {}
        behaviors: &b
          { input: 1 }: { outcome: success, result: one }
      /b:
        input_schema: {}
        output_schema: {}
        behaviors: *b
routes: {}
`
	c, err := config.Parse([]byte(src), "cfg.yml")
	require.NoError(t, err)
	for _, mc := range c.Plugins[0].Mock.Components {
		require.Equal(t, `{"input":1}`, value.String(mc.Behaviors[0].Input), mc.Name)
	}
}

func TestStepflowAndMCPPlugins(t *testing.T) {
	t.Parallel()
	src := `
workingDirectory: work
plugins:
  builtin: { type: builtin }
  python:
    type: stepflow
    command: ${UV:-uv}
    args: ["--project", "${HOME}/sdk", run, "$WORKER", 'a\$b']
    env:
      LOG_LEVEL: "${LOG_LEVEL:-info}"
      HOME: "${HOME}"
      NESTED: "${MISSING:${HOME}/x}"
    healthCheck: { path: /ready, timeoutMs: 5000 }
    timeoutMs: 2500
  remote:
    type: stepflow
    url: "http://127.0.0.1:${TEST_PORT:-8080}"
  legacy:
    type: stepflow
    transport: stdio
    command: python3
  fs:
    type: mcp
    command: npx
    args: ["-y", "server"]
    env: { K: v }
    timeoutMs: 100
routes:
  "/python/{*component}": [{ plugin: python }]
  "/remote/{*component}": [{ plugin: remote }]
  "/legacy/{*component}": [{ plugin: legacy }]
  "/fs/{*component}": [{ plugin: fs }]
  "/builtin/{*component}": [{ plugin: builtin }]
stateStore:
  type: sqlite
  databaseUrl: "sqlite::memory:"
  maxConnections: 5
`
	c, err := config.Parse([]byte(src), "/etc/sf/stepflow-config.yml", env("HOME", "/home/u", "WORKER", "w"))
	require.NoError(t, err)
	require.Equal(t, "/etc/sf/work", c.WorkDir("/flows", "/cwd"))

	py := c.Plugin("python").Stepflow
	require.Equal(t, config.TransportHTTP, py.Transport)
	require.Equal(t, "uv", py.Command)
	require.Equal(t, []string{"--project", "/home/u/sdk", "run", "w", "a$b"}, py.Args)
	require.Equal(t, []config.EnvVar{{"LOG_LEVEL", "info"}, {"HOME", "/home/u"}, {"NESTED", "/home/u/x"}}, py.Env)
	require.Equal(t, config.HealthCheck{Path: "/ready", Timeout: 5 * time.Second, RetryDelay: 100 * time.Millisecond}, py.HealthCheck)
	require.Equal(t, 2500*time.Millisecond, py.Timeout)
	require.False(t, py.Remote())
	// Raw keeps the text as written.
	args, _ := c.Plugin("python").Raw.Get("args")
	require.Equal(t, "${HOME}/sdk", args.([]value.Value)[1])

	remote := c.Plugin("remote").Stepflow
	require.True(t, remote.Remote())
	require.Equal(t, "http://127.0.0.1:8080", remote.URL)

	legacy := c.Plugin("legacy").Stepflow
	require.Equal(t, config.TransportStdio, legacy.Transport)
	require.Equal(t, []string{}, legacy.Args)

	fs := c.Plugin("fs").MCP
	require.Equal(t, "npx", fs.Command)
	require.Equal(t, []string{"-y", "server"}, fs.Args)
	require.Equal(t, []config.EnvVar{{"K", "v"}}, fs.Env)
	require.Equal(t, 100*time.Millisecond, fs.Timeout)

	require.Equal(t, config.StateStore{Type: config.StateStoreSQLite, DatabaseURL: "sqlite::memory:", MaxConnections: 5, AutoMigrate: true}, c.StateStore)
	require.Len(t, c.Routes, 5)
	require.Empty(t, c.Validate())
}

func TestRouteRules(t *testing.T) {
	t.Parallel()
	src := `
plugins:
  a: { type: builtin }
  b: { type: builtin }
routes:
  "/ai/chat":
    - plugin: a
      conditions: [ { path: "$.model", value: "gpt-4" }, { path: "x", value: null } ]
      component: "/chat"
      componentAllow: ["/chat"]
      componentDeny: ["/legacy"]
    - plugin: b
`
	c, err := config.Parse([]byte(src), "c.yml")
	require.NoError(t, err)
	r := c.Routes[0]
	require.Equal(t, "/ai/chat", r.Pattern)
	require.Len(t, r.Rules, 2)
	r0 := r.Rules[0]
	require.Equal(t, "a", r0.Plugin)
	require.Equal(t, "/chat", r0.Component)
	require.Equal(t, []string{"/chat"}, r0.ComponentAllow)
	require.Equal(t, []string{"/legacy"}, r0.ComponentDeny)
	require.Len(t, r0.Conditions, 2)
	require.Equal(t, "$.model", r0.Conditions[0].Path)
	got, ok := r0.Conditions[0].JSONPath.Lookup(value.ObjectOf("model", "gpt-4"))
	require.True(t, ok)
	require.Equal(t, "gpt-4", got)
	require.Nil(t, r0.Conditions[1].Value)
	r1 := r.Rules[1]
	require.Nil(t, r1.ComponentAllow)
	require.Nil(t, r1.ComponentDeny)
	require.Empty(t, r1.Component)
	require.Empty(t, r1.Conditions)
	require.Equal(t, 12, r1.Pos.Line)
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, src, want string
		is              error
	}{
		{"unknown plugin type", "plugins:\n  x:\n    type: kafka\nroutes: {}\n",
			`c.yml:3:11: unknown type "kafka" for plugin "x" (expected builtin, stepflow, mcp, mock, grpc or nats)`, config.ErrInvalidConfig},
		{"missing plugins", "routes: {}\n", "c.yml:1:1: missing field `plugins` in config", config.ErrInvalidConfig},
		{"missing routes", "plugins: {}\n", "c.yml:1:1: missing field `routes` in config (write `routes: {}` for none)", config.ErrInvalidConfig},
		{"empty", "", "c.yml: $: empty document: a config must be an object with `plugins` and `routes`", config.ErrInvalidConfig},
		{"not an object", "[1]\n", "c.yml:1:1: a config must be an object, got array", config.ErrInvalidConfig},
		{"plugins not object", "plugins: [a]\nroutes: {}\n", "c.yml:1:10: invalid type for `plugins`: expected an object, got array", config.ErrInvalidConfig},
		{"missing type", "plugins:\n  x: {command: a}\nroutes: {}\n", "c.yml:2:6: missing field `type` in plugin \"x\"", config.ErrInvalidConfig},
		{"stepflow without command", "plugins:\n  x: {type: stepflow}\nroutes: {}\n",
			`c.yml:2:6: plugin "x": a stepflow plugin needs ` + "`command` (subprocess) or `url` (remote server)", config.ErrInvalidConfig},
		{"stepflow both", "plugins:\n  x: {type: stepflow, command: a, url: b}\nroutes: {}\n",
			`c.yml:2:6: plugin "x": give either ` + "`command` (subprocess) or `url` (remote server), not both", config.ErrInvalidConfig},
		{"bad transport", "plugins:\n  x: {type: stepflow, transport: grpc, command: a}\nroutes: {}\n",
			`c.yml:2:34: unknown transport "grpc" for plugin "x" (expected http or stdio)`, config.ErrInvalidConfig},
		{"args not strings", "plugins:\n  x: {type: mcp, command: a, args: [1]}\nroutes: {}\n",
			"c.yml:2:37: invalid type for `args` element: expected a string, got number 1", config.ErrInvalidConfig},
		{"unset variable", "plugins:\n  x:\n    type: mcp\n    command: a\n    env: { K: \"${NOPE}\" }\nroutes: {}\n",
			`c.yml:5:15: plugin "x": environment variable "NOPE" is not set (write ${NOPE:-default} to give a default)`, config.ErrUnsetVariable},
		{"bad timeout", "plugins:\n  x: {type: mcp, command: a, timeoutMs: -1}\nroutes: {}\n",
			"c.yml:2:41: invalid value for `timeoutMs`: -1 is not a valid number of milliseconds", config.ErrInvalidConfig},
		{"mock missing behaviors", "plugins:\n  m:\n    type: mock\n    components:\n      /c: {input_schema: {}, output_schema: {}}\nroutes: {}\n",
			"c.yml:5:11: missing field `behaviors` in mock component \"/c\"", config.ErrInvalidConfig},
		{"mock bad behavior", "plugins:\n  m:\n    type: mock\n    components:\n      /c:\n        input_schema: {}\n        output_schema: {}\n        behaviors:\n          a: {outcome: maybe}\nroutes: {}\n",
			"c.yml:9:14: invalid mock behavior", config.ErrInvalidConfig},
		{"routes not array", "plugins: {}\nroutes:\n  /a: {plugin: x}\n", `c.yml:3:7: invalid type for route "/a": expected an array of rules, got object`, config.ErrInvalidConfig},
		{"rule without plugin", "plugins: {}\nroutes:\n  /a: [{component: x}]\n", `c.yml:3:8: missing field ` + "`plugin` in rule 0 of route \"/a\"", config.ErrInvalidConfig},
		{"bad condition path", "plugins: {}\nroutes:\n  /a: [{plugin: x, conditions: [{path: '$[x]', value: 1}]}]\n",
			"c.yml:3:40: invalid condition path", config.ErrInvalidConfig},
		{"condition without value", "plugins: {}\nroutes:\n  /a: [{plugin: x, conditions: [{path: a}]}]\n",
			"c.yml:3:33: missing field `value` in condition", config.ErrInvalidConfig},
		{"bad state store", "plugins: {}\nroutes: {}\nstateStore: {type: redis}\n",
			`c.yml:3:20: unknown state store type "redis" (expected inMemory or sqlite)`, config.ErrInvalidConfig},
		{"sqlite without url", "plugins: {}\nroutes: {}\nstateStore: {type: sqlite}\n",
			"c.yml:3:13: missing field `databaseUrl` in sqlite `stateStore`", config.ErrInvalidConfig},
		{"yaml syntax", "plugins:\n  a: b\n c: d\n",
			"c.yml:3:2: invalid YAML: did not find expected key (while parsing a block mapping that starts at line 1, column 1)", config.ErrInvalidConfig},
		{"duplicate key", "plugins: {}\nroutes: {}\nplugins: {}\n", `c.yml:3:1: duplicate mapping key "plugins"`, config.ErrInvalidConfig},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := config.Parse([]byte(tc.src), "c.yml")
			require.Error(t, err)
			require.True(t, strings.HasPrefix(err.Error(), tc.want), "got %q\nwant prefix %q", err.Error(), tc.want)
			require.ErrorIs(t, err, tc.is)
			var ce *config.Error
			require.ErrorAs(t, err, &ce)
		})
	}
}

func TestJSONConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := filepath.Join(dir, "cfg.json")
	require.NoError(t, os.WriteFile(p, []byte(`{"plugins":{"b":{"type":"builtin"}},"routes":{"/{*component}":[{"plugin":"b"}]}}`), 0o600))
	c, err := config.Load(p)
	require.NoError(t, err)
	require.Equal(t, "b", c.Plugins[0].Name)
	require.Equal(t, dir, c.Dir)

	// A JSON escape the YAML parser rejects is read by the JSON parser.
	require.NoError(t, os.WriteFile(p, []byte(`{"plugins":{"b":{"type":"builtin","x":"\/"}},"routes":{}}`), 0o600))
	_, err = config.Load(p)
	require.NoError(t, err)

	require.NoError(t, os.WriteFile(p, []byte(`{"plugins": {"b": [}`), 0o600))
	_, err = config.Load(p)
	require.ErrorIs(t, err, config.ErrInvalidConfig)
	require.Contains(t, err.Error(), "cfg.json:1:")

	_, err = config.Load(filepath.Join(dir, "missing.yml"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

func TestFromValue(t *testing.T) {
	t.Parallel()
	v := value.MustParse(`{"plugins":{"builtin":{"type":"builtin"},"m":{"type":"mock","components":{"/c":{"input_schema":{},"output_schema":{},"behaviors":{"x":{"outcome":"success","result":1}}}}}},
		"routes":{"/builtin/{component}":[{"plugin":"builtin"}],"/m/{component}":[{"plugin":"m"}]}}`)
	c, err := config.FromValue(v, "/flows/dir")
	require.NoError(t, err)
	require.Equal(t, "/flows/dir", c.Dir)
	require.Empty(t, c.File)
	require.Equal(t, "/flows/dir", c.WorkDir("/other", "/cwd"))
	require.Equal(t, "x", c.Plugins[1].Mock.Components[0].Behaviors[0].Input)

	_, err = config.FromValue(value.MustParse(`{"plugins":{"x":{"type":"nope"}},"routes":{}}`), "")
	require.EqualError(t, err, `$.plugins.x.type: unknown type "nope" for plugin "x" (expected builtin, stepflow, mcp, mock, grpc or nats)`)
}

func TestDefault(t *testing.T) {
	t.Parallel()
	c := config.Default()
	require.Len(t, c.Plugins, 1)
	require.Equal(t, config.TypeBuiltin, c.Plugins[0].Type)
	require.Equal(t, "builtin", c.Plugins[0].Name)
	require.Len(t, c.Routes, 1)
	require.Equal(t, "/builtin/{*component}", c.Routes[0].Pattern)
	require.Equal(t, "builtin", c.Routes[0].Rules[0].Plugin)
	require.Equal(t, config.StateStoreInMemory, c.StateStore.Type)
	require.Empty(t, c.Validate())
	require.Equal(t, "/flows", c.WorkDir("/flows", "/cwd"))
	require.Equal(t, "/cwd", c.WorkDir("", "/cwd"))
	// Default's raw form decodes to the same config.
	c2, err := config.FromValue(c.Raw, "")
	require.NoError(t, err)
	require.Equal(t, c.Plugins[0].Name, c2.Plugins[0].Name)
	require.Equal(t, c.Routes[0].Pattern, c2.Routes[0].Pattern)
}

func TestWorkDir(t *testing.T) {
	t.Parallel()
	c := &config.Config{Dir: "/cfg"}
	require.Equal(t, "/cfg", c.WorkDir("/flow", "/cwd"))
	c.WorkingDirectory = "/abs"
	require.Equal(t, "/abs", c.WorkDir("/flow", "/cwd"))
	c.WorkingDirectory = "../rel"
	require.Equal(t, "/rel", c.WorkDir("/flow", "/cwd"))
	c.Dir = ""
	require.Equal(t, "/rel", c.WorkDir("/flow", "/cwd"))
	require.Equal(t, "/cwd/sub", (&config.Config{WorkingDirectory: "sub"}).WorkDir("", "/cwd"))
}

func TestValidate(t *testing.T) {
	t.Parallel()
	src := "plugins:\n  a: {type: builtin}\n  unused: {type: builtin}\nroutes:\n  /x/{component}:\n    - plugin: a\n    - plugin: ghost\n"
	c, err := config.Parse([]byte(src), "c.yml")
	require.NoError(t, err)
	ds := c.Validate()
	require.Len(t, ds, 2)
	require.Equal(t, config.KindInvalidRouteReference, ds[0].Kind)
	require.Equal(t, 2200, ds[0].Code)
	require.Equal(t, flow.LevelError, ds[0].Level)
	require.Equal(t, "Route '/x/{component}' references unknown plugin 'ghost'", ds[0].Message)
	require.Equal(t, 7, ds[0].Pos.Line)
	require.Equal(t, `{"route_path":"/x/{component}","rule_index":1,"plugin":"ghost"}`, value.String(ds[0].Data))
	require.Equal(t, config.KindUnusedPlugin, ds[1].Kind)
	require.Equal(t, 1202, ds[1].Code)
	require.Equal(t, "Plugin 'unused' is not used by any route", ds[1].Message)
	require.Equal(t, value.Pos{Line: 3, Col: 11}, ds[1].Pos)
	require.Equal(t, flow.LevelWarning, ds[1].Level)
	require.Equal(t, `{"kind":"unusedPlugin","code":1202,"level":"warning","formatted":"Plugin 'unused' is not used by any route","data":{"plugin":"unused"},"path":"$.plugins.unused"}`,
		value.String(ds[1].JSON()))

	empty, err := config.Parse([]byte("plugins: {}\nroutes: {}\n"), "c.yml")
	require.NoError(t, err)
	ds = empty.Validate()
	require.Len(t, ds, 2)
	require.Equal(t, []int{1200, 1201}, []int{ds[0].Code, ds[1].Code})
	require.Equal(t, "No plugins configured", ds[0].Message)
	require.Equal(t, "No routing rules configured", ds[1].Message)
}

func TestDiscover(t *testing.T) {
	t.Parallel()
	flowDir, cwd := t.TempDir(), t.TempDir()
	write := func(dir, name string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte("plugins: {}\nroutes: {}\n"), 0o600))
		return p
	}

	p, err := config.Discover("", flowDir, cwd)
	require.NoError(t, err)
	require.Empty(t, p)

	inCwd := write(cwd, "stepflow_config.yaml")
	p, err = config.Discover("", flowDir, cwd)
	require.NoError(t, err)
	require.Equal(t, inCwd, p)

	inFlow := write(flowDir, "stepflow-config.yaml")
	p, err = config.Discover("", flowDir, cwd)
	require.NoError(t, err)
	require.Equal(t, inFlow, p)

	explicit := write(t.TempDir(), "custom.yml")
	p, err = config.Discover(explicit, flowDir, cwd)
	require.NoError(t, err)
	require.Equal(t, explicit, p)

	_, err = config.Discover(filepath.Join(cwd, "nope.yml"), flowDir, cwd)
	require.ErrorIs(t, err, os.ErrNotExist)

	write(flowDir, "stepflow-config.yml")
	_, err = config.Discover("", flowDir, cwd)
	require.ErrorIs(t, err, config.ErrMultipleConfigs)
	require.EqualError(t, err, "multiple stepflow config files found in "+flowDir+": stepflow-config.yml, stepflow-config.yaml")
	require.True(t, errors.Is(err, config.ErrMultipleConfigs))
}
