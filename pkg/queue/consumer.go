package queue

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Defaults of RunConsumerConfig.
const (
	// DefaultAckWait is how long an item may go without an ack or an
	// in-progress heartbeat before JetStream hands it to another worker:
	// the time to notice a crashed worker. Workers heartbeat every
	// HeartbeatInterval (a third of it), so a live item is never
	// redelivered however long it runs, and a missed heartbeat or two (a
	// GC pause, a slow network) is tolerated.
	DefaultAckWait = 30 * time.Second
	// DefaultMaxDeliver bounds deliveries of one item (first delivery,
	// redeliveries after a crash or timeout, and naks of retryable
	// failures): after that JetStream stops delivering it and emits the
	// max-deliveries advisory, which the coordinator turns into a failed
	// result. Five deliveries survive a few worker crashes without letting
	// a poison item (one that crashes every worker it reaches) circulate
	// for long.
	DefaultMaxDeliver = 5
)

// RunConsumerConfig configures a run's consumer.
type RunConsumerConfig struct {
	// MaxAckPending is the run's concurrency (required, at least 1): the
	// most items of the run delivered and not yet acked, across every
	// worker. The server enforces it; it can be changed while the run runs
	// (UpdateRunConcurrency). An item nak'ed with a delay still counts
	// against it until it is redelivered.
	MaxAckPending int
	// AckWait: see DefaultAckWait (the default).
	AckWait time.Duration
	// MaxDeliver: see DefaultMaxDeliver (the default); -1 = unlimited
	// (then no poison item is ever failed).
	MaxDeliver int
	// BackOff, when set, REPLACES AckWait per delivery: delivery n waits
	// BackOff[n-1] (the last value repeats) for an ack before redelivery,
	// and the server sets AckWait to BackOff[0]. It is not a delay between
	// deliveries; workers must heartbeat faster than its smallest value
	// (HeartbeatInterval accounts for it). Retry delays for failed items
	// belong in NakWithDelay. At most MaxDeliver entries. Default none.
	BackOff []time.Duration
}

// WithDefaults returns a copy with zero fields set to their defaults.
func (c RunConsumerConfig) WithDefaults() RunConsumerConfig {
	c.AckWait = cmp.Or(c.AckWait, DefaultAckWait)
	c.MaxDeliver = cmp.Or(c.MaxDeliver, DefaultMaxDeliver)
	return c
}

// Validate reports settings the server would reject or that break the
// package's guarantees.
func (c RunConsumerConfig) Validate() error {
	switch {
	case c.MaxAckPending < 1:
		return fmt.Errorf("%w: MaxAckPending (the run's concurrency) must be at least 1, not %d", ErrInvalidConfig, c.MaxAckPending)
	case c.AckWait < time.Second:
		return fmt.Errorf("%w: AckWait must be at least 1s, not %s", ErrInvalidConfig, c.AckWait)
	case c.MaxDeliver < -1 || c.MaxDeliver == 0:
		return fmt.Errorf("%w: MaxDeliver must be at least 1, or -1 for unlimited", ErrInvalidConfig)
	case c.MaxDeliver > 0 && len(c.BackOff) > c.MaxDeliver:
		return fmt.Errorf("%w: BackOff has %d entries, more than MaxDeliver %d", ErrInvalidConfig, len(c.BackOff), c.MaxDeliver)
	}
	for _, d := range c.BackOff {
		if d < time.Second {
			return fmt.Errorf("%w: BackOff entries must be at least 1s, not %s", ErrInvalidConfig, d)
		}
	}
	return nil
}

// HeartbeatInterval returns how often a worker sends an in-progress ack
// for a running item of a consumer with this config: a third of the
// shortest ack deadline, so that two heartbeats may be lost before the
// item is redelivered.
func (c RunConsumerConfig) HeartbeatInterval() time.Duration {
	c = c.WithDefaults()
	d := c.AckWait
	if len(c.BackOff) > 0 {
		d = slices.Min(c.BackOff)
	}
	return d / 3
}

func (c RunConsumerConfig) consumerConfig(runID string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       RunConsumer(runID),
		Description:   "stepflow run " + runID,
		FilterSubject: ItemSubject(runID),
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.AckWait,
		MaxDeliver:    c.MaxDeliver,
		BackOff:       c.BackOff,
		MaxAckPending: c.MaxAckPending,
		Metadata:      map[string]string{"stepflow-run": runID},
	}
}

