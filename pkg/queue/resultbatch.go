package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// Result batches. A worker whose results finish together sends them in
// one request (a ResultBatch on ResultBatchSubject) rather than one each:
// one message to route each way instead of one per result. The
// coordinator stores each as if it came alone and answers once for all
// (a ResultBatchAnswer, one entry per result in order), after the same
// group commit. The answer carries ResultBatchHeader, so that a worker can
// tell it from the answer of a coordinator of an earlier release, which
// takes a batch for a malformed result and drops it: without the header
// the worker sends each result again on its own.

// ResultBatchSubject is where workers send result batches. It is under
// ResultSubjectPrefix, so the permission to send results covers it; no
// run id looks like it.
const ResultBatchSubject = ResultSubjectPrefix + "batch"

// ResultBatchHeader is set on a batch's answer to the number of answers.
const ResultBatchHeader = "Stepflow-Result-Batch"

// ErrNoBatchAnswer is returned for an answer to a batch that is not a
// batch answer (a coordinator of an earlier release): send the results
// one by one.
var ErrNoBatchAnswer = errors.New("queue: the coordinator did not answer the result batch as a batch")

// EncodeResultBatch returns the data of a batch of encoded results
// (EncodeResult's data).
func EncodeResultBatch(results [][]byte) ([]byte, error) {
	data, err := proto.Marshal(&stepflowv1.ResultBatch{Results: results})
	if err != nil {
		return nil, fmt.Errorf("queue: encode result batch: %w", err)
	}
	return data, nil
}

// DecodeResultBatch decodes a batch's data into its encoded results.
func DecodeResultBatch(data []byte) ([][]byte, error) {
	b := &stepflowv1.ResultBatch{}
	if err := proto.Unmarshal(data, b); err != nil {
		return nil, fmt.Errorf("%w: result batch: %w", ErrBadMessage, err)
	}
	return b.GetResults(), nil
}

// ResultBatchOutcome is what became of one result of a batch: an answer,
// or the reason it was not stored (wrapping ErrResultRefused).
type ResultBatchOutcome struct {
	Answer ResultAnswer
	Err    error
}

// ResultBatchReply returns the coordinator's answer to a batch.
func ResultBatchReply(outcomes []ResultBatchOutcome) (*nats.Msg, error) {
	ans := &stepflowv1.ResultBatchAnswer{Answers: make([]*stepflowv1.ResultBatchEntry, len(outcomes))}
	for i, o := range outcomes {
		e := &stepflowv1.ResultBatchEntry{Status: string(o.Answer.Status), ItemAcked: o.Answer.ItemAcked}
		if o.Err != nil {
			reason := o.Err.Error()
			if reason == "" {
				reason = "unknown error"
			}
			e = &stepflowv1.ResultBatchEntry{Error: truncateHeader(reason)}
		}
		ans.Answers[i] = e
	}
	data, err := proto.Marshal(ans)
	if err != nil {
		return nil, fmt.Errorf("queue: encode result batch answer: %w", err)
	}
	m := nats.NewMsg("")
	m.Header.Set(ResultBatchHeader, strconv.Itoa(len(outcomes)))
	m.Data = data
	return m, nil
}

// SendResultBatch sends encoded results (EncodeResult's data) as one
// batch to the leading coordinator and waits for its answer until ctx
// ends: one outcome per result, in order. An error means none of the
// results is known to be stored (ErrNoBatchAnswer: send them one by one).
func SendResultBatch(ctx context.Context, nc *nats.Conn, results [][]byte) ([]ResultBatchOutcome, error) {
	data, err := EncodeResultBatch(results)
	if err != nil {
		return nil, err
	}
	reply, err := nc.RequestMsgWithContext(ctx, &nats.Msg{Subject: ResultBatchSubject, Data: data})
	if err != nil {
		return nil, fmt.Errorf("queue: send %d results: %w", len(results), err)
	}
	return ParseResultBatchReply(reply, len(results))
}

// ParseResultBatchReply reads a coordinator's answer to a batch of n
// results.
func ParseResultBatchReply(m *nats.Msg, n int) ([]ResultBatchOutcome, error) {
	if m.Header.Get(ResultBatchHeader) != strconv.Itoa(n) {
		if reason := m.Header.Get(ResultErrorHeader); reason != "" {
			// Refused as a whole (a stopping coordinator).
			return nil, fmt.Errorf("%w: %s", ErrResultRefused, reason)
		}
		return nil, ErrNoBatchAnswer
	}
	ans := &stepflowv1.ResultBatchAnswer{}
	if err := proto.Unmarshal(m.Data, ans); err != nil || len(ans.GetAnswers()) != n {
		return nil, fmt.Errorf("%w: a result batch answer that does not answer its %d results", ErrBadMessage, n)
	}
	out := make([]ResultBatchOutcome, n)
	for i, e := range ans.GetAnswers() {
		if e.GetError() != "" {
			out[i].Err = fmt.Errorf("%w: %s", ErrResultRefused, e.GetError())
			continue
		}
		switch s := ResultStatus(e.GetStatus()); s {
		case ResultStored, ResultDuplicate, ResultDropped:
			out[i].Answer = ResultAnswer{Status: s, ItemAcked: e.GetItemAcked()}
		default:
			out[i].Err = fmt.Errorf("%w: result %d of a batch answered with status %q", ErrBadMessage, i, s)
		}
	}
	return out, nil
}
