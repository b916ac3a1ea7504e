// Package grpcqueue is the plugin for `type: grpc` and `type: nats`:
// components served by unmodified stepflow-py 0.13 workers, which pull
// tasks over gRPC, or fetch them from a NATS JetStream stream (upstream
// Stepflow 0.13's worker protocol, proto/stepflow/v1/{tasks,orchestrator,
// blobs,common}.proto, Go code in proto/tasksv1).
//
// # Transport
//
// Start serves TasksService, OrchestratorService and BlobService on a Unix
// socket of its own, in a fresh directory only the runtime's user can enter
// (tasks carry item inputs and SubmitRun starts runs: no other local user
// may connect; the SDK dials `unix:<path>` as any gRPC target), and launches `command args` (when set) with the
// base environment, the plugin's `env`, then STEPFLOW_TRANSPORT=grpc,
// STEPFLOW_TASKS_URL, STEPFLOW_QUEUE_NAME and STEPFLOW_BLOB_URL (and
// STEPFLOW_MAX_CONCURRENT=1024 unless `env` sets it: the SDK's default, 4,
// deadlocks nested runs). Workers
// call PullTasks for a queue; a component call becomes a TaskAssignment on
// the queue of the plugin (or of the route rule's `params.queueName`),
// the worker claims it with TaskHeartbeat, heartbeats it every second and
// reports it with CompleteTask. A stream gets a task only once its worker
// claimed every task sent to it before, so tasks wait here rather than in
// a busy worker's buffer.
//
// A nats plugin publishes each TaskAssignment (protobuf bytes) to subject
// `<stream>.tasks` of its stream (created with WorkQueue retention when
// missing; a route rule's `stream` names another) and launches the worker
// with STEPFLOW_TRANSPORT=nats, STEPFLOW_NATS_URL, STEPFLOW_NATS_STREAM and
// STEPFLOW_NATS_CONSUMER; heartbeats, completions, nested runs and blobs
// still reach the plugin's gRPC services on the socket. Without streams to
// watch, a dead NATS worker is noticed by its silence (HeartbeatTimeout).
//
// With `listen` (nats plugins only) the services are served on TCP instead
// of the socket, for NATS workers started elsewhere (their own pods): each
// task's orchestrator_service_url is `advertise` (with the bound port), so
// it is completed to the process that published it. The unmodified SDK
// dials without credentials, so the endpoint admits peers in `allowFrom`
// only (listen.go), refuses PullTasks, and accepts SubmitRun and GetRun
// only for a root run with a claimed task in flight here; completions and
// heartbeats need the id of a task in flight, as everywhere.
//
// Plugin-local paths (/echo, /core/x) map to the workers' component ids and
// path parameters through their ListComponents answer (fetched on first
// use, per queue, and again on a miss), as upstream's per-plugin routing
// trie does.
//
// # Failures
//
//   - A TaskError from the worker is a failed result (code 500, the worker's
//     message, data.error_code): the step's onError applies.
//   - No claim within queueTimeoutSecs (while no worker of the queue is busy),
//     no heartbeat for HeartbeatTimeout, no completion within
//     executionTimeoutSecs, or a call past timeoutMs: a *TaskError naming the
//     plugin, queue, task and component.
//   - A worker whose stream ends (its process died) fails its in-flight tasks
//     with ErrWorkerGone, which matches executor.ErrUnavailable; the process
//     is restarted with a capped back-off (100 ms doubling to 5 s).
//   - Completions and heartbeats of tasks that are not in flight (never
//     assigned, already finished) are refused with gRPC NOT_FOUND naming the
//     plugin and the task, and change nothing: no result counts twice.
package grpcqueue
