package queue

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// MaxDeliveriesEvent says that JetStream gave up delivering an item after
// its consumer's MaxDeliver deliveries: a poison item, or one whose
// workers kept crashing or timing out. The coordinator turns it into a
// failed result (ResultSource MAX_DELIVERIES) and then removes the message
// with DeleteItemMsg: a work-queue stream keeps a message that reached max
// deliveries (no consumer will deliver it again) until it is acked,
// terminated or deleted.
type MaxDeliveriesEvent struct {
	// RunID is the run, from the consumer name.
	RunID string
	// Index is the item's index; -1 when the message could not be read.
	Index int
	// StreamSeq is the item message's sequence in STEPFLOW_ITEMS.
	StreamSeq uint64
	// Deliveries is how often the item was delivered.
	Deliveries uint64
	// Time is when the server gave up.
	Time time.Time
	// Item is the decoded item; nil when the message is no longer on the
	// stream (a worker acked or terminated it meanwhile, or it was purged)
	// or did not decode. Err says which.
	Item *stepflowv1.Item
	// Err is why Item is nil; wraps jetstream.ErrMsgNotFound when the
	// message is gone.
	Err error
}

// maxDeliverAdvisory is the JSON of the server's max-deliveries advisory
// (io.nats.jetstream.advisory.v1.max_deliver).
type maxDeliverAdvisory struct {
	Type       string    `json:"type"`
	Time       time.Time `json:"timestamp"`
	Stream     string    `json:"stream"`
	Consumer   string    `json:"consumer"`
	StreamSeq  uint64    `json:"stream_seq"`
	Deliveries uint64    `json:"deliveries"`
}

// AdvisoryOptions configures WatchMaxDeliveries.
type AdvisoryOptions struct {
	// LookupTimeout bounds reading the item message for one event.
	// Default 5s.
	LookupTimeout time.Duration
	// Logger receives malformed advisories. Default: none.
	Logger *zap.Logger
}

// AdvisoryWatcher delivers max-deliveries events until Stop.
type AdvisoryWatcher struct {
	sub    *nats.Subscription
	cancel context.CancelFunc
	done   chan struct{}
}

// WatchMaxDeliveries subscribes to the max-deliveries advisories of every
// run consumer on STEPFLOW_ITEMS and calls handle for each, one at a time,
// on its own goroutine, after reading the item message by its stream
// sequence to learn the index. Interest is registered with the server
// before it returns.
//
// Advisories are plain NATS messages, not stored: one emitted while no
// coordinator listens is lost. The message itself stays on the work queue,
// so a coordinator that finds a run with no pending deliveries but items
// left on the stream can recover the same information.
func WatchMaxDeliveries(ctx context.Context, js jetstream.JetStream, handle func(context.Context, MaxDeliveriesEvent), opts AdvisoryOptions) (*AdvisoryWatcher, error) {
	nc := js.Conn()
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	log = log.Named("queue")
	sub, err := nc.SubscribeSync(MaxDeliveriesAdvisories)
	if err != nil {
		return nil, fmt.Errorf("queue: subscribe to max-deliveries advisories: %w", err)
	}
	// ctx is the watch's lifetime and usually has no deadline, which
	// FlushWithContext requires: bound the flush separately.
	fctx, fcancel := context.WithTimeout(ctx, cmp.Or(opts.LookupTimeout, 5*time.Second))
	err = nc.FlushWithContext(fctx)
	fcancel()
	if err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("queue: subscribe to max-deliveries advisories: %w", err)
	}
	lctx, cancel := context.WithCancel(ctx)
	w := &AdvisoryWatcher{sub: sub, cancel: cancel, done: make(chan struct{})}
	timeout := cmp.Or(opts.LookupTimeout, 5*time.Second)
	go func() {
		defer close(w.done)
		var stream jetstream.Stream
		for {
			msg, err := sub.NextMsgWithContext(lctx)
			if err != nil {
				if lctx.Err() == nil && !errors.Is(err, nats.ErrBadSubscription) && !errors.Is(err, nats.ErrConnectionClosed) {
					log.Error("max-deliveries advisories stopped", zap.Error(err))
				}
				return
			}
			var adv maxDeliverAdvisory
			if err := json.Unmarshal(msg.Data, &adv); err != nil {
				log.Warn("malformed max-deliveries advisory", zap.String("subject", msg.Subject), zap.Error(err))
				continue
			}
			runID, ok := RunIDFromConsumer(adv.Consumer)
			if !ok || adv.Stream != StreamItems {
				continue // not one of ours
			}
			ev := MaxDeliveriesEvent{RunID: runID, Index: -1, StreamSeq: adv.StreamSeq, Deliveries: adv.Deliveries, Time: adv.Time}
			gctx, gcancel := context.WithTimeout(lctx, timeout)
			if stream == nil {
				stream, err = js.Stream(gctx, StreamItems)
			}
			if err == nil {
				ev.Item, ev.Err = readItem(gctx, stream, adv.StreamSeq)
			} else {
				ev.Err = notProvisioned("stream "+StreamItems, err)
			}
			gcancel()
			if ev.Item != nil {
				ev.Index = int(ev.Item.GetIndex())
			}
			handle(lctx, ev)
		}
	}()
	return w, nil
}

// readItem reads and decodes the item message at seq.
func readItem(ctx context.Context, s jetstream.Stream, seq uint64) (*stepflowv1.Item, error) {
	raw, err := s.GetMsg(ctx, seq)
	if err != nil {
		return nil, fmt.Errorf("queue: item message %d: %w", seq, err)
	}
	return DecodeItem(raw.Data)
}

// Stop unsubscribes and waits until no handler runs. It is idempotent.
func (w *AdvisoryWatcher) Stop() {
	w.cancel()
	<-w.done
	_ = w.sub.Unsubscribe()
}

// DeleteItemMsg removes the item message at seq from STEPFLOW_ITEMS (after
// the coordinator has recorded a failed result for an item that reached
// max deliveries). Deleting a message that is already gone is not an
// error.
func DeleteItemMsg(ctx context.Context, js jetstream.JetStream, seq uint64) error {
	s, err := js.Stream(ctx, StreamItems)
	if err != nil {
		return notProvisioned("stream "+StreamItems, err)
	}
	err = s.DeleteMsg(ctx, seq)
	if err == nil || errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	// The delete error carries the server's "no message found" only as
	// text; ask whether the message is still there instead.
	if _, gerr := s.GetMsg(ctx, seq); errors.Is(gerr, jetstream.ErrMsgNotFound) {
		return nil
	}
	return fmt.Errorf("queue: delete item message %d: %w", seq, err)
}
