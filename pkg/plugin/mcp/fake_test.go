//go:build unix

package mcp_test

// Tests against testdata/fake_server.cjs, a scripted server for what the
// everything server does not do on demand.

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/plugin/mcp"
	"github.com/stepflow-go/stepflow/pkg/plugin/pluginapi"
	"github.com/stepflow-go/stepflow/pkg/value"
)

func TestFakeHandshakeAndPagination(t *testing.T) {
	t.Parallel()
	p := started(t, fake(t, "normal"), testOptions)

	infos, err := p.Components(context.Background())
	require.NoError(t, err)
	var names []string
	for _, info := range infos {
		names = append(names, info.Component)
	}
	// Five pages of two tools, in order.
	require.Equal(t, []string{"/ask", "/rpc-error", "/client-info", "/crash", "/no-content", "/garbage", "/args", "/hang", "/list-changed"}, names)
	require.Equal(t, "answers without content", findComponent(t, infos, "/no-content").Description)
	require.Nil(t, findComponent(t, infos, "/no-content").InputSchema)
	require.Equal(t, `{"type":"object"}`, value.String(findComponent(t, infos, "/ask").InputSchema))

	// What the server saw: our initialize, then notifications/initialized
	// before tools/list (which it refuses otherwise). It answered another
	// protocol version, which is accepted.
	res, err := call(t, p, "/client-info", `{}`)
	require.NoError(t, err)
	require.JSONEq(t, `{"initParams":{"protocolVersion":"2024-11-05","capabilities":{},"clientInfo":{"name":"stepflow-go","version":"`+mcp.ClientVersion+`"}},"initializedFirst":true}`,
		text(t, res.Value))
}

func TestFakeServerRequestsAreAnswered(t *testing.T) {
	t.Parallel()
	p := started(t, fake(t, "normal"), testOptions)
	// The server sends a log message and a progress notification (ignored),
	// then ping, roots/list and sampling/createMessage, and waits for the
	// answers.
	res, err := call(t, p, "/ask", `{}`)
	require.NoError(t, err)
	require.JSONEq(t, `[
		{"jsonrpc":"2.0","id":"s-1","result":{}},
		{"jsonrpc":"2.0","id":2,"error":{"code":-32601,"message":"Method not found: roots/list"}},
		{"jsonrpc":"2.0","id":3,"error":{"code":-32601,"message":"Method not found: sampling/createMessage"}}
	]`, text(t, res.Value))
}

func TestFakeRPCErrorIsAGoError(t *testing.T) {
	t.Parallel()
	p := started(t, fake(t, "normal"), testOptions)
	pid := mcp.ServerPID(p)
	res, err := call(t, p, "/rpc-error", `{}`)
	require.EqualError(t, err, `mcp tool "rpc-error": mcp error -32000: boom`)
	var rpcErr *mcp.RPCError
	require.ErrorAs(t, err, &rpcErr)
	require.Equal(t, int64(-32000), rpcErr.Code)
	require.Equal(t, `{"x":1}`, value.String(rpcErr.Data))
	require.False(t, res.Failed())
	require.Equal(t, pid, mcp.ServerPID(p), "a JSON-RPC error does not restart the server")
}

func TestFakeOutputs(t *testing.T) {
	t.Parallel()
	p := started(t, fake(t, "normal"), testOptions)

	// A result without content is the output as a whole.
	res, err := call(t, p, "/no-content", `{}`)
	require.NoError(t, err)
	require.Equal(t, `{"structuredContent":{"a":1}}`, value.String(res.Value))

	// Lines on stdout that are not JSON-RPC are skipped.
	res, err = call(t, p, "/garbage", `{}`)
	require.NoError(t, err)
	require.Equal(t, "after garbage", text(t, res.Value))

	// The input is sent as the arguments, keys in order; a null input
	// sends none.
	res, err = call(t, p, "/args", `{"b":1,"a":"x","c":[true,null]}`)
	require.NoError(t, err)
	require.Equal(t, `{"b":1,"a":"x","c":[true,null]}`, text(t, res.Value))
	res, err = call(t, p, "/args", ``)
	require.NoError(t, err)
	require.Equal(t, `"absent"`, text(t, res.Value))
}

func TestFakeCrashMidCall(t *testing.T) {
	t.Parallel()
	p := started(t, fake(t, "normal"), testOptions)
	pid := mcp.ServerPID(p)
	require.NoError(t, p.Health())

	_, err := call(t, p, "/crash", `{}`)
	require.ErrorIs(t, err, mcp.ErrServerExited)
	require.EqualError(t, err, `mcp tool "crash": mcp server exited (exit status 7); stderr: about to crash`)
	// Down until the next call restarts it.
	require.ErrorContains(t, p.Health(), `mcp server "test"`)

	// Concurrent calls after the crash share one restart.
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = call(t, p, "/args", `{}`)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	newPID := mcp.ServerPID(p)
	require.NotEqual(t, pid, newPID)
	require.True(t, processGone(pid))
	require.NoError(t, p.Health())
	require.NoError(t, p.Close())
	require.ErrorIs(t, p.Health(), mcp.ErrClosed)
}

