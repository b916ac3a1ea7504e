//go:build unix

package mcp_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/plugin"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// TestThroughPlugins runs the everything server as a configured `type: mcp`
// plugin: config.Parse, plugin.New, routing and a flow on the executor.
func TestThroughPlugins(t *testing.T) {
	t.Parallel()
	script := filepath.Join(everythingDir(t), "dist", "index.js")
	src := `
plugins:
  builtin:
    type: builtin
  everything:
    type: mcp
    command: ` + node(t) + `
    args: ["` + script + `", "stdio"]
    env:
      MCP_E2E: "${MCP_E2E_SOURCE:-from-default}"
routes:
  "/mcp/{*component}":
    - plugin: everything
  "/builtin/{*component}":
    - plugin: builtin
`
	cfg, err := config.Parse([]byte(src), "stepflow-config.yml", config.WithLookupEnv(func(string) (string, bool) { return "", false }))
	require.NoError(t, err)
	require.Equal(t, config.TypeMCP, cfg.Plugin("everything").Type)

	core, logs := observer.New(zapcore.DebugLevel)
	ps, err := plugin.New(context.Background(), cfg, plugin.Options{Logger: zap.New(core)})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, ps.Close()) })

	// Routing /mcp/echo reaches the tool echo.
	in := value.MustParse(`{"message":"routed"}`)
	c, err := ps.Route("/mcp/echo", in)
	require.NoError(t, err)
	res, err := c.Execute(context.Background(), &executor.Request{RunID: "r", StepID: "s", Path: "/mcp/echo", Input: in, Attempt: 1})
	require.NoError(t, err)
	require.Equal(t, `[{"type":"text","text":"Echo: routed"}]`, value.String(res.Value))

	// The configured env reached the server, with ${VAR:-default} applied.
	c, err = ps.Route("/mcp/get-env", value.NewObject(0))
	require.NoError(t, err)
	res, err = c.Execute(context.Background(), &executor.Request{RunID: "r", StepID: "s", Path: "/mcp/get-env", Input: value.NewObject(0), Attempt: 1})
	require.NoError(t, err)
	var env map[string]string
	require.NoError(t, json.Unmarshal([]byte(text(t, res.Value)), &env))
	require.Equal(t, "from-default", env["MCP_E2E"])

	// list-components shows the tools with their routes.
	infos, err := ps.ListComponents(context.Background())
	require.NoError(t, err)
	echo := findComponent(t, infos, "/echo")
	require.Equal(t, "everything", echo.Plugin)
	require.Len(t, echo.Routes, 1)
	require.Equal(t, "/mcp/echo", echo.Routes[0].ResolvedPath)
	require.NotNil(t, echo.InputSchema)
	findComponent(t, infos, "/eval") // the builtins are listed too

	// A flow: a tool error fails the step with the plugin's failure; the
	// other steps run.
	f, err := flow.Parse([]byte(`
schema: https://stepflow.org/schemas/v1/flow.json
steps:
  - id: sum
    component: /mcp/get-sum
    input:
      a: { $input: a }
      b: 2
  - id: echo
    component: /mcp/echo
    input:
      message: { $input: message }
output:
  sum: { $step: sum }
  echo: { $step: echo }
`), "flow.yaml")
	require.NoError(t, err)
	run, err := executor.New(executor.Config{Router: ps}).NewRun(executor.NewRunID(), f, nil)
	require.NoError(t, err)
	got := run.Execute(context.Background(), 0, value.MustParse(`{"a":40,"message":"flow"}`))
	require.False(t, got.Failed(), value.String(got.JSON()))
	require.Equal(t, `{"sum":[{"type":"text","text":"The sum of 40 and 2 is 42."}],"echo":[{"type":"text","text":"Echo: flow"}]}`, value.String(got.Value))

	got = run.Execute(context.Background(), 1, value.MustParse(`{"a":1,"message":7}`))
	require.True(t, got.Failed())
	require.Equal(t, "Tool 'echo' execution failed", got.Err.Message)

	// The server's stderr is logged under the plugin's name.
	require.NoError(t, ps.Close())
	lines := logs.FilterField(zap.String("stream", "stderr")).FilterMessage("Starting default (STDIO) server...").All()
	require.Len(t, lines, 1)
	require.Equal(t, "everything", lines[0].ContextMap()["plugin"])
}
