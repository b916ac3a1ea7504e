package queue

import (
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// Errors callers branch on. Errors returned by this package wrap one of
// these (or a jetstream error) with %w.
var (
	// ErrInvalidRunID is returned for run ids that cannot be used in
	// subjects, consumer names and KV keys (see ValidateRunID).
	ErrInvalidRunID = errors.New("queue: invalid run id")
	// ErrInvalidConfig is returned for settings that JetStream would reject
	// or that break the package's guarantees; the message says which.
	ErrInvalidConfig = errors.New("queue: invalid configuration")
	// ErrNotProvisioned is returned when a stream, bucket or object store
	// does not exist: call Provision first (the coordinator does; workers
	// should wait and retry rather than create it).
	ErrNotProvisioned = errors.New("queue: not provisioned")
	// ErrRunNotFound is returned for a run id with no run record.
	ErrRunNotFound = errors.New("queue: run not found")
	// ErrRunExists is returned by RunStore.Create for a run id that
	// already has a record.
	ErrRunExists = errors.New("queue: run already exists")
	// ErrRevisionMismatch is returned by a compare-and-set whose expected
	// revision is no longer the latest: re-read and retry.
	ErrRevisionMismatch = errors.New("queue: revision mismatch")
	// ErrConsumerNotFound is returned when a run has no consumer.
	ErrConsumerNotFound = errors.New("queue: run consumer not found")
	// ErrFilterConflict is returned when a consumer's filter overlaps
	// another consumer's on the work-queue stream (JetStream allows only
	// one consumer per message on a work queue).
	ErrFilterConflict = errors.New("queue: consumer filter overlaps another consumer of the work queue")
	// ErrFlowNotFound is returned for a flow id with no stored flow.
	ErrFlowNotFound = errors.New("queue: flow not found")
	// ErrPayloadTooLarge is returned for a message larger than the server's
	// max_payload (or the stream's max message size) when no blob store
	// was given to offload it to.
	ErrPayloadTooLarge = errors.New("queue: message payload too large")
	// ErrBadMessage is returned for a message that does not decode.
	ErrBadMessage = errors.New("queue: malformed message")
)

// PublishError is returned by PublishItems when it stops before the end of
// its input. Every item with an index below ResumeFrom is stored on the
// stream; call PublishItems again with From = ResumeFrom to continue (items
// republished inside the duplicate window are not stored twice).
type PublishError struct {
	// ResumeFrom is the lowest index not known to be stored.
	ResumeFrom int
	// Err is the cause.
	Err error
}

func (e *PublishError) Error() string {
	return fmt.Sprintf("queue: publishing items stopped (resume from index %d): %v", e.ResumeFrom, e.Err)
}

// Unwrap returns the cause.
func (e *PublishError) Unwrap() error { return e.Err }

// JetStream API error codes this package maps onto its sentinels; the
// nats.go jetstream package does not export names for all of them.
const (
	errCodeWQConsumerNotUnique  jetstream.ErrorCode = 10100 // filtered consumer not unique on workqueue stream
	errCodeWQMultipleUnfiltered jetstream.ErrorCode = 10099 // multiple non-filtered consumers not allowed on workqueue stream
	errCodeClusterNotLeader     jetstream.ErrorCode = 10009 // JetStream cluster can not handle request (no leader)
	errCodeStreamOffline        jetstream.ErrorCode = 10118 // stream is offline
	errCodeClusterNoPeers       jetstream.ErrorCode = 10005 // no suitable peers for placement (a cluster still forming)
)

// apiCode returns the JetStream API error code in err, or 0.
func apiCode(err error) jetstream.ErrorCode {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode
	}
	return 0
}

// notProvisioned wraps err with ErrNotProvisioned when it says a stream or
// bucket is missing (for a publish: no stream answered).
func notProvisioned(what string, err error) error {
	if errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrBucketNotFound) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) {
		return fmt.Errorf("%w: %s: %w", ErrNotProvisioned, what, err)
	}
	return fmt.Errorf("queue: %s: %w", what, err)
}
