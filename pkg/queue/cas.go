package queue

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Compare-and-set writes whose answer was lost.
//
// A KV update is a JetStream publish with an expected last sequence. When
// its answer does not arrive (a timeout, a stream leader that lost its
// quorum after proposing the write, a connection that dropped), the
// write may have been committed all the same. Trying it again against the
// old revision then fails with a revision mismatch that is our own doing,
// and must not be taken for another writer's. So a failed compare-and-set
// reads the key back through the stream leader (a direct get may be
// answered by a replica that lags) and, when the stored value is the one
// we wrote, takes its revision as the result of the write.

// kvWriter is what a compare-and-set needs of a KV bucket. Tests wrap it
// to lose the answers of writes that were made.
type kvWriter interface {
	Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error)
	Update(ctx context.Context, key string, value []byte, revision uint64) (uint64, error)
}

// casRetryMax is the longest pause between attempts of a write or read
// that failed for want of an answer.
const casRetryMax = 2 * time.Second

// casBucket is a KV bucket written with compare-and-set, and read through
// its stream leader.
type casBucket struct {
	w      kvWriter
	js     jetstream.JetStream
	name   string // the bucket
	msgGet string // the message API of its stream's leader
}

func newCASBucket(js jetstream.JetStream, kv jetstream.KeyValue, bucket string) *casBucket {
	return &casBucket{w: kv, js: js, name: bucket, msgGet: apiPrefix(js.Options()) + "STREAM.MSG.GET.KV_" + bucket}
}

// entry is a key's latest value as the stream leader has it.
type entry struct {
	value []byte
	rev   uint64
}

// latest reads key's latest value through the stream leader;
// jetstream.ErrKeyNotFound when it has none (never written, deleted,
// purged or expired).
func (b *casBucket) latest(ctx context.Context, key string) (entry, error) {
	m, err := leaderGet(ctx, b.js, b.msgGet, msgGetRequest{LastFor: "$KV." + b.name + "." + key})
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return entry{}, jetstream.ErrKeyNotFound
	}
	if err != nil {
		return entry{}, fmt.Errorf("queue: read %s/%s: %w", b.name, key, err)
	}
	if op := m.Header.Get("KV-Operation"); op != "" || m.Header.Get(jetstream.MarkerReasonHeader) != "" {
		return entry{}, jetstream.ErrKeyNotFound
	}
	return entry{value: m.Data, rev: m.Sequence}, nil
}

// latestRetrying is latest, tried again while NATS does not answer,
// until ctx ends.
func (b *casBucket) latestRetrying(ctx context.Context, key string) (entry, error) {
	for attempt := 0; ; attempt++ {
		e, err := b.latest(ctx, key)
		if err == nil || !Transient(err) || ctx.Err() != nil {
			return e, err
		}
		if perr := pause(ctx, attempt); perr != nil {
			return entry{}, fmt.Errorf("%w (last: %w)", perr, err)
		}
	}
}

// update stores value at key if the key's latest revision is rev. A
// write that fails for want of an answer is tried again until ctx ends.
// When a write fails after one whose answer was lost, it reads the key
// back: a value for which ours is true is this writer's own write, and
// its revision is returned as the write's. ambiguous says that an earlier
// call may have left such a write (ours must then tell this writer's
// values from everybody else's, by a token of its own; a value that is
// merely equal could be another writer's who started from the same
// record). It fails with ErrRevisionMismatch when another writer got
// there first, wrapping jetstream.ErrKeyNotFound when the key is gone.
func (b *casBucket) update(ctx context.Context, key string, value []byte, rev uint64, ambiguous bool, ours func(stored []byte) bool) (uint64, error) {
	for attempt := 0; ; attempt++ {
		actx, cancel := b.attemptCtx(ctx)
		n, err := b.w.Update(actx, key, value, rev)
		cancel()
		if err == nil {
			return n, nil
		}
		mismatch := isWrongRevision(err) || errors.Is(err, jetstream.ErrKeyNotFound)
		if !mismatch && (!Transient(err) || ctx.Err() != nil) {
			return 0, fmt.Errorf("queue: update %s/%s: %w", b.name, key, err)
		}
		if mismatch && !ambiguous {
			return 0, fmt.Errorf("%w: %s/%s at revision %d: %w", ErrRevisionMismatch, b.name, key, rev, err)
		}
		ambiguous = true
		cur, rerr := b.latestRetrying(ctx, key)
		switch {
		case errors.Is(rerr, jetstream.ErrKeyNotFound):
			return 0, fmt.Errorf("%w: %s/%s at revision %d: %w", ErrRevisionMismatch, b.name, key, rev, rerr)
		case rerr != nil:
			return 0, fmt.Errorf("queue: update %s/%s: %w (then %w)", b.name, key, err, rerr)
		case cur.rev > rev && ours(cur.value):
			return cur.rev, nil // ours: the answer was lost
		case cur.rev != rev || mismatch:
			return 0, fmt.Errorf("%w: %s/%s at revision %d (now %d): %w", ErrRevisionMismatch, b.name, key, rev, cur.rev, err)
		}
		// Not written (yet): try again.
		if err := pause(ctx, attempt); err != nil {
			return 0, fmt.Errorf("queue: update %s/%s: %w", b.name, key, err)
		}
	}
}

