package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// StreamStats is the state of one stream of the layout.
type StreamStats struct {
	Name      string
	Messages  uint64
	Bytes     uint64
	Consumers int
	FirstSeq  uint64
	LastSeq   uint64
	// FirstTime is the time of the oldest message (zero when empty): on
	// STEPFLOW_ITEMS, how long the oldest queued item has waited.
	FirstTime time.Time
}

// Streams returns the state of STEPFLOW_ITEMS (results are not on a
// stream: they are requests to the coordinator). It reads stream info only: monitoring never adds a
// consumer (see the package documentation).
func Streams(ctx context.Context, js jetstream.JetStream) ([]StreamStats, error) {
	out := make([]StreamStats, 0, 1)
	for _, name := range []string{StreamItems} {
		s, err := js.Stream(ctx, name)
		if err != nil {
			return nil, notProvisioned("stream "+name, err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			return nil, fmt.Errorf("queue: stream %s: %w", name, err)
		}
		st := info.State
		ss := StreamStats{Name: name, Messages: st.Msgs, Bytes: st.Bytes, Consumers: st.Consumers,
			FirstSeq: st.FirstSeq, LastSeq: st.LastSeq}
		if st.Msgs > 0 {
			ss.FirstTime = st.FirstTime
		}
		out = append(out, ss)
	}
	return out, nil
}

// ConsumerStats is the state of one run's consumer on STEPFLOW_ITEMS.
type ConsumerStats struct {
	Name  string
	RunID string
	// NumPending: items on the stream not yet delivered (queued).
	NumPending uint64
	// NumAckPending: items delivered and not yet acked (in flight, plus
	// items nak'ed with a delay until they are redelivered).
	NumAckPending int
	// NumRedelivered: items in flight that were delivered more than once.
	NumRedelivered int
	// MaxAckPending: the run's concurrency.
	MaxAckPending int
	// NumWaiting: pull requests waiting on the consumer (idle worker
	// slots asking for this run's items).
	NumWaiting int
	// LastDelivered is when the consumer last delivered an item (zero
	// when never).
	LastDelivered time.Time
	// LastAcked is when an item of the run was last acked (zero when
	// never).
	LastAcked time.Time
}

// RunConsumers returns the state of every run consumer on STEPFLOW_ITEMS,
// by run id.
func RunConsumers(ctx context.Context, js jetstream.JetStream) ([]ConsumerStats, error) {
	s, err := js.Stream(ctx, StreamItems)
	if err != nil {
		return nil, notProvisioned("stream "+StreamItems, err)
	}
	lister := s.ListConsumers(ctx)
	var out []ConsumerStats
	for info := range lister.Info() {
		runID, ok := RunIDFromConsumer(info.Name)
		if !ok {
			continue
		}
		cs := ConsumerStats{
			Name: info.Name, RunID: runID,
			NumPending: info.NumPending, NumAckPending: info.NumAckPending,
			NumRedelivered: info.NumRedelivered, MaxAckPending: info.Config.MaxAckPending,
			NumWaiting: info.NumWaiting,
		}
		if info.Delivered.Last != nil {
			cs.LastDelivered = *info.Delivered.Last
		}
		if info.AckFloor.Last != nil {
			cs.LastAcked = *info.AckFloor.Last
		}
		out = append(out, cs)
	}
	if err := lister.Err(); err != nil && !errors.Is(err, jetstream.ErrEndOfData) {
		return nil, fmt.Errorf("queue: list consumers of %s: %w", StreamItems, err)
	}
	slices.SortFunc(out, func(a, b ConsumerStats) int { return strings.Compare(a.RunID, b.RunID) })
	return out, nil
}
