package protocol

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"

	"github.com/google/uuid"
	"github.com/stepflow-go/stepflow/pkg/value"
	"go.uber.org/zap"
)

// ErrMalformed is wrapped by failures caused by a message or result that
// does not follow the protocol: unparseable JSON where a JSON-RPC message
// was required, a response without result or error, a result of the
// wrong shape. It wraps ErrTransport, since a server that sends such
// messages cannot be trusted with further calls.
var ErrMalformed = fmt.Errorf("%w: malformed message", ErrTransport)

// ErrClosed is returned by calls on a transport after Close. It wraps
// ErrTransport.
var ErrClosed = fmt.Errorf("%w: transport closed", ErrTransport)

// newID returns a fresh request id: a UUIDv7 string, as runtime 0.9.0 uses.
func newID() string {
	id, err := uuid.NewV7()
	if err != nil {
		// Only fails when the system's random source fails.
		return uuid.NewString()
	}
	return id.String()
}

// checkParams rejects params that are not a JSON object; nil stands for {}.
func checkParams(method string, params value.Value) error {
	switch params.(type) {
	case nil, *value.Object:
		return nil
	default:
		return fmt.Errorf("protocol: params of %s must be a JSON object, got %s", method, value.TypeName(params))
	}
}

// appendParams writes params, or {} when nil.
func appendParams(dst []byte, params value.Value) []byte {
	if o, ok := params.(*value.Object); params == nil || (ok && o == nil) {
		return append(dst, "{}"...)
	}
	return value.Append(dst, params)
}

// appendRequest writes a JSON-RPC request (with id) or notification
// (id == nil) followed by nothing.
func appendRequest(dst []byte, id value.Value, method string, params value.Value) []byte {
	dst = append(dst, `{"jsonrpc":"2.0",`...)
	if id != nil {
		dst = append(dst, `"id":`...)
		dst = value.Append(dst, id)
		dst = append(dst, ',')
	}
	dst = append(dst, `"method":`...)
	dst = value.AppendString(dst, method)
	dst = append(dst, `,"params":`...)
	dst = appendParams(dst, params)
	return append(dst, '}')
}

// appendResponse writes a JSON-RPC response with the result, or with the
// error when rpcErr is not nil.
func appendResponse(dst []byte, id value.Value, result value.Value, rpcErr *RPCError) []byte {
	dst = append(dst, `{"jsonrpc":"2.0","id":`...)
	dst = value.Append(dst, id)
	if rpcErr != nil {
		dst = append(dst, `,"error":`...)
		dst = value.Append(dst, rpcErr.Value())
	} else {
		dst = append(dst, `,"result":`...)
		dst = value.Append(dst, result)
	}
	return append(dst, '}')
}

// msgKind classifies an incoming JSON-RPC message.
type msgKind int

const (
	kindRequest      msgKind = iota + 1 // method and non-null id
	kindNotification                    // method, no id (or null id)
	kindResponse                        // id and result or error
)

// message is a decoded incoming JSON-RPC message.
type message struct {
	kind   msgKind
	id     value.Value // kept with its JSON type
	method string
	params value.Value
	result value.Value
	err    *RPCError
}

// parseMessage decodes one JSON-RPC message. Errors wrap ErrMalformed.
func parseMessage(data []byte) (*message, error) {
	v, err := value.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	o, ok := v.(*value.Object)
	if !ok {
		return nil, fmt.Errorf("%w: JSON-RPC message is a %s, not an object", ErrMalformed, value.TypeName(v))
	}
	m := &message{}
	id, hasID := o.Get("id")
	switch id.(type) {
	case nil, string, value.Number:
	default:
		return nil, fmt.Errorf("%w: JSON-RPC id is a %s", ErrMalformed, value.TypeName(id))
	}
	m.id = id
	if mv, ok := o.Get("method"); ok {
		name, ok := mv.(string)
		if !ok {
			return nil, fmt.Errorf("%w: JSON-RPC method is a %s", ErrMalformed, value.TypeName(mv))
		}
		m.method = name
		m.params, _ = o.Get("params")
		if hasID && id != nil {
			m.kind = kindRequest
		} else {
			m.kind = kindNotification
		}
		return m, nil
	}
	if !hasID {
		return nil, fmt.Errorf("%w: JSON-RPC message has neither method nor id", ErrMalformed)
	}
	m.kind = kindResponse
	if ev, ok := o.Get("error"); ok && ev != nil {
		e, err := parseErrorObject(ev)
		if err != nil {
			return nil, err
		}
		m.err = e
		return m, nil
	}
	r, ok := o.Get("result")
	if !ok {
		return nil, fmt.Errorf("%w: JSON-RPC response has neither result nor error", ErrMalformed)
	}
	m.result = r
	return m, nil
}

// parseErrorObject decodes a JSON-RPC error object.
func parseErrorObject(v value.Value) (*RPCError, error) {
	o, ok := v.(*value.Object)
	if !ok {
		return nil, fmt.Errorf("%w: JSON-RPC error is a %s, not an object", ErrMalformed, value.TypeName(v))
	}
	cv, _ := o.Get("code")
	n, ok := cv.(value.Number)
	if !ok || !value.IsInteger(n) {
		return nil, fmt.Errorf("%w: JSON-RPC error code %s is not an integer", ErrMalformed, value.String(cv))
	}
	code, err := n.Int64()
	if err != nil {
		return nil, fmt.Errorf("%w: JSON-RPC error code %s: %w", ErrMalformed, n, err)
	}
	e := &RPCError{Code: code}
	if mv, ok := o.Get("message"); ok && mv != nil {
		s, ok := mv.(string)
		if !ok {
			return nil, fmt.Errorf("%w: JSON-RPC error message is a %s", ErrMalformed, value.TypeName(mv))
		}
		e.Message = s
	}
	e.Data, _ = o.Get("data")
	return e, nil
}

// idKey is the map key of a request id: its compact JSON text, so that
// "7" and 7 stay distinct.
func idKey(id value.Value) string { return value.String(id) }

// toRPCError converts a Handler error into the error object to send.
func toRPCError(err error) *RPCError {
	var re *RPCError
	if errors.As(err, &re) {
		return re
	}
	return &RPCError{Code: CodeServerError, Message: err.Error()}
}

// serveCallback runs h for one component→runtime request and returns
// the result or the error object to answer with. A nil h answers
// CodeMethodNotFound; a panicking h answers CodeInternal.
func serveCallback(ctx context.Context, log *zap.Logger, h Handler, method string, params value.Value) (result value.Value, rpcErr *RPCError) {
	if h == nil {
		return nil, &RPCError{Code: CodeMethodNotFound, Message: fmt.Sprintf("Method not found: '%s'", method)}
	}
	defer func() {
		if p := recover(); p != nil {
			log.Error("callback handler panicked", zap.String("method", method),
				zap.Any("panic", p), zap.ByteString("stack", debug.Stack()))
			result, rpcErr = nil, &RPCError{Code: CodeInternal, Message: fmt.Sprintf("Internal error: %v", p)}
		}
	}()
	res, err := h.HandleCallback(ctx, method, params)
	if err != nil {
		return nil, toRPCError(err)
	}
	return res, nil
}

// preview returns at most n bytes of b for logs.
func preview(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	return string(b[:n]) + "…"
}
