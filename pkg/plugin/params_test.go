package plugin_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/plugin"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// paramsPlugin answers with the route params its components were made
// with ("-" for none).
type paramsPlugin struct{}

func (paramsPlugin) Start(context.Context) error                                { return nil }
func (paramsPlugin) Close() error                                               { return nil }
func (paramsPlugin) Components(context.Context) ([]plugin.ComponentInfo, error) { return nil, nil }
func (paramsPlugin) Component(name string) (executor.Component, error) {
	return echoParams(name + " -"), nil
}
func (paramsPlugin) ComponentWithParams(name string, p map[string]string) (executor.Component, error) {
	return echoParams(fmt.Sprintf("%s %v", name, p)), nil
}

type echoParams string

func (e echoParams) Execute(context.Context, *executor.Request) (outcome.Result, error) {
	return outcome.Success(string(e)), nil
}

// A rule's params (upstream 0.13: `params.queueName`) reach plugins that
// take them; prefix routes hand the rest of the path to the plugin.
func TestRouteParamsReachPlugin(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse([]byte(`
plugins:
  w: { type: grpc }
  b: { type: builtin }
routes:
  "/ml": [{ plugin: w, params: { queueName: gpu } }]
  "/py": [{ plugin: w }]
  "/": [{ plugin: b }]
`), "cfg.yml")
	require.NoError(t, err)
	ps := newPlugins(t, cfg, plugin.Options{Factories: map[config.PluginType]plugin.Factory{
		config.TypeGRPC: func(context.Context, *config.Plugin, plugin.Host) (plugin.Plugin, error) { return paramsPlugin{}, nil },
	}})
	res, err := execute(t, ps, "/ml/train/x", `{}`)
	require.NoError(t, err)
	require.Equal(t, value.Value("/train/x map[queueName:gpu]"), res.Value)
	res, err = execute(t, ps, "/py/echo", `{}`)
	require.NoError(t, err)
	require.Equal(t, value.Value("/echo -"), res.Value)
	res, err = execute(t, ps, "/create_messages", `{"user_prompt":"Hi"}`)
	require.NoError(t, err, "/ routes the whole path to the builtins")
	require.Equal(t, `{"messages":[{"role":"user","content":"Hi"}]}`, value.String(res.Value))
}