// CreateRunConsumer creates runID's durable pull consumer on STEPFLOW_ITEMS
// (filter stepflow.items.<runID>, explicit acks, MaxAckPending = the run's
// concurrency), or updates it to cfg when it exists, so a restarted
// coordinator can call it again. Each run's filter is disjoint from every
// other's, which the work-queue stream requires; a consumer whose filter
// overlaps another's fails with ErrFilterConflict.
func CreateRunConsumer(ctx context.Context, js jetstream.JetStream, runID string, cfg RunConsumerConfig) (jetstream.Consumer, error) {
	if err := ValidateRunID(runID); err != nil {
		return nil, err
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c, err := js.CreateOrUpdateConsumer(ctx, StreamItems, cfg.consumerConfig(runID))
	if err != nil {
		return nil, consumerErr("create consumer for run "+runID, err)
	}
	return c, nil
}

// RunConsumerHandle returns runID's existing consumer, for workers to pull
// from; ErrConsumerNotFound when the run has none (finished or not yet
// created).
func RunConsumerHandle(ctx context.Context, js jetstream.JetStream, runID string) (jetstream.Consumer, error) {
	if err := ValidateRunID(runID); err != nil {
		return nil, err
	}
	c, err := js.Consumer(ctx, StreamItems, RunConsumer(runID))
	if err != nil {
		return nil, consumerErr("consumer of run "+runID, err)
	}
	return c, nil
}

// UpdateRunConcurrency sets runID's concurrency (its consumer's
// MaxAckPending) to n while the run runs; the other settings are kept.
// JetStream allows MaxAckPending to change on a live consumer: raising it
// serves waiting pulls at once; lowering it below the number of items in
// flight lets those finish and delivers nothing new until fewer than n
// remain. Concurrent updates of the same run's consumer race (last writer
// wins); the coordinator is the only writer.
func UpdateRunConcurrency(ctx context.Context, js jetstream.JetStream, runID string, n int) error {
	if err := ValidateRunID(runID); err != nil {
		return err
	}
	if n < 1 {
		return fmt.Errorf("%w: concurrency must be at least 1, not %d", ErrInvalidConfig, n)
	}
	c, err := js.Consumer(ctx, StreamItems, RunConsumer(runID))
	if err != nil {
		return consumerErr("consumer of run "+runID, err)
	}
	cc := c.CachedInfo().Config
	if cc.MaxAckPending == n {
		return nil
	}
	cc.MaxAckPending = n
	if _, err := js.UpdateConsumer(ctx, StreamItems, cc); err != nil {
		return consumerErr("update concurrency of run "+runID, err)
	}
	return nil
}

// DeleteRunConsumer deletes runID's consumer (when the run has finished or
// was cancelled). Items still on the stream stay there: see PurgeRunItems.
// Deleting a consumer that does not exist is not an error.
func DeleteRunConsumer(ctx context.Context, js jetstream.JetStream, runID string) error {
	if err := ValidateRunID(runID); err != nil {
		return err
	}
	err := js.DeleteConsumer(ctx, StreamItems, RunConsumer(runID))
	if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return consumerErr("delete consumer of run "+runID, err)
	}
	return nil
}

// PurgeRunItems removes every item of runID still on STEPFLOW_ITEMS
// (a cancelled run's backlog, or items left after max deliveries) and
// returns how many.
func PurgeRunItems(ctx context.Context, js jetstream.JetStream, runID string) (uint64, error) {
	s, n, err := runItems(ctx, js, runID)
	if err != nil {
		return 0, err
	}
	if err := s.Purge(ctx, jetstream.WithPurgeSubject(ItemSubject(runID))); err != nil {
		return 0, fmt.Errorf("queue: purge %s of run %s: %w", StreamItems, runID, err)
	}
	return n, nil
}

// RunItemsQueued returns how many of runID's items are on STEPFLOW_ITEMS
// (queued, in flight, or left after their maximum deliveries).
func RunItemsQueued(ctx context.Context, js jetstream.JetStream, runID string) (uint64, error) {
	_, n, err := runItems(ctx, js, runID)
	return n, err
}

// runItems returns STEPFLOW_ITEMS and how many of runID's items it holds.
func runItems(ctx context.Context, js jetstream.JetStream, runID string) (jetstream.Stream, uint64, error) {
	if err := ValidateRunID(runID); err != nil {
		return nil, 0, err
	}
	s, err := js.Stream(ctx, StreamItems)
	if err != nil {
		return nil, 0, notProvisioned("stream "+StreamItems, err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(ItemSubject(runID)))
	if err != nil {
		return nil, 0, fmt.Errorf("queue: stream %s: %w", StreamItems, err)
	}
	return s, info.State.Subjects[ItemSubject(runID)], nil
}

// consumerErr maps consumer API errors onto the package's sentinels.
func consumerErr(what string, err error) error {
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound), errors.Is(err, jetstream.ErrConsumerDoesNotExist):
		return fmt.Errorf("%w: %s: %w", ErrConsumerNotFound, what, err)
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return fmt.Errorf("%w: %s: %w", ErrNotProvisioned, what, err)
	}
	switch apiCode(err) {
	case errCodeWQConsumerNotUnique, errCodeWQMultipleUnfiltered:
		return fmt.Errorf("%w: %s: %w", ErrFilterConflict, what, err)
	}
	return fmt.Errorf("queue: %s: %w", what, err)
}
