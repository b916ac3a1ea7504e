package queue

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// ObjectBlobStore is a blob.Store on the STEPFLOW_BLOBS object store, so
// that a blob put by a component on one worker can be read by a component
// on another. Objects are named by blob id (content-addressed) and keep
// their kind in the object metadata under MetaBlobKind. Objects are split
// into chunks as the object store does, so blobs far larger than
// max_payload are fine, and jetstream.ObjectStore (and the NATS CLI) read
// them.
//
// It talks to the stream directly rather than through
// jetstream.ObjectStore, which costs a lookup and two synchronous
// publishes per put and a consumer per get:
//   - Put publishes the chunk and the object info together and waits for
//     both PubAcks at once: one round trip for a blob of up to one chunk
//     (128 KiB). Such a blob's chunk subject is derived from its id
//     ($O.<bucket>.C.<id>), and both messages are stored only if their
//     subject is empty (Nats-Expected-Last-Subject-Sequence 0): storing
//     the blob again writes nothing, and a KindData put never turns a
//     flow back into data. A refused info is read (a second round trip)
//     when the put stores a flow (to promote the blob) or when the chunk
//     was missing (the info may be a deletion marker). Larger blobs are
//     looked up first: storing them again would rewrite
//     many chunks.
//   - Get reads the object info and the chunks by direct get (no
//     consumer): two round trips for a blob of one chunk.
//   - With a cache (WithBlobCache), blobs put or got are kept in memory
//     and read from there.
//
// Each message stored costs the server a write. On one server the stream
// persists asynchronously (no fsync per message, see blobStreamConfig),
// and blobs that something durable refers to are journaled by the
// coordinator (see BlobJournalSubject).
//
// It is safe for concurrent use.
type ObjectBlobStore struct {
	js     jetstream.JetStream
	stream jetstream.Stream
	cache  *blob.Cache
	// msgGet is the subject of the stream leader's message API, for
	// reads that must see every acknowledged write.
	msgGet string
	// replicated: direct gets may be served by a replica that lags.
	replicated bool
	// tracker remembers recent puts (WithPutTracking); nil: none.
	tracker *putTracker
	// deferred holds small puts not written yet (WithDeferredPuts); nil:
	// every put is written.
	deferred *deferredPuts
}

var _ blob.Store = (*ObjectBlobStore)(nil)

// BlobStoreOption configures OpenBlobStore.
type BlobStoreOption func(*ObjectBlobStore)

// WithBlobCache keeps the blobs the store puts and gets in c (nil: no
// cache), so a get_blob after a put_blob on the same worker, or a blob
// read again, does not go to NATS. A blob's data never goes stale (ids
// are content hashes); its kind may, when another process stores the
// same data as a flow later: read with blob.WithoutCache to bypass the
// cache.
func WithBlobCache(c *blob.Cache) BlobStoreOption {
	return func(s *ObjectBlobStore) { s.cache = c }
}

// Stream and subjects of the blob object store, as jetstream.ObjectStore
// names them.
const (
	blobStream      = "OBJ_" + BucketBlobs
	blobChunkPrefix = "$O." + BucketBlobs + ".C."
	blobMetaPrefix  = "$O." + BucketBlobs + ".M."
)

// blobChunkSize is the object store's default chunk size.
const blobChunkSize = 128 << 10

// maxBlobPutAttempts bounds how often Put re-reads an object info that
// changed under it (a concurrent put of the same data).
const maxBlobPutAttempts = 8

// errBlobIncomplete is returned by a direct read that did not find every
// chunk of an object, or found them not matching its info.
var errBlobIncomplete = errors.New("incomplete object")

