package coordinator

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"syscall"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stepflow-go/stepflow/pkg/jsonl"
	"github.com/stepflow-go/stepflow/pkg/queue"
)

// Errors callers branch on. Errors of this package wrap one of them (or a
// *InputError) with %w; the REST API maps them onto HTTP statuses and the
// NATS API onto JSON-RPC codes.
var (
	// ErrInvalidConfig is returned by Config.Validate and New.
	ErrInvalidConfig = errors.New("coordinator: invalid configuration")
	// ErrNotStarted is returned by operations that need a started
	// coordinator.
	ErrNotStarted = errors.New("coordinator: not started")
	// ErrStopped is the cause of the coordinator's context after Stop.
	ErrStopped = errors.New("coordinator: stopped")
	// ErrInvalidRequest is a malformed request (HTTP 400, JSON-RPC -32602).
	ErrInvalidRequest = errors.New("invalid request")
	// ErrRunNotFound is an unknown run id (404, -32011).
	ErrRunNotFound = errors.New("run not found")
	// ErrFlowNotFound is an unknown flow id (404, -32011).
	ErrFlowNotFound = errors.New("flow not found")
	// ErrRunFinished is an operation on a run that has finished, such as
	// cancelling it (409).
	ErrRunFinished = errors.New("run already finished")
	// ErrRunActive is an operation that needs a finished run, such as
	// deleting it (409).
	ErrRunActive = errors.New("run is still running")
	// ErrTooLarge is a request over a configured size limit (413).
	ErrTooLarge = errors.New("request too large")
	// ErrTooManyRuns is a submission while MaxConcurrentRuns top-level
	// runs are in progress (429 with Retry-After).
	ErrTooManyRuns = errors.New("too many runs in progress")
	// ErrIdempotencyConflict is an Idempotency-Key whose first request is
	// still being accepted, or that was used for a different flow (409).
	ErrIdempotencyConflict = errors.New("idempotency key conflict")
	// ErrNoSpace is a submission that did not fit the coordinator's disk
	// (its data dir or its NATS store): 507, and nothing of it is kept.
	ErrNoSpace = errors.New("not enough disk space")
)

// noSpaceError is a submission rejected because a disk is full.
type noSpaceError struct{ err error }

func (e *noSpaceError) Error() string {
	return fmt.Sprintf("the coordinator ran out of disk space (%v); the upload was rejected and no run was created: free space on its data dir (or its NATS store) and retry", e.err)
}

func (e *noSpaceError) Unwrap() []error { return []error{ErrNoSpace, e.err} }

// JetStream's error codes for a full store (nats-server's
// JSInsufficientResourcesErr and JSStorageResourcesExceededErr).
const (
	jsInsufficientResources    jetstream.ErrorCode = 10023
	jsStorageResourcesExceeded jetstream.ErrorCode = 10047
)

// isNoSpace reports whether err is a full disk: ENOSPC or EDQUOT from a
// local file, or JetStream's insufficient-resources / no-space answers.
func isNoSpace(err error) bool {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == jsInsufficientResources || apiErr.ErrorCode == jsStorageResourcesExceeded) {
		return true
	}
	return strings.Contains(err.Error(), "no space left on device")
}

// InputError is a batch input line that is not valid JSON (or is blank or
// too long): the upload is rejected and no run is created.
type InputError struct {
	// Line is the 1-based line of the upload, Index the item it would
	// have been.
	Line, Index int
	// Err is the *jsonl.LineError.
	Err error
}

func (e *InputError) Error() string {
	return fmt.Sprintf("malformed input: %v (item %d); the upload was rejected and no run was created", e.Err, e.Index)
}

// Unwrap returns the cause.
func (e *InputError) Unwrap() error { return e.Err }

// Is makes InputError match ErrInvalidRequest.
func (e *InputError) Is(target error) bool { return target == ErrInvalidRequest }

// inputError wraps a jsonl line error.
func inputError(le *jsonl.LineError) error {
	return &InputError{Line: le.Line, Index: le.Index, Err: le}
}

// httpStatus maps an error onto an HTTP status.
func httpStatus(err error) int {
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe), errors.Is(err, ErrTooLarge), errors.Is(err, queue.ErrPayloadTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, ErrInvalidRequest), errors.Is(err, queue.ErrInvalidRunID):
		return http.StatusBadRequest
	case errors.Is(err, ErrRunNotFound), errors.Is(err, ErrFlowNotFound), errors.Is(err, queue.ErrRunNotFound), errors.Is(err, queue.ErrFlowNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrRunFinished), errors.Is(err, ErrRunActive), errors.Is(err, ErrIdempotencyConflict):
		return http.StatusConflict
	case errors.Is(err, ErrNoSpace):
		return http.StatusInsufficientStorage
	case errors.Is(err, ErrTooManyRuns):
		return http.StatusTooManyRequests
	case errors.Is(err, ErrStopped), errors.Is(err, ErrNotStarted):
		return http.StatusServiceUnavailable
	case queue.Transient(err):
		// NATS did not answer (a node restarting, an election, a cluster
		// without quorum): worth retrying, as clients do on 503.
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// JSON-RPC error codes of the NATS API (those of the component protocol).
const (
	rpcNotFound      = -32011
	rpcInvalidParams = -32602
	rpcOther         = -32000
)

// rpcCode maps an error onto a JSON-RPC code.
func rpcCode(err error) int {
	switch httpStatus(err) {
	case http.StatusNotFound:
		return rpcNotFound
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		return rpcInvalidParams
	}
	return rpcOther
}

// kindError is an error of one of the kinds above whose message is meant
// for API clients as is (no "run not found: " prefix), like upstream's
// "Execution '<id>' not found".
type kindError struct {
	kind  error
	msg   string
	cause error
}

func (e *kindError) Error() string { return e.msg }

// Is matches the kind.
func (e *kindError) Is(target error) bool { return target == e.kind }

// Unwrap returns the cause, if the message wrapped one with %w.
func (e *kindError) Unwrap() error { return e.cause }

// errorf returns an error of kind with a formatted message (%w allowed).
func errorf(kind error, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return &kindError{kind: kind, msg: err.Error(), cause: errors.Unwrap(err)}
}

// errNATSWritesUnanswered is the health's reason while the leadership
// lease cannot be renewed for want of an answer from NATS.
var errNATSWritesUnanswered = errors.New("NATS does not answer the coordinator's writes (its lease renewals): " +
	"an external server's store may be full, or the cluster may have lost its quorum; " +
	"runs wait and go on once NATS answers")
