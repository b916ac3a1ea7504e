// Package worker is the stateless executor of stepflow-go's distributed
// mode: it pulls batch items from NATS JetStream (see package queue for
// the layout), runs each through the flow executor against the component
// servers of its stepflow-config.yml, and publishes the results. Scale by
// adding workers; any worker can execute any item of any run.
//
// # Startup
//
// Start connects to NATS, waits for the coordinator to have provisioned
// the streams and buckets (workers never create them), opens the run
// store, the flow store and the object-store blob store (shared by every
// worker, so that put_blob on one worker and get_blob on another agree),
// and starts the plugins once: component server processes live as long
// as the worker and serve every item of every run. Then it watches the
// run records (queue.RunStore.Watch): a run is active while its status is
// running and no cancellation was requested.
//
// # Scheduling and fairness
//
// One goroutine, the scheduler, owns the slot state: Concurrency slots,
// the items in flight, the slots reserved by pending pulls, and the
// active runs in round-robin order. Whenever a slot is free it pulls from
// the next run in that order, binding the run's consumer on first use
// (queue.RunConsumerHandle): it asks for the run's fair share of the free
// slots (free / active runs, rounded up), never more than the free slots,
// the run's own remaining concurrency, or the backlog the run's last
// message reported, with a short MaxWait (FetchMaxWait). Each message is
// handed to a new item goroutine as it arrives. Since a pending pull
// holds its slots until it ends, runs whose last pull came back empty are
// "cold": they are long-polled for one message, and only with a slot no
// run with work can use. So one huge run cannot starve a small one: every
// freed slot goes to the next run in turn.
//
// The run consumer's MaxAckPending is the run's concurrency across the
// whole fleet, enforced by the server; the worker only avoids asking for
// more than it could be given.
//
// # One item
//
// An item goroutine decodes the message (queue.DecodeItem), loads its
// input (queue.ItemInput) and the run's executor.Run (built once per run
// from the flow store's flow, cached by flow id, with the record's
// overrides and variables applied), and executes it, sending an
// in-progress ack every heartbeat interval (the item's, else the
// consumer's) so that a long item is not redelivered. It then publishes
// the ItemResult to the item's reply subject and waits for the PubAck;
// only then is the item acked, with the server's confirmation. The ack
// decision lives in one function, settle, from the handler's error:
//
//	result stored                     Ack (double ack)
//	run cancelled while running       TermWithReason("run cancelled"), no result
//	malformed message                 TermWithReason
//	worker draining, run paused       Nak: another worker takes it now
//	transient failure (publish, NATS) NakWithDelay; MaxDeliver bounds it
//	component server failed under it  NakWithDelay; MaxDeliver bounds it
//
// A component server that crashes (or whose connection breaks) fails
// every call in flight on it, not only the call that crashed it, so such
// a failure (executor.ErrUnavailable, once onError has had its say) is no
// result of the item's: the item is handed back and runs again on a
// restarted server or another worker. A transient failure on the item's
// last delivery by its max_deliver becomes its result instead of a nak:
// "item <i> exceeded its maximum deliveries (N); last error: <error>". So
// a poison item, one that crashes its server every time, fails after
// MaxDeliver deliveries naming what happened, and its siblings complete.
//
// A failed item is a result like any other (it never fails its siblings),
// and a component that panics fails its step, not the worker; the worker
// also recovers around its own per-item code.
//
// # Cancellation
//
// When a run's record gets cancel_requested, a final status, or is
// deleted, the worker stops pulling from it and cancels its in-flight
// items. They are terminated ("run cancelled") rather than naked: the run
// is over, the coordinator reports its remaining items as cancelled, and
// a nak would only make another worker fetch and terminate them again. A
// paused run is only no longer pulled from; its in-flight items finish.
//
// # Nested runs and slot lending
//
// Components reach runs/submit and runs/get through the plugin host; the
// worker implements them as NATS requests to the coordinator
// (queue.SubjectRunsSubmit, queue.SubjectRunsGet), with the calling
// item's run as the parent. A waiting submit never waits in the request:
// it submits, then polls runs/get with "wait": true in a loop, each
// request bounded by RunsRequestTimeout. While a component blocks on a
// child run its item lends its slot (slots.Lend): the scheduler's
// capacity grows by one until the wait ends. An item blocked on a child
// cannot complete before the child does, so without lending a full
// worker would wait forever; with it, a worker with Concurrency 1
// completes a parent item that waits on a child batch of any size.
//
// # Drain
//
// Stop (SIGTERM in cmd/worker) stops pulling at once, lets in-flight
// items finish and publish for DrainTimeout, then cancels the rest and
// naks them, so that another worker re-executes them without waiting for
// AckWait. Then it closes the plugins and, last, the NATS connection,
// after flushing the acks. Nothing is lost at any point: an item is
// removed from the work queue only by the ack that follows its stored
// result, and a re-executed item's second result is dropped by the
// result stream's deduplication (or by the coordinator, first result per
// index wins).
//
// # Worker registry
//
// From Start until it has drained, the worker puts its status into the
// worker registry (queue.BucketWorkers) every StatusInterval (2s): host,
// pid, version, slots total and busy, items in flight per run, items
// completed, failed and handed back, and the mean and p95 duration of
// the items finished in the last five minutes (stats.go). A clean stop
// deletes it; the bucket's MaxAge drops the key of a worker that died.
// `stepflow top` and the coordinator's GET /api/v1/cluster read it to
// show each worker's load and to mark stale and slow workers. The status
// also lists the components the worker can run, one per routed path with
// its schemas (components.go: listed at start, again for a plugin whose
// listing failed or whose server came back up, and every five minutes;
// at most queue.MaxComponentsBytes, about 11 KiB for the builtins), which
// the coordinator's GET /api/v1/components merges across live workers. A
// registry that cannot be reached only costs the status, never an item.
//
// # Health
//
// With HealthPort set, /healthz answers 200 while the process is alive,
// /readyz answers 200 while the worker takes items (connected to NATS,
// watching run records, not draining, and every component server up:
// plugin.Plugins.Health) and 503 with the reason otherwise, and /metrics
// serves Config.Metrics: items by outcome, item and component call
// durations (timed by wrapping the executor's router, so the executor
// knows nothing of metrics), slots, NATS and component-server state,
// each labelled worker=<WorkerID>. docs/operations.md lists them.
package worker
