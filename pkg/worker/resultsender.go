package worker

import (
	"context"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/stepflow-go/stepflow/pkg/queue"
)

// Result sending. Each result is a request the coordinator answers after
// its group commit; results that finish while earlier ones wait for their
// answer go together, as one batch (queue.SendResultBatch): one message
// each way instead of one per result, for the server to route and both
// ends to parse. A lone result goes at once and alone, so a quiet worker
// waits for nothing; at most maxResultRequests requests are in flight, and
// whatever finishes meanwhile queues for the next.
const (
	// maxResultRequests bounds the result requests in flight at once.
	maxResultRequests = 2
	// maxBatchResults bounds the results in one batch.
	maxBatchResults = 256
	// batchOverhead is counted per result against the message size (the
	// batch's framing, with room to spare).
	batchOverhead = 16
)

// resultSender queues results and sends them in batches.
type resultSender struct {
	nc    *nats.Conn
	ctx   context.Context // the worker's work context: ends every request
	epoch *connEpoch      // a reconnect abandons the requests in flight
	limit int             // the largest batch in bytes

	mu       sync.Mutex
	queue    []*pendingResult
	requests int // senders running
	wg       sync.WaitGroup
}

// pendingResult is a result waiting for its answer.
type pendingResult struct {
	subject string
	data    []byte
	done    chan resultOutcome // buffered: the sender never blocks on it
}

type resultOutcome struct {
	answer queue.ResultAnswer
	err    error
}

func newResultSender(ctx context.Context, nc *nats.Conn, epoch *connEpoch) *resultSender {
	limit := 1 << 20
	if mp := int(nc.MaxPayload()); mp > 0 {
		limit = mp
	}
	return &resultSender{nc: nc, ctx: ctx, epoch: epoch, limit: max(limit-4096, 1024)}
}

// send has the coordinator store one encoded result (queue.EncodeResult)
// and returns its answer, or why there is none (the caller keeps the
// result and tries again alone). It returns early when ctx ends; the
// result may still be sent.
func (s *resultSender) send(ctx context.Context, subject string, data []byte) (queue.ResultAnswer, error) {
	p := &pendingResult{subject: subject, data: data, done: make(chan resultOutcome, 1)}
	s.mu.Lock()
	s.queue = append(s.queue, p)
	start := s.requests < maxResultRequests
	if start {
		s.requests++
		s.wg.Add(1)
	}
	s.mu.Unlock()
	if start {
		go s.run()
	}
	select {
	case o := <-p.done:
		return o.answer, o.err
	case <-ctx.Done():
		return queue.ResultAnswer{}, context.Cause(ctx)
	}
}

// run sends what is queued, a batch at a time, until nothing is.
func (s *resultSender) run() {
	defer s.wg.Done()
	for {
		s.mu.Lock()
		if len(s.queue) == 0 {
			s.requests--
			s.mu.Unlock()
			return
		}
		n, size := 0, 0
		for n < len(s.queue) && n < maxBatchResults {
			next := len(s.queue[n].data) + batchOverhead
			if n > 0 && size+next > s.limit {
				break
			}
			size += next
			n++
		}
		batch := make([]*pendingResult, n)
		copy(batch, s.queue)
		clear(s.queue[:n])
		s.queue = s.queue[n:]
		s.mu.Unlock()
		s.sendBatch(batch)
	}
}

// sendBatch sends one batch (a lone result as a plain result request)
// and hands each result its outcome.
func (s *resultSender) sendBatch(batch []*pendingResult) {
	ctx, cancel := context.WithTimeout(s.ctx, resultTimeout)
	defer cancel()
	stop := context.AfterFunc(s.epoch.current(), cancel)
	defer stop()
	if len(batch) == 1 {
		a, err := queue.SendResult(ctx, s.nc, batch[0].subject, batch[0].data)
		batch[0].done <- resultOutcome{answer: a, err: err}
		return
	}
	results := make([][]byte, len(batch))
	for i, p := range batch {
		results[i] = p.data
	}
	outs, err := queue.SendResultBatch(ctx, s.nc, results)
	for i, p := range batch {
		if err != nil {
			p.done <- resultOutcome{err: err}
			continue
		}
		p.done <- resultOutcome{answer: outs[i].Answer, err: outs[i].Err}
	}
}

// wait waits for the senders to finish (after the work context ended).
func (s *resultSender) wait() { s.wg.Wait() }
