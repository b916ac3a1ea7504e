package queue

import (
	"context"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/value"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// ResultOptions configures PublishResult. The zero value is usable.
type ResultOptions struct {
	// Subject overrides the result subject, normally the item's
	// reply_subject; it must be under stepflow.results. (captured by
	// STEPFLOW_RESULTS). Default ResultSubject(res.RunId).
	Subject string
	// Blobs receives results too large for one message: the published
	// result then carries ResultBlobId instead of Result (res itself is
	// not modified). Without it such a result fails with
	// ErrPayloadTooLarge.
	Blobs blob.Store
	// MaxPayload overrides the largest message in bytes; 0 = the server's
	// max_payload.
	MaxPayload int
}

// PublishResult publishes an item's result to STEPFLOW_RESULTS with header
// Nats-Msg-Id = <runID>.<index> and waits for the PubAck, so that a worker
// acks the item only once its result is stored. duplicate reports that a
// result for this index was already stored within the duplicate window (a
// re-executed item); the first result is kept and the item can be acked
// all the same.
func PublishResult(ctx context.Context, js jetstream.JetStream, res *stepflowv1.ItemResult, opts ResultOptions) (duplicate bool, err error) {
	runID := res.GetRunId()
	if err := ValidateRunID(runID); err != nil {
		return false, err
	}
	subject := opts.Subject
	if subject == "" {
		subject = ResultSubject(runID)
	}
	if !strings.HasPrefix(subject, ResultSubjectPrefix) || len(subject) == len(ResultSubjectPrefix) {
		return false, fmt.Errorf("%w: result subject %q is not under %s", ErrInvalidConfig, subject, ResultSubjects)
	}
	index := int(res.GetIndex())
	data, err := proto.Marshal(res)
	if err != nil {
		return false, fmt.Errorf("queue: encode result %d of run %s: %w", index, runID, err)
	}
	if limit := payloadLimit(js, opts.MaxPayload) - headerAllowance - len(subject); len(data) > limit {
		if opts.Blobs == nil {
			return false, fmt.Errorf("%w: result %d of run %s is %d bytes, the limit is %d (configure a blob store to offload large results)",
				ErrPayloadTooLarge, index, runID, len(data), limit)
		}
		v, err := value.Parse(res.GetResult())
		if err != nil {
			return false, fmt.Errorf("queue: result %d of run %s is not JSON: %w", index, runID, err)
		}
		id, err := opts.Blobs.Put(ctx, blob.KindData, v)
		if err != nil {
			return false, fmt.Errorf("queue: offload result %d of run %s: %w", index, runID, err)
		}
		small := proto.CloneOf(res)
		small.Result, small.ResultBlobId = nil, id
		if data, err = proto.Marshal(small); err != nil {
			return false, fmt.Errorf("queue: encode result %d of run %s: %w", index, runID, err)
		}
	}
	msg := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{
		jetstream.MsgIDHeader:          []string{MsgID(runID, index)},
		jetstream.ExpectedStreamHeader: []string{StreamResults},
	}}
	ack, err := js.PublishMsg(ctx, msg)
	if err != nil {
		return false, notProvisioned(fmt.Sprintf("publish result %d of run %s", index, runID), err)
	}
	return ack.Duplicate, nil
}

// DecodeResult decodes a result message's data.
func DecodeResult(data []byte) (*stepflowv1.ItemResult, error) {
	r := &stepflowv1.ItemResult{}
	if err := proto.Unmarshal(data, r); err != nil {
		return nil, fmt.Errorf("%w: result: %w", ErrBadMessage, err)
	}
	if err := ValidateRunID(r.GetRunId()); err != nil {
		return nil, fmt.Errorf("%w: result: %w", ErrBadMessage, err)
	}
	return r, nil
}

// ResultJSON returns the FlowResult JSON of r, reading it from blobs when
// it was offloaded.
func ResultJSON(ctx context.Context, r *stepflowv1.ItemResult, blobs blob.Store) ([]byte, error) {
	return loadJSON(ctx, r.GetResult(), r.GetResultBlobId(), blobs, "result")
}
