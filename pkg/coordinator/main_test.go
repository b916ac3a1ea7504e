package coordinator_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/coordinator"
)

// Main prints the ready line first on stdout, serves until its context
// ends, and exits 0; logs go to stderr.
func TestMainReadyLineAndShutdown(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	outR, outW := io.Pipe()
	var stderr bytes.Buffer
	code := make(chan int, 1)
	go func() {
		code <- coordinator.Main(ctx, []string{"--port", "0", "--nats-port", "0", "--host", "127.0.0.1",
			"--data-dir", t.TempDir(), "--log-level", "warn", "--auth-token", "tok"}, outW, &stderr)
		_ = outW.Close()
	}()
	line, err := bufio.NewReader(outR).ReadString('\n')
	require.NoError(t, err, "stderr: %s", stderr.String())
	var ready coordinator.Ready
	require.NoError(t, json.Unmarshal([]byte(line), &ready))
	require.NotZero(t, ready.Port)
	require.True(t, strings.HasPrefix(ready.NATSURL, "nats://127.0.0.1:"), ready.NATSURL)
	require.Equal(t, fmt.Sprintf(`{"port":%d,"natsUrl":%q}`+"\n", ready.Port, ready.NATSURL), line)

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	for path, want := range map[string]int{"/api/v1/health": http.StatusOK, "/api/v1/runs": http.StatusUnauthorized} {
		resp, err := hc.Get(fmt.Sprintf("http://127.0.0.1:%d%s", ready.Port, path))
		require.NoError(t, err)
		_ = resp.Body.Close()
		require.Equal(t, want, resp.StatusCode, path)
	}

	cancel()
	go func() { _, _ = io.Copy(io.Discard, outR) }()
	require.Equal(t, coordinator.ExitOK, <-code)
}

// Usage errors exit 2 without starting anything.
func TestMainUsageErrors(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"--bogus"},
		{"--log-level", "loud"},
		{"--port", "-5", "--data-dir", t.TempDir()},
		{"--data-dir", ""},
		{"--nats-replicas", "7", "--data-dir", t.TempDir()},
		{"extra-arg"},
		{"--nats-sync", "sometimes", "--data-dir", t.TempDir()},
		{"--run-ack-wait", "100ms", "--data-dir", t.TempDir()},
		{"--run-max-deliver", "-2", "--data-dir", t.TempDir()},
		{"--nats-replicas", "7", "--data-dir", t.TempDir()},
	} {
		var stdout, stderr bytes.Buffer
		require.Equal(t, coordinator.ExitUsage, coordinator.Main(testCtx(t), args, &stdout, &stderr), "%v", args)
		require.Empty(t, stdout.String(), "%v", args)
		require.NotEmpty(t, stderr.String(), "%v", args)
	}
	var stdout, stderr bytes.Buffer
	require.Equal(t, coordinator.ExitOK, coordinator.Main(testCtx(t), []string{"--help"}, &stdout, &stderr))
	require.Contains(t, stderr.String(), "-nats-url")
}

// --nats-replicas reaches the provisioning of the streams: a single
// embedded server refuses replicated streams, so R3 fails the start with
// the server's reason, and the default (R1) starts.
func TestMainNATSReplicas(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	code := coordinator.Main(testCtx(t), []string{"--port", "0", "--nats-port", "0", "--host", "127.0.0.1",
		"--data-dir", t.TempDir(), "--log-level", "error", "--nats-replicas", "3"}, &stdout, &stderr)
	require.Equal(t, coordinator.ExitFailure, code, "stderr: %s", stderr.String())
	require.Empty(t, stdout.String())
	require.Contains(t, stderr.String(), "replicas")
}

// The request limits are flags with environment defaults, named in
// --help; a malformed value is a usage error naming the variable.
func TestMainLimitFlags(t *testing.T) {
	var stdout, stderr bytes.Buffer
	require.Equal(t, coordinator.ExitOK, coordinator.Main(testCtx(t), []string{"--help"}, &stdout, &stderr))
	for _, want := range []string{
		"-max-body-bytes int", "(env STEPFLOW_MAX_BODY_BYTES) (default 33554432)",
		"-max-flow-bytes int", "(env STEPFLOW_MAX_FLOW_BYTES) (default 4194304)",
		"-max-items-per-run int", "(env STEPFLOW_MAX_ITEMS_PER_RUN) (default 10000000)",
		"-max-active-runs int", "(env STEPFLOW_MAX_ACTIVE_RUNS) (default 64)",
		"-max-run-concurrency int", "(env STEPFLOW_MAX_RUN_CONCURRENCY) (default 10000)",
	} {
		require.Contains(t, stderr.String(), want)
	}

	// The environment sets the default (not t.Parallel: Setenv).
	t.Setenv("STEPFLOW_MAX_FLOW_BYTES", "1234")
	stderr.Reset()
	require.Equal(t, coordinator.ExitOK, coordinator.Main(testCtx(t), []string{"--help"}, &stdout, &stderr))
	require.Contains(t, stderr.String(), "(env STEPFLOW_MAX_FLOW_BYTES) (default 1234)")

	t.Setenv("STEPFLOW_MAX_ITEMS_PER_RUN", "lots")
	stderr.Reset()
	require.Equal(t, coordinator.ExitUsage, coordinator.Main(testCtx(t), []string{"--data-dir", t.TempDir()}, &stdout, &stderr))
	require.Equal(t, "coordinator: STEPFLOW_MAX_ITEMS_PER_RUN=\"lots\" is not an integer\n", stderr.String())

	t.Setenv("STEPFLOW_MAX_ITEMS_PER_RUN", "")
	stderr.Reset()
	require.Equal(t, coordinator.ExitUsage, coordinator.Main(testCtx(t), []string{"--data-dir", t.TempDir(), "--max-flow-bytes", "-1"}, &stdout, &stderr))
	require.Equal(t, "coordinator: invalid configuration: MaxFlowBytes (--max-flow-bytes) must be positive\n", stderr.String())
	require.Empty(t, stdout.String())
}
