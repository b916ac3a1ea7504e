// Package protocol is the Stepflow component protocol: JSON-RPC 2.0
// between the runtime and component servers, over the HTTP transport of
// stepflow-py 0.9.x to 0.11.x (POST / with JSON or SSE responses; 0.10+
// spell initialize in camelCase and take RuntimeCapabilities) and the stdio
// transport of stepflow-py <= 0.8 (newline-delimited JSON on the child's
// stdin and stdout).
//
// A Transport carries calls from the runtime to one server. While a call
// is in flight the server may call back (blobs/put, runs/submit, ...);
// those requests go to the call's Handler, each on its own goroutine,
// and their answers go back over the same transport. The stdio transport
// is the exception: its callbacks carry no reference to the call that
// caused them, so one Handler given to NewStdio serves them all (see
// Stdio).
//
// The pieces: HTTP (http.go) and Stdio (stdio.go) implement Transport;
// types.go builds and parses the params and results of spec §4–§5;
// SetPipeSize raises a pipe's capacity for stdio servers (§2.2.6).
//
// Failures come in two kinds that callers must tell apart:
//
//   - *RPCError: the server answered with a JSON-RPC error. The component
//     failed; the server is fine.
//   - errors wrapping ErrTransport: the connection, the stream or the
//     process failed. The server must be restarted.
package protocol

import (
	"context"
	"errors"
	"fmt"

	"github.com/stepflow-go/stepflow/pkg/value"
)

// Method names.
const (
	MethodInitialize        = "initialize"
	MethodInitialized       = "initialized"
	MethodComponentsList    = "components/list"
	MethodComponentsInfo    = "components/info"
	MethodComponentsExecute = "components/execute"
	MethodBlobsPut          = "blobs/put"
	MethodBlobsGet          = "blobs/get"
	MethodRunsSubmit        = "runs/submit"
	MethodRunsGet           = "runs/get"
	// Legacy callbacks of stepflow-py <= 0.8.
	MethodFlowsEvaluate    = "flows/evaluate"
	MethodFlowsGetMetadata = "flows/get_metadata"
	MethodFlowsSubmitBatch = "flows/submit_batch"
	MethodFlowsGetBatch    = "flows/get_batch"
)

// JSON-RPC error codes used by the runtime and the SDK.
const (
	CodeParseError         = -32700
	CodeInvalidRequest     = -32600
	CodeMethodNotFound     = -32601
	CodeInvalidParams      = -32602
	CodeInternal           = -32603
	CodeServerError        = -32000
	CodeComponentNotFound  = -32001
	CodeComponentExecution = -32003
	// CodeComponentExecutionFailed is what stepflow-py 0.10+ answers for
	// an exception in a component (-32003 became INVALID_INPUT_SCHEMA).
	CodeComponentExecutionFailed = -32100
	CodeNotFound                 = -32011
	CodeInvalidValue             = -32012
)

// RPCError is a JSON-RPC error object. Errors compare equal (errors.Is)
// when their codes are equal.
type RPCError struct {
	Code    int64
	Message string
	Data    value.Value
}

func (e *RPCError) Error() string {
	if e.Data != nil {
		return fmt.Sprintf("JSON-RPC error %d: %s (data: %s)", e.Code, e.Message, value.String(e.Data))
	}
	return fmt.Sprintf("JSON-RPC error %d: %s", e.Code, e.Message)
}

// Is reports whether target is an *RPCError with the same code.
func (e *RPCError) Is(target error) bool {
	t, ok := target.(*RPCError)
	return ok && t.Code == e.Code
}

// Value returns the JSON form of the error object.
func (e *RPCError) Value() value.Value {
	o := value.ObjectOf("code", value.Int(e.Code), "message", e.Message)
	o.Set("data", e.Data)
	return o
}

// ErrTransport is wrapped by every failure of the connection, the stream
// or the server process, as opposed to a JSON-RPC error answer.
var ErrTransport = errors.New("component server transport failed")

// Handler serves the requests a component server makes while one of the
// runtime's calls is in flight. Returning an *RPCError sends it as is;
// any other error is sent as CodeServerError with the error's text.
type Handler interface {
	HandleCallback(ctx context.Context, method string, params value.Value) (value.Value, error)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, method string, params value.Value) (value.Value, error)

// HandleCallback calls f.
func (f HandlerFunc) HandleCallback(ctx context.Context, method string, params value.Value) (value.Value, error) {
	return f(ctx, method, params)
}

// Transport is a connection to one component server.
type Transport interface {
	// Call sends a request and waits for its result. Callbacks that
	// arrive meanwhile are served by h (nil: answered with
	// CodeMethodNotFound); Stdio ignores h and uses its own Handler. When ctx ends first, Call returns ctx's error;
	// the protocol has no cancellation, so the server may keep working.
	Call(ctx context.Context, method string, params value.Value, h Handler) (value.Value, error)
	// Notify sends a notification.
	Notify(ctx context.Context, method string, params value.Value) error
	// Close releases the transport. It does not stop the server process.
	Close() error
}
