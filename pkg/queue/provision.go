package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// Defaults of Config.
const (
	// DefaultReplicas is the replica count of every stream and bucket on a
	// single server. Use 3 on a production cluster: an R3 stream keeps
	// accepting and serving messages with one server down, and an
	// acknowledged publish is on a quorum (2 of 3) of servers.
	DefaultReplicas = 1
	// DefaultDuplicateWindow is how long the streams remember Nats-Msg-Ids:
	// a publish retried within it (a lost PubAck, a coordinator resuming
	// its publisher) is acknowledged as a duplicate and not stored again.
	// The server keeps every id of the window in memory, about 130 bytes
	// each plus garbage-collector headroom, so the cost is the publish
	// rate times the window: at 20,000 items/s, 5 s is 100,000 ids per
	// stream (some 25 MB), 10 minutes would be 12 million (GBs). Nothing
	// depends on the window for correctness: the coordinator keeps the
	// first result per index, so a duplicate that gets through (a retry
	// after the window, an item redelivered after its AckWait) costs an
	// execution, never a second result.
	DefaultDuplicateWindow = 5 * time.Second
	// WorkerTTL is the MaxAge of BucketWorkers: a worker's heartbeat key
	// disappears this long after its last put, so a worker killed without
	// a clean stop leaves the registry on its own. Workers heartbeat at
	// most every MaxWorkerHeartbeat, so a live worker's key never expires.
	WorkerTTL = 30 * time.Second
	// MaxWorkerHeartbeat is the longest heartbeat interval a worker may
	// use: a third of WorkerTTL, so two lost heartbeats do not remove a
	// live worker from the registry.
	MaxWorkerHeartbeat = WorkerTTL / 3
	// MaxComponentsBytes bounds the component list a worker puts in its
	// WorkerStatus (its encoded size): the status is rewritten every
	// heartbeat and read by every GET /components and /cluster, so a
	// config with many components or huge schemas sends its schemas no
	// more (components_schemas_omitted), then not every component
	// (components_truncated).
	MaxComponentsBytes = 64 << 10
)

// Config configures Provision: the streams and buckets of the layout.
type Config struct {
	// Replicas is the replica count of every stream and bucket.
	// Default DefaultReplicas (1); 3 on a cluster. Changing it later is a
	// stream update the server performs online.
	Replicas int
	// DuplicateWindow of STEPFLOW_ITEMS. Default DefaultDuplicateWindow.
	DuplicateWindow time.Duration
	// ItemsFileStorage keeps STEPFLOW_ITEMS in file storage. Default
	// (false) memory storage: the
	// items stream is a window of each run's spool, which is the durable
	// copy (fsynced by the coordinator before a run is accepted), and the
	// coordinator republishes every item without a result when the stream
	// loses them (a NATS restart). File storage costs an fsync per item
	// publish and per ack under sync_interval always, and buys nothing.
	ItemsFileStorage bool
	// MaxMsgSize bounds item messages in bytes; 0 = the
	// server's max_payload (1 MiB by default). It cannot exceed
	// max_payload: Provision checks it against the server.
	MaxMsgSize int32
	// ItemsMaxBytes bounds STEPFLOW_ITEMS; 0 = unlimited. When full, new
	// items are refused (discard-new), never old ones dropped: a work queue
	// must not lose accepted items.
	ItemsMaxBytes int64
	// BlobsMaxBytes bounds the blob object store; 0 = unlimited.
	BlobsMaxBytes int64
	// BlobsTTL expires blobs; 0 = never. Blobs are content-addressed and
	// may be shared between runs, so expiry is the only safe cleanup.
	BlobsTTL time.Duration
	// Compression stores flows and blobs S2-compressed (JSON
	// compresses well; costs CPU on the server). Items are not compressed:
	// they are short-lived.
	Compression bool
	// LeaseTTL is the max age of BucketCoordinators: how long a dead
	// leader's lease lasts. Default DefaultLeaseTTL.
	LeaseTTL time.Duration
	// Logger receives what Provision did. Default: no logs.
	Logger *zap.Logger
}