// OpenBlobStore binds the blob object store; ErrNotProvisioned when it
// does not exist.
func OpenBlobStore(ctx context.Context, js jetstream.JetStream, opts ...BlobStoreOption) (*ObjectBlobStore, error) {
	// The stream handle reads by direct get when the stream allows it (an
	// object store always does) and by the leader's message API
	// otherwise; neither creates a consumer.
	st, err := js.Stream(ctx, blobStream)
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, fmt.Errorf("%w: object store %s: %w", ErrNotProvisioned, BucketBlobs, err)
		}
		return nil, fmt.Errorf("queue: object store %s: %w", BucketBlobs, err)
	}
	s := &ObjectBlobStore{js: js, stream: st, msgGet: apiPrefix(js.Options()) + "STREAM.MSG.GET." + blobStream}
	if info := st.CachedInfo(); info != nil {
		s.replicated = info.Config.Replicas > 1
	}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

// apiPrefix returns the subject prefix of the JetStream API js uses.
func apiPrefix(o jetstream.JetStreamOptions) string {
	switch {
	case o.Domain != "":
		return "$JS." + o.Domain + ".API."
	case o.APIPrefix == "":
		return jetstream.DefaultAPIPrefix
	case strings.HasSuffix(o.APIPrefix, "."):
		return o.APIPrefix
	default:
		return o.APIPrefix + "."
	}
}

// Cache returns the store's cache (nil when it has none).
func (s *ObjectBlobStore) Cache() *blob.Cache { return s.cache }

func blobMetaSubject(id string) string {
	return blobMetaPrefix + base64.URLEncoding.EncodeToString([]byte(id))
}

func blobDigest(sum [sha256.Size]byte) string {
	return "SHA-256=" + base64.URLEncoding.EncodeToString(sum[:])
}

// Put stores data and returns its id. Storing data that is already stored
// writes nothing new (except promoting its kind to KindFlow, which wins as
// blob.Store requires). Two concurrent first puts of the same data agree:
// one writes the object info, the other finds it (and promotes it if it
// stores a flow).
func (s *ObjectBlobStore) Put(ctx context.Context, kind blob.Kind, data value.Value) (string, error) {
	if !kind.Valid() {
		return "", fmt.Errorf("%w: %q", blob.ErrInvalidKind, kind)
	}
	raw := value.Marshal(data)
	sum := sha256.Sum256(raw)
	id := hex.EncodeToString(sum[:])
	deferred, err := s.putDeferred(ctx, id, kind, data, len(raw))
	if err != nil {
		return "", err
	}
	if !deferred {
		k, known, err := s.put(ctx, id, kind, raw, sum)
		if err != nil {
			return "", fmt.Errorf("queue: store blob %s (%d bytes): %w", id, len(raw), err)
		}
		if known {
			s.cache.Add(blob.Blob{ID: id, Kind: k, Data: data})
		}
		if s.deferred != nil {
			// Stored now (a flow promotes a deferred data blob): reads
			// go to the stream's copy, with its kind.
			s.deferred.remove(id)
		}
	}
	if s.tracker != nil {
		s.tracker.add(id)
	}
	return id, nil
}

// putRaw writes a blob's JSON (raw, whose id is id) to the blob stream.
func (s *ObjectBlobStore) putRaw(ctx context.Context, id string, kind blob.Kind, raw []byte) (blob.Kind, error) {
	k, _, err := s.put(ctx, id, kind, raw, sha256.Sum256(raw))
	return k, err
}

// objectMeta is an object's info as last read: seq 0 when it has none.
type objectMeta struct {
	seq  uint64
	info jetstream.ObjectInfo
	ok   bool // info parsed
}

// live reports an object that exists and is not deleted.
func (m objectMeta) live() bool { return m.seq > 0 && m.ok && !m.info.Deleted }

func (m objectMeta) kind() blob.Kind {
	if k := blob.Kind(m.info.Metadata[MetaBlobKind]); k.Valid() {
		return k
	}
	return blob.KindData
}

