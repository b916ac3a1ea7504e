// Package outcome holds the result of a flow, a step or an expression:
// either a success with a JSON value or a failure with a FlowError. It is
// the wire shape upstream Stepflow calls FlowResult:
//
//	{"outcome":"success","result":<any>}
//	{"outcome":"failed","error":{"code":<int>,"message":"<text>","data":<any, optional>}}
package outcome

import (
	"errors"
	"fmt"

	"github.com/stepflow-go/stepflow/pkg/value"
)

// Well-known error codes.
const (
	// CodeExpression is the code of expression failures (missing paths,
	// undefined variables).
	CodeExpression = 1
	// CodeInvalidInput is the code of items rejected before they run
	// (input schema, malformed lines).
	CodeInvalidInput = 400
	// CodeNotFound is the code of references to unknown steps.
	CodeNotFound = 404
	// CodeComponent is the code of component failures and routing errors.
	CodeComponent = 500
)

// Error is a FlowError: a failure with a numeric code, a message and
// optional data. It implements error.
type Error struct {
	Code    int64
	Message string
	Data    value.Value // nil when absent
	// Cause is the Go error behind the failure when its callers need to
	// branch on it (errors.Is through Unwrap); it is not part of the
	// JSON. The executor sets it for components that gave no answer
	// (executor.ErrUnavailable).
	Cause error
}

// Errorf returns an Error with a formatted message.
func Errorf(code int64, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string {
	if e.Cause != nil {
		return fmt.Sprintf("%s (code %d): %v", e.Message, e.Code, e.Cause)
	}
	return fmt.Sprintf("%s (code %d)", e.Message, e.Code)
}

// Unwrap returns Cause.
func (e *Error) Unwrap() error { return e.Cause }

// Value returns the JSON form of the error.
func (e *Error) Value() value.Value {
	o := value.NewObject(3)
	o.Set("code", value.Int(e.Code))
	o.Set("message", e.Message)
	if e.Data != nil {
		o.Set("data", e.Data)
	}
	return o
}

// Result is a success (Err == nil, with Value) or a failure (Err != nil).
// The zero Result is a success with a null value.
type Result struct {
	Value value.Value
	Err   *Error
}

// Success returns a successful result.
func Success(v value.Value) Result { return Result{Value: v} }

// Failure returns a failed result.
func Failure(err *Error) Result { return Result{Err: err} }

// Failed reports whether r is a failure.
func (r Result) Failed() bool { return r.Err != nil }

// JSON returns the FlowResult JSON value of r.
func (r Result) JSON() value.Value {
	o := value.NewObject(2)
	if r.Err != nil {
		o.Set("outcome", "failed")
		o.Set("error", r.Err.Value())
		return o
	}
	o.Set("outcome", "success")
	o.Set("result", r.Value)
	return o
}

// AppendJSON appends the compact FlowResult JSON of r to dst without
// building an intermediate object.
func (r Result) AppendJSON(dst []byte) []byte {
	if r.Err != nil {
		dst = append(dst, `{"outcome":"failed","error":{"code":`...)
		dst = value.Append(dst, value.Int(r.Err.Code))
		dst = append(dst, `,"message":`...)
		dst = value.AppendString(dst, r.Err.Message)
		if r.Err.Data != nil {
			dst = append(dst, `,"data":`...)
			dst = value.Append(dst, r.Err.Data)
		}
		return append(dst, "}}"...)
	}
	dst = append(dst, `{"outcome":"success","result":`...)
	dst = value.Append(dst, r.Value)
	return append(dst, '}')
}

// ErrNotResult is returned by Parse for values that are not FlowResults.
var ErrNotResult = errors.New("not a flow result")

// Parse reads a FlowResult from its JSON value.
func Parse(v value.Value) (Result, error) {
	o, ok := v.(*value.Object)
	if !ok {
		return Result{}, fmt.Errorf("%w: expected an object, got %s", ErrNotResult, value.TypeName(v))
	}
	oc, _ := o.Get("outcome")
	switch oc {
	case "success":
		res, _ := o.Get("result")
		return Success(res), nil
	case "failed":
		ev, _ := o.Get("error")
		eo, ok := ev.(*value.Object)
		if !ok {
			return Result{}, fmt.Errorf("%w: a failed result needs an error object", ErrNotResult)
		}
		e, err := ParseError(eo)
		if err != nil {
			return Result{}, err
		}
		return Failure(e), nil
	default:
		return Result{}, fmt.Errorf("%w: outcome must be \"success\" or \"failed\", got %s", ErrNotResult, value.String(oc))
	}
}

// ParseError reads a FlowError from its JSON object.
func ParseError(eo *value.Object) (*Error, error) {
	e := &Error{}
	if c, ok := eo.Get("code"); ok {
		n, ok := c.(value.Number)
		if !ok {
			return nil, fmt.Errorf("%w: error code must be a number", ErrNotResult)
		}
		code, err := n.Int64()
		if err != nil {
			return nil, fmt.Errorf("%w: error code %s is not an integer", ErrNotResult, n)
		}
		e.Code = code
	}
	if m, ok := eo.Get("message"); ok {
		s, ok := m.(string)
		if !ok {
			return nil, fmt.Errorf("%w: error message must be a string", ErrNotResult)
		}
		e.Message = s
	}
	e.Data, _ = eo.Get("data")
	return e, nil
}