// WithDefaults returns a copy of c with every zero field set to its
// default.
func (c Config) WithDefaults() Config {
	if c.Replicas == 0 {
		c.Replicas = DefaultReplicas
	}
	if c.DuplicateWindow == 0 {
		c.DuplicateWindow = DefaultDuplicateWindow
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return c
}

// Validate reports settings JetStream would reject, with what to change.
func (c Config) Validate() error {
	switch {
	case c.Replicas < 1 || c.Replicas > 5:
		return fmt.Errorf("%w: Replicas must be 1 to 5 (JetStream's limit), not %d", ErrInvalidConfig, c.Replicas)
	case c.LeaseTTL < time.Second:
		return fmt.Errorf("%w: LeaseTTL must be at least 1s, not %s", ErrInvalidConfig, c.LeaseTTL)
	case c.DuplicateWindow < 0:
		return fmt.Errorf("%w: the duplicate window must not be negative", ErrInvalidConfig)
	case c.MaxMsgSize < 0 || c.ItemsMaxBytes < 0 || c.BlobsMaxBytes < 0 || c.BlobsTTL < 0:
		return fmt.Errorf("%w: sizes and TTLs must not be negative", ErrInvalidConfig)
	}
	return nil
}

// itemsStreamConfig returns the config of STEPFLOW_ITEMS (FirstSeq unset).
func (c Config) itemsStreamConfig() jetstream.StreamConfig {
	maxBytes := int64(-1)
	if c.ItemsMaxBytes > 0 {
		maxBytes = c.ItemsMaxBytes
	}
	maxMsg := int32(-1)
	if c.MaxMsgSize > 0 {
		maxMsg = c.MaxMsgSize
	}
	return jetstream.StreamConfig{
		Name:        StreamItems,
		Description: "stepflow batch items, one message per item; removed when acked",
		Subjects:    []string{ItemSubjects},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     c.itemsStorage(),
		Replicas:    c.Replicas,
		Duplicates:  c.DuplicateWindow,
		Discard:     jetstream.DiscardNew,
		MaxBytes:    maxBytes,
		MaxMsgs:     -1,
		MaxMsgSize:  maxMsg,
		AllowDirect: true,
	}
}

func (c Config) itemsStorage() jetstream.StorageType {
	if c.ItemsFileStorage {
		return jetstream.FileStorage
	}
	return jetstream.MemoryStorage
}

// ItemsIncarnation identifies one life of STEPFLOW_ITEMS: a stream that
// was lost (memory storage across a NATS restart, a deleted stream) and
// created again has another. Items and consumers of an earlier
// incarnation are gone, and the coordinator republishes every item
// without a result.
type ItemsIncarnation struct {
	// Created is when the stream was created.
	Created time.Time
	// FirstSeq is the stream's configured first sequence.
	FirstSeq uint64
}

// incarnationOf is the incarnation of the items stream described by info.
func incarnationOf(info *jetstream.StreamInfo) ItemsIncarnation {
	return ItemsIncarnation{Created: info.Created, FirstSeq: info.Config.FirstSeq}
}

// firstSeqNow is the first sequence of a new items stream: the time in
// microseconds. An ack carries the stream sequence of its message, so an
// ack from an earlier incarnation (a worker that held an item across a
// NATS restart) must never name a message of this one: every sequence of
// the new stream is above every sequence of the old one as long as the
// old one took fewer than a million messages a second on average.
func firstSeqNow() uint64 { return uint64(max(time.Now().UnixMicro(), 1)) }

// EnsureItemsStream creates STEPFLOW_ITEMS when it does not exist (with
// a first sequence no earlier incarnation reached), or updates it to cfg.
// A stream of the other storage type is deleted and created anew (its
// items are in the coordinators' spools). created says the stream is new.
func EnsureItemsStream(ctx context.Context, js jetstream.JetStream, cfg Config) (inc ItemsIncarnation, created bool, err error) {
	cfg = cfg.WithDefaults()
	want := cfg.itemsStreamConfig()
	s, err := js.Stream(ctx, StreamItems)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
	case err != nil:
		return inc, false, fmt.Errorf("queue: stream %s: %w", StreamItems, err)
	default:
		info := s.CachedInfo()
		if info.Config.Storage == want.Storage {
			want.FirstSeq = info.Config.FirstSeq
			if _, err := js.UpdateStream(ctx, want); err != nil {
				return inc, false, fmt.Errorf("queue: provision stream %s: %w", StreamItems, err)
			}
			return incarnationOf(info), false, nil
		}
		cfg.Logger.Warn("recreating the items stream with another storage type; the coordinator republishes its items from the spools",
			zap.String("from", info.Config.Storage.String()), zap.String("to", want.Storage.String()))
		if err := js.DeleteStream(ctx, StreamItems); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return inc, false, fmt.Errorf("queue: recreate stream %s: %w", StreamItems, err)
		}
	}
	want.FirstSeq = firstSeqNow()
	s, err = js.CreateStream(ctx, want)
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		// Another coordinator created it meanwhile.
		if s, err = js.Stream(ctx, StreamItems); err == nil {
			info := s.CachedInfo()
			return incarnationOf(info), false, nil
		}
	}
	if err != nil {
		return inc, false, fmt.Errorf("queue: provision stream %s: %w", StreamItems, err)
	}
	info := s.CachedInfo()
	return incarnationOf(info), true, nil
}

