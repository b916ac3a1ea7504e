package queue

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"iter"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/value"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// Defaults of PublishItemsOptions.
const (
	// DefaultMaxPendingPublishes bounds the item publishes awaiting their
	// PubAck: enough to keep a connection busy (a PubAck round trip per
	// 256 items) while bounding the memory of unacknowledged items and the
	// work redone after a failure.
	DefaultMaxPendingPublishes = 256
	// DefaultPublishRetries is how often a publish whose PubAck failed
	// (timeout, no responders during a leader election, reconnect) is
	// retried synchronously, with the same Nats-Msg-Id, before
	// PublishItems gives up.
	DefaultPublishRetries = 3
	// DefaultPublishAckTimeout bounds the wait for one PubAck.
	DefaultPublishAckTimeout = 10 * time.Second
)

// headerAllowance is the room kept for message headers (Nats-Msg-Id,
// Nats-Expected-Stream) when checking a message against max_payload, which
// counts headers and data together.
const headerAllowance = 512

// PublishItemsOptions configures PublishItems. The zero value is usable.
type PublishItemsOptions struct {
	// Template holds the fields every item of the run shares: FlowId,
	// ParentRunId, RootRunId, Deadline, HeartbeatInterval, MaxDeliver,
	// TraceContext. RunId, Index, Input, InputBlobId, ReplySubject and
	// EnqueuedAt are set by PublishItems (ReplySubject to
	// ResultSubject(runID) unless the template sets one). RootRunId
	// defaults to the run id.
	Template *stepflowv1.Item
	// From skips items with a lower index: resume after a PublishError
	// with From = ResumeFrom, or after a coordinator restart with the run
	// record's items_published.
	From int
	// MaxPending bounds the publishes awaiting their PubAck. Default
	// DefaultMaxPendingPublishes.
	MaxPending int
	// Retries of a failed publish. Default DefaultPublishRetries; -1 for
	// none.
	Retries int
	// AckTimeout bounds the wait for one PubAck. Default
	// DefaultPublishAckTimeout.
	AckTimeout time.Duration
	// Blobs receives inputs too large for one message: the item then
	// carries InputBlobId instead of Input. Without it such an item fails
	// the publish with ErrPayloadTooLarge.
	Blobs blob.Store
	// MaxPayload overrides the largest message in bytes (headers
	// included); 0 = the server's max_payload. Set it to the stream's
	// MaxMsgSize when that is smaller.
	MaxPayload int
	// Encoded says items yields encoded Item messages (ItemEncoder.Encode)
	// rather than input JSON: the caller encoded them ahead, say into a
	// spool, and PublishItems only publishes them. Template, Blobs and
	// MaxPayload are then unused.
	Encoded bool
	// Progress, when set, is called from one goroutine as the PubAcks
	// arrive, in index order, with the index after the item just stored:
	// every yielded item below it is on the stream. A resumed publisher
	// restarts from the last value it saw.
	Progress func(next int)
	// Logger receives a summary per call at debug level. Default: none.
	Logger *zap.Logger
	// Generation, when above 0, marks items published again because the
	// stream lost them: their Nats-Msg-Id gets the generation as a suffix
	// (RepublishMsgID), so that the duplicate window, which may still
	// hold the ids of the lost messages, does not swallow them.
	Generation int
}

// ItemEncoder encodes the items of one run into Item messages, offloading
// inputs too large for a message to a blob store.
type ItemEncoder struct {
	tmpl  *stepflowv1.Item
	limit int
	blobs blob.Store
}

// NewItemEncoder returns the encoder PublishItems uses for runID with
// opts (Template, Blobs, MaxPayload). EnqueuedAt is now.
func NewItemEncoder(js jetstream.JetStream, runID string, opts PublishItemsOptions) (*ItemEncoder, error) {
	if err := ValidateRunID(runID); err != nil {
		return nil, err
	}
	tmpl := &stepflowv1.Item{}
	if opts.Template != nil {
		tmpl = proto.CloneOf(opts.Template)
	}
	tmpl.RunId = runID
	if tmpl.ReplySubject == "" {
		tmpl.ReplySubject = ResultSubject(runID)
	} else if !strings.HasPrefix(tmpl.ReplySubject, ResultSubjectPrefix) {
		return nil, fmt.Errorf("%w: reply subject %q is not under %s", ErrInvalidConfig, tmpl.ReplySubject, ResultSubjects)
	}
	if tmpl.RootRunId == "" {
		tmpl.RootRunId = runID
	}
	tmpl.EnqueuedAt = timestamppb.Now()
	limit := payloadLimit(js, opts.MaxPayload) - headerAllowance - len(ItemSubject(runID))
	return &ItemEncoder{tmpl: tmpl, limit: limit, blobs: opts.Blobs}, nil
}

