// Package executor runs flows: one item at a time, as a demand-driven
// walk of the step graph.
//
// For each item the executor starts from what the flow output needs (plus
// every mustExecute step), follows the needs of each needed step's input,
// and runs a step as soon as everything its input needs has completed.
// Needs are re-evaluated whenever a step completes, so steps that a
// `$if` or `$coalesce` only asks for once a condition has resolved are
// scheduled too (upstream 0.9.0 deadlocks on that pattern). Independent
// steps of one item run in parallel; a single ready step runs inline on
// the item's goroutine, which keeps the common chain-of-steps case cheap.
//
// A step's failure never stops its item: the item keeps going until every
// needed step is complete, and a step that consumes a failed step fails
// with the same error. onError applies only when the component itself
// failed: `fail`, `useDefault` and `retry` (with backoff; upstream only
// parses it).
//
// The executor knows nothing of batches, queues or files: callers (the
// local batch runner, NATS workers) hand it items and collect results.
// Components are reached through the Router interface; the builtins
// eval/map/iterate run nested flows through Request.Subflows, inside the
// calling item.
package executor