// put stores the blob and returns the kind it has now, if known (a data
// blob found stored already may be a flow).
func (s *ObjectBlobStore) put(ctx context.Context, id string, kind blob.Kind, raw []byte, sum [sha256.Size]byte) (blob.Kind, bool, error) {
	var cur *objectMeta // nil: not read
	if len(raw) > blobChunkSize {
		// Storing a large blob again would rewrite all its chunks: look
		// it up first (one round trip, small next to the data).
		m, err := s.lookup(ctx, id)
		if err != nil {
			return "", false, err
		}
		cur = &m
	}
	for range maxBlobPutAttempts {
		var err error
		switch {
		case cur != nil && cur.live() && (kind != blob.KindFlow || cur.kind() == blob.KindFlow):
			return cur.kind(), true, nil
		case cur != nil && cur.live():
			if err = s.promote(ctx, *cur); err == nil {
				return blob.KindFlow, true, nil
			}
		default:
			var after uint64 // the deletion marker (or unreadable info) to replace
			if cur != nil {
				after = cur.seq
			}
			var chunkThere bool
			if chunkThere, err = s.write(ctx, id, kind, raw, sum, after); err == nil {
				return kind, true, nil
			}
			if chunkThere && kind == blob.KindData && isWrongLastSeq(err) {
				// The chunk was there and so is an info: the blob is
				// stored (deleting an object purges its chunks), as data
				// or as a flow, and nothing was written.
				return blob.KindData, false, nil
			}
		}
		if !isWrongLastSeq(err) {
			return "", false, err
		}
		// The object has an info: read it and go on from there (it may
		// be a deletion marker, a data blob to promote, or an object of
		// this data stored under another nuid). A replica serving direct
		// gets may not have it yet.
		m, err := s.lookupFrom(ctx, id, s.replicated)
		if err != nil {
			return "", false, err
		}
		cur = &m
	}
	return "", false, fmt.Errorf("its object info changed %d times while storing it", maxBlobPutAttempts)
}

func isWrongLastSeq(err error) bool {
	c := apiCode(err)
	return c == jetstream.JSErrCodeStreamWrongLastSequence || c == jetstream.JSErrCodeStreamWrongLastSequenceConstant
}

// lookup reads the object info of id (by direct get).
func (s *ObjectBlobStore) lookup(ctx context.Context, id string) (objectMeta, error) {
	return s.lookupFrom(ctx, id, false)
}

// lookupFrom reads the object info of id, from the stream leader when
// leader is set.
func (s *ObjectBlobStore) lookupFrom(ctx context.Context, id string, leader bool) (objectMeta, error) {
	var m *jetstream.RawStreamMsg
	var err error
	if leader {
		m, err = s.leaderGet(ctx, msgGetRequest{LastFor: blobMetaSubject(id)})
	} else {
		m, err = s.stream.GetLastMsgForSubject(ctx, blobMetaSubject(id))
	}
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return objectMeta{}, nil
	}
	if err != nil {
		return objectMeta{}, fmt.Errorf("look up: %w", err)
	}
	om := objectMeta{seq: m.Sequence}
	om.ok = json.Unmarshal(m.Data, &om.info) == nil && om.info.NUID != ""
	return om, nil
}

// msgGetRequest is a request of the stream message API.
type msgGetRequest struct {
	Seq     uint64 `json:"seq,omitempty"`
	LastFor string `json:"last_by_subj,omitempty"`
	NextFor string `json:"next_by_subj,omitempty"`
}

// leaderGet reads a message through the stream leader's message API
// (STREAM.MSG.GET), which, unlike a direct get, no lagging replica
// answers. jetstream.Stream uses direct gets whenever the stream allows
// them.
func (s *ObjectBlobStore) leaderGet(ctx context.Context, req msgGetRequest) (*jetstream.RawStreamMsg, error) {
	return leaderGet(ctx, s.js, s.msgGet, req)
}

