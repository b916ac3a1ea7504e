package queue

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/value"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// Blob durability. On one NATS server the blob stream persists
// asynchronously (no fsync per message: a new blob would otherwise cost
// two), so a blob put a moment ago survives a crash of any process (the
// data is in the kernel's page cache) but not a power loss until the
// server's next background sync (sync_interval, two minutes by default).
// A blob that an acknowledged result refers to must be as durable as the
// result, so the worker carries the blobs it put within BlobSyncWindow
// and that its result refers to (ItemResult.blobs) and the coordinator
// journals them, fsynced with the result, before it answers; a nested
// run's inputs are journaled the same way before the run is submitted
// (JournalBlobs). The coordinator puts journaled blobs back into the
// stream when it finds the stream may have lost them.

// DefaultBlobSyncWindow is how long a blob put through a tracking store
// is carried to the coordinator's journal when a result refers to it, and
// how long the coordinator keeps its journal: longer than the NATS
// server's sync_interval (two minutes by default), after which the blob
// stream has fsynced the blob itself.
const DefaultBlobSyncWindow = 5 * time.Minute

// BlobJournalSubject is where a worker asks the leading coordinator to
// journal blobs (a BlobJournal request). It is under ResultSubjectPrefix,
// so the permission to send results covers it; no run id looks like it.
const BlobJournalSubject = ResultSubjectPrefix + "blobs"

// maxInlineBlobBytes bounds the blob data carried in one message; blobs
// beyond it go without data and the coordinator reads them from the blob
// store.
const maxInlineBlobBytes = 256 << 10

// maxTrackedPuts bounds the blobs a store remembers (16 bytes each and a
// map entry): beyond it the oldest are forgotten early, and
// TrackedPutsDropped counts them.
const maxTrackedPuts = 1 << 20

// putTracker remembers the ids of the blobs a store put within a window,
// in time buckets that are dropped whole as they age.
type putTracker struct {
	window time.Duration
	now    func() time.Time

	mu      sync.Mutex
	buckets []putBucket // oldest first
	n       int
	dropped atomic.Uint64
}

type putBucket struct {
	start time.Time
	ids   map[uint64]struct{}
}

// trackerBuckets is how many buckets span the window.
const trackerBuckets = 8

func newPutTracker(window time.Duration) *putTracker {
	return &putTracker{window: window, now: time.Now}
}

// blobKey is the first 8 bytes of a blob id: a false match only makes a
// blob travel to the journal without need.
func blobKey(id string) (uint64, bool) {
	if !blob.ValidID(id) {
		return 0, false
	}
	var b [8]byte
	if _, err := hex.Decode(b[:], []byte(id[:16])); err != nil {
		return 0, false
	}
	return binary.BigEndian.Uint64(b[:]), true
}

func (t *putTracker) add(id string) {
	k, ok := blobKey(id)
	if !ok {
		return
	}
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pruneLocked(now)
	span := t.window / trackerBuckets
	if len(t.buckets) == 0 || now.Sub(t.buckets[len(t.buckets)-1].start) >= span {
		t.buckets = append(t.buckets, putBucket{start: now, ids: map[uint64]struct{}{}})
	}
	last := t.buckets[len(t.buckets)-1].ids
	if _, ok := last[k]; !ok {
		last[k] = struct{}{}
		t.n++
	}
	for t.n > maxTrackedPuts && len(t.buckets) > 1 {
		t.dropped.Add(uint64(len(t.buckets[0].ids)))
		t.n -= len(t.buckets[0].ids)
		t.buckets[0] = putBucket{}
		t.buckets = t.buckets[1:]
	}
}

// pruneLocked drops the buckets older than the window.
func (t *putTracker) pruneLocked(now time.Time) {
	span := t.window / trackerBuckets
	for len(t.buckets) > 0 && now.Sub(t.buckets[0].start) > t.window+span {
		t.n -= len(t.buckets[0].ids)
		t.buckets[0] = putBucket{}
		t.buckets = t.buckets[1:]
	}
}

