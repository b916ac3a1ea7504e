package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// workersBucketConfig is the config of BucketWorkers: one key per live
// worker, only the latest heartbeat kept, expired WorkerTTL after the
// last put. File storage, like every bucket, so that the bucket survives
// a restart of the NATS server (its keys are refreshed within seconds
// anyway).
func workersBucketConfig(replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      BucketWorkers,
		Description: "stepflow worker heartbeats (protobuf WorkerStatus by worker key)",
		History:     1,
		TTL:         WorkerTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	}
}

// WorkerRegistry is where workers announce themselves: each puts its
// WorkerStatus under WorkerKey(id) every heartbeat interval and deletes
// it when it stops cleanly. It is safe for concurrent use.
type WorkerRegistry struct {
	kv jetstream.KeyValue
}

// OpenWorkerRegistry binds the worker bucket; ErrNotProvisioned when it
// does not exist (a coordinator older than the registry provisioned the
// layout).
func OpenWorkerRegistry(ctx context.Context, js jetstream.JetStream) (*WorkerRegistry, error) {
	kv, err := js.KeyValue(ctx, BucketWorkers)
	if err != nil {
		return nil, notProvisioned("bucket "+BucketWorkers, err)
	}
	return &WorkerRegistry{kv: kv}, nil
}

// Put stores st as its worker's latest heartbeat.
func (r *WorkerRegistry) Put(ctx context.Context, st *stepflowv1.WorkerStatus) error {
	if st.GetWorkerId() == "" {
		return fmt.Errorf("%w: worker status without a worker id", ErrInvalidConfig)
	}
	data, err := proto.Marshal(st)
	if err != nil {
		return fmt.Errorf("queue: encode worker status: %w", err)
	}
	if _, err := r.kv.Put(ctx, WorkerKey(st.GetWorkerId()), data); err != nil {
		return fmt.Errorf("queue: put heartbeat of worker %s: %w", st.GetWorkerId(), err)
	}
	return nil
}

// Delete removes workerID's heartbeat (a clean stop). Deleting a missing
// key is not an error.
func (r *WorkerRegistry) Delete(ctx context.Context, workerID string) error {
	if err := r.kv.Purge(ctx, WorkerKey(workerID)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("queue: delete heartbeat of worker %s: %w", workerID, err)
	}
	return nil
}

// WorkerEntry is one worker of the registry.
type WorkerEntry struct {
	// Status is the worker's latest heartbeat.
	Status *stepflowv1.WorkerStatus
	// Received is when the NATS server stored the heartbeat: the age of a
	// worker's last sign of life, measured without trusting the worker's
	// clock.
	Received time.Time
}

// ListWorkers returns the workers of the registry, by worker id. A worker
// that stopped cleanly is not listed; one that died is, until its key
// expires (WorkerTTL). A heartbeat that does not decode is skipped.
func ListWorkers(ctx context.Context, js jetstream.JetStream) ([]WorkerEntry, error) {
	kv, err := js.KeyValue(ctx, BucketWorkers)
	if err != nil {
		return nil, notProvisioned("bucket "+BucketWorkers, err)
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("queue: list workers: %w", err)
	}
	defer func() { _ = w.Stop() }()
	var out []WorkerEntry
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return nil, fmt.Errorf("queue: list workers: the watch ended early")
			}
			if e == nil { // every current key was delivered
				slices.SortFunc(out, func(a, b WorkerEntry) int {
					return strings.Compare(a.Status.GetWorkerId(), b.Status.GetWorkerId())
				})
				return out, nil
			}
			st := &stepflowv1.WorkerStatus{}
			if proto.Unmarshal(e.Value(), st) != nil || st.GetWorkerId() == "" {
				continue
			}
			out = append(out, WorkerEntry{Status: st, Received: e.Created()})
		case <-ctx.Done():
			return nil, fmt.Errorf("queue: list workers: %w", context.Cause(ctx))
		}
	}
}
