package plugin_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/plugin"
	"github.com/stepflow-go/stepflow/pkg/plugin/builtin"
	"github.com/stepflow-go/stepflow/pkg/value"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// upstreamDir is upstream Stepflow 0.9.0's tests directory, kept in the
// repository (relative to this package's directory, where go test runs).
func upstreamDir(t *testing.T) string {
	t.Helper()
	const dir = "../../test/conformance/upstream"
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("upstream tests missing from the repository: %v", err)
	}
	return dir
}

func newPlugins(t *testing.T, cfg *config.Config, opts plugin.Options) *plugin.Plugins {
	t.Helper()
	ps, err := plugin.New(context.Background(), cfg, opts)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, ps.Close()) })
	return ps
}

func execute(t *testing.T, ps *plugin.Plugins, path, input string) (outcome.Result, error) {
	t.Helper()
	in := value.MustParse(input)
	c, err := ps.Route(path, in)
	require.NoError(t, err)
	return c.Execute(context.Background(), &executor.Request{RunID: "r", StepID: "s", Path: path, Input: in, Attempt: 1})
}

func TestDefaultConfigRunsBuiltins(t *testing.T) {
	t.Parallel()
	ps := newPlugins(t, config.Default(), plugin.Options{})
	res, err := execute(t, ps, "/builtin/create_messages", `{"user_prompt":"Hello"}`)
	require.NoError(t, err)
	require.Equal(t, `{"messages":[{"role":"user","content":"Hello"}]}`, value.String(res.Value))

	// An unknown builtin routes, and fails when executed, as upstream.
	res, err = execute(t, ps, "/builtin/nope", `{}`)
	require.EqualError(t, err, `unknown component: /builtin/nope (plugin "builtin" has no component /nope)`)
	require.ErrorIs(t, err, plugin.ErrUnknownComponent)
	name, unknown := ps.Router().UnknownBuiltin("/builtin/nope")
	require.True(t, unknown)
	require.Equal(t, "/nope", name)
	require.False(t, res.Failed())

	_, err = ps.Route("/other/x", nil)
	var re *plugin.RouteError
	require.ErrorAs(t, err, &re)
	require.Equal(t, "no route matches component /other/x (routes: /builtin/{*component})", err.Error())

	require.True(t, ps.Routable("/builtin/eval"))
	require.False(t, ps.Routable("/python/x"))
	require.NotNil(t, ps.Plugin("builtin"))
	require.Nil(t, ps.Plugin("nope"))
	require.NotNil(t, ps.Router())
}

func TestLoadFileUsesWorkingDir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "in.json"), []byte(`[1]`), 0o600))
	cfg, err := config.FromValue(config.Default().Raw, dir)
	require.NoError(t, err)
	ps := newPlugins(t, cfg, plugin.Options{})
	res, err := execute(t, ps, "/builtin/load_file", `{"path":"in.json"}`)
	require.NoError(t, err)
	require.Equal(t, `{"data":[1],"metadata":{"resolved_path":"`+dir+`/in.json","size_bytes":3,"format":"json"}}`, value.String(res.Value))
}

func TestListComponents(t *testing.T) {
	t.Parallel()
	cfg, err := config.Load(filepath.Join(upstreamDir(t), "stepflow-config.yml"))
	require.NoError(t, err)
	ps := newPlugins(t, cfg, plugin.Options{})
	infos, err := ps.ListComponents(context.Background())
	require.NoError(t, err)
	require.Len(t, infos, 8)
	var names []string
	for _, i := range infos {
		names = append(names, i.Component)
		require.Equal(t, "builtin", i.Plugin)
		require.Len(t, i.Routes, 1)
		require.Equal(t, "/builtin"+i.Component, i.Routes[0].ResolvedPath)
	}
	require.Equal(t, []string{"/create_messages", "/eval", "/get_blob", "/iterate", "/load_file", "/map", "/openai", "/put_blob"}, names)
	js := value.String(infos[1].Value())
	require.True(t, strings.HasPrefix(js, `{"component":"/eval","description":"Execute a nested workflow with given input and return the result","input_schema":{`), js)
	require.True(t, strings.HasSuffix(js, `"plugin":"builtin","routes":[{"pathPattern":"/builtin/{*component}","resolvedPath":"/builtin/eval","conditions":[],"isConditional":false}]}`), js)
}

