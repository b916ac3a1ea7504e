package queue

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"

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
// into chunks by the object store, so blobs far larger than max_payload
// are fine. It is safe for concurrent use.
type ObjectBlobStore struct {
	js  jetstream.JetStream
	obs jetstream.ObjectStore
}

var _ blob.Store = (*ObjectBlobStore)(nil)

// OpenBlobStore binds the blob object store; ErrNotProvisioned when it
// does not exist.
func OpenBlobStore(ctx context.Context, js jetstream.JetStream) (*ObjectBlobStore, error) {
	obs, err := js.ObjectStore(ctx, BucketBlobs)
	if err != nil {
		if errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, fmt.Errorf("%w: object store %s: %w", ErrNotProvisioned, BucketBlobs, err)
		}
		return nil, fmt.Errorf("queue: object store %s: %w", BucketBlobs, err)
	}
	return &ObjectBlobStore{js: js, obs: obs}, nil
}

// Put stores data and returns its id. Storing data that is already stored
// writes nothing (except promoting its kind to KindFlow, which wins as
// blob.Store requires). Two concurrent first puts of the same data both
// write it, harmlessly: the bytes are the same; if they disagree on the
// kind, the last writer's kind is kept.
func (s *ObjectBlobStore) Put(ctx context.Context, kind blob.Kind, data value.Value) (string, error) {
	if !kind.Valid() {
		return "", fmt.Errorf("%w: %q", blob.ErrInvalidKind, kind)
	}
	raw := value.Marshal(data)
	id := blob.IDOf(raw)
	info, err := s.obs.GetInfo(ctx, id)
	switch {
	case err == nil && !info.Deleted:
		if kind == blob.KindFlow && blob.Kind(info.Metadata[MetaBlobKind]) != blob.KindFlow {
			meta := info.ObjectMeta
			meta.Metadata = map[string]string{MetaBlobKind: string(blob.KindFlow)}
			if err := s.obs.UpdateMeta(ctx, id, meta); err != nil {
				return "", fmt.Errorf("queue: mark blob %s as a flow: %w", id, err)
			}
		}
		return id, nil
	case err != nil && !errors.Is(err, jetstream.ErrObjectNotFound):
		return "", fmt.Errorf("queue: look up blob %s: %w", id, err)
	}
	meta := jetstream.ObjectMeta{Name: id, Metadata: map[string]string{MetaBlobKind: string(kind)}}
	if err := s.put(ctx, meta, raw); err != nil {
		return "", fmt.Errorf("queue: store blob %s (%d bytes): %w", id, len(raw), err)
	}
	return id, nil
}

// blobChunkSize is the object store's default chunk size.
const blobChunkSize = 128 << 10

// put writes a new object the way jetstream.ObjectStore.Put does (chunk
// messages on $O.<bucket>.C.<nuid>, then the ObjectInfo on
// $O.<bucket>.M.<base64url name> with a subject rollup), so ObjectStore.Get
// reads it. It publishes synchronously on the store's own JetStream
// context: ObjectStore.Put creates a JetStream context per call whose
// reconnect listener goroutine can be left blocked forever on a nil
// channel when the put ends before it starts (nats.go v1.55.0,
// resetPendingAcksOnReconnect), one leaked goroutine per ~1,000 puts.
// Blobs are written once, so the old chunks of a replaced object are not
// a concern (Put only adds an object that does not exist).
func (s *ObjectBlobStore) put(ctx context.Context, meta jetstream.ObjectMeta, data []byte) error {
	id := nuid.Next()
	chunkSubj := fmt.Sprintf("$O.%s.C.%s", BucketBlobs, id)
	h := sha256.New()
	chunks := 0
	for off := 0; off < len(data); off += blobChunkSize {
		chunk := data[off:min(off+blobChunkSize, len(data))]
		h.Write(chunk)
		if _, err := s.js.Publish(ctx, chunkSubj, chunk); err != nil {
			s.purgePartial(chunkSubj)
			return err
		}
		chunks++
	}
	meta.Opts = &jetstream.ObjectMetaOptions{ChunkSize: blobChunkSize}
	info := jetstream.ObjectInfo{
		ObjectMeta: meta, Bucket: BucketBlobs, NUID: id,
		Size: uint64(len(data)), Chunks: uint32(chunks), Digest: jetstream.GetObjectDigestValue(h),
	}
	m := nats.NewMsg(fmt.Sprintf("$O.%s.M.%s", BucketBlobs, base64.URLEncoding.EncodeToString([]byte(meta.Name))))
	m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	var err error
	if m.Data, err = json.Marshal(info); err != nil {
		s.purgePartial(chunkSubj)
		return err
	}
	if _, err := s.js.PublishMsg(ctx, m); err != nil {
		s.purgePartial(chunkSubj)
		return err
	}
	return nil
}

// purgePartial removes the chunks of a put that failed.
func (s *ObjectBlobStore) purgePartial(chunkSubj string) {
	ctx, cancel := context.WithTimeout(context.Background(), DefaultPublishAckTimeout)
	defer cancel()
	if st, err := s.js.Stream(ctx, "OBJ_"+BucketBlobs); err == nil {
		_ = st.Purge(ctx, jetstream.WithPurgeSubject(chunkSubj))
	}
}

// Get returns the blob with the id, or an error wrapping blob.ErrNotFound.
// The content is checked against the id.
func (s *ObjectBlobStore) Get(ctx context.Context, id string) (blob.Blob, error) {
	if !blob.ValidID(id) {
		return blob.Blob{}, fmt.Errorf("%w: malformed id %q", blob.ErrNotFound, id)
	}
	res, err := s.obs.Get(ctx, id)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return blob.Blob{}, fmt.Errorf("%w: %s", blob.ErrNotFound, id)
	}
	if err != nil {
		return blob.Blob{}, fmt.Errorf("queue: get blob %s: %w", id, err)
	}
	defer res.Close()
	info, err := res.Info()
	if err != nil {
		return blob.Blob{}, fmt.Errorf("queue: get blob %s: %w", id, err)
	}
	buf := bytes.NewBuffer(make([]byte, 0, info.Size))
	if _, err := io.Copy(buf, res); err != nil {
		return blob.Blob{}, fmt.Errorf("queue: read blob %s: %w", id, err)
	}
	raw := buf.Bytes()
	if got := blob.IDOf(raw); got != id {
		return blob.Blob{}, fmt.Errorf("queue: blob %s is corrupt (content hashes to %s)", id, got)
	}
	v, err := value.Parse(raw)
	if err != nil {
		return blob.Blob{}, fmt.Errorf("queue: blob %s is not JSON: %w", id, err)
	}
	kind := blob.Kind(info.Metadata[MetaBlobKind])
	if !kind.Valid() {
		kind = blob.KindData
	}
	return blob.Blob{ID: id, Kind: kind, Data: v}, nil
}
