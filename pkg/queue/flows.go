package queue

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stepflow-go/stepflow/pkg/blob"
)

// FlowStore keeps flows by content hash in the STEPFLOW_FLOWS bucket, so
// that every worker loads the flow a run names by its id. A flow's id is
// the lowercase hex SHA-256 of its canonical (compact, key-order
// preserving) JSON, as upstream computes it; storing the same flow twice
// is a no-op. It is safe for concurrent use.
type FlowStore struct {
	kv jetstream.KeyValue
}

// OpenFlowStore binds the flow bucket; ErrNotProvisioned when it does not
// exist.
func OpenFlowStore(ctx context.Context, js jetstream.JetStream) (*FlowStore, error) {
	kv, err := js.KeyValue(ctx, BucketFlows)
	if err != nil {
		return nil, notProvisioned("bucket "+BucketFlows, err)
	}
	return &FlowStore{kv: kv}, nil
}

// Put stores a flow given as canonical JSON (value.Marshal of the flow)
// and returns its id. A flow larger than the server's max_payload fails
// with ErrPayloadTooLarge.
func (s *FlowStore) Put(ctx context.Context, canonicalJSON []byte) (flowID string, err error) {
	id := blob.IDOf(canonicalJSON)
	_, err = s.kv.Create(ctx, id, canonicalJSON)
	switch {
	case err == nil, errors.Is(err, jetstream.ErrKeyExists):
		return id, nil // content-addressed: an existing key holds the same bytes
	case errors.Is(err, nats.ErrMaxPayload), errors.Is(err, jetstream.ErrStreamMessageExceedsMaximum):
		return "", fmt.Errorf("%w: flow %s is %d bytes: %w", ErrPayloadTooLarge, id, len(canonicalJSON), err)
	default:
		return "", fmt.Errorf("queue: store flow %s: %w", id, err)
	}
}

// Get returns the canonical JSON of flowID; ErrFlowNotFound when no such
// flow is stored (or the id is malformed).
func (s *FlowStore) Get(ctx context.Context, flowID string) ([]byte, error) {
	if !blob.ValidID(flowID) {
		return nil, fmt.Errorf("%w: malformed flow id %q", ErrFlowNotFound, flowID)
	}
	e, err := s.kv.Get(ctx, flowID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrFlowNotFound, flowID)
	}
	if err != nil {
		return nil, fmt.Errorf("queue: load flow %s: %w", flowID, err)
	}
	return e.Value(), nil
}