func TestListComponentsUnreachableAndSorted(t *testing.T) {
	t.Parallel()
	cfg := parseConfig(t, `
plugins:
  mock:
    type: mock
    components:
      /zeta: {input_schema: {}, output_schema: {}, behaviors: {}}
      /alpha: {input_schema: {type: object}, output_schema: {}, behaviors: {}}
  builtin: {type: builtin}
routes:
  "/mock/{component}": [{plugin: mock, componentDeny: [/zeta]}]
`)
	ps := newPlugins(t, cfg, plugin.Options{})
	infos, err := ps.ListComponents(context.Background())
	require.NoError(t, err)
	require.Len(t, infos, 10)
	require.Equal(t, "/alpha", infos[0].Component)
	require.Equal(t, `{"component":"/alpha","input_schema":{"type":"object"},"output_schema":{},"plugin":"mock","routes":[{"pathPattern":"/mock/{component}","resolvedPath":"/mock/alpha","conditions":[],"isConditional":false}]}`,
		value.String(infos[0].Value()))
	last := infos[len(infos)-1]
	require.Equal(t, "/zeta", last.Component)
	require.Empty(t, last.Routes, "denied")
	for _, i := range infos {
		if i.Plugin == "builtin" {
			require.Empty(t, i.Routes, "no route reaches the builtins")
		}
	}
}

type fakePlugin struct {
	name      string
	startErr  error
	log       *[]string
	component executor.Component
}

func (f *fakePlugin) Start(context.Context) error {
	*f.log = append(*f.log, "start "+f.name)
	return f.startErr
}

func (f *fakePlugin) Components(context.Context) ([]plugin.ComponentInfo, error) {
	return []plugin.ComponentInfo{{Component: "/x"}}, nil
}

func (f *fakePlugin) Component(name string) (executor.Component, error) {
	if name != "/x" {
		return nil, errors.New("transport down")
	}
	return f.component, nil
}

func (f *fakePlugin) Close() error {
	*f.log = append(*f.log, "close "+f.name)
	return nil
}

func TestFactoriesAndLifecycle(t *testing.T) {
	t.Parallel()
	src := `
plugins:
  one: {type: stepflow, url: "http://127.0.0.1:1"}
  two: {type: stepflow, url: "http://127.0.0.1:2"}
routes:
  "/one/{component}": [{plugin: one}]
  "/two/{component}": [{plugin: two}]
`
	cfg := parseConfig(t, src)

	// With the default factory, a remote server that is not there fails
	// to start, and the error names the plugin.
	_, err := plugin.New(context.Background(), cfg, plugin.Options{})
	require.Error(t, err)
	var pe *plugin.PluginError
	require.ErrorAs(t, err, &pe)
	require.Equal(t, "one", pe.Plugin)
	require.ErrorContains(t, err, `plugin "one"`)

	var log []string
	startErr := map[string]error{}
	factory := func(_ context.Context, pc *config.Plugin, h plugin.Host) (plugin.Plugin, error) {
		require.NotNil(t, h.Blobs)
		require.NotNil(t, h.Logger)
		require.NotNil(t, h.HTTPClient)
		require.NotEmpty(t, h.WorkingDir)
		require.Equal(t, config.TypeStepflow, pc.Type)
		return &fakePlugin{name: pc.Name, startErr: startErr[pc.Name], log: &log, component: builtinEcho{}}, nil
	}
	opts := plugin.Options{Factories: map[config.PluginType]plugin.Factory{config.TypeStepflow: factory}}
	ps, err := plugin.New(context.Background(), cfg, opts)
	require.NoError(t, err)
	c, err := ps.Route("/two/x", nil)
	require.NoError(t, err)
	require.Equal(t, builtinEcho{}, c)
	_, err = ps.Route("/two/y", nil)
	require.EqualError(t, err, `cannot route component /two/y to plugin "two": transport down`)
	require.NoError(t, ps.Close())
	require.NoError(t, ps.Close())
	require.Equal(t, []string{"start one", "start two", "close two", "close one"}, log)

	// A start failure closes what was started and names the plugin.
	log = nil
	startErr["two"] = errors.New("no port announced")
	_, err = plugin.New(context.Background(), cfg, opts)
	require.EqualError(t, err, `stepflow-config.yml:4:8: plugin "two": start: no port announced`)
	require.Equal(t, []string{"start one", "start two", "close two", "close one"}, log)
}

type builtinEcho struct{}

func (builtinEcho) Execute(_ context.Context, req *executor.Request) (outcome.Result, error) {
	return outcome.Success(req.Input), nil
}

func TestNewRejectsBadRoutes(t *testing.T) {
	t.Parallel()
	cfg := parseConfig(t, "plugins: {b: {type: builtin}}\nroutes: {\"/x/{component}\": [{plugin: ghost}]}\n")
	_, err := plugin.New(context.Background(), cfg, plugin.Options{})
	require.ErrorIs(t, err, plugin.ErrInvalidRoute)
}

func TestBuiltinErrorsKeepUpstreamWords(t *testing.T) {
	t.Parallel()
	ps := newPlugins(t, config.Default(), plugin.Options{LookupEnv: func(string) (string, bool) { return "", false }})
	_, err := execute(t, ps, "/builtin/create_messages", `{}`)
	require.ErrorIs(t, err, builtin.ErrInvalidInput)
	require.True(t, strings.HasPrefix(err.Error(), "invalid input"))
	_, err = execute(t, ps, "/builtin/openai", `{"messages":[]}`)
	require.ErrorIs(t, err, builtin.ErrMissingAPIKey)
}
