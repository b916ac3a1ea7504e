package cli

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/queue"
)

// A coordinator whose leadership lease another coordinator takes steps
// down and keeps running as a standby on the same port, forwarding to
// the new leader, and leads again once the lease is free: the command
// never exits for it.
func TestCoordinatorStandsByAfterLosingItsLease(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv := queue.NewEmbedded(queue.EmbeddedConfig{StoreDir: t.TempDir(), Logger: zap.NewNop()})
	require.NoError(t, srv.Start(ctx))
	t.Cleanup(srv.Shutdown)

	coord := startDaemon(t, ExecuteCoordinator, nil, "--nats-url", srv.ClientURL(), "--id", "a", "--lease-ttl", "1s",
		"--port", "0", "--host", "127.0.0.1", "--data-dir", filepath.Join(t.TempDir(), "data"), "--log-level", "info")
	ready := coord.ready(t)
	url := fmt.Sprintf("http://127.0.0.1:%d", ready.Port)
	get := func(path string) (int, string) {
		resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}).Get(url + path)
		if err != nil {
			return 0, err.Error()
		}
		_ = resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Stepflow-Forwarded-To")
	}
	code, _ := get("/api/v1/runs")
	require.Equal(t, http.StatusOK, code)

	nc, js, err := queue.Connect(ctx, srv.ClientURL(), queue.ConnectOptions{Name: t.Name()})
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	lease, err := queue.OpenLease(ctx, js)
	require.NoError(t, err)
	changes, err := lease.Changes(ctx)
	require.NoError(t, err)
	holder := func() string {
		h, ok, err := lease.Holder(ctx)
		require.NoError(t, err)
		if !ok {
			return ""
		}
		return h.ID
	}
	waitHolder := func(want string) {
		t.Helper()
		for holder() != want {
			select {
			case <-changes:
			case <-ctx.Done():
				t.Fatalf("the lease never went to %q: %s", want, coord.stderr.String())
			}
		}
	}

	// Another coordinator takes the lease (by force, as one that stalled
	// and came back might find it free).
	won, _, err := lease.Acquire(ctx, queue.Holder{ID: "b", URL: "http://127.0.0.1:1"}, true)
	require.NoError(t, err)
	require.True(t, won)
	for !strings.Contains(coord.stderr.String(), "standing by") {
		select {
		case <-ctx.Done():
			t.Fatalf("a never stood by: %s", coord.stderr.String())
		case <-time.After(50 * time.Millisecond): // a log in a buffer: no signal to wait on
		}
	}
	log := coord.stderr.String()
	require.Contains(t, log, "another coordinator took the leadership lease; stepping down to stand by")
	require.Contains(t, log, "the coordinator stepped down; starting again as a standby")
	// Same port; the API goes to the leader (which cannot be reached).
	code, fwd := get("/api/v1/runs")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "b", fwd)
	code, _ = get("/healthz")
	require.Equal(t, http.StatusOK, code)

	// The lease is free again: a takes it.
	require.NoError(t, lease.Release(ctx))
	waitHolder("a")
	require.Eventually(t, func() bool { code, _ := get("/api/v1/runs"); return code == http.StatusOK }, 30*time.Second, 50*time.Millisecond)
	require.Equal(t, ExitOK, coord.stop(t), coord.stderr.String())
}
