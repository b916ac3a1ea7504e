package worker

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// flakyBlobs is a memory blob store whose next fail calls return err.
type flakyBlobs struct {
	blob.Store
	fail  int
	err   error
	calls int
}

func (f *flakyBlobs) Put(ctx context.Context, kind blob.Kind, data value.Value) (string, error) {
	f.calls++
	if f.fail > 0 {
		f.fail--
		return "", f.err
	}
	return f.Store.Put(ctx, kind, data)
}

func (f *flakyBlobs) Get(ctx context.Context, id string) (blob.Blob, error) {
	f.calls++
	if f.fail > 0 {
		f.fail--
		return blob.Blob{}, f.err
	}
	return f.Store.Get(ctx, id)
}

// The components' blob store waits out NATS trouble (no answer: a full
// store, no quorum) and fails at once on anything else.
func TestWaitingBlobs(t *testing.T) {
	ctx := context.Background()
	// An object store put whose acks did not come (what a full store
	// gives).
	flaky := &flakyBlobs{Store: blob.NewMemory(), fail: 2, err: fmt.Errorf("queue: store blob: %w", jetstream.ErrAsyncPublishTimeout)}
	b := waitingBlobs{store: flaky, log: zap.NewNop()}
	id, err := b.Put(ctx, blob.KindData, value.String("x"))
	require.NoError(t, err, "a put that timed out twice is tried again")
	require.Equal(t, 3, flaky.calls)

	flaky.fail, flaky.err, flaky.calls = 1, context.DeadlineExceeded, 0
	got, err := b.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, value.String("x"), got.Data)
	require.Equal(t, 2, flaky.calls)

	_, err = b.Get(ctx, blob.ID(value.String("never stored")))
	require.ErrorIs(t, err, blob.ErrNotFound, "not transient: at once")

	flaky.fail, flaky.err, flaky.calls = 1, errors.New("disk on fire"), 0
	_, err = b.Put(ctx, blob.KindData, value.String("y"))
	require.ErrorContains(t, err, "disk on fire")
	require.Equal(t, 1, flaky.calls)

	// The item's context ends the wait, with the last error.
	cctx, cancel := context.WithCancel(ctx)
	flaky.fail, flaky.err, flaky.calls = 1<<30, nats.ErrNoResponders, 0
	b.log = zap.NewNop()
	done := make(chan error, 1)
	go func() {
		_, err := b.Put(cctx, blob.KindData, value.String("z"))
		done <- err
	}()
	cancel()
	require.ErrorIs(t, <-done, nats.ErrNoResponders)
}

// Deferred puts are off when SDK workers on other machines use this
// worker's blob service (a nats plugin with listen): their next call may
// reach another worker.
func TestServesRemoteSDKWorkers(t *testing.T) {
	for _, tc := range []struct {
		cfg  string
		want bool
	}{
		{"plugins:\n  builtin: {type: builtin}\nroutes: {}\n", false},
		{"plugins:\n  py: {type: nats, url: \"nats://127.0.0.1:4222\", stream: T, command: python}\nroutes: {}\n", false},
		{"plugins:\n  py: {type: nats, url: \"nats://127.0.0.1:4222\", stream: T, listen: \"127.0.0.1:7837\"}\nroutes: {}\n", true},
	} {
		cfg, err := config.Parse([]byte(tc.cfg), "")
		require.NoError(t, err, tc.cfg)
		require.Equal(t, tc.want, servesRemoteSDKWorkers(cfg), tc.cfg)
	}
	require.False(t, servesRemoteSDKWorkers(nil))
}
