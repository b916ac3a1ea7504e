package queue_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/test/diskfull"
)

// nats-server turns JetStream off for good when its store runs out of
// space; the embedded server says so in Health and turns it on again,
// with every stream recovered, once there is space: no restart.
func TestEmbeddedJetStreamResumesWhenSpaceReturns(t *testing.T) {
	t.Parallel()
	store := diskfull.Mount(t, 24<<20)
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	srv := queue.NewEmbedded(queue.EmbeddedConfig{
		StoreDir: store, ResumeFreeBytes: 4 << 20, ResumeCheckEvery: 20 * time.Millisecond, Logger: log,
	})
	require.NoError(t, srv.Start(testCtx(t)))
	t.Cleanup(srv.Shutdown)
	require.NoError(t, srv.Health())

	ctx := testCtx(t)
	nc, js, err := queue.Connect(ctx, srv.ClientURL(), queue.ConnectOptions{Name: t.Name(), Logger: log})
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: "FILL", Subjects: []string{"fill.>"}, Storage: jetstream.FileStorage})
	require.NoError(t, err)
	payload := []byte(strings.Repeat("x", 32<<10))
	stored := 0
	filler := diskfull.Fill(t, store, 1<<20)
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := js.Publish(pctx, "fill.a", payload)
		cancel()
		if err != nil {
			break
		}
		stored++
		require.Less(t, stored, 10000, "the store never filled")
	}
	require.Eventually(t, func() bool { return srv.Health() != nil }, 30*time.Second, 10*time.Millisecond)
	require.ErrorIs(t, srv.Health(), queue.ErrJetStreamOff)
	require.Contains(t, srv.Health().Error(), "ran out of space")

	require.NoError(t, os.Remove(filler))
	require.Eventually(t, func() bool { return srv.Health() == nil }, 30*time.Second, 10*time.Millisecond)
	var info *jetstream.StreamInfo
	require.Eventually(t, func() bool {
		s, err := js.Stream(ctx, "FILL")
		if err != nil {
			return false
		}
		info, err = s.Info(ctx)
		return err == nil
	}, 30*time.Second, 20*time.Millisecond)
	require.GreaterOrEqual(t, info.State.Msgs, uint64(stored), "every acknowledged message is still there")
	_, err = js.Publish(ctx, "fill.a", payload)
	require.NoError(t, err, "JetStream takes writes again")
}
