//go:build unix

package mcp_test

// Tests against the reference server @modelcontextprotocol/server-everything
// from npm (pinned in test/mcp/package.json; `make mcp-deps` installs it).

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/plugin/mcp"
	"github.com/stepflow-go/stepflow/pkg/plugin/pluginapi"
	"github.com/stepflow-go/stepflow/pkg/value"
)

func TestEverythingToolsBecomeComponents(t *testing.T) {
	t.Parallel()
	p := started(t, everything(t), testOptions)

	infos, err := p.Components(context.Background())
	require.NoError(t, err)
	for _, info := range infos {
		require.True(t, strings.HasPrefix(info.Component, "/"), info.Component)
		require.NotNil(t, info.InputSchema, info.Component)
		require.Nil(t, info.OutputSchema, info.Component)
	}

	echo := findComponent(t, infos, "/echo")
	require.Equal(t, "Echoes back the input string", echo.Description)
	require.JSONEq(t,
		`{"$schema":"http://json-schema.org/draft-07/schema#","type":"object","properties":{"message":{"type":"string","description":"Message to echo"}},"required":["message"]}`,
		value.String(echo.InputSchema))
	// The schema keeps the server's key order.
	require.True(t, strings.HasPrefix(value.String(echo.InputSchema), `{"$schema":`))

	sum := findComponent(t, infos, "/get-sum")
	require.Equal(t, "Returns the sum of two numbers", sum.Description)
	require.JSONEq(t,
		`{"$schema":"http://json-schema.org/draft-07/schema#","type":"object","properties":{"a":{"type":"number","description":"First number"},"b":{"type":"number","description":"Second number"}},"required":["a","b"]}`,
		value.String(sum.InputSchema))
	findComponent(t, infos, "/get-env")
	findComponent(t, infos, "/trigger-long-running-operation")

	// A listing again gives the same tools.
	again, err := p.Components(context.Background())
	require.NoError(t, err)
	require.Len(t, again, len(infos))

	// Names that cannot be tools are unknown components.
	for _, name := range []string{"", "/", "echo"} {
		_, err := p.Component(name)
		require.ErrorIs(t, err, pluginapi.ErrUnknownComponent, name)
	}
}

func TestEverythingExecute(t *testing.T) {
	t.Parallel()
	p := started(t, everything(t), testOptions)

	res, err := call(t, p, "/echo", `{"message":"hi"}`)
	require.NoError(t, err)
	require.False(t, res.Failed())
	// The output is the result's content array, as upstream returns it.
	require.Equal(t, `[{"type":"text","text":"Echo: hi"}]`, value.String(res.Value))

	res, err = call(t, p, "/get-sum", `{"a":2,"b":3.5}`)
	require.NoError(t, err)
	require.Equal(t, "The sum of 2 and 3.5 is 5.5.", text(t, res.Value))

	// structuredContent is not part of the output; content is.
	res, err = call(t, p, "/get-structured-content", `{"location":"New York"}`)
	require.NoError(t, err)
	var weather map[string]any
	require.NoError(t, json.Unmarshal([]byte(text(t, res.Value)), &weather))
	require.Contains(t, weather, "temperature")

	// Non-ASCII text and a line far longer than any buffer survive.
	big := strings.Repeat("héllo wörld ", 100_000) // ~1.3 MB
	res, err = call(t, p, "/echo", value.String(value.ObjectOf("message", big)))
	require.NoError(t, err)
	require.Equal(t, "Echo: "+big, text(t, res.Value))
}

func TestEverythingToolError(t *testing.T) {
	t.Parallel()
	p := started(t, everything(t), testOptions)

	// Invalid arguments: the server answers isError: true.
	res, err := call(t, p, "/echo", `{}`)
	require.NoError(t, err)
	require.True(t, res.Failed())
	require.Equal(t, int64(outcome.CodeComponent), res.Err.Code)
	require.Equal(t, "Tool 'echo' execution failed", res.Err.Message)
	require.Contains(t, text(t, res.Err.Data), "Input validation error")

	// A tool the server does not have fails the same way.
	res, err = call(t, p, "/nope", `{}`)
	require.NoError(t, err)
	require.True(t, res.Failed())
	require.Equal(t, "Tool 'nope' execution failed", res.Err.Message)
	require.Contains(t, text(t, res.Err.Data), "Tool nope not found")

	// The server is still fine.
	res, err = call(t, p, "/echo", `{"message":"still here"}`)
	require.NoError(t, err)
	require.Equal(t, "Echo: still here", text(t, res.Value))
}

func TestEverythingConcurrentCalls(t *testing.T) {
	t.Parallel()
	p := started(t, everything(t), testOptions)
	pid := mcp.ServerPID(p)

	const n = 32
	var wg sync.WaitGroup
	errs := make([]error, n)
	got := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var res outcome.Result
			if i%2 == 0 {
				res, errs[i] = call(t, p, "/echo", fmt.Sprintf(`{"message":"call %d"}`, i))
			} else {
				res, errs[i] = call(t, p, "/get-sum", fmt.Sprintf(`{"a":%d,"b":1000}`, i))
			}
			if errs[i] == nil && !res.Failed() {
				got[i] = value.String(res.Value)
			}
		}()
	}
	wg.Wait()
	for i := range n {
		require.NoError(t, errs[i], "call %d", i)
		if i%2 == 0 {
			require.Equal(t, fmt.Sprintf(`[{"type":"text","text":"Echo: call %d"}]`, i), got[i])
		} else {
			require.Equal(t, fmt.Sprintf(`[{"type":"text","text":"The sum of %d and 1000 is %d."}]`, i, i+1000), got[i])
		}
	}
	require.Equal(t, pid, mcp.ServerPID(p), "one server served every call")
}