// Encode returns the message of item index with input (JSON). An input
// too large for one message goes to the blob store, or fails with
// ErrPayloadTooLarge without one. Not safe for concurrent use.
func (e *ItemEncoder) Encode(ctx context.Context, index int, input []byte) ([]byte, error) {
	return encodeItem(ctx, e.tmpl, index, input, e.limit, e.blobs)
}

// PublishItems publishes the items of runID to STEPFLOW_ITEMS, one message
// per (index, input JSON) pair yielded by items, in order, with header
// Nats-Msg-Id = <runID>.<index>. Indices must increase.
//
// Publishing is asynchronous with at most MaxPending PubAcks outstanding,
// so a 10,000-item batch does not wait for 10,000 round trips. A publish
// whose PubAck fails is retried with the same id; a retry after a lost
// PubAck is acknowledged as a duplicate, not stored twice.
//
// It returns how many items the stream acknowledged (stored or recognised
// as duplicates). If it stops early (ctx, a publish that kept failing, an
// oversized input), the error is a *PublishError whose ResumeFrom says
// where to continue; every item below it is stored.
func PublishItems(ctx context.Context, js jetstream.JetStream, runID string, items iter.Seq2[int, []byte], opts PublishItemsOptions) (int, error) {
	if err := ValidateRunID(runID); err != nil {
		return 0, err
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	maxPending := cmp.Or(opts.MaxPending, DefaultMaxPendingPublishes)
	if maxPending < 1 {
		return 0, fmt.Errorf("%w: MaxPending must be at least 1", ErrInvalidConfig)
	}
	retries := cmp.Or(opts.Retries, DefaultPublishRetries)
	retries = max(retries, 0)
	ackTimeout := cmp.Or(opts.AckTimeout, DefaultPublishAckTimeout)
	enc, err := NewItemEncoder(js, runID, opts)
	if err != nil {
		return 0, err
	}
	subject := ItemSubject(runID)

	p := &itemPublisher{
		js: js, retries: retries, ackTimeout: ackTimeout, progress: opts.Progress,
		queue: make(chan pendingPub, maxPending),
		stop:  make(chan struct{}),
	}
	var wg sync.WaitGroup
	wg.Go(func() { p.collect(ctx) })

	var (
		stopAt  = -1 // index where the producer stopped, -1 if it did not
		stopErr error
		last    = -1
	)
	for index, input := range items {
		if index < opts.From {
			continue
		}
		if index <= last {
			stopAt, stopErr = index, fmt.Errorf("%w: item index %d after %d (indices must increase)", ErrInvalidConfig, index, last)
			break
		}
		last = index
		if err := ctx.Err(); err != nil {
			stopAt, stopErr = index, context.Cause(ctx)
			break
		}
		if p.stopped() {
			stopAt = index
			break
		}
		data := input
		if !opts.Encoded {
			var err error
			if data, err = enc.Encode(ctx, index, input); err != nil {
				stopAt, stopErr = index, err
				break
			}
		}
		msg := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{
			jetstream.MsgIDHeader:          []string{RepublishMsgID(runID, index, opts.Generation)},
			jetstream.ExpectedStreamHeader: []string{StreamItems},
		}}
		fut, err := js.PublishMsgAsync(msg)
		// A nil future (stalled async publisher, disconnected) is retried
		// synchronously by the collector, in order.
		if err != nil {
			fut = nil
		}
		select {
		case p.queue <- pendingPub{index: index, msg: msg, fut: fut}:
		case <-ctx.Done():
			stopAt, stopErr = index, context.Cause(ctx)
		case <-p.stop:
			stopAt = index
		}
		if stopAt >= 0 {
			break
		}
	}
	close(p.queue)
	wg.Wait()

	log.Debug("items published", zap.String("run", runID), zap.Int("acked", p.acked), zap.Int("duplicates", p.dups), zap.Int("from", opts.From))
	resume, err := -1, error(nil)
	if p.failedAt >= 0 {
		resume, err = p.failedAt, p.err
	}
	if stopAt >= 0 && stopErr != nil && (resume < 0 || stopAt < resume) {
		resume, err = stopAt, stopErr
	}
	if resume >= 0 {
		return p.acked, &PublishError{ResumeFrom: resume, Err: err}
	}
	return p.acked, nil
}

// payloadLimit returns the largest message size to publish.
func payloadLimit(js jetstream.JetStream, override int) int {
	limit := 0
	if nc := js.Conn(); nc != nil {
		limit = int(nc.MaxPayload())
	}
	if override > 0 && (limit <= 0 || override < limit) {
		limit = override
	}
	if limit <= 0 {
		limit = 1 << 20 // not connected yet: assume the server default
	}
	return limit
}

