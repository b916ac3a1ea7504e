//go:build unix

package mcp_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/plugin/mcp"
	"github.com/stepflow-go/stepflow/pkg/plugin/pluginapi"
	"github.com/stepflow-go/stepflow/pkg/value"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// everythingPackage is where `make mcp-deps` installs the reference MCP
// server, relative to this package.
const everythingPackage = "../../../test/mcp/node_modules/@modelcontextprotocol/server-everything"

// node returns the path of the node binary; the tests fail without it.
// Under go test -short (make check) the test skips: it runs the real MCP
// server in Node.js.
func node(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("short: runs the real MCP test server (Node.js)")
	}
	path, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node is not on PATH: the MCP tests need Node.js and the test server (run make mcp-deps): %v", err)
	}
	return path
}

// everythingDir returns the absolute directory of the installed
// @modelcontextprotocol/server-everything package; it fails the test when
// it is missing.
func everythingDir(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("short: runs the real MCP test server (Node.js)")
	}
	dir, err := filepath.Abs(everythingPackage)
	require.NoError(t, err)
	if _, err := os.Stat(filepath.Join(dir, "dist", "index.js")); err != nil {
		t.Fatalf("the MCP test server @modelcontextprotocol/server-everything is not installed in test/mcp: run make mcp-deps (%v)", err)
	}
	return dir
}

// everything is the plugin config that runs the everything server.
func everything(t *testing.T) *config.MCPPlugin {
	t.Helper()
	return &config.MCPPlugin{Command: node(t), Args: []string{filepath.Join(everythingDir(t), "dist", "index.js"), "stdio"}}
}

// fake is the plugin config that runs testdata/fake_server.cjs in mode.
func fake(t *testing.T, mode string) *config.MCPPlugin {
	t.Helper()
	script, err := filepath.Abs("testdata/fake_server.cjs")
	require.NoError(t, err)
	return &config.MCPPlugin{Command: node(t), Args: []string{script, mode}}
}

// testOptions keep restarts and kills quick.
var testOptions = mcp.Options{BackoffMin: 5 * time.Millisecond, BackoffMax: 50 * time.Millisecond, KillGrace: 2 * time.Second}

// newPlugin creates the plugin (not started) and closes it at the end.
func newPlugin(t *testing.T, mc *config.MCPPlugin, host pluginapi.Host, opts mcp.Options) *mcp.Plugin {
	t.Helper()
	if host.Logger == nil {
		host.Logger = zap.NewNop()
	}
	p, err := mcp.New(&config.Plugin{Name: "test", Type: config.TypeMCP, MCP: mc}, host, opts)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, p.Close()) })
	return p
}

// started is newPlugin plus Start.
func started(t *testing.T, mc *config.MCPPlugin, opts mcp.Options) *mcp.Plugin {
	t.Helper()
	p := newPlugin(t, mc, pluginapi.Host{}, opts)
	require.NoError(t, p.Start(context.Background()))
	return p
}

// call executes the component name of p with the JSON input.
func call(t *testing.T, p *mcp.Plugin, name, input string) (outcome.Result, error) {
	t.Helper()
	return callCtx(context.Background(), t, p, name, input)
}

func callCtx(ctx context.Context, t *testing.T, p *mcp.Plugin, name, input string) (outcome.Result, error) {
	t.Helper()
	c, err := p.Component(name)
	require.NoError(t, err)
	var in value.Value
	if input != "" {
		in = value.MustParse(input)
	}
	return c.Execute(ctx, &executor.Request{RunID: "run", StepID: "step", Path: "/mcp" + name, Input: in, Attempt: 1})
}

// text returns the text of the single text block of a content array.
func text(t *testing.T, content value.Value) string {
	t.Helper()
	arr, ok := content.([]value.Value)
	require.True(t, ok, "content is %s", value.String(content))
	require.Len(t, arr, 1, "content is %s", value.String(content))
	block, ok := arr[0].(*value.Object)
	require.True(t, ok)
	typ, _ := block.Get("type")
	require.Equal(t, "text", typ)
	s, _ := block.Get("text")
	require.IsType(t, "", s)
	return s.(string)
}

// sentSignals returns a hook that reports each written request or
// notification with the method on the returned channel.
func sentSignals(method string) (func(string), <-chan struct{}) {
	ch := make(chan struct{}, 64)
	return func(m string) {
		if m == method {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}, ch
}

// findComponent returns the component info with the name.
func findComponent(t *testing.T, infos []pluginapi.ComponentInfo, name string) pluginapi.ComponentInfo {
	t.Helper()
	for _, info := range infos {
		if info.Component == name {
			return info
		}
	}
	t.Fatalf("no component %s", name)
	return pluginapi.ComponentInfo{}
}

// processGone reports whether no process has the pid any more.
func processGone(pid int) bool {
	return syscall.Kill(pid, 0) == syscall.ESRCH
}
