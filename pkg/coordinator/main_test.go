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
