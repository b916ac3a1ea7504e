package queue_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/stepflow-go/stepflow/pkg/queue"
)

// A connection whose server has not answered JetStream for the whole
// window moves to another server of its list; answers in between, and
// errors that are not a lack of answer, reset or do not start the window.
func TestUnresponsiveMovesToAnotherServer(t *testing.T) {
	t.Parallel()
	a := queue.NewEmbedded(queue.EmbeddedConfig{StoreDir: t.TempDir()})
	b := queue.NewEmbedded(queue.EmbeddedConfig{StoreDir: t.TempDir()})
	require.NoError(t, a.Start(testCtx(t)))
	t.Cleanup(a.Shutdown)
	require.NoError(t, b.Start(testCtx(t)))
	t.Cleanup(b.Shutdown)

	moved := make(chan struct{}, 1)
	nc, err := nats.Connect(a.ClientURL()+","+b.ClientURL(), nats.DontRandomize(),
		nats.ReconnectHandler(func(*nats.Conn) { moved <- struct{}{} }))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	require.Equal(t, a.ClientURL(), nc.ConnectedUrl())

	now := time.Unix(1000, 0)
	u := queue.NewUnresponsive(nc, 10*time.Second, zaptest.NewLogger(t))
	queue.SetUnresponsiveClock(u, func() time.Time { return now })
	timeout := context.DeadlineExceeded

	require.False(t, u.Failed(timeout))
	now = now.Add(9 * time.Second)
	require.False(t, u.Failed(timeout), "within the window")
	u.OK()
	now = now.Add(5 * time.Second)
	require.False(t, u.Failed(timeout), "an answer started the window again")
	now = now.Add(20 * time.Second)
	require.False(t, u.Failed(errors.New("stream not found")), "not a lack of answer")
	require.True(t, u.Failed(timeout), "ten seconds without an answer")
	select {
	case <-moved:
	case <-testCtx(t).Done():
		t.Fatal("the connection did not move")
	}
	require.Equal(t, b.ClientURL(), nc.ConnectedUrl())

	// A single server: nowhere to move.
	single, err := nats.Connect(b.ClientURL())
	require.NoError(t, err)
	t.Cleanup(single.Close)
	us := queue.NewUnresponsive(single, time.Nanosecond, nil)
	require.False(t, us.Failed(timeout))
	require.False(t, us.Failed(timeout))
}