func (t *putTracker) has(id string) bool {
	k, ok := blobKey(id)
	if !ok {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pruneLocked(t.now())
	for _, b := range t.buckets {
		if _, ok := b.ids[k]; ok {
			return true
		}
	}
	return false
}

func (t *putTracker) forget(ids []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, id := range ids {
		k, ok := blobKey(id)
		if !ok {
			continue
		}
		for _, b := range t.buckets {
			if _, ok := b.ids[k]; ok {
				delete(b.ids, k)
				t.n--
			}
		}
	}
}

// BlobIDsIn calls fn for each string in the JSON text data that is a
// blob id (64 lowercase hex digits in quotes), in order, duplicates
// included. It does not parse data: a blob id anywhere (a value, a key,
// inside a nested document) counts.
func BlobIDsIn(data []byte, fn func(id string)) {
	const n = 64
	for i := 0; i+n+1 < len(data); i++ {
		if data[i] != '"' || data[i+n+1] != '"' {
			continue
		}
		ok := true
		for _, c := range data[i+1 : i+n+1] {
			if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
				ok = false
				break
			}
		}
		if ok {
			fn(string(data[i+1 : i+n+1]))
			i += n + 1
		}
	}
}

// WithPutTracking has the store remember the blobs it puts for window
// (DefaultBlobSyncWindow when 0), so that UnjournaledBlobs can carry the
// ones something refers to to the coordinator's journal.
func WithPutTracking(window time.Duration) BlobStoreOption {
	if window <= 0 {
		window = DefaultBlobSyncWindow
	}
	return func(s *ObjectBlobStore) { s.tracker = newPutTracker(window) }
}

// TrackedPutsDropped counts the blobs forgotten before their window
// ended because the store tracked too many (0 without tracking).
func (s *ObjectBlobStore) TrackedPutsDropped() uint64 {
	if s.tracker == nil {
		return 0
	}
	return s.tracker.dropped.Load()
}

// UnjournaledBlobs returns the blobs that the JSON text data refers to
// and that this store put within its window and has not seen journaled
// (BlobsJournaled), and the blobs those refer to in turn: what the
// coordinator must journal before it acknowledges something that holds
// data. Their data is carried up to a total of 256 KiB; the rest go
// without (the coordinator reads them). Nil without put tracking.
func (s *ObjectBlobStore) UnjournaledBlobs(ctx context.Context, data []byte) ([]*stepflowv1.Blob, error) {
	if s == nil || s.tracker == nil {
		return nil, nil
	}
	var out []*stepflowv1.Blob
	seen := map[string]struct{}{}
	queue := [][]byte{data}
	inline := 0
	for len(queue) > 0 {
		doc := queue[0]
		queue = queue[1:]
		var ids []string
		BlobIDsIn(doc, func(id string) {
			if _, ok := seen[id]; ok {
				return
			}
			seen[id] = struct{}{}
			if s.tracker.has(id) || s.isDeferred(id) {
				ids = append(ids, id)
			}
		})
		for _, id := range ids {
			b, err := s.Get(ctx, id)
			if err != nil {
				return nil, fmt.Errorf("queue: read blob %s to journal it: %w", id, err)
			}
			raw := value.Marshal(b.Data)
			pb := &stepflowv1.Blob{Id: id, Kind: string(b.Kind)}
			if inline+len(raw) <= maxInlineBlobBytes {
				pb.Data = raw
				inline += len(raw)
			} else if s.isDeferred(id) {
				// Too much to carry: the coordinator reads it from the
				// blob stream, so it goes there first.
				if err := s.publishDeferred(ctx, []blob.Blob{b}); err != nil {
					return nil, err
				}
			}
			out = append(out, pb)
			queue = append(queue, raw)
		}
	}
	return out, nil
}

// BlobsJournaled tells the store that the coordinator journaled blobs,
// so that they are not carried again.
func (s *ObjectBlobStore) BlobsJournaled(blobs []*stepflowv1.Blob) {
	if s == nil || s.tracker == nil || len(blobs) == 0 {
		return
	}
	ids := make([]string, len(blobs))
	for i, b := range blobs {
		ids[i] = b.GetId()
		if s.deferred != nil {
			// The coordinator serves it now. It is not kept in the cache
			// either: a result's blob is seldom read again here, and a
			// cache full of them costs the garbage collector more than
			// the odd read from the coordinator costs.
			s.deferred.remove(ids[i])
		}
	}
	s.tracker.forget(ids)
}

// isDeferred reports a blob held deferred.
func (s *ObjectBlobStore) isDeferred(id string) bool {
	if s.deferred == nil {
		return false
	}
	_, ok := s.deferred.get(id)
	return ok
}