func TestFakeCallerCancels(t *testing.T) {
	t.Parallel()
	p := newPlugin(t, fake(t, "normal"), pluginapi.Host{}, testOptions)
	hook, sent := sentSignals("tools/call")
	mcp.SetSentHook(p, hook)
	require.NoError(t, p.Start(context.Background()))
	pid := mcp.ServerPID(p)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := callCtx(ctx, t, p, "/hang", `{}`)
		done <- err
	}()
	<-sent
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)

	// The server is kept.
	_, err := call(t, p, "/args", `{}`)
	require.NoError(t, err)
	require.Equal(t, pid, mcp.ServerPID(p))
}

func TestFakeStartFailures(t *testing.T) {
	t.Parallel()
	t.Run("exits", func(t *testing.T) {
		t.Parallel()
		p := newPlugin(t, fake(t, "exit-at-start"), pluginapi.Host{}, testOptions)
		err := p.Start(context.Background())
		require.ErrorIs(t, err, mcp.ErrServerExited)
		require.EqualError(t, err, "initialize: mcp server exited (exit status 3); stderr: fatal: bad configuration")
		// Later calls try again (after the backoff) and fail the same way.
		_, err = call(t, p, "/x", `{}`)
		require.ErrorIs(t, err, mcp.ErrServerExited)
	})
	t.Run("no such command", func(t *testing.T) {
		t.Parallel()
		p := newPlugin(t, &config.MCPPlugin{Command: "./no-such-mcp-server", Args: []string{}}, pluginapi.Host{WorkingDir: t.TempDir()}, testOptions)
		err := p.Start(context.Background())
		require.Error(t, err)
		require.Contains(t, err.Error(), "start ./no-such-mcp-server")
	})
	t.Run("silent", func(t *testing.T) {
		t.Parallel()
		opts := testOptions
		opts.HandshakeTimeout = 200 * time.Millisecond
		p := newPlugin(t, fake(t, "silent"), pluginapi.Host{}, opts)
		err := p.Start(context.Background())
		require.ErrorIs(t, err, mcp.ErrTimeout)
		require.EqualError(t, err, "initialize: mcp call timed out: no answer to the handshake within 200ms")
	})
	t.Run("cancelled", func(t *testing.T) {
		t.Parallel()
		p := newPlugin(t, fake(t, "silent"), pluginapi.Host{}, testOptions)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		require.ErrorIs(t, p.Start(ctx), context.Canceled)
	})
	t.Run("not mcp", func(t *testing.T) {
		t.Parallel()
		_, err := mcp.New(&config.Plugin{Name: "x", Type: config.TypeBuiltin}, pluginapi.Host{}, mcp.Options{})
		require.Error(t, err)
		_, err = mcp.Factory(context.Background(), &config.Plugin{Name: "x", Type: config.TypeMCP, MCP: &config.MCPPlugin{}}, pluginapi.Host{})
		require.Error(t, err)
	})
}

func TestFakeNoTools(t *testing.T) {
	t.Parallel()
	p := started(t, fake(t, "no-tools"), testOptions)
	infos, err := p.Components(context.Background())
	require.NoError(t, err)
	require.Empty(t, infos)
}

func TestFakeCloseKillsAStubbornServer(t *testing.T) {
	t.Parallel()
	opts := testOptions
	opts.KillGrace = 100 * time.Millisecond
	p := newPlugin(t, fake(t, "ignore-term"), pluginapi.Host{}, opts)
	hook, sent := sentSignals("tools/call")
	mcp.SetSentHook(p, hook)
	require.NoError(t, p.Start(context.Background()))
	pid := mcp.ServerPID(p)

	done := make(chan error, 1)
	go func() {
		_, err := call(t, p, "/hang", `{}`)
		done <- err
	}()
	<-sent
	require.NoError(t, p.Close())
	require.ErrorIs(t, <-done, mcp.ErrClosed)
	require.True(t, processGone(pid), "SIGKILL after the grace period")

	_, err := call(t, p, "/args", `{}`)
	require.ErrorIs(t, err, mcp.ErrClosed)
	require.NoError(t, p.Close(), "Close is idempotent")
}

func TestFakeCloseDuringStart(t *testing.T) {
	t.Parallel()
	p := newPlugin(t, fake(t, "silent"), pluginapi.Host{}, testOptions)
	hook, sent := sentSignals("initialize")
	mcp.SetSentHook(p, hook)
	done := make(chan error, 1)
	go func() { done <- p.Start(context.Background()) }()
	<-sent
	require.NoError(t, p.Close())
	err := <-done
	require.True(t, errors.Is(err, mcp.ErrClosed), "%v", err)
}

// TestFakeListChanged checks that a tools/list_changed notification makes
// the next listing ask the server again.
func TestFakeListChanged(t *testing.T) {
	t.Parallel()
	p := started(t, fake(t, "normal"), testOptions)
	before, err := p.Components(context.Background())
	require.NoError(t, err)
	res, err := call(t, p, "/list-changed", `{}`)
	require.NoError(t, err)
	require.Equal(t, "announced", text(t, res.Value))
	after, err := p.Components(context.Background())
	require.NoError(t, err)
	require.Len(t, after, len(before)+1)
	findComponent(t, after, "/late")
}
