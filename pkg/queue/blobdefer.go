package queue

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// Deferred puts. A worker's small data blobs (up to maxInlineBlobBytes)
// are not written to the blob stream when a component puts them: they
// stay in the worker's memory until something durable refers to them (a
// result, a nested run), and then travel with it to the coordinator,
// which journals them in the same group commit and serves them from its
// journal from then on (BlobGetSubject). Two JetStream messages per blob,
// each with an entry in the stream's per-subject index, were most of the
// cost of a flow that stores a blob per item; now such a blob costs an
// append to a file that is fsynced anyway.
//
// A deferred blob that nothing durable has referred to after half the
// put-tracking window is written to the blob stream after all (by the
// next put, or by FlushDeferred when the worker stops), so that a blob
// id that left the worker some other way still resolves; the tracker
// keeps it for the whole window, so a result that refers to it later
// still carries it. Deferred blobs are bounded (maxDeferredBytes): beyond
// that, puts go to the blob stream as before. What is deferred is lost
// with the worker (kill -9); no acknowledged result refers to it, and
// the items that put it run again.

// maxDeferredBytes bounds the deferred blobs of one store: their JSON
// plus deferredOverhead each, for the parsed value, the id and the
// entry.
const (
	maxDeferredBytes = 64 << 20
	deferredOverhead = 512
)

// deferredBlob is a blob put but not written anywhere yet.
type deferredBlob struct {
	b  blob.Blob
	at time.Time
	n  int // bytes of its JSON
}

// deferredPuts holds a store's deferred blobs.
type deferredPuts struct {
	nc  *nats.Conn // for reads from the coordinator's journal
	age time.Duration
	now func() time.Time

	mu    sync.Mutex
	blobs map[string]*deferredBlob
	order []string // ids in put order (some may be gone)
	bytes int
}

// WithDeferredPuts defers the store's small data blob puts (see above)
// and reads blobs it does not have from the leading coordinator's journal
// (through nc) before the blob stream. It needs WithPutTracking, which
// it implies with the default window when missing.
func WithDeferredPuts(nc *nats.Conn) BlobStoreOption {
	return func(s *ObjectBlobStore) {
		if s.tracker == nil {
			s.tracker = newPutTracker(DefaultBlobSyncWindow)
		}
		s.deferred = &deferredPuts{nc: nc, age: s.tracker.window / 2, now: time.Now, blobs: map[string]*deferredBlob{}}
	}
}

// add defers b (n bytes of JSON); false when the store is full.
func (d *deferredPuts) add(b blob.Blob, n int) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.blobs[b.ID]; ok {
		return true
	}
	n += deferredOverhead
	if d.bytes+n > maxDeferredBytes {
		return false
	}
	d.blobs[b.ID] = &deferredBlob{b: b, at: d.now(), n: n}
	d.order = append(d.order, b.ID)
	d.bytes += n
	return true
}

func (d *deferredPuts) get(id string) (blob.Blob, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e, ok := d.blobs[id]; ok {
		return e.b, true
	}
	return blob.Blob{}, false
}

// remove forgets a deferred blob (journaled, or written to the stream).
func (d *deferredPuts) remove(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e, ok := d.blobs[id]; ok {
		d.bytes -= e.n
		delete(d.blobs, id)
	}
	// Drop the ids at the front that are gone, and compact the rest when
	// most are gone (one blob nothing refers to holds the front for half
	// the window), so that order stays about as long as blobs.
	for len(d.order) > 0 {
		if _, ok := d.blobs[d.order[0]]; ok {
			break
		}
		d.order[0] = ""
		d.order = d.order[1:]
	}
	if len(d.order) > 2*len(d.blobs)+1024 {
		live := make([]string, 0, len(d.blobs))
		for _, id := range d.order {
			if _, ok := d.blobs[id]; ok {
				live = append(live, id)
			}
		}
		d.order = live
	}
}

// expired returns the deferred blobs older than the age (all with all),
// oldest first.
func (d *deferredPuts) expired(all bool) []blob.Blob {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.now()
	var out []blob.Blob
	for _, id := range d.order {
		e, ok := d.blobs[id]
		if !ok {
			continue
		}
		if !all && now.Sub(e.at) < d.age {
			break
		}
		out = append(out, e.b)
	}
	return out
}

// publishDeferred writes deferred blobs to the blob stream and forgets
// them; it stops at the first error.
func (s *ObjectBlobStore) publishDeferred(ctx context.Context, blobs []blob.Blob) error {
	for _, b := range blobs {
		raw := value.Marshal(b.Data)
		if _, err := s.putRaw(ctx, b.ID, b.Kind, raw); err != nil {
			return fmt.Errorf("queue: store deferred blob %s: %w", b.ID, err)
		}
		s.deferred.remove(b.ID)
		s.cache.Add(b)
	}
	return nil
}

// FlushDeferred writes every deferred blob to the blob stream (a worker
// that stops); nothing without deferred puts.
func (s *ObjectBlobStore) FlushDeferred(ctx context.Context) error {
	if s == nil || s.deferred == nil {
		return nil
	}
	return s.publishDeferred(ctx, s.deferred.expired(true))
}

// DeferredBlobs is how many blobs the store holds deferred.
func (s *ObjectBlobStore) DeferredBlobs() int {
	if s == nil || s.deferred == nil {
		return 0
	}
	s.deferred.mu.Lock()
	defer s.deferred.mu.Unlock()
	return len(s.deferred.blobs)
}

// putDeferred defers a put when it can; ok false when the put is to go
// to the blob stream.
func (s *ObjectBlobStore) putDeferred(ctx context.Context, id string, kind blob.Kind, data value.Value, n int) (ok bool, err error) {
	if s.deferred == nil || kind != blob.KindData || n > maxInlineBlobBytes {
		return false, nil
	}
	if old := s.deferred.expired(false); len(old) > 0 {
		if err := s.publishDeferred(ctx, old); err != nil {
			return false, err
		}
	}
	if _, cached := s.cache.Get(id); cached {
		return true, nil // stored somewhere already (read or journaled)
	}
	return s.deferred.add(blob.Blob{ID: id, Kind: kind, Data: data}, n), nil
}

// errCoordinatorUnreachable: a blob is neither in the blob stream nor
// known to be missing from the coordinator's journal, since no
// coordinator answered. It is transient (the item waits for one).
type errCoordinatorUnreachable struct{ err error }

func (e errCoordinatorUnreachable) Error() string {
	return "not in the blob stream, and no coordinator answered for its journal: " + e.err.Error()
}
func (e errCoordinatorUnreachable) Unwrap() error { return e.err }

// getJournaled reads a blob from the coordinator's journal. found false
// (and err nil) when the journal does not have it; err when no
// coordinator answered.
func (s *ObjectBlobStore) getJournaled(ctx context.Context, id string) (blob.Blob, bool, error) {
	raw, kind, err := GetJournaledBlob(ctx, s.deferred.nc, id)
	switch {
	case errors.Is(err, blob.ErrNotFound):
		return blob.Blob{}, false, nil
	case err != nil:
		return blob.Blob{}, false, err
	}
	v, err := value.Parse(raw)
	if err != nil {
		return blob.Blob{}, false, fmt.Errorf("queue: blob %s is not JSON: %w", id, err)
	}
	return blob.Blob{ID: id, Kind: kind, Data: v}, true, nil
}