// leaderGet sends req to the message API subject msgGet of a stream's
// leader (see ObjectBlobStore.leaderGet).
func leaderGet(ctx context.Context, js jetstream.JetStream, msgGet string, req msgGetRequest) (*jetstream.RawStreamMsg, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cmp.Or(js.Options().DefaultTimeout, 5*time.Second))
		defer cancel()
	}
	resp, err := js.Conn().RequestWithContext(ctx, msgGet, body)
	if err != nil {
		return nil, err
	}
	var r struct {
		Error   *jetstream.APIError `json:"error,omitempty"`
		Message *struct {
			Subject  string    `json:"subject"`
			Sequence uint64    `json:"seq"`
			Header   []byte    `json:"hdrs,omitempty"`
			Data     []byte    `json:"data,omitempty"`
			Time     time.Time `json:"time"`
		} `json:"message,omitempty"`
	}
	if err := json.Unmarshal(resp.Data, &r); err != nil {
		return nil, fmt.Errorf("%w: %w", jetstream.ErrInvalidJetStreamResponse, err)
	}
	switch {
	case r.Error != nil && r.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound:
		return nil, jetstream.ErrMsgNotFound
	case r.Error != nil:
		return nil, r.Error
	case r.Message == nil:
		return nil, jetstream.ErrInvalidJetStreamResponse
	}
	m := &jetstream.RawStreamMsg{Subject: r.Message.Subject, Sequence: r.Message.Sequence, Data: r.Message.Data, Time: r.Message.Time}
	if len(r.Message.Header) > 0 {
		m.Header = decodeHeaders(r.Message.Header)
	}
	return m, nil
}

// metaMsg returns the message storing info: it rolls up its subject and
// is stored only if the subject's last message is at sequence after (0:
// the subject is empty).
func metaMsg(info *jetstream.ObjectInfo, after uint64) (*nats.Msg, error) {
	data, ok := appendPlainObjectInfo(nil, info)
	if !ok {
		var err error
		if data, err = json.Marshal(info); err != nil {
			return nil, err
		}
	}
	m := nats.NewMsg(blobMetaSubject(info.Name))
	if after > 0 {
		// Replacing an info: roll the subject up to it. A first info
		// (after 0) goes to an empty subject, where a rollup would only
		// cost the server a purge.
		m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	}
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(after, 10))
	m.Data = data
	return m, nil
}

// appendPlainObjectInfo appends the JSON encoding/json gives info when it
// is what write makes (a name, the kind metadata, the chunk size, no
// description, headers, link or deletion, a zero mtime, and strings that
// need no escaping), without reflection: it is on every new blob's path.
// ok is false for any other info.
func appendPlainObjectInfo(buf []byte, info *jetstream.ObjectInfo) (_ []byte, ok bool) {
	kind, hasKind := info.Metadata[MetaBlobKind]
	if info.Description != "" || len(info.Headers) > 0 || len(info.Metadata) != 1 || !hasKind ||
		info.Opts == nil || info.Opts.Link != nil || info.Opts.ChunkSize == 0 || !info.ModTime.IsZero() || info.Deleted ||
		!plainJSONString(info.Name) || !plainJSONString(kind) || !plainJSONString(info.Bucket) ||
		!plainJSONString(info.NUID) || !plainJSONString(info.Digest) {
		return buf, false
	}
	buf = append(buf, `{"name":"`...)
	buf = append(buf, info.Name...)
	buf = append(buf, `","metadata":{"`...)
	buf = append(buf, MetaBlobKind...)
	buf = append(buf, `":"`...)
	buf = append(buf, kind...)
	buf = append(buf, `"},"options":{"max_chunk_size":`...)
	buf = strconv.AppendUint(buf, uint64(info.Opts.ChunkSize), 10)
	buf = append(buf, `},"bucket":"`...)
	buf = append(buf, info.Bucket...)
	buf = append(buf, `","nuid":"`...)
	buf = append(buf, info.NUID...)
	buf = append(buf, `","size":`...)
	buf = strconv.AppendUint(buf, info.Size, 10)
	buf = append(buf, `,"mtime":"0001-01-01T00:00:00Z","chunks":`...)
	buf = strconv.AppendUint(buf, uint64(info.Chunks), 10)
	if info.Digest != "" {
		buf = append(buf, `,"digest":"`...)
		buf = append(buf, info.Digest...)
		buf = append(buf, '"')
	}
	return append(buf, '}'), true
}

// plainJSONString reports whether encoding/json writes s as is between
// quotes: printable ASCII without '"', '\\', '<', '>' or '&'.
func plainJSONString(s string) bool {
	for i := range len(s) {
		switch c := s[i]; {
		case c < 0x20 || c >= 0x7f, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		}
	}
	return true
}

