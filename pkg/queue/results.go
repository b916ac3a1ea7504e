package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/value"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// Results travel as core NATS requests, not through a stream: a worker
// sends an item's ItemResult to ResultSubject(runID) and the coordinator
// that leads (the only member of ResultsQueueGroup subscribed) appends it
// to the run's result log in a group commit and answers once it is
// durable. The worker acks the item only after that answer, so a result
// is stored exactly once in the log (the first per index wins) and an
// item whose result was not confirmed is executed again.
//
// The answer is an empty message whose ResultStatusHeader says what
// became of the result, or whose ResultErrorHeader says why it could not
// be stored (a full disk, a run store not answering): the worker keeps
// the result and asks again.

// Headers of the coordinator's answer to a result.
const (
	// ResultStatusHeader is set on a positive answer: one of the
	// ResultStatus values.
	ResultStatusHeader = "Stepflow-Result"
	// ResultErrorHeader is set instead when the result was not stored;
	// its value says why. The sender keeps the result and retries.
	ResultErrorHeader = "Stepflow-Result-Error"
	// ItemAckedHeader is set on a positive answer when the coordinator
	// acked the item itself (ItemResult.item_ack_subject), so the worker
	// need not.
	ItemAckedHeader = "Stepflow-Item-Acked"
)

// ResultAnswer is the coordinator's answer to a stored result.
type ResultAnswer struct {
	Status ResultStatus
	// ItemAcked: the coordinator acked the item message.
	ItemAcked bool
}

// ItemAckSubjectPrefix is the prefix of the ack subjects of item
// messages: the only subjects a coordinator acks on a worker's behalf.
const ItemAckSubjectPrefix = "$JS.ACK." + StreamItems + "."

// ValidItemAckSubject reports whether s can be the ack subject of an item
// message: under ItemAckSubjectPrefix, without wildcards or whitespace.
func ValidItemAckSubject(s string) bool {
	if !strings.HasPrefix(s, ItemAckSubjectPrefix) || len(s) == len(ItemAckSubjectPrefix) || len(s) > 512 {
		return false
	}
	return !strings.ContainsAny(s, "*> \t\r\n")
}

// ResultStatus is what the coordinator did with a result it answered.
type ResultStatus string

// The answers to a result. Each lets the worker ack the item.
const (
	// ResultStored: the result is in the run's result log, durably.
	ResultStored ResultStatus = "stored"
	// ResultDuplicate: the index already had a result (the item ran
	// twice); the first one counts.
	ResultDuplicate ResultStatus = "duplicate"
	// ResultDropped: the run is over or unknown (cancelled, deleted), or
	// the index is out of its range; nothing is stored.
	ResultDropped ResultStatus = "dropped"
)

// ErrResultRefused wraps the reason a coordinator gave for not storing a
// result (ResultErrorHeader): the result is to be sent again later.
var ErrResultRefused = errors.New("queue: the coordinator did not store the result")

// ResultOptions configures SendResult. The zero value is usable.
type ResultOptions struct {
	// Subject overrides the result subject, normally the item's
	// reply_subject; it must be under stepflow.results. Default
	// ResultSubject(res.RunId).
	Subject string
	// Blobs receives results too large for one message: the sent result
	// then carries ResultBlobId instead of Result (res itself is not
	// modified). Without it such a result fails with ErrPayloadTooLarge.
	Blobs blob.Store
	// MaxPayload overrides the largest message in bytes; 0 = the server's
	// max_payload.
	MaxPayload int
}

