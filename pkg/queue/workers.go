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
	// The keys from the stream's subjects, then each key's latest value:
	// a watch's "all delivered" marker can come before a key that a
	// worker's heartbeat rewrote meanwhile (its message moved to the end),
	// and a busy registry is rewritten all the time. Workers are few.
	st, err := js.Stream(ctx, "KV_"+BucketWorkers)
	if err != nil {
		return nil, notProvisioned("bucket "+BucketWorkers, err)
	}
	prefix := "$KV." + BucketWorkers + "."
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(prefix+">"))
	if err != nil {
		return nil, fmt.Errorf("queue: list workers: %w", err)
	}
	out := make([]WorkerEntry, 0, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		e, err := kv.Get(ctx, strings.TrimPrefix(subj, prefix))
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			continue // expired or deleted meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("queue: list workers: %w", err)
		}
		st := &stepflowv1.WorkerStatus{}
		if proto.Unmarshal(e.Value(), st) != nil || st.GetWorkerId() == "" {
			continue
		}
		out = append(out, WorkerEntry{Status: st, Received: e.Created()})
	}
	slices.SortFunc(out, func(a, b WorkerEntry) int {
		return strings.Compare(a.Status.GetWorkerId(), b.Status.GetWorkerId())
	})
	return out, nil
}