// promote rewrites a live object's info with kind KindFlow, unless the
// info changed since cur was read (a wrong-last-sequence error).
func (s *ObjectBlobStore) promote(ctx context.Context, cur objectMeta) error {
	info := cur.info
	info.Metadata = maps.Clone(info.Metadata)
	if info.Metadata == nil {
		info.Metadata = map[string]string{}
	}
	info.Metadata[MetaBlobKind] = string(blob.KindFlow)
	m, err := metaMsg(&info, cur.seq)
	if err != nil {
		return err
	}
	if _, err := s.js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("mark as a flow: %w", err)
	}
	return nil
}

// write stores a new object the way jetstream.ObjectStore.Put does (chunk
// messages on $O.<bucket>.C.<nuid>, then the ObjectInfo on
// $O.<bucket>.M.<base64url name> with a subject rollup), so
// ObjectStore.Get reads it, if the info subject's last message is still
// after (0: none); a wrong-last-sequence error otherwise. All messages are
// published at once and their PubAcks awaited together.
//
// A blob of one chunk uses its id as the nuid (the chunk subject holds
// nothing but this content) and its chunk is stored only if that subject
// is empty; chunkThere reports that it was not (the chunk is stored
// already). A larger blob gets a fresh nuid.
//
// It publishes on the store's own JetStream context: ObjectStore.Put
// creates a JetStream context per call whose reconnect listener goroutine
// can be left blocked forever on a nil channel when the put ends before
// it starts (nats.go v1.55.0, resetPendingAcksOnReconnect), one leaked
// goroutine per ~1,000 puts.
func (s *ObjectBlobStore) write(ctx context.Context, id string, kind blob.Kind, raw []byte, sum [sha256.Size]byte, after uint64) (chunkThere bool, err error) {
	single := len(raw) <= blobChunkSize
	nid := id
	if !single {
		nid = nuid.Next()
	}
	chunkSubj := blobChunkPrefix + nid
	msgs := make([]*nats.Msg, 0, len(raw)/blobChunkSize+2)
	for off := 0; off < len(raw) || off == 0; off += blobChunkSize {
		m := nats.NewMsg(chunkSubj)
		m.Data = raw[off:min(off+blobChunkSize, len(raw))]
		if single {
			m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
		}
		msgs = append(msgs, m)
	}
	info := jetstream.ObjectInfo{
		ObjectMeta: jetstream.ObjectMeta{
			Name:     id,
			Metadata: map[string]string{MetaBlobKind: string(kind)},
			Opts:     &jetstream.ObjectMetaOptions{ChunkSize: blobChunkSize},
		},
		Bucket: BucketBlobs, NUID: nid,
		Size: uint64(len(raw)), Chunks: uint32(len(msgs)), Digest: blobDigest(sum),
	}
	meta, err := metaMsg(&info, after)
	if err != nil {
		return false, err
	}
	msgs = append(msgs, meta)

	acks, errs := s.publishAll(ctx, msgs)
	metaErr := errs[len(errs)-1]
	var chunkErr error
	for _, err := range errs[:len(errs)-1] {
		if single && isWrongLastSeq(err) {
			chunkThere = true
			continue
		}
		if err != nil {
			chunkErr = err
			break
		}
	}
	if !single && refused(metaErr) && !isWrongLastSeq(metaErr) {
		// Only when the info is known not to be stored: the chunks of a
		// write that is merely unconfirmed (a timeout, ctx) may be in use.
		// Those of a write that lost to a concurrent put of the same blob
		// are left (as ObjectStore.Put leaves them): that happens in
		// normal operation, and workers may not purge (deploy's
		// auth.conf), which would cost a violation and a timeout.
		s.purgeChunks(chunkSubj)
	}
	switch {
	case chunkErr == nil:
		return chunkThere, metaErr
	case metaErr == nil && refused(chunkErr):
		// The info is stored but the stream refused a chunk (full): mark
		// the object deleted (unless its info changed since), so that
		// storing it again writes it anew rather than finding it.
		s.abandon(info, acks[len(acks)-1].Sequence, chunkSubj, !single)
	}
	return chunkThere, chunkErr
}