// JournalBlobs has the leading coordinator journal blobs (durably) and
// waits for its answer until ctx ends.
func JournalBlobs(ctx context.Context, nc *nats.Conn, blobs []*stepflowv1.Blob) error {
	data, err := proto.Marshal(&stepflowv1.BlobJournal{Blobs: blobs})
	if err != nil {
		return fmt.Errorf("queue: encode blobs to journal: %w", err)
	}
	reply, err := nc.RequestMsgWithContext(ctx, &nats.Msg{Subject: BlobJournalSubject, Data: data})
	if err != nil {
		return fmt.Errorf("queue: journal %d blobs: %w", len(blobs), err)
	}
	answer, err := ParseResultReply(reply)
	if err != nil {
		return fmt.Errorf("queue: journal %d blobs: %w", len(blobs), err)
	}
	if answer.Status != ResultStored {
		// A coordinator of an earlier release takes the request for a
		// malformed result and drops it.
		return fmt.Errorf("%w: the coordinator did not journal the blobs (%s); it may be of an earlier release", ErrResultRefused, answer.Status)
	}
	return nil
}

// DecodeBlobJournal decodes a BlobJournal request's data.
func DecodeBlobJournal(data []byte) (*stepflowv1.BlobJournal, error) {
	j := &stepflowv1.BlobJournal{}
	if err := proto.Unmarshal(data, j); err != nil {
		return nil, fmt.Errorf("%w: blob journal: %w", ErrBadMessage, err)
	}
	return j, nil
}

// BlobGetSubject is where a process asks the leading coordinator for a
// blob from its journal (the only copy of the small blobs workers put,
// see WithDeferredPuts). It is under ResultSubjectPrefix, so the
// permission to send results covers it; no run id looks like it.
const BlobGetSubject = ResultSubjectPrefix + "blobget"

// Headers of the answer to a blob get: the kind of the blob found, or
// why there is none.
const (
	BlobKindHeader  = "Stepflow-Blob-Kind"
	BlobErrorHeader = "Stepflow-Blob-Error"
)

// errBlobNotJournaled is BlobGetReply's err for a blob the journal does
// not have.
var errBlobNotJournaled = fmt.Errorf("%w: not in the coordinator's journal", blob.ErrNotFound)

// BlobGetReply is the coordinator's answer to a blob get: the blob's JSON
// and kind; found false when its journal has no such blob; or err.
func BlobGetReply(raw []byte, kind blob.Kind, found bool, err error) *nats.Msg {
	m := nats.NewMsg("")
	switch {
	case err != nil:
		m.Header.Set(BlobErrorHeader, truncateHeader(err.Error()))
	case !found:
		m.Header.Set(BlobErrorHeader, "not found")
	default:
		m.Header.Set(BlobKindHeader, string(kind))
		m.Data = raw
	}
	return m
}

// GetJournaledBlob asks the leading coordinator for a blob from its
// journal: its JSON and kind, an error wrapping blob.ErrNotFound when the
// journal does not have it, or why no answer came (nats.ErrNoResponders
// while no coordinator leads, a timeout: Transient errors).
func GetJournaledBlob(ctx context.Context, nc *nats.Conn, id string) ([]byte, blob.Kind, error) {
	m, err := nc.RequestMsgWithContext(ctx, &nats.Msg{Subject: BlobGetSubject, Data: []byte(id)})
	if err != nil {
		return nil, "", fmt.Errorf("queue: ask the coordinator for blob %s: %w", id, err)
	}
	if reason := m.Header.Get(BlobErrorHeader); reason != "" {
		if reason == "not found" {
			return nil, "", fmt.Errorf("%w: %s", errBlobNotJournaled, id)
		}
		return nil, "", fmt.Errorf("queue: the coordinator could not read blob %s: %s", id, reason)
	}
	kind := blob.Kind(m.Header.Get(BlobKindHeader))
	if !kind.Valid() {
		return nil, "", fmt.Errorf("%w: answer to a blob get without a kind", ErrBadMessage)
	}
	if sum := sha256.Sum256(m.Data); hex.EncodeToString(sum[:]) != id {
		return nil, "", fmt.Errorf("%w: the coordinator answered blob %s with other data", ErrBadMessage, id)
	}
	return m.Data, kind, nil
}