// create stores value at key if the key has no value. It tries again
// while NATS does not answer, and after such a failure recognises its
// own write whose answer was lost, like update (but only then: a value
// that was there before the call is another's, even if it is the same).
// ErrRevisionMismatch wraps jetstream.ErrKeyExists when the key has a
// value.
func (b *casBucket) create(ctx context.Context, key string, value []byte, ours func(stored []byte) bool) (uint64, error) {
	ambiguous := false
	for attempt := 0; ; attempt++ {
		actx, cancel := b.attemptCtx(ctx)
		n, err := b.w.Create(actx, key, value)
		cancel()
		if err == nil {
			return n, nil
		}
		exists := isWrongRevision(err)
		if !exists && (!Transient(err) || ctx.Err() != nil) {
			return 0, fmt.Errorf("queue: create %s/%s: %w", b.name, key, err)
		}
		if exists && !ambiguous {
			return 0, fmt.Errorf("%w: %s/%s: %w", ErrRevisionMismatch, b.name, key, err)
		}
		ambiguous = true
		cur, rerr := b.latestRetrying(ctx, key)
		switch {
		case errors.Is(rerr, jetstream.ErrKeyNotFound):
			// Not written (yet), or expired meanwhile: try again.
		case rerr != nil:
			return 0, fmt.Errorf("queue: create %s/%s: %w (then %w)", b.name, key, err, rerr)
		case ours(cur.value):
			return cur.rev, nil
		default:
			return 0, fmt.Errorf("%w: %s/%s: %w", ErrRevisionMismatch, b.name, key, jetstream.ErrKeyExists)
		}
		if err := pause(ctx, attempt); err != nil {
			return 0, fmt.Errorf("queue: create %s/%s: %w", b.name, key, err)
		}
	}
}

// attemptCtx bounds one attempt of a write by the JetStream API timeout,
// so that a write whose answer was lost is read back after that long
// rather than when ctx ends (a caller that gives it 30 s).
func (b *casBucket) attemptCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, cmp.Or(b.js.Options().DefaultTimeout, 5*time.Second))
}

// pause waits before attempt+1: 50 ms, doubling up to casRetryMax.
func pause(ctx context.Context, attempt int) error {
	d := min(50*time.Millisecond<<min(attempt, 6), casRetryMax)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// sameBytes is an ours for values that are written whole: the stored
// value is ours when it is byte for byte what we wrote.
func sameBytes(value []byte) func([]byte) bool {
	return func(stored []byte) bool { return bytes.Equal(stored, value) }
}

// Transient reports an error that says NATS did not answer, or cannot
// answer at the moment (no JetStream leader, a connection being
// re-established): the operation may or may not have been carried out,
// and trying again later may succeed. Errors of a request that was
// answered (not found, a revision mismatch, a bad request) are not
// transient.
func Transient(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, nats.ErrConnectionReconnecting) ||
		errors.Is(err, nats.ErrDisconnected) || errors.Is(err, nats.ErrNoServers) ||
		errors.Is(err, jetstream.ErrAsyncPublishTimeout) || errors.Is(err, nats.ErrAsyncPublishTimeout) {
		return true
	}
	switch apiCode(err) {
	case errCodeClusterNotLeader, errCodeStreamOffline, errCodeClusterNoPeers:
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.Code == 503 // not available, not enabled yet, no resources
}

// decodeHeaders parses the headers of a message as the stream message API
// returns them ("NATS/1.0\r\nKey: value\r\n…"), keys as they are.
func decodeHeaders(b []byte) nats.Header {
	h := nats.Header{}
	lines := bytes.Split(b, []byte("\r\n"))
	for _, line := range lines[1:] { // the first is the status line
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok || len(k) == 0 {
			continue
		}
		key := string(bytes.TrimSpace(k))
		h[key] = append(h[key], string(bytes.TrimSpace(v)))
	}
	return h
}
