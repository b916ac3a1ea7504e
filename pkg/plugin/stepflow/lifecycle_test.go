package stepflow_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/plugin"
	"github.com/stepflow-go/stepflow/pkg/plugin/pluginapi"
	"github.com/stepflow-go/stepflow/pkg/plugin/stepflow"
)

// startPlugin builds and starts a stepflow plugin from a config entry
// written in YAML (indented under `plugins: p:`).
func startPlugin(t *testing.T, entry string, opts stepflow.Options) (*stepflow.Plugin, error) {
	t.Helper()
	cfg, err := config.Parse([]byte("plugins:\n  p:\n"+entry+"routes: {}\n"), filepath.Join(testdataDir(t), "c.yml"))
	require.NoError(t, err)
	p, err := stepflow.New(cfg.Plugins[0], pluginapi.Host{WorkingDir: testdataDir(t), Logger: zaptest.NewLogger(t)}, opts)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, p.Close()) })
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	return p, p.Start(ctx)
}

// TestStartFailures: launch problems are Start errors that say what
// happened, and leave nothing running (goleak).
func TestStartFailures(t *testing.T) {
	t.Parallel()
	py := sdkHTTP.python(t)
	cases := []struct {
		name, entry, want string
		opts              stepflow.Options
	}{
		{"missing command", "    type: stepflow\n    command: ./no-such-server\n", `command "./no-such-server"`, fastOptions},
		{"exits", fmt.Sprintf("    type: stepflow\n    command: %q\n    args: [-c, 'import sys; sys.exit(4)']\n", py),
			"process exited: exit status 4 before announcing its port", fastOptions},
		{"no port", fmt.Sprintf("    type: stepflow\n    command: %q\n    args: [-c, 'print(\"hello\", flush=True); import time; time.sleep(60)']\n", py),
			`no {"port": N} line on stdout within 300ms`, stepflow.Options{PortTimeout: 300 * time.Millisecond}},
		{"health", fmt.Sprintf("    type: stepflow\n    command: %q\n    args: [http_server.py]\n    healthCheck: {path: /nope, timeoutMs: 500, retryDelayMs: 50}\n", py),
			"health check /nope did not succeed within 500ms", fastOptions},
		{"stdio exits", fmt.Sprintf("    type: stepflow\n    transport: stdio\n    command: %q\n    args: [-c, 'import sys; sys.exit(5)']\n", py),
			"initialize: process exited: exit status 5", fastOptions},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			_, err := startPlugin(t, c.entry, c.opts)
			require.ErrorContains(t, err, c.want)
		})
	}
}

// TestRestartFailure: when the server cannot be restarted, calls fail at
// once with the restart's error instead of waiting, and Close still
// stops the supervisor while it backs off.
func TestRestartFailure(t *testing.T) {
	t.Parallel()
	e := newEnv(t, sdkHTTP, envOptions{extraEnv: map[string]string{"START_ONCE": "1"}})
	e.mustCall("/echo", `{}`)
	_, err := e.call("/die", `{}`)
	require.ErrorIs(t, err, stepflow.ErrServerFailed)
	_, err = e.call("/echo", `{}`)
	require.ErrorIs(t, err, stepflow.ErrServerFailed)
	require.ErrorContains(t, err, "restart failed: process exited: exit status 7 before announcing its port")
	require.GreaterOrEqual(t, e.startCount(), 2)
}

// TestHealth: the plugin reports its server down from its death until
// a restarted server is up, for good once a restart failed, and once
// closed; package plugin lists it by name.
func TestHealth(t *testing.T) {
	t.Parallel()
	t.Run("restarted", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, sdkHTTP, envOptions{})
		require.NoError(t, e.sp.Health())
		require.Equal(t, []plugin.PluginHealth{{Plugin: "python"}}, e.plugins.Health())
		_, err := e.call("/die", `{}`)
		require.ErrorIs(t, err, stepflow.ErrServerFailed)
		// The failed call killed the instance: down at once.
		err = e.sp.Health()
		require.ErrorIs(t, err, stepflow.ErrServerFailed)
		require.ErrorContains(t, err, "restarting")
		require.Eventually(t, func() bool { return e.sp.Health() == nil }, testTimeout, 10*time.Millisecond, "up again")
		e.mustCall("/echo", `{}`)
		require.NoError(t, e.plugins.Close())
		require.ErrorIs(t, e.sp.Health(), stepflow.ErrClosed)
		hs := e.plugins.Health()
		require.Len(t, hs, 1)
		require.ErrorIs(t, hs[0].Err, stepflow.ErrClosed)
	})
	t.Run("restart fails", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, sdkHTTP, envOptions{extraEnv: map[string]string{"START_ONCE": "1"}})
		require.NoError(t, e.sp.Health())
		_, err := e.call("/die", `{}`)
		require.ErrorIs(t, err, stepflow.ErrServerFailed)
		require.Eventually(t, func() bool {
			err := e.sp.Health()
			return err != nil && strings.Contains(err.Error(), "restart failed: process exited: exit status 7")
		}, testTimeout, 10*time.Millisecond, "down with the restart's error")
	})
}