func TestEverythingKilledMidCallRestarts(t *testing.T) {
	t.Parallel()
	p := newPlugin(t, everything(t), pluginapi.Host{}, testOptions)
	hook, sent := sentSignals("tools/call")
	mcp.SetSentHook(p, hook)
	require.NoError(t, p.Start(context.Background()))
	pid := mcp.ServerPID(p)
	require.NotZero(t, pid)

	type result struct {
		res outcome.Result
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := call(t, p, "/trigger-long-running-operation", `{"duration":60,"steps":1}`)
		done <- result{res, err}
	}()
	<-sent // the call is in flight
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))

	r := <-done
	require.ErrorIs(t, r.err, mcp.ErrServerExited)
	require.Contains(t, r.err.Error(), `mcp tool "trigger-long-running-operation": mcp server exited (signal: killed)`)

	// The next call starts a new server.
	res, err := call(t, p, "/echo", `{"message":"again"}`)
	require.NoError(t, err)
	require.Equal(t, "Echo: again", text(t, res.Value))
	newPID := mcp.ServerPID(p)
	require.NotZero(t, newPID)
	require.NotEqual(t, pid, newPID)
	require.True(t, processGone(pid))

	infos, err := p.Components(context.Background())
	require.NoError(t, err)
	findComponent(t, infos, "/echo")
}

func TestEverythingTimeout(t *testing.T) {
	t.Parallel()
	mc := everything(t)
	mc.Timeout = 300 * time.Millisecond
	p := newPlugin(t, mc, pluginapi.Host{}, testOptions)
	require.NoError(t, p.Start(context.Background()))
	pid := mcp.ServerPID(p)

	res, err := call(t, p, "/trigger-long-running-operation", `{"duration":30,"steps":1}`)
	require.ErrorIs(t, err, mcp.ErrTimeout)
	require.EqualError(t, err, `mcp tool "trigger-long-running-operation": mcp call timed out after 300ms`)
	require.False(t, res.Failed())

	// The server was restarted: the next call gets a new one.
	res, err = call(t, p, "/echo", `{"message":"after timeout"}`)
	require.NoError(t, err)
	require.Equal(t, "Echo: after timeout", text(t, res.Value))
	require.NotEqual(t, pid, mcp.ServerPID(p))

	require.NoError(t, p.Close())
	require.True(t, processGone(pid), "the timed-out server was stopped")
}

func TestEverythingEnvWorkingDirAndStderr(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.DebugLevel)
	mc := &config.MCPPlugin{
		Command: node(t),
		// Relative to the working directory.
		Args: []string{"dist/index.js", "stdio"},
		Env:  []config.EnvVar{{Name: "MCP_TEST_VAR", Value: "hello"}, {Name: "MCP_TEST_OTHER", Value: "x=y"}},
	}
	// The runtime's environment, as the worker would see it: the base
	// variables pass, its secrets do not.
	runtimeEnv := map[string]string{
		"PATH": os.Getenv("PATH"), "HOME": "/home/stepflow", "LANG": "C.UTF-8",
		"STEPFLOW_AUTH_TOKEN": "leaked-token", "STEPFLOW_NATS_PASSWORD": "leaked-password", "AWS_SECRET_ACCESS_KEY": "leaked-key",
	}
	lookup := func(k string) (string, bool) { v, ok := runtimeEnv[k]; return v, ok }
	host := pluginapi.Host{WorkingDir: everythingDir(t), Logger: zap.New(core).With(zap.String("plugin", "everything")), LookupEnv: lookup}
	p := newPlugin(t, mc, host, testOptions)
	require.NoError(t, p.Start(context.Background()))

	res, err := call(t, p, "/get-env", `{}`)
	require.NoError(t, err)
	var env map[string]string
	require.NoError(t, json.Unmarshal([]byte(text(t, res.Value)), &env))
	require.Equal(t, "hello", env["MCP_TEST_VAR"])
	require.Equal(t, "x=y", env["MCP_TEST_OTHER"])
	require.Equal(t, runtimeEnv["PATH"], env["PATH"], "base variables are passed on")
	require.Equal(t, "/home/stepflow", env["HOME"])
	for k := range env {
		require.True(t, slices.Contains(config.BaseEnv, k) || strings.HasPrefix(k, "MCP_TEST_"), "%s reached the server", k)
	}

	require.NoError(t, p.Close())
	// The server's stderr went to the log, at debug level by default.
	lines := logs.FilterField(zap.String("stream", "stderr")).FilterMessage("Starting default (STDIO) server...").All()
	require.Len(t, lines, 1)
	require.Equal(t, zapcore.DebugLevel, lines[0].Level)
	require.Equal(t, "everything", lines[0].ContextMap()["plugin"])
}

func TestEverythingVerboseStderr(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.InfoLevel)
	host := pluginapi.Host{
		Logger: zap.New(core),
		LookupEnv: func(name string) (string, bool) {
			if name == "STEPFLOW_COMPONENT_STDERR" {
				return "verbose", true
			}
			return "", false
		},
	}
	p := newPlugin(t, everything(t), host, testOptions)
	require.NoError(t, p.Start(context.Background()))
	require.NoError(t, p.Close())
	lines := logs.FilterField(zap.String("stream", "stderr")).FilterMessage("Starting default (STDIO) server...").All()
	require.Len(t, lines, 1)
	require.Equal(t, zapcore.InfoLevel, lines[0].Level)
}
