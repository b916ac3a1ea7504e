package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// DefaultLeaseTTL is how long a coordinator's leadership outlives its last
// renewal: the longest a dead leader's runs wait for a standby.
const DefaultLeaseTTL = 10 * time.Second

// leaderKey is the key of the leadership lease in BucketCoordinators.
const leaderKey = "leader"

// ErrLeaseLost is a lease renewal that found another holder, or none.
var ErrLeaseLost = errors.New("queue: coordinator lease lost")

// Holder describes the coordinator holding the lease.
type Holder struct {
	// ID names the coordinator (unique among those sharing a NATS).
	ID string `json:"id"`
	// URL is its REST API base URL as other coordinators reach it.
	URL string `json:"url"`
	// Since is when it took the lease.
	Since time.Time `json:"since"`
	// Token is new each time a coordinator takes the lease: a renewal
	// whose answer was lost is recognised by it (and a coordinator
	// restarted under the same ID is told from its earlier self).
	Token string `json:"token,omitempty"`
}

// Lease is the leadership lease of the coordinators sharing a NATS
// deployment: one key in BucketCoordinators, whose max age is the TTL.
// The holder renews it (a compare-and-set on its revision) well within
// the TTL; a holder that dies stops renewing, the key expires, and a
// standby creates it. Creating and renewing are compare-and-sets, so at
// most one coordinator holds a given revision.
//
// A renewal whose answer was lost may have been written: the next one
// then fails its compare-and-set, reads the lease back and, finding its
// own holder ID and token there, carries on from that revision (see
// casBucket.update).
type Lease struct {
	kv    jetstream.KeyValue
	b     *casBucket
	ttl   time.Duration
	rev   uint64 // the revision this process holds; 0 if none
	id    string // the holder this process wrote
	token string // and its token
}

// OpenLease binds the lease bucket; ErrNotProvisioned when it does not
// exist.
func OpenLease(ctx context.Context, js jetstream.JetStream) (*Lease, error) {
	kv, err := js.KeyValue(ctx, BucketCoordinators)
	if err != nil {
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, fmt.Errorf("%w: bucket %s", ErrNotProvisioned, BucketCoordinators)
		}
		return nil, fmt.Errorf("queue: bucket %s: %w", BucketCoordinators, err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("queue: bucket %s: %w", BucketCoordinators, err)
	}
	return &Lease{kv: kv, b: newCASBucket(js, kv, BucketCoordinators), ttl: st.TTL()}, nil
}

// TTL is the lease's time to live.
func (l *Lease) TTL() time.Duration { return l.ttl }

// Acquire takes the lease for h if nobody holds it, or if the holder has
// h's ID (this coordinator, restarted), or if force is set (a coordinator
// with an embedded NATS server, which nobody else can share). It returns
// whether it did, and the holder it found otherwise.
// A write whose answer does not come is tried again until ctx ends.
func (l *Lease) Acquire(ctx context.Context, h Holder, force bool) (bool, Holder, error) {
	h.Token = nuid.Next()
	data, err := json.Marshal(h)
	if err != nil {
		return false, Holder{}, err
	}
	ours := holds(h.ID, h.Token)
	rev, err := l.b.create(ctx, leaderKey, data, ours)
	if err == nil {
		l.rev, l.id, l.token = rev, h.ID, h.Token
		return true, h, nil
	}
	if !errors.Is(err, ErrRevisionMismatch) {
		return false, Holder{}, fmt.Errorf("queue: acquire lease: %w", err)
	}
	e, err := l.b.latestRetrying(ctx, leaderKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, Holder{}, nil // expired meanwhile: try again
	}
	if err != nil {
		return false, Holder{}, fmt.Errorf("queue: acquire lease: %w", err)
	}
	var cur Holder
	if err := json.Unmarshal(e.value, &cur); err != nil {
		return false, Holder{}, fmt.Errorf("queue: lease value: %w", err)
	}
	if cur.ID != h.ID && !force {
		return false, cur, nil
	}
	rev, err = l.b.update(ctx, leaderKey, data, e.rev, false, ours)
	if err != nil {
		if errors.Is(err, ErrRevisionMismatch) {
			return false, cur, nil
		}
		return false, Holder{}, fmt.Errorf("queue: acquire lease: %w", err)
	}
	l.rev, l.id, l.token = rev, h.ID, h.Token
	return true, h, nil
}

