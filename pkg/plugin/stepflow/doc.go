// Package stepflow is the plugin for `type: stepflow`: components served
// by an unmodified Python component server written with stepflow-py,
// reached over the Stepflow component protocol (JSON-RPC 2.0, see
// shared/spec/component-protocol.md and package protocol).
//
// # Modes
//
//   - Subprocess HTTP (`command`, transport http or absent; stepflow-py
//     0.9.x to 0.11.x): the plugin spawns `command args` — resolved like `which` on
//     the runtime's PATH, a name containing '/' relative to the working
//     directory — in the working directory, with ONLY the configured `env`
//     (upstream semantics: no PATH or HOME unless listed), stdin
//     /dev/null, in its own process group (on Linux also killed by the
//     kernel when the worker dies, so that kill -9 of a worker leaves no
//     orphaned server behind). It reads stdout until the first
//     `{"port": N}` line (30 s; earlier lines are logged), polls GET
//     healthCheck.path until 2xx, then sends `initialize` and
//     `initialized`. stdout and stderr are drained into the plugin's
//     logger for as long as the process lives.
//   - Remote (`url`): the same protocol against a running server; no
//     launch, no health polling, no restart.
//   - Subprocess stdio (`transport: stdio`; stepflow-py <= 0.8): the same
//     launch with stdin/stdout/stderr piped, the stdout pipe raised to
//     1 MiB (the SDK loses answers larger than the free pipe space),
//     newline-delimited JSON-RPC on the pipes, handshake within 60 s.
//
// # Lifetime
//
// The server is started once by Start and shared by every call of every
// item and run; calls are multiplexed (one HTTP request per call, or
// request ids on the pipes) and never serialised by the plugin. In
// subprocess modes a supervisor goroutine watches the process: when it
// exits, its stream breaks, a call fails with a transport error, or a
// call exceeds `timeoutMs` (the protocol has no cancellation, so killing
// is the only way to stop the work), the process group is killed and a
// new server is started with a capped exponential back-off (100 ms
// doubling to 5 s, back to 100 ms once a server ran for 10 s), with a
// fresh handshake. Calls made meanwhile wait for the new server, or fail
// at once while the last restart attempt failed. Close sends SIGTERM to
// the process group, waits a grace period (5 s by default), sends
// SIGKILL, and waits for the process and every goroutine.
//
// # Failures
//
// Deliberately unlike upstream 0.9.0 (which restarts the server and
// retries on any error), following §7.3 of the protocol spec:
//
//   - A JSON-RPC error answer to components/execute is a component
//     failure: Execute returns a failed result with the server's code
//     (-32003 for an exception in the component) and message, and data
//     {"step_id", "component", "data"}; the server keeps running, and the
//     step's onError applies.
//   - A transport failure (the process exited, the connection or stream
//     broke) is returned as a *ServerError (`component server "python"
//     failed: process exited: exit status 3; restarting`), which the
//     executor turns into `500 step "<id>" failed`. The server is
//     restarted; an onError retry of the step reaches the new server with
//     a higher attempt number. It also matches executor.ErrUnavailable:
//     the component gave no answer (the crash may be another call's
//     doing), so a distributed worker hands the item back for redelivery
//     instead of recording the failure, until MaxDeliver.
//   - A call that exceeds timeoutMs returns a *TimeoutError and restarts
//     the server (other calls in flight on it fail as transport
//     failures).
//
// # Callbacks
//
// While a call is in flight the component may call back. One dispatcher,
// Callbacks, serves the union of the methods of both SDK generations to
// every transport: blobs/put (flow blobs must parse as flows and are
// stored in canonical form, so their id is the flow id), blobs/get,
// runs/submit and runs/get (SDK 0.9), and the legacy flows/evaluate,
// flows/get_metadata, flows/submit_batch and flows/get_batch (SDK <= 0.8,
// a batch being one run whose id is the batch id). Results have exactly
// the shapes the SDKs type-check: a wrong shape makes the component wait
// forever, so every failure is a JSON-RPC error instead. Nested runs are
// started through Host.Runs with the calling item's run as parent (per
// call over HTTP; over stdio, whose callbacks are not tied to a call, the
// callback's observability.run_id or else the run of the executions in
// flight when they all belong to one run). Handlers run on their own
// goroutines and may block (runs/submit with wait) while the same server
// keeps executing the nested run's items, so a parent whose every slot
// waits on a nested run still completes.
//
// # stepflow-py 0.10 and later
//
// These releases (the protocol of upstream 0.11) need initialize's
// runtimeProtocolVersion, which is sent next to the older
// runtime_protocol_version (every SDK ignores the spelling it does not
// know), and have no blobs/* callbacks: over HTTP, initialize offers
// capabilities.blobApiUrl, the host's blob API (package blobapi, over
// Host.Blobs; a remote server gets it only at a loopback address), and
// Options.BlobThreshold as blobThreshold. A server that answers
// supportsBlobRefs may return {"$blob": id} references anywhere in an
// output; they are resolved from the blob store before the flow sees the
// output (a reference to a missing blob is an error of the call).
package stepflow