// refused reports an error the stream answered with: the message is not
// stored (unlike a timeout, after which it may be).
func refused(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr)
}

// publishAll publishes msgs asynchronously, in order, and waits for all
// their PubAcks; a message the async publisher refuses (stalled,
// disconnected) is published synchronously instead. errs[i] is the
// outcome of msgs[i]. Waiting ends early when ctx ends (every message not
// acknowledged yet then has its cause).
func (s *ObjectBlobStore) publishAll(ctx context.Context, msgs []*nats.Msg) (acks []*jetstream.PubAck, errs []error) {
	acks, errs = make([]*jetstream.PubAck, len(msgs)), make([]error, len(msgs))
	futs := make([]jetstream.PubAckFuture, len(msgs))
	for i, m := range msgs {
		if err := ctx.Err(); err != nil {
			errs[i] = context.Cause(ctx)
			continue
		}
		f, err := s.js.PublishMsgAsync(m)
		if err != nil {
			acks[i], errs[i] = s.js.PublishMsg(ctx, m)
			continue
		}
		futs[i] = f
	}
	for i, f := range futs {
		if f == nil {
			continue
		}
		select {
		case acks[i] = <-f.Ok():
		case errs[i] = <-f.Err():
		case <-ctx.Done():
			errs[i] = context.Cause(ctx)
		}
	}
	return acks, errs
}

// abandon marks the object of a failed write deleted, if its info is
// still the one stored at seq, and purges the chunks if they are the
// write's own.
func (s *ObjectBlobStore) abandon(info jetstream.ObjectInfo, seq uint64, chunkSubj string, purge bool) {
	ctx, cancel := context.WithTimeout(context.Background(), DefaultPublishAckTimeout)
	defer cancel()
	info.Deleted = true
	info.Size, info.Chunks, info.Digest = 0, 0, ""
	if m, err := metaMsg(&info, seq); err == nil {
		_, _ = s.js.PublishMsg(ctx, m)
	}
	if purge {
		_ = s.stream.Purge(ctx, jetstream.WithPurgeSubject(chunkSubj))
	}
}

// purgeChunks removes the chunks of a write that failed.
func (s *ObjectBlobStore) purgeChunks(chunkSubj string) {
	ctx, cancel := context.WithTimeout(context.Background(), DefaultPublishAckTimeout)
	defer cancel()
	_ = s.stream.Purge(ctx, jetstream.WithPurgeSubject(chunkSubj))
}

// Get returns the blob with the id, or an error wrapping blob.ErrNotFound.
// The content is checked against the id. A cached blob is returned from
// the cache unless ctx comes from blob.WithoutCache.
func (s *ObjectBlobStore) Get(ctx context.Context, id string) (blob.Blob, error) {
	if !blob.ValidID(id) {
		return blob.Blob{}, fmt.Errorf("%w: malformed id %q", blob.ErrNotFound, id)
	}
	if s.deferred != nil {
		if b, ok := s.deferred.get(id); ok {
			return b, nil
		}
	}
	if !blob.CacheBypassed(ctx) {
		if b, ok := s.cache.Get(id); ok {
			return b, nil
		}
	}
	// With deferred puts, the coordinator's journal has what workers put.
	// It is read first, except when the cache is bypassed: that asks for
	// the blob's latest kind, and flows are in the blob stream, so the
	// journal is read only when the stream does not have the blob.
	var journalErr error
	fromJournal := func() (blob.Blob, bool) {
		jctx, cancel := context.WithTimeout(ctx, journalGetTimeout)
		defer cancel()
		b, found, err := s.getJournaled(jctx, id)
		journalErr = err
		if found {
			s.cache.Add(b)
		}
		return b, found
	}
	bypass := blob.CacheBypassed(ctx)
	if s.deferred != nil && !bypass {
		if b, ok := fromJournal(); ok {
			return b, nil
		}
	}
	raw, kind, err := s.read(ctx, id, false)
	if errors.Is(err, errBlobIncomplete) || (s.replicated && errors.Is(err, blob.ErrNotFound)) {
		// A replica serving direct gets may lag behind the one that
		// served the info, or behind the leader that acknowledged the
		// put (replicated streams): ask the leader.
		raw, kind, err = s.read(ctx, id, true)
	}
	if s.deferred != nil && bypass && errors.Is(err, blob.ErrNotFound) {
		if b, ok := fromJournal(); ok {
			return b, nil
		}
	}
	if errors.Is(err, blob.ErrNotFound) && journalErr != nil {
		// The coordinator's journal may have it: the item waits for an
		// answer rather than failing for a blob that exists.
		return blob.Blob{}, fmt.Errorf("queue: get blob %s: %w", id, errCoordinatorUnreachable{journalErr})
	}
	if err != nil {
		return blob.Blob{}, err
	}
	v, err := value.Parse(raw)
	if err != nil {
		return blob.Blob{}, fmt.Errorf("queue: blob %s is not JSON: %w", id, err)
	}
	b := blob.Blob{ID: id, Kind: kind, Data: v}
	s.cache.Add(b)
	return b, nil
}