// ItemsStreamIncarnation returns the current incarnation of
// STEPFLOW_ITEMS; ErrNotProvisioned when the stream does not exist.
func ItemsStreamIncarnation(ctx context.Context, js jetstream.JetStream) (ItemsIncarnation, error) {
	inc, _, err := ItemsStreamState(ctx, js)
	return inc, err
}

// ItemsStreamState returns the current incarnation of STEPFLOW_ITEMS and
// the last sequence it holds, as its leader answers now.
func ItemsStreamState(ctx context.Context, js jetstream.JetStream) (inc ItemsIncarnation, lastSeq uint64, err error) {
	s, err := js.Stream(ctx, StreamItems)
	if err != nil {
		return ItemsIncarnation{}, 0, notProvisioned("stream "+StreamItems, err)
	}
	info := s.CachedInfo()
	return incarnationOf(info), info.State.LastSeq, nil
}

// RecreateItemsStream deletes STEPFLOW_ITEMS, with its items and every
// run consumer, and creates it again, its sequences above the old
// one's: for a stream that lost its messages and went back to sequences
// it had given out already, where an ack from before the loss could
// remove an item published after it. The caller publishes the items
// again from the spools.
func RecreateItemsStream(ctx context.Context, js jetstream.JetStream, cfg Config) (ItemsIncarnation, error) {
	if err := js.DeleteStream(ctx, StreamItems); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return ItemsIncarnation{}, fmt.Errorf("queue: recreate stream %s: %w", StreamItems, err)
	}
	inc, _, err := EnsureItemsStream(ctx, js, cfg)
	return inc, err
}

// Provision creates the streams and buckets of the layout, or updates them
// to cfg when they exist: it is idempotent and safe to run from every
// coordinator at start. Settings JetStream cannot change in place
// (retention, storage type) fail with the server's error rather than being
// recreated, which would lose data.
func Provision(ctx context.Context, js jetstream.JetStream, cfg Config) error {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := cfg.Logger.Named("queue")
	if nc := js.Conn(); nc != nil && cfg.MaxMsgSize > 0 {
		if mp := nc.MaxPayload(); mp > 0 && int64(cfg.MaxMsgSize) > mp {
			return fmt.Errorf("%w: MaxMsgSize %d exceeds the server's max_payload %d", ErrInvalidConfig, cfg.MaxMsgSize, mp)
		}
	}
	if _, _, err := EnsureItemsStream(ctx, js, cfg); err != nil {
		return err
	}
	deleteLegacyResults(ctx, js, log)
	if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      BucketRuns,
		Description: "stepflow run records (protobuf RunRecord by run id)",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
	}); err != nil {
		return fmt.Errorf("queue: provision bucket %s: %w", BucketRuns, err)
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      BucketFlows,
		Description: "stepflow flows by content hash (canonical JSON by flow id)",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		Compression: cfg.Compression,
	}); err != nil {
		return fmt.Errorf("queue: provision bucket %s: %w", BucketFlows, err)
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      BucketCoordinators,
		Description: "stepflow coordinator leadership lease",
		History:     1,
		TTL:         cfg.LeaseTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
	}); err != nil {
		return fmt.Errorf("queue: provision bucket %s: %w", BucketCoordinators, err)
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, workersBucketConfig(cfg.Replicas)); err != nil {
		return fmt.Errorf("queue: provision bucket %s: %w", BucketWorkers, err)
	}
	if err := provisionBlobStream(ctx, js, cfg); err != nil {
		return fmt.Errorf("queue: provision object store %s: %w", BucketBlobs, err)
	}
	log.Debug("JetStream layout provisioned", zap.Int("replicas", cfg.Replicas),
		zap.Duration("duplicate_window", cfg.DuplicateWindow), zap.String("items_storage", cfg.itemsStorage().String()))
	return nil
}