// EncodeResult returns the message data of res for SendResult: the
// protobuf encoding, with a result too large for one message offloaded to
// opts.Blobs. Encode once and send the data as often as needed.
func EncodeResult(ctx context.Context, nc *nats.Conn, res *stepflowv1.ItemResult, opts ResultOptions) (subject string, data []byte, err error) {
	runID := res.GetRunId()
	if err := ValidateRunID(runID); err != nil {
		return "", nil, err
	}
	subject = opts.Subject
	if subject == "" {
		subject = ResultSubject(runID)
	}
	if !strings.HasPrefix(subject, ResultSubjectPrefix) || len(subject) == len(ResultSubjectPrefix) {
		return "", nil, fmt.Errorf("%w: result subject %q is not under %s", ErrInvalidConfig, subject, ResultSubjects)
	}
	index := int(res.GetIndex())
	if data, err = proto.Marshal(res); err != nil {
		return "", nil, fmt.Errorf("queue: encode result %d of run %s: %w", index, runID, err)
	}
	limit := opts.MaxPayload
	if limit <= 0 && nc != nil {
		limit = int(nc.MaxPayload())
	}
	if limit <= 0 {
		limit = 1 << 20
	}
	if limit -= headerAllowance + len(subject); len(data) <= limit {
		return subject, data, nil
	}
	if opts.Blobs == nil {
		return "", nil, fmt.Errorf("%w: result %d of run %s is %d bytes, the limit is %d (configure a blob store to offload large results)",
			ErrPayloadTooLarge, index, runID, len(data), limit)
	}
	v, err := value.Parse(res.GetResult())
	if err != nil {
		return "", nil, fmt.Errorf("queue: result %d of run %s is not JSON: %w", index, runID, err)
	}
	id, err := opts.Blobs.Put(ctx, blob.KindData, v)
	if err != nil {
		return "", nil, fmt.Errorf("queue: offload result %d of run %s: %w", index, runID, err)
	}
	small := proto.CloneOf(res)
	small.Result, small.ResultBlobId = nil, id
	for _, b := range small.Blobs {
		b.Data = nil // the coordinator reads them from the blob store
	}
	if data, err = proto.Marshal(small); err != nil {
		return "", nil, fmt.Errorf("queue: encode result %d of run %s: %w", index, runID, err)
	}
	return subject, data, nil
}

// SendResult sends an encoded result (EncodeResult) to the leading
// coordinator and waits for its answer until ctx ends. It returns what the
// coordinator did with it; an error means the result may or may not be
// stored: nats.ErrNoResponders (no coordinator leads right now), a
// timeout, or ErrResultRefused. Sending the same result again is always
// safe: the first result per index wins.
func SendResult(ctx context.Context, nc *nats.Conn, subject string, data []byte) (ResultAnswer, error) {
	reply, err := nc.RequestMsgWithContext(ctx, &nats.Msg{Subject: subject, Data: data})
	if err != nil {
		return ResultAnswer{}, fmt.Errorf("queue: send result on %s: %w", subject, err)
	}
	return ParseResultReply(reply)
}

// ParseResultReply reads a coordinator's answer to a result.
func ParseResultReply(m *nats.Msg) (ResultAnswer, error) {
	if reason := m.Header.Get(ResultErrorHeader); reason != "" {
		return ResultAnswer{}, fmt.Errorf("%w: %s", ErrResultRefused, reason)
	}
	switch s := ResultStatus(m.Header.Get(ResultStatusHeader)); s {
	case ResultStored, ResultDuplicate, ResultDropped:
		return ResultAnswer{Status: s, ItemAcked: m.Header.Get(ItemAckedHeader) != ""}, nil
	default:
		return ResultAnswer{}, fmt.Errorf("%w: answer to a result without a %s header (%q)", ErrBadMessage, ResultStatusHeader, s)
	}
}

// ResultReplyAcked is ResultReply(status, nil) saying that the
// coordinator acked the item message too.
func ResultReplyAcked(status ResultStatus) *nats.Msg {
	m := ResultReply(status, nil)
	m.Header.Set(ItemAckedHeader, "1")
	return m
}

// ResultReply returns the coordinator's answer to a result: status, or
// the refusal reason when err is not nil.
func ResultReply(status ResultStatus, err error) *nats.Msg {
	m := nats.NewMsg("")
	if err != nil {
		reason := err.Error()
		if reason == "" {
			reason = "unknown error"
		}
		m.Header.Set(ResultErrorHeader, truncateHeader(reason))
		return m
	}
	m.Header.Set(ResultStatusHeader, string(status))
	return m
}

// SubscribeResults subscribes handler to every run's results in
// ResultsQueueGroup, so that only one coordinator gets each result. The
// handler answers each request with ResultReply (m.RespondMsg).
func SubscribeResults(nc *nats.Conn, handler nats.MsgHandler) (*nats.Subscription, error) {
	sub, err := nc.QueueSubscribe(ResultSubjects, ResultsQueueGroup, handler)
	if err != nil {
		return nil, fmt.Errorf("queue: subscribe to results: %w", err)
	}
	// A burst of results waits here rather than being dropped as a slow
	// consumer (the workers would time out and send them again).
	if err := sub.SetPendingLimits(1<<20, 512<<20); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("queue: subscribe to results: %w", err)
	}
	return sub, nil
}

// truncateHeader keeps a header value short and on one line.
func truncateHeader(s string) string {
	s = strings.NewReplacer("\r", " ", "\n", " ").Replace(s)
	if len(s) > 1000 {
		s = s[:1000]
	}
	return s
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