// journalGetTimeout bounds a read from the coordinator's journal.
const journalGetTimeout = 5 * time.Second

// read reads a blob by direct gets, or from the stream leader when leader
// is set: its info (the last message on its info subject), then its
// chunks one after another (the next message on the chunk subject).
func (s *ObjectBlobStore) read(ctx context.Context, id string, leader bool) ([]byte, blob.Kind, error) {
	m, err := s.lookupFrom(ctx, id, leader)
	if err != nil {
		return nil, "", fmt.Errorf("queue: get blob %s: %w", id, err)
	}
	if !m.live() {
		if m.seq > 0 && !m.ok {
			return nil, "", fmt.Errorf("queue: get blob %s: %w", id, jetstream.ErrBadObjectMeta)
		}
		return nil, "", fmt.Errorf("%w: %s", blob.ErrNotFound, id)
	}
	info := m.info
	chunkSubj := blobChunkPrefix + info.NUID
	var raw []byte
	if info.Chunks > 1 {
		raw = make([]byte, 0, min(info.Size, 64<<20))
	}
	var seq uint64
	for i := range info.Chunks {
		var c *jetstream.RawStreamMsg
		if leader {
			c, err = s.leaderGet(ctx, msgGetRequest{Seq: seq, NextFor: chunkSubj})
		} else {
			c, err = s.stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(chunkSubj))
		}
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, "", fmt.Errorf("queue: get blob %s: %w: chunk %d of %d not found", id, errBlobIncomplete, i+1, info.Chunks)
		}
		if err != nil {
			return nil, "", fmt.Errorf("queue: get blob %s: chunk %d of %d: %w", id, i+1, info.Chunks, err)
		}
		if info.Chunks == 1 {
			raw = c.Data
		} else {
			raw = append(raw, c.Data...)
		}
		seq = c.Sequence + 1
	}
	if err := checkBlob(id, raw, info); err != nil {
		return nil, "", err
	}
	return raw, m.kind(), nil
}

// checkBlob verifies raw against the object's info and the blob id.
func checkBlob(id string, raw []byte, info jetstream.ObjectInfo) error {
	if uint64(len(raw)) != info.Size {
		return fmt.Errorf("queue: get blob %s: %w: %d bytes read, %d expected", id, errBlobIncomplete, len(raw), info.Size)
	}
	sum := sha256.Sum256(raw)
	if info.Digest != "" && blobDigest(sum) != info.Digest {
		return fmt.Errorf("queue: get blob %s: %w: digest mismatch", id, errBlobIncomplete)
	}
	if got := hex.EncodeToString(sum[:]); got != id {
		return fmt.Errorf("queue: blob %s is corrupt (content hashes to %s)", id, got)
	}
	return nil
}
