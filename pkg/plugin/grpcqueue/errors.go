package grpcqueue

import (
	"errors"
	"fmt"

	"github.com/stepflow-go/stepflow/pkg/executor"
)

// Sentinels that callers branch on with errors.Is.
var (
	// ErrQueueTimeout: no worker claimed the task (its first
	// TaskHeartbeat) within queueTimeoutSecs while none was busy.
	ErrQueueTimeout = errors.New("no worker claimed the task in time")
	// ErrHeartbeatTimeout: a claimed task's heartbeats stopped.
	ErrHeartbeatTimeout = errors.New("the worker stopped heartbeating the task")
	// ErrExecutionTimeout: a claimed task was not completed within
	// executionTimeoutSecs.
	ErrExecutionTimeout = errors.New("the task exceeded executionTimeoutSecs")
	// ErrCallTimeout: the component call exceeded the plugin's timeoutMs.
	ErrCallTimeout = errors.New("the component call exceeded timeoutMs")
	// ErrWorkerGone: the worker holding the task disconnected (its
	// process exited or its PullTasks stream broke).
	ErrWorkerGone = errors.New("the worker holding the task went away")
	// ErrClosed: the plugin was closed.
	ErrClosed = errors.New("grpc plugin closed")
	// ErrConfig is wrapped by New for configurations it cannot run.
	ErrConfig = errors.New("invalid grpc plugin configuration")
	// ErrProtocol: a worker's answer broke the protocol (an output that is
	// not JSON, a completion of the wrong kind).
	ErrProtocol = errors.New("worker protocol violation")
)

// TaskError is a component call that got no answer from a worker: it
// names the plugin, the queue, the task and the component. Worker crashes
// and lost heartbeats (ErrWorkerGone, ErrHeartbeatTimeout) also match
// executor.ErrUnavailable, as a crashed component server does: the
// component gave no answer, so a distributed worker hands the item back.
type TaskError struct {
	Plugin    string
	Queue     string
	TaskID    string
	Component string
	// Cause is one of the sentinels above, possibly wrapped with detail.
	Cause error
}

// Error returns `plugin "p": task <id> (component /c, queue "q"): <cause>`.
func (e *TaskError) Error() string {
	return fmt.Sprintf("plugin %q: task %s (component %s, queue %q): %v", e.Plugin, e.TaskID, e.Component, e.Queue, e.Cause)
}

// Unwrap returns the cause.
func (e *TaskError) Unwrap() error { return e.Cause }

// Is matches executor.ErrUnavailable for tasks whose worker went away.
func (e *TaskError) Is(target error) bool {
	return target == executor.ErrUnavailable &&
		(errors.Is(e.Cause, ErrWorkerGone) || errors.Is(e.Cause, ErrHeartbeatTimeout))
}
