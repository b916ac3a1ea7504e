package stepflow

import (
	"errors"
	"fmt"
	"time"

	"github.com/stepflow-go/stepflow/pkg/executor"
)

// Sentinels that callers branch on with errors.Is.
var (
	// ErrServerFailed is matched by every error of a call that failed
	// because the component server process, its connection or its stream
	// failed (a transport failure), and by calls made while the server
	// could not be (re)started. The component itself did not answer.
	ErrServerFailed = errors.New("component server failed")
	// ErrTimeout is matched by calls that exceeded the plugin's timeoutMs.
	ErrTimeout = errors.New("component call timed out")
	// ErrClosed is returned by calls made after Close.
	ErrClosed = errors.New("component server plugin closed")
	// ErrConfig is wrapped by New for configurations it cannot run.
	ErrConfig = errors.New("invalid stepflow plugin configuration")
)

// ServerError is a transport failure of one call: the server process
// exited, the connection or stream broke, or the server could not be
// started. It matches ErrServerFailed, and protocol.ErrTransport when the
// transport reported it.
type ServerError struct {
	// Plugin is the plugin's name.
	Plugin string
	// Cause is what happened (`process exited: exit status 3`).
	Cause error
	// Restarting tells that the server is being restarted (subprocess
	// mode); a remote server is never restarted.
	Restarting bool
	// Err is the transport's own error, when it differs from Cause.
	Err error
}

// Error returns `component server "<plugin>" failed: <cause>[; restarting]`.
func (e *ServerError) Error() string {
	s := fmt.Sprintf("component server %q failed: %v", e.Plugin, e.Cause)
	if e.Restarting {
		s += "; restarting"
	}
	return s
}

// Is matches ErrServerFailed, and executor.ErrUnavailable: the component
// gave no answer, so a distributed worker hands the item back.
func (e *ServerError) Is(target error) bool {
	return target == ErrServerFailed || target == executor.ErrUnavailable
}

// Unwrap returns the cause and the transport error.
func (e *ServerError) Unwrap() []error {
	if e.Err != nil && e.Err != e.Cause {
		return []error{e.Cause, e.Err}
	}
	return []error{e.Cause}
}

// TimeoutError is a call that exceeded the plugin's timeoutMs. The
// protocol has no cancellation, so a subprocess server is killed and
// restarted. It matches ErrTimeout.
type TimeoutError struct {
	// Plugin is the plugin's name.
	Plugin string
	// Component is the plugin-local component name.
	Component string
	// Timeout is the configured limit.
	Timeout time.Duration
	// Restarting tells that the server is being restarted.
	Restarting bool
}

// Error returns `component "/c" of plugin "p" timed out after 1s[; restarting the server]`.
func (e *TimeoutError) Error() string {
	s := fmt.Sprintf("component %q of plugin %q timed out after %v (timeoutMs)", e.Component, e.Plugin, e.Timeout)
	if e.Restarting {
		s += "; restarting the server"
	}
	return s
}

// Is matches ErrTimeout.
func (e *TimeoutError) Is(target error) bool { return target == ErrTimeout }

// ExitError is the cause of a ServerError when the server process ended.
type ExitError struct {
	// Err is the process's wait error (nil for exit status 0).
	Err error
}

// Error returns `process exited: <status>`.
func (e *ExitError) Error() string {
	if e.Err == nil {
		return "process exited: exit status 0"
	}
	return "process exited: " + e.Err.Error()
}

// Unwrap returns the wait error.
func (e *ExitError) Unwrap() error { return e.Err }
