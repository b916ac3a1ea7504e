// Package coordinator is the coordinator of stepflow-go's distributed
// mode: the /api/v1 REST API of upstream Stepflow 0.9.0, run bookkeeping
// and result aggregation. Workers (pkg/worker) execute the items; the
// NATS JetStream layout is pkg/queue's (see its doc for every name and
// reliability setting).
//
// # Run lifecycle
//
// A run is submitted over REST (POST /api/v1/runs, JSON or a JSONL
// upload) or, for a child run that a component submits, over the NATS API
// (queue.SubjectRunsSubmit). Both go through the same steps:
//
//  1. The flow is loaded by id from the flow bucket (or from a blob of a
//     flow, which is checked like POST /flows checks a flow, size and
//     fatal diagnostics, then stored as a flow), the overrides and variables
//     are checked against it, and the submission is counted against
//     Config.MaxConcurrentRuns (top-level runs only: a child run's parent
//     waits for it, so refusing it could deadlock the tree).
//  2. The inputs are encoded into Item messages as they are read (an
//     input too large for a message goes to the blob store) and appended
//     to the run's spool, DataDir/runs/<id>/items.spool; nothing is
//     published yet, and nothing is ever held in memory as a whole.
//  3. Once every input is spooled (and synced), the run record is created
//     (status running, item_total = N, items_published = 0) and then the
//     run's consumer, with MaxAckPending = the run's concurrency: the
//     request's maxConcurrency, or N capped at Config.ConcurrencyCap.
//     The run's publisher starts, and workers, watching the run records,
//     start pulling.
//  4. The publisher feeds the spool to STEPFLOW_ITEMS in a window: at
//     most Config.PublishWindow items of the run (default four times its
//     concurrency, 4,096 to 65,536) are on the queue without a result;
//     each committed batch of results lets as many more in. The
//     JetStream server thus holds a window per run, not the batch: the
//     memory of a million-item run is the memory of a few thousand items.
//     The record's items_published follows (every item below it is on the
//     queue or has a result), written with the counters.
//  5. Results are aggregated (below). When every item has a result the
//     run finishes: completed if none failed, failed otherwise; its
//     publisher stops, its consumer is deleted, what is left of its items
//     and results on the streams is purged, its spool is removed, and
//     waiters (a synchronous POST /runs, runs.get with "wait", event
//     streams) are woken.
//
// Spooling before the record makes an upload all-or-nothing: a malformed
// JSONL line, an item over MaxItemsPerRun, a line over MaxBodyBytes or a
// client that goes away rejects the submission (400 naming the line,
// 413, ...), and no run, no record and no consumer ever existed, so no
// worker ran any of them. A DataDir/runs/<id>/uploading marker covers a
// coordinator that stops in the middle: the next one removes the run's
// directory (and, for uploads of older versions that published while
// uploading, purges its items). The price is that execution starts when
// the upload ends, not during it.
//
// A restarted coordinator resumes each running run's publisher from the
// record's items_published: items below it that have no result are still
// on the queue; items from it on are published again unless they have a
// result (a repeat within the duplicate window is dropped by the stream;
// a later one runs twice and the first result wins).
//
// Cancelling (POST /runs/{id}/cancel) really stops a run: the record
// becomes cancelled with cancel_requested set (workers stop taking its
// items), the consumer is deleted (in-flight acks fail; late results are
// dropped), the queued items are purged, and every item without a result
// counts as, and reads as, cancelled.
//
// Invalid overrides or variables do not fail the request, as upstream:
// the run is created failed, without items, its error in the record.
//
// # Aggregation
//
// Workers send each result as a core NATS request on
// stepflow.results.<run> (queue.SendResult); the leader, the only
// coordinator subscribed (queue group queue.ResultsQueueGroup), takes
// whatever has arrived as one batch: each result is appended to its run's
// result log unless the index already has one (the first result per index
// wins), every log touched is fsynced once (Config.SyncResults), and only
// then is each request answered (stored, duplicate, or dropped for a
// finished or unknown run; or refused with the reason, say a full disk).
// The worker acks its item only after the answer, and sends the result
// again, to whichever coordinator leads by then, when there is none. A
// lone result waits for its own fsync and nothing else; under load, one
// fsync covers hundreds. The run's counters are written to its record
// off that path, at most every 200 ms, with compare-and-set (absolute
// values, so a lost or repeated write is repaired by the next). The
// counters in memory are derived from the store, never the other way
// round, so they cannot drift.
//
// An item JetStream gives up on after MaxDeliver deliveries (its
// max-deliveries advisory) becomes a failed result, stored through the
// same group commit as a worker's (so a worker's result, if any, still
// wins) with the message "item <i> exceeded its maximum deliveries (N);
// last error: …"; its message is then deleted from the work queue.
// Advisories are not stored: for a run taken over after a restart, items
// still on the queue while its consumer has nothing pending or in flight
// are failed the same way.
//
// # Result storage, and why files
//
// Each run's results live in DataDir/runs/<id>: an append-only log of
// checksummed records in completion order, and an index of 8 bytes per
// item index pointing into it (a sparse file). Reading a run back in
// index order (GET /runs/{id}/items, what `stepflow submit` downloads)
// is one sequential pass over the index and one pread per item, with
// constant memory, whatever the batch size; the event stream tails the
// log. A stream could not serve that: it is ordered by arrival and has
// no lookup by index, and keeping a 10-million-entry index in memory is
// what this design avoids.
//
// A record is written before its index slot, and a slot is only trusted
// when the record it points to has the right index and checksum. On
// opening a store (a run taken over after a restart) the log is scanned:
// a torn tail is cut, a slot missing for a complete record is filled in,
// and the outcomes are counted again, first record per index only.
// With Config.SyncResults (the default) results are answered once
// fsynced, so an answered result survives a power loss; without it, once
// in the page cache (kill -9 of the coordinator loses nothing).
//
// The stores, the item spools and the idempotency keys
// (DataDir/idempotency, one file per key hash, claimed with an atomic
// link) live in the DataDir. One coordinator restarted on the same DataDir
// (a persistent volume) resumes everything. Several coordinators may share
// a NATS deployment and one DataDir (a volume with POSIX locks): one leads
// and the others forward to it (see leader.go and "Leadership" below).
//
// # Leadership
//
// The coordinator holding the lease in queue.BucketCoordinators (renewed
// every TTL/4, compare-and-set) runs the publishers, the aggregation, the
// NATS API and the max-deliveries advisories; a standby forwards every
// REST request but the health checks and /metrics to the leader's
// AdvertiseURL (header Stepflow-Forwarded-To; 503 with Retry-After while
// nobody leads). When the lease is free (released by a clean Stop, or
// expired after the TTL), a standby takes it and resumes like a restart
// (below). A run's result log is flock'ed while attached, so a leader that
// stalled past its lease cannot write a run its successor took. A
// coordinator with an embedded NATS server takes the lease by force; one
// that finds another holder of its lease steps down: it stops (Stopped is
// closed, LostLeadership is true) and the coordinator command starts a
// new one on the same port at once, which stands by and competes for the
// lease again (the process never exits for it). A renewal that NATS does
// not answer is no loss of the lease, and one whose answer was lost but
// which was written is recognised as the holder's own (queue.Lease).
//
// # Restart
//
// Start resumes what a previous coordinator on the same DataDir left:
// uploads interrupted before their record are purged; every run whose
// record says running is attached (result store repaired and recounted,
// consumer recreated if the stop fell between the record and the
// consumer, counters written, exhausted items failed, the run finished if
// it is complete); consumers of runs that have finished are deleted. The
// result consumer then delivers whatever workers published meanwhile.
//
// # REST API
//
// Upstream 0.9.0 shapes (spec/cli-and-batch.md §10), JSON with camelCase
// keys, errors as {"code":<status>,"message":"…"}; see Handler for the
// routes. Additions: JSONL uploads (Content-Type application/x-ndjson;
// flowId, maxConcurrency, wait, and overrides and variables as JSON, in
// the query; variables preferably in the Stepflow-Variables header),
// "wait": false, Idempotency-Key, PATCH /runs/{id}
// {"maxConcurrency":N}, GET /runs/{id}/events (server-sent events),
// GET /runs/{id}/items?format=jsonl|offset|limit|status, GET /cluster
// (streams, run consumers, the worker registry and runs in one answer, for
// `stepflow top` and the runs page; see handleCluster), GET
// /api/v1/backlog ({"queued","inFlight","backlog","runs"} over the running
// runs, what a KEDA metrics-api scaler reads), and "queued" and
// "redelivered" in the item statistics. GET /components lists what the
// live workers publish in the worker registry (components.go); GET
// /runs/{id}/steps serves the step outcomes the worker of a single-item
// run sends with its result (handleSteps). With Config.AuthToken set, every
// call but GET /api/v1/health, /healthz and /readyz needs
// "Authorization: Bearer <token>", or the runs page's session cookie.
// Secret variables (and input fields the flow's schema marks
// `is_secret`) are shown as "[REDACTED]" by GET /runs/{id}. See
// docs/security.md.
//
// # Runs page
//
// /ui/ serves a page (embedded HTML, CSS and vanilla JS, nothing loaded
// from elsewhere) listing the runs with live progress (the events stream),
// their counts and failed items with their errors, Cancel and Scale
// buttons, and the stream and worker panels of GET /cluster. With a token,
// /ui/login trades it for an HttpOnly, SameSite=Strict session cookie (an
// expiry and its HMAC keyed by the token, never the token); mutating
// requests on the cookie must carry X-Stepflow-UI: 1. See ui.go.
//
// # Health and metrics
//
// Next to the API: GET /healthz (200 while the process serves), GET
// /readyz (200 while started, not stopping, connected to NATS and
// Config.ReadyCheck passes; 503 with the reason otherwise) and GET
// /metrics (Prometheus text, behind the token). The per-run series
// (stepflow_run_*) and the backlog are read from the run states at
// scrape time, one consumer info request per running run, so counting
// costs nothing per item; finished runs stay for
// Config.MetricsRunRetention. docs/operations.md lists every metric.
//
// # NATS API
//
// runs.submit and runs.get of pkg/queue/api.go are served in the queue
// group queue.APIQueueGroup, each request on its own goroutine. A request
// with "wait": true is answered when the run has finished or after
// Config.APIMaxWait with its current status, whichever comes first; the
// requester's own timeout may be shorter, in which case it simply asks
// again (the late reply goes nowhere).
package coordinator
