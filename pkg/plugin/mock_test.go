package plugin_test

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/plugin"
	"github.com/stepflow-go/stepflow/pkg/value"
)

func TestMockPluginUpstreamConfig(t *testing.T) {
	t.Parallel()
	cfg, err := config.Load(filepath.Join(upstreamDir(t), "mock", "stepflow-config.yml"))
	require.NoError(t, err)
	ps := newPlugins(t, cfg, plugin.Options{})

	res, err := execute(t, ps, "/mock/one_output", `{"input":"a"}`)
	require.NoError(t, err)
	require.Equal(t, `{"outcome":"success","result":{"output":"b"}}`, value.String(res.JSON()))

	res, err = execute(t, ps, "/mock/two_outputs", `{"input":"world"}`)
	require.NoError(t, err)
	require.Equal(t, `{"x":2,"y":8}`, value.String(res.Value))

	res, err = execute(t, ps, "/mock/handle_skip", `{"input":null}`)
	require.NoError(t, err)
	require.Equal(t, `{"output":"received null"}`, value.String(res.Value))

	// A failed behaviour keeps its own code and message.
	res, err = execute(t, ps, "/mock/error", `{"mode":"error"}`)
	require.NoError(t, err)
	require.Equal(t, `{"outcome":"failed","error":{"code":8,"message":"error"}}`, value.String(res.JSON()))

	// No behaviour: an execution error with upstream's text.
	_, err = execute(t, ps, "/mock/one_output", `{"input":"zzz"}`)
	require.ErrorIs(t, err, plugin.ErrNoBehavior)
	require.EqualError(t, err, `No behavior defined for /one_output on {"input":"zzz"}`)

	// The route is /mock/{component}: one segment only.
	_, err = ps.Route("/mock/a/b", nil)
	require.Error(t, err)

	_, err = execute(t, ps, "/mock/unknown", `{}`)
	require.ErrorIs(t, err, plugin.ErrUnknownComponent)
}

func TestMockErrorBehavior(t *testing.T) {
	t.Parallel()
	cfg := parseConfig(t, `
plugins:
  m:
    type: mock
    components:
      /c:
        input_schema: {}
        output_schema: {}
        behaviors:
          { mode: "boom" }: { error: "internal failure" }
          { mode: 1.0 }: { outcome: success, result: float }
routes:
  "/m/{component}": [{plugin: m}]
`)
	ps := newPlugins(t, cfg, plugin.Options{})
	_, err := execute(t, ps, "/m/c", `{"mode":"boom"}`)
	var me *plugin.MockError
	require.ErrorAs(t, err, &me)
	require.EqualError(t, err, "internal failure")

	// Exact JSON equality: 1 is not 1.0.
	_, err = execute(t, ps, "/m/c", `{"mode":1}`)
	require.ErrorIs(t, err, plugin.ErrNoBehavior)
	res, err := execute(t, ps, "/m/c", `{"mode":1.0}`)
	require.NoError(t, err)
	require.Equal(t, "float", res.Value)
}
