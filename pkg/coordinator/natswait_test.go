package coordinator_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/coordinator"
	"github.com/stepflow-go/stepflow/pkg/queue"
)

// freePort returns a TCP port nothing listens on at the moment.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, ln.Close())
	return port
}

// A coordinator started before its NATS server waits for it: meanwhile
// its REST API listens, /healthz answers, /readyz says it is not ready
// and why, and the API answers 503; once NATS is up, Start returns and
// the coordinator is ready.
func TestCoordinatorWaitsForNATS(t *testing.T) {
	t.Parallel()
	natsPort, httpPort := freePort(t), freePort(t)
	// Stopped after the coordinator (cleanups run last first).
	srv := queue.NewEmbedded(queue.EmbeddedConfig{StoreDir: t.TempDir(), Host: "127.0.0.1", Port: natsPort, Logger: testLogger(t)})
	t.Cleanup(srv.Shutdown)
	c, err := coordinator.New(coordinator.Config{
		DataDir: t.TempDir(), Host: "127.0.0.1", Port: httpPort, Logger: testLogger(t),
		NATSURL: fmt.Sprintf("nats://127.0.0.1:%d", natsPort), NATSConnect: queue.ConnectOptions{ReconnectWait: 50 * time.Millisecond},
	})
	require.NoError(t, err)
	started := make(chan error, 1)
	go func() { started <- c.Start(testCtx(t)) }()
	t.Cleanup(func() { require.NoError(t, c.Stop(context.Background())) })

	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	get := func(path string) (int, string) {
		resp, err := hc.Get(base + path)
		if err != nil {
			return 0, err.Error()
		}
		defer func() { _ = resp.Body.Close() }()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	// The listener comes up first (connection refused until then).
	require.Eventually(t, func() bool { code, _ := get("/healthz"); return code == http.StatusOK }, 30*time.Second, 20*time.Millisecond)
	code, body := get("/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "not ready: connecting to NATS\n", body)
	code, body = get("/api/v1/runs")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, body, "the coordinator is starting (connecting to NATS)")
	select {
	case err := <-started:
		t.Fatalf("Start returned without NATS: %v", err)
	default:
	}

	require.NoError(t, srv.Start(testCtx(t)))
	select {
	case err := <-started:
		require.NoError(t, err)
	case <-testCtx(t).Done():
		t.Fatal("Start never returned")
	}
	code, body = get("/readyz")
	require.Equal(t, http.StatusOK, code, body)
	code, body = get("/api/v1/runs")
	require.Equal(t, http.StatusOK, code, body)
	require.True(t, strings.HasPrefix(c.URL(), "http://127.0.0.1:"))
}

// Stop ends a Start that waits for NATS.
func TestStopWhileWaitingForNATS(t *testing.T) {
	t.Parallel()
	c, err := coordinator.New(coordinator.Config{
		DataDir: t.TempDir(), Host: "127.0.0.1", Logger: testLogger(t),
		NATSURL: fmt.Sprintf("nats://127.0.0.1:%d", freePort(t)), NATSConnect: queue.ConnectOptions{ReconnectWait: 50 * time.Millisecond},
	})
	require.NoError(t, err)
	started := make(chan error, 1)
	go func() { started <- c.Start(testCtx(t)) }()
	require.Eventually(t, func() bool {
		err := c.Ready()
		return err != nil && err.Error() == "connecting to NATS"
	}, 30*time.Second, 10*time.Millisecond)
	require.NoError(t, c.Stop(testCtx(t)))
	select {
	case err := <-started:
		require.Error(t, err)
	case <-testCtx(t).Done():
		t.Fatal("Start did not return")
	}
}