// holds returns whether a lease value names the holder id with token.
func holds(id, token string) func([]byte) bool {
	return func(stored []byte) bool {
		var h Holder
		return json.Unmarshal(stored, &h) == nil && h.ID == id && h.Token == token
	}
}

// Renew extends the lease held by this process; ErrLeaseLost when
// another coordinator holds it now (or nobody: it expired). A renewal
// whose answer is lost is tried again until ctx ends, and one that was
// written although its answer was lost (in this call or an earlier one)
// counts as done. Other errors (ctx ended while NATS did not answer)
// leave the lease held as far as this process knows: call Renew again.
func (l *Lease) Renew(ctx context.Context, h Holder) error {
	if l.rev == 0 {
		return ErrLeaseLost
	}
	h.Token = l.token
	data, err := json.Marshal(h)
	if err != nil {
		return err
	}
	rev, err := l.b.update(ctx, leaderKey, data, l.rev, true, holds(h.ID, h.Token))
	if err != nil {
		if errors.Is(err, ErrRevisionMismatch) {
			l.rev = 0
			return fmt.Errorf("%w: %w", ErrLeaseLost, err)
		}
		return fmt.Errorf("queue: renew lease: %w", err)
	}
	l.rev = rev
	return nil
}

// Release gives the lease up (a clean stop), so that a standby takes over
// at once rather than after the TTL.
func (l *Lease) Release(ctx context.Context) error {
	if l.rev == 0 {
		return nil
	}
	rev := l.rev
	l.rev = 0
	err := l.kv.Delete(ctx, leaderKey, jetstream.LastRevision(rev))
	if err != nil && isWrongRevision(err) {
		// A renewal whose answer was lost may have moved it on.
		e, rerr := l.b.latest(ctx, leaderKey)
		if rerr != nil || e.rev <= rev || !holds(l.id, l.token)(e.value) {
			return nil // somebody else's, or gone
		}
		err = l.kv.Delete(ctx, leaderKey, jetstream.LastRevision(e.rev))
	}
	if err != nil && !isWrongRevision(err) {
		return fmt.Errorf("queue: release lease: %w", err)
	}
	return nil
}

// Holder returns the current holder; ok is false when nobody holds the
// lease.
func (l *Lease) Holder(ctx context.Context) (h Holder, ok bool, err error) {
	h, _, err = l.current(ctx)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Holder{}, false, nil
	}
	return h, err == nil, err
}

// Changes returns a channel that receives a value whenever the lease
// changes hands, is renewed, released or expires, until ctx ends.
func (l *Lease) Changes(ctx context.Context) (<-chan struct{}, error) {
	w, err := l.kv.Watch(ctx, leaderKey, jetstream.UpdatesOnly())
	if err != nil {
		return nil, fmt.Errorf("queue: watch lease: %w", err)
	}
	out := make(chan struct{}, 1)
	go func() {
		defer close(out)
		defer func() { _ = w.Stop() }()
		for {
			select {
			case <-ctx.Done():
				return
			case _, ok := <-w.Updates():
				if !ok {
					return
				}
				select {
				case out <- struct{}{}:
				default:
				}
			}
		}
	}()
	return out, nil
}

func (l *Lease) current(ctx context.Context) (Holder, jetstream.KeyValueEntry, error) {
	entry, err := l.kv.Get(ctx, leaderKey)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return Holder{}, nil, err
		}
		return Holder{}, nil, fmt.Errorf("queue: read lease: %w", err)
	}
	var h Holder
	if err := json.Unmarshal(entry.Value(), &h); err != nil {
		return Holder{}, nil, fmt.Errorf("queue: lease value: %w", err)
	}
	return h, entry, nil
}

// isWrongRevision reports a compare-and-set that lost.
func isWrongRevision(err error) bool {
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) ||
		apiCode(err) == jetstream.JSErrCodeStreamWrongLastSequence || apiCode(err) == jetstream.JSErrCodeStreamWrongLastSequenceConstant
}