// deleteLegacyResults deletes the results stream of earlier releases once
// it is empty (results now travel as requests to the coordinator).
func deleteLegacyResults(ctx context.Context, js jetstream.JetStream, log *zap.Logger) {
	s, err := js.Stream(ctx, LegacyStreamResults)
	if err != nil {
		return
	}
	if n := s.CachedInfo().State.Msgs; n > 0 {
		log.Warn("the results stream of an earlier release still holds results; delete it once its runs are done",
			zap.String("stream", LegacyStreamResults), zap.Uint64("messages", n))
		return
	}
	if err := js.DeleteStream(ctx, LegacyStreamResults); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		log.Debug("deleting the legacy results stream", zap.Error(err))
	}
}

// ParseItemsStorage parses the storage of STEPFLOW_ITEMS as a flag
// gives it: "memory" (file = false) or "file".
func ParseItemsStorage(s string) (file bool, err error) {
	switch s {
	case "memory", "":
		return false, nil
	case "file":
		return true, nil
	default:
		return false, fmt.Errorf("%w: items storage %q (want memory or file)", ErrInvalidConfig, s)
	}
}

// blobStreamConfig is the stream of the STEPFLOW_BLOBS object store as
// jetstream.ObjectStore makes it (so the object store API and the NATS
// CLI read it), persisting asynchronously on one server: a new blob then
// costs no fsync of its own. A blob an acknowledged result refers to is
// journaled by the coordinator instead (see BlobJournalSubject). The
// server refuses async persistence for replicated streams, whose
// replicas are what keeps a blob.
func blobStreamConfig(cfg Config) jetstream.StreamConfig {
	replicas := max(cfg.Replicas, 1)
	maxBytes := cfg.BlobsMaxBytes
	if maxBytes == 0 {
		maxBytes = -1
	}
	var compression jetstream.StoreCompression
	if cfg.Compression {
		compression = jetstream.S2Compression
	}
	sc := jetstream.StreamConfig{
		Name:        blobStream,
		Description: "stepflow blobs by content hash",
		Subjects:    []string{blobChunkPrefix + ">", blobMetaPrefix + ">"},
		MaxAge:      cfg.BlobsTTL,
		MaxBytes:    maxBytes,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
		Discard:     jetstream.DiscardNew,
		AllowRollup: true,
		AllowDirect: true,
		Compression: compression,
	}
	if replicas == 1 {
		sc.PersistMode = jetstream.AsyncPersistMode
	}
	return sc
}

// provisionBlobStream creates the blob stream, or updates it keeping its
// persist mode (which the server does not let change: a stream made by
// an earlier release keeps fsyncing each message).
func provisionBlobStream(ctx context.Context, js jetstream.JetStream, cfg Config) error {
	sc := blobStreamConfig(cfg)
	for range 2 {
		cur, err := js.Stream(ctx, blobStream)
		switch {
		case err == nil:
			sc.PersistMode = cur.CachedInfo().Config.PersistMode
			_, err = js.UpdateStream(ctx, sc)
			return err
		case errors.Is(err, jetstream.ErrStreamNotFound):
			_, err = js.CreateStream(ctx, sc)
			if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				continue // another process made it meanwhile
			}
			return err
		default:
			return err
		}
	}
	return fmt.Errorf("stream %s keeps changing", blobStream)
}
