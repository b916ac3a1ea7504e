// Package queue is stepflow-go's NATS JetStream transport: it owns every
// subject, stream, bucket and consumer name of the distributed mode, and
// the operations on them. It knows nothing about flows, executors or
// plugins; the coordinator and the workers build on it.
//
// # Layout
//
//	STEPFLOW_ITEMS    stream, work-queue retention, memory storage
//	                  (ItemsFileStorage for file), first sequence from the
//	                  clock (see ItemsIncarnation)
//	                  subject stepflow.items.<runID>, one message per item (Item)
//	                  Nats-Msg-Id <runID>.<index>
//	run-<runID>       durable pull consumer per run on STEPFLOW_ITEMS,
//	                  filter stepflow.items.<runID>, explicit ack,
//	                  MaxAckPending = the run's max concurrency
//	stepflow.results.<runID>
//	                  core NATS requests (ItemResult) from workers to the
//	                  leading coordinator, queue group ResultsQueueGroup;
//	                  the answer says the result is durably stored
//	STEPFLOW_RUNS     KV bucket, key runID, value RunRecord (CAS on revision)
//	STEPFLOW_FLOWS    KV bucket, key flow id (SHA-256), value canonical flow JSON
//	STEPFLOW_BLOBS    object store, object = blob id, metadata = blob kind
//	STEPFLOW_WORKERS  KV bucket, key WorkerKey(worker id), value WorkerStatus
//	                  (a worker's heartbeat), MaxAge WorkerTTL
//
// Wire messages are the protobuf messages of proto/stepflow/v1/queue.proto (package stepflowgo.v1)
// (package stepflowv1); JSON values inside them are JSON bytes.
//
// Never a stream per run: streams are Raft groups in a cluster, so their
// number must not grow with the workload. A run costs one consumer and one
// subject. Run ids are used as subject tokens, consumer names and KV keys,
// so they are restricted to [A-Za-z0-9_-] (ValidateRunID).
//
// # How an item flows
//
// The coordinator creates the run record, the run consumer
// (CreateRunConsumer) and publishes the items (PublishItems). Workers pull
// from the run consumers of the active runs (RunStore.Watch tells which).
// JetStream hands out at most MaxAckPending unacknowledged items per run,
// across all workers: that is the run's concurrency, enforced by the
// server, and changing it is a consumer update (UpdateRunConcurrency). A
// worker executes the item, sending an in-progress ack every
// HeartbeatInterval, sends the result (EncodeResult, SendResult) to the
// item's reply subject as a request, waits for the coordinator's answer
// (given once the result is in the run's fsynced result log), and only
// then acks the item. A crash anywhere re-executes the item; the
// coordinator's "first result per index wins" makes sure nothing is lost
// and nothing counted twice.
//
// Consumers on a work-queue stream must have disjoint filters (the server
// rejects overlaps, ErrFilterConflict): per-run subjects make that hold.
// Monitoring must therefore never add a consumer on STEPFLOW_ITEMS; it
// reads stream and consumer info instead (Streams, RunConsumers).
//
// # Worker registry
//
// Workers announce themselves in STEPFLOW_WORKERS: every few seconds each
// puts a WorkerStatus (slots, items in flight per run, items done, recent
// item durations) under its key, and deletes the key when it stops
// cleanly. The bucket's MaxAge (WorkerTTL) drops the key of a worker that
// died. ListWorkers reads the registry for `stepflow top` and the
// coordinator's GET /api/v1/cluster and GET /api/v1/components (each
// status lists its worker's components, at most MaxComponentsBytes).
//
// # Reliability settings and why
//
//   - Durability is the coordinator's: an item is accepted once the run's
//     spool (DataDir/runs/<id>/items.spool) is fsynced, and a result is
//     answered once the run's result log is fsynced (a group commit).
//     STEPFLOW_ITEMS holds a window of each spool in memory storage: a
//     NATS restart loses it, and the coordinator publishes every item
//     without a result again (it notices the new ItemsIncarnation, a
//     missing consumer, or counts that do not add up). Each incarnation
//     of the stream starts its sequences from the clock in microseconds,
//     above every sequence of the one before, so an ack a worker still
//     holds from before a restart cannot remove another item.
//   - The other streams and buckets (run records, flows, blobs, leases,
//     worker heartbeats) use file storage. When the file store fsyncs is
//     EmbeddedConfig.Sync (a SyncPolicy; nats-server's sync_interval):
//     the server default fsyncs every 2 minutes, so an acknowledged
//     message survives kill -9 of the NATS process (it is in the OS page
//     cache) but not a power loss or kernel crash within the interval;
//     Jepsen (NATS 2.12.1, 2025) lost acknowledged writes that way, in
//     clusters too. SyncAlways fsyncs every write before acknowledging
//     it. The coordinator's embedded server, the only copy on a single
//     machine, uses SyncAlways unless told otherwise (--nats-sync); see
//     docs/reliability.md for clusters.
//   - The blob stream is the exception on one server: it persists
//     asynchronously (a blob costs no fsync), and a blob a result or a
//     nested run refers to travels to the coordinator's fsynced blob
//     journal instead (see BlobJournalSubject).
//   - Replicas: 1 by default (one server), 3 for production clusters.
//   - Duplicate window: 5 seconds on STEPFLOW_ITEMS (DefaultDuplicateWindow).
//     It makes a quickly retried publish (lost PubAck, reconnect,
//     coordinator resuming its publisher) idempotent. The server holds
//     the ids of the window in memory (publish rate x window), so it is
//     short; an item published again after it runs twice, and the
//     coordinator keeps the first result per index.
//   - Items are published in a window per run from the coordinator's
//     spool, so the server holds windows, not batches.
//   - Discard policy: new messages are refused when a stream is full, never
//     old ones dropped, so an accepted item or result is never lost.
//   - AckWait 30s (DefaultAckWait) with in-progress heartbeats every 10s:
//     a live item, however long, is never redelivered; a crashed worker's
//     item is redelivered after at most 30s.
//   - MaxDeliver 5 (DefaultMaxDeliver): bounds re-execution of an item that
//     crashes its worker every time; then the max-deliveries advisory
//     (WatchMaxDeliveries) lets the coordinator fail the item with a clear
//     error. The item message stays on the work queue until deleted
//     (DeleteItemMsg).
//   - No BackOff by default: in JetStream, BackOff does not delay
//     redeliveries after a nak; it replaces AckWait per delivery number,
//     and the server sets AckWait to BackOff[0]. A short first value would
//     force very frequent heartbeats. Retry delays of failed items belong in
//     NakWithDelay (an item nak'ed with a delay keeps its MaxAckPending slot
//     until it is redelivered).
//
// # Clients
//
// Connect returns a *nats.Conn that reconnects forever and a JetStream
// handle of the jetstream package (not the legacy JetStreamContext).
// Embedded runs an in-process nats-server for a single machine and tests.
//
// # Authentication and TLS
//
// ConnectOptions carries a client's credentials (user/password, token,
// nkey seed file, creds file) and TLS files; RegisterConnectFlags
// registers them as the --nats-* flags (and STEPFLOW_NATS_* variables)
// that the worker, the coordinator and `stepflow serve` share.
// EmbeddedConfig makes the embedded server require credentials and TLS,
// from a nats-server config file (ConfigFile: users with permissions,
// accounts, operator mode) or simple settings (RegisterEmbeddedFlags).
// deploy/k8s/base/nats/auth.conf is the permission set of a worker user
// (the Kubernetes manifests of deploy/k8s use it as it is); see
// docs/security.md.
package queue