// encodeItem marshals one item, offloading its input to blobs when the
// message would exceed limit bytes.
func encodeItem(ctx context.Context, tmpl *stepflowv1.Item, index int, input []byte, limit int, blobs blob.Store) ([]byte, error) {
	tmpl.Index = uint64(index)
	tmpl.Input = input
	tmpl.InputBlobId = ""
	data, err := proto.Marshal(tmpl)
	if err != nil {
		return nil, fmt.Errorf("queue: encode item %d: %w", index, err)
	}
	if len(data) <= limit {
		return data, nil
	}
	if blobs == nil {
		return nil, fmt.Errorf("%w: item %d is %d bytes, the limit is %d (configure a blob store to offload large inputs)", ErrPayloadTooLarge, index, len(data), limit)
	}
	v, err := value.Parse(input)
	if err != nil {
		return nil, fmt.Errorf("queue: item %d: input is not JSON: %w", index, err)
	}
	id, err := blobs.Put(ctx, blob.KindData, v)
	if err != nil {
		return nil, fmt.Errorf("queue: offload input of item %d: %w", index, err)
	}
	tmpl.Input, tmpl.InputBlobId = nil, id
	data, err = proto.Marshal(tmpl)
	if err != nil {
		return nil, fmt.Errorf("queue: encode item %d: %w", index, err)
	}
	return data, nil
}

type pendingPub struct {
	index int
	msg   *nats.Msg
	fut   jetstream.PubAckFuture // nil: publish synchronously
}

// itemPublisher collects PubAcks in publish order.
type itemPublisher struct {
	js         jetstream.JetStream
	retries    int
	ackTimeout time.Duration
	progress   func(next int)
	queue      chan pendingPub
	stop       chan struct{} // closed by the collector after a failure

	// Written by the collector only; read after it has returned.
	acked, dups int
	failedAt    int
	err         error
}

func (p *itemPublisher) stopped() bool {
	select {
	case <-p.stop:
		return true
	default:
		return false
	}
}

// collect waits for each PubAck in order, retrying failures; after the
// first item that cannot be published it drains the queue without waiting
// and closes stop.
func (p *itemPublisher) collect(ctx context.Context) {
	p.failedAt = -1
	timer := time.NewTimer(p.ackTimeout)
	defer timer.Stop()
	for pp := range p.queue {
		if p.failedAt >= 0 {
			continue
		}
		ack, err := p.await(ctx, pp, timer)
		for attempt := 0; err != nil && attempt < p.retries && ctx.Err() == nil; attempt++ {
			actx, cancel := context.WithTimeout(ctx, p.ackTimeout)
			ack, err = p.js.PublishMsg(actx, pp.msg)
			cancel()
		}
		if err != nil {
			p.failedAt, p.err = pp.index, fmt.Errorf("queue: publish item %d: %w", pp.index, err)
			close(p.stop)
			continue
		}
		p.acked++
		if ack.Duplicate {
			p.dups++
		}
		if p.progress != nil {
			p.progress(pp.index + 1)
		}
	}
}

// await waits for one asynchronous PubAck.
func (p *itemPublisher) await(ctx context.Context, pp pendingPub, timer *time.Timer) (*jetstream.PubAck, error) {
	if pp.fut == nil {
		return nil, errors.New("asynchronous publish refused")
	}
	timer.Reset(p.ackTimeout)
	select {
	case ack := <-pp.fut.Ok():
		return ack, nil
	case err := <-pp.fut.Err():
		return nil, err
	case <-timer.C:
		return nil, jetstream.ErrAsyncPublishTimeout
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// DecodeItem decodes an item message's data.
func DecodeItem(data []byte) (*stepflowv1.Item, error) {
	it := &stepflowv1.Item{}
	if err := proto.Unmarshal(data, it); err != nil {
		return nil, fmt.Errorf("%w: item: %w", ErrBadMessage, err)
	}
	if err := ValidateRunID(it.GetRunId()); err != nil {
		return nil, fmt.Errorf("%w: item: %w", ErrBadMessage, err)
	}
	return it, nil
}

// ItemInput returns the input JSON of it, reading it from blobs when it
// was offloaded.
func ItemInput(ctx context.Context, it *stepflowv1.Item, blobs blob.Store) ([]byte, error) {
	return loadJSON(ctx, it.GetInput(), it.GetInputBlobId(), blobs, "input of item")
}

// loadJSON returns inline JSON, or the JSON of the blob id.
func loadJSON(ctx context.Context, inline []byte, blobID string, blobs blob.Store, what string) ([]byte, error) {
	if blobID == "" {
		return inline, nil
	}
	if blobs == nil {
		return nil, fmt.Errorf("queue: %s is in blob %s but no blob store was given", what, blobID)
	}
	b, err := blobs.Get(ctx, blobID)
	if err != nil {
		return nil, fmt.Errorf("queue: %s: %w", what, err)
	}
	return value.Marshal(b.Data), nil
}
