package queue

import (
	"context"
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
	// DefaultResultsDuplicateWindow is the duplicate window of
	// STEPFLOW_RESULTS: a result published twice (a worker resending after
	// a reconnect) costs the coordinator a lookup, as it keeps the first
	// result per index anyway, so the window only spares the stream a
	// message; one second holds a fifth of the ids of the items' window.
	DefaultResultsDuplicateWindow = time.Second
	// DefaultResultsMaxAge is how long results stay on STEPFLOW_RESULTS: a
	// safety net for results the coordinator has already copied out (it
	// deletes a finished run's results itself), long enough to survive a
	// coordinator outage over a weekend.
	DefaultResultsMaxAge = 7 * 24 * time.Hour
	// WorkerTTL is the MaxAge of BucketWorkers: a worker's heartbeat key
	// disappears this long after its last put, so a worker killed without
	// a clean stop leaves the registry on its own. Workers heartbeat at
	// most every MaxWorkerHeartbeat, so a live worker's key never expires.
	WorkerTTL = 30 * time.Second
	// MaxWorkerHeartbeat is the longest heartbeat interval a worker may
	// use: a third of WorkerTTL, so two lost heartbeats do not remove a
	// live worker from the registry.
	MaxWorkerHeartbeat = WorkerTTL / 3
)

// Config configures Provision: the streams and buckets of the layout.
type Config struct {
	// Replicas is the replica count of every stream and bucket.
	// Default DefaultReplicas (1); 3 on a cluster. Changing it later is a
	// stream update the server performs online.
	Replicas int
	// DuplicateWindow of STEPFLOW_ITEMS. Default DefaultDuplicateWindow.
	DuplicateWindow time.Duration
	// ResultsDuplicateWindow of STEPFLOW_RESULTS. Default
	// DefaultResultsDuplicateWindow.
	ResultsDuplicateWindow time.Duration
	// ResultsMaxAge expires results. Default DefaultResultsMaxAge. Must be
	// at least DuplicateWindow.
	ResultsMaxAge time.Duration
	// MaxMsgSize bounds item and result messages in bytes; 0 = the
	// server's max_payload (1 MiB by default). It cannot exceed
	// max_payload: Provision checks it against the server.
	MaxMsgSize int32
	// ItemsMaxBytes bounds STEPFLOW_ITEMS; 0 = unlimited. When full, new
	// items are refused (discard-new), never old ones dropped: a work queue
	// must not lose accepted items.
	ItemsMaxBytes int64
	// ResultsMaxBytes bounds STEPFLOW_RESULTS; 0 = unlimited; discard-new
	// as well, so a worker retries rather than a result being lost.
	ResultsMaxBytes int64
	// BlobsMaxBytes bounds the blob object store; 0 = unlimited.
	BlobsMaxBytes int64
	// BlobsTTL expires blobs; 0 = never. Blobs are content-addressed and
	// may be shared between runs, so expiry is the only safe cleanup.
	BlobsTTL time.Duration
	// Compression stores results, flows and blobs S2-compressed (JSON
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
	if c.ResultsDuplicateWindow == 0 {
		c.ResultsDuplicateWindow = DefaultResultsDuplicateWindow
	}
	if c.ResultsMaxAge == 0 {
		c.ResultsMaxAge = DefaultResultsMaxAge
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
	case c.DuplicateWindow < 0 || c.ResultsDuplicateWindow < 0:
		return fmt.Errorf("%w: duplicate windows must not be negative", ErrInvalidConfig)
	case c.ResultsMaxAge < 0:
		return fmt.Errorf("%w: ResultsMaxAge must not be negative", ErrInvalidConfig)
	case c.ResultsMaxAge < c.ResultsDuplicateWindow:
		return fmt.Errorf("%w: ResultsMaxAge (%s) must be at least ResultsDuplicateWindow (%s)", ErrInvalidConfig, c.ResultsMaxAge, c.ResultsDuplicateWindow)
	case c.MaxMsgSize < 0 || c.ItemsMaxBytes < 0 || c.ResultsMaxBytes < 0 || c.BlobsMaxBytes < 0 || c.BlobsTTL < 0:
		return fmt.Errorf("%w: sizes and TTLs must not be negative", ErrInvalidConfig)
	}
	return nil
}

// streamConfigs returns the configs of the two streams.
func (c Config) streamConfigs() (items, results jetstream.StreamConfig) {
	limit := func(n int64) int64 {
		if n == 0 {
			return -1
		}
		return n
	}
	maxMsg := int32(-1)
	if c.MaxMsgSize > 0 {
		maxMsg = c.MaxMsgSize
	}
	compression := jetstream.NoCompression
	if c.Compression {
		compression = jetstream.S2Compression
	}
	items = jetstream.StreamConfig{
		Name:        StreamItems,
		Description: "stepflow batch items, one message per item; removed when acked",
		Subjects:    []string{ItemSubjects},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    c.Replicas,
		Duplicates:  c.DuplicateWindow,
		Discard:     jetstream.DiscardNew,
		MaxBytes:    limit(c.ItemsMaxBytes),
		MaxMsgs:     -1,
		MaxMsgSize:  maxMsg,
		AllowDirect: true,
	}
	results = jetstream.StreamConfig{
		Name:        StreamResults,
		Description: "stepflow item results, one message per item (first per index wins)",
		Subjects:    []string{ResultSubjects},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    c.Replicas,
		Duplicates:  c.ResultsDuplicateWindow,
		MaxAge:      c.ResultsMaxAge,
		Discard:     jetstream.DiscardNew,
		MaxBytes:    limit(c.ResultsMaxBytes),
		MaxMsgs:     -1,
		MaxMsgSize:  maxMsg,
		Compression: compression,
		AllowDirect: true,
	}
	return items, results
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
	items, results := cfg.streamConfigs()
	for _, sc := range []jetstream.StreamConfig{items, results} {
		if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
			return fmt.Errorf("queue: provision stream %s: %w", sc.Name, err)
		}
	}
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
	if _, err := js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      BucketBlobs,
		Description: "stepflow blobs by content hash",
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		Compression: cfg.Compression,
		MaxBytes:    cfg.BlobsMaxBytes,
		TTL:         cfg.BlobsTTL,
	}); err != nil {
		return fmt.Errorf("queue: provision object store %s: %w", BucketBlobs, err)
	}
	log.Debug("JetStream layout provisioned", zap.Int("replicas", cfg.Replicas),
		zap.Duration("duplicate_window", cfg.DuplicateWindow), zap.Duration("results_max_age", cfg.ResultsMaxAge))
	return nil
}
