package worker

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// waitingBlobs is the blob store items use: for their offloaded inputs
// and for their components (the blob builtins, the blob API of component
// servers). A put or get that NATS cannot serve for now is tried again
// until it succeeds or the item's context ends: NATS may be giving no
// answer, its store may be full, or it may have no quorum. The item waits
// for NATS, heartbeating, instead of failing or using up a delivery for
// trouble that is not its own (an external nats-server whose store filled
// failed every item that stored a blob). What is not transient (an
// unknown blob, a bad kind) fails at once, as before.
type waitingBlobs struct {
	store blob.Store
	log   *zap.Logger
}

var _ blob.Store = waitingBlobs{}

func (b waitingBlobs) Put(ctx context.Context, kind blob.Kind, data value.Value) (string, error) {
	return untilAnswered(ctx, b.log, "store a blob", "", func() (string, error) { return b.store.Put(ctx, kind, data) })
}

func (b waitingBlobs) Get(ctx context.Context, id string) (blob.Blob, error) {
	return untilAnswered(ctx, b.log, "read a blob", id, func() (blob.Blob, error) { return b.store.Get(ctx, id) })
}

// untilAnswered calls f until it returns something other than a transient
// NATS error (queue.Transient) or ctx ends, pausing between attempts
// (retryPause, doubling up to resultRetryMax). id names the blob in logs
// ("" for a put).
func untilAnswered[T any](ctx context.Context, log *zap.Logger, what, id string, f func() (T, error)) (T, error) {
	pause := retryPause
	for attempt := 1; ; attempt++ {
		v, err := f()
		if err == nil || !queue.Transient(err) || ctx.Err() != nil {
			if err == nil && attempt > 1 {
				log.Info("NATS answered again", zap.String("what", what), zap.String("blob", id), zap.Int("attempts", attempt))
			}
			return v, err
		}
		lvl := zap.DebugLevel
		if attempt == 1 || attempt%20 == 0 {
			lvl = zap.WarnLevel
		}
		log.Log(lvl, "NATS cannot serve the blob store now (its store may be full, or it has no quorum); the item waits and tries again",
			zap.String("what", what), zap.String("blob", id), zap.Int("attempt", attempt), zap.Error(err))
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return v, err
		case <-t.C:
		}
		pause = min(2*pause, resultRetryMax)
	}
}
