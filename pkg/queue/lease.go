package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
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
}

// Lease is the leadership lease of the coordinators sharing a NATS
// deployment: one key in BucketCoordinators, whose max age is the TTL.
// The holder renews it (a compare-and-set on its revision) well within
// the TTL; a holder that dies stops renewing, the key expires, and a
// standby creates it. Creating and renewing are compare-and-sets, so at
// most one coordinator holds a given revision.
type Lease struct {
	kv  jetstream.KeyValue
	ttl time.Duration
	rev uint64 // the revision this process holds; 0 if none
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
	return &Lease{kv: kv, ttl: st.TTL()}, nil
}

// TTL is the lease's time to live.
func (l *Lease) TTL() time.Duration { return l.ttl }

// Acquire takes the lease for h if nobody holds it, or if the holder has
// h's ID (this coordinator, restarted), or if force is set (a coordinator
// with an embedded NATS server, which nobody else can share). It returns
// whether it did, and the holder it found otherwise.
func (l *Lease) Acquire(ctx context.Context, h Holder, force bool) (bool, Holder, error) {
	data, err := json.Marshal(h)
	if err != nil {
		return false, Holder{}, err
	}
	rev, err := l.kv.Create(ctx, leaderKey, data)
	if err == nil {
		l.rev = rev
		return true, h, nil
	}
	if !isWrongRevision(err) {
		return false, Holder{}, fmt.Errorf("queue: acquire lease: %w", err)
	}
	cur, entry, err := l.current(ctx)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, Holder{}, nil // expired meanwhile: try again
	}
	if err != nil {
		return false, Holder{}, err
	}
	if cur.ID != h.ID && !force {
		return false, cur, nil
	}
	rev, err = l.kv.Update(ctx, leaderKey, data, entry.Revision())
	if err != nil {
		if isWrongRevision(err) {
			return false, cur, nil
		}
		return false, Holder{}, fmt.Errorf("queue: acquire lease: %w", err)
	}
	l.rev = rev
	return true, h, nil
}

// Renew extends the lease held by this process; ErrLeaseLost when
// another coordinator holds it now (or nobody: it expired).
func (l *Lease) Renew(ctx context.Context, h Holder) error {
	if l.rev == 0 {
		return ErrLeaseLost
	}
	data, err := json.Marshal(h)
	if err != nil {
		return err
	}
	rev, err := l.kv.Update(ctx, leaderKey, data, l.rev)
	if err != nil {
		if isWrongRevision(err) || errors.Is(err, jetstream.ErrKeyNotFound) {
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
	err := l.kv.Delete(ctx, leaderKey, jetstream.LastRevision(l.rev))
	l.rev = 0
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
