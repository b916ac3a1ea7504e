package protocol

import (
	"fmt"

	"github.com/stepflow-go/stepflow/pkg/value"
)

// RuntimeProtocolVersion is the protocol version sent in initialize.
// Nobody negotiates it (spec §4.1).
const RuntimeProtocolVersion = 1

// Blob types of blobs/put and blobs/get (spec §6).
const (
	BlobTypeData = "data"
	BlobTypeFlow = "flow"
)

// Capabilities are the RuntimeCapabilities of initialize in the protocol
// of stepflow-py 0.10 and later (upstream 0.11 protocol.json). Zero
// fields are not sent.
type Capabilities struct {
	// BlobAPIURL is the base URL of the blob HTTP API (blobApiUrl):
	// POST {url} stores a blob, GET {url}/{id} reads one. Servers of
	// 0.10+ have no blobs/put and blobs/get callbacks and need it.
	BlobAPIURL string
	// BlobThreshold (blobThreshold) asks servers that support blob refs
	// to replace top-level output fields whose JSON is larger with
	// {"$blob": id} references; 0 disables it.
	BlobThreshold int64
}

// InitializeParams returns the params of initialize. The version goes in
// both spellings, which every SDK accepts because unknown fields are
// ignored: runtime_protocol_version (stepflow-py <= 0.9) and
// runtimeProtocolVersion (0.10+, which rejects initialize without it).
// capabilities is sent when caps has a field set; SDKs <= 0.9 ignore it.
func InitializeParams(caps Capabilities) *value.Object {
	p := value.ObjectOf(
		"runtime_protocol_version", value.Int(RuntimeProtocolVersion),
		"runtimeProtocolVersion", value.Int(RuntimeProtocolVersion),
	)
	if caps != (Capabilities{}) {
		c := value.NewObject(2)
		if caps.BlobAPIURL != "" {
			c.Set("blobApiUrl", caps.BlobAPIURL)
		}
		if caps.BlobThreshold > 0 {
			c.Set("blobThreshold", value.Int(caps.BlobThreshold))
		}
		p.Set("capabilities", c)
	}
	return p
}

// InitializeResult is the answer to initialize.
type InitializeResult struct {
	// ServerProtocolVersion is server_protocol_version (<= 0.9) or
	// serverProtocolVersion (0.10+); 0 when absent.
	ServerProtocolVersion int64
	// SupportsBlobRefs (0.10+) tells that the server may return
	// {"$blob": id} references in outputs, which the runtime resolves.
	SupportsBlobRefs bool
}

// ParseInitializeResult decodes the result of initialize in either
// spelling. Absent fields are zero; fields of the wrong type are errors
// wrapping ErrMalformed.
func ParseInitializeResult(v value.Value) (InitializeResult, error) {
	o, ok := v.(*value.Object)
	if !ok {
		return InitializeResult{}, fmt.Errorf("%w: initialize result is a %s, not an object", ErrMalformed, value.TypeName(v))
	}
	var r InitializeResult
	for _, key := range [...]string{"serverProtocolVersion", "server_protocol_version"} {
		fv, ok := o.Get(key)
		if !ok || fv == nil {
			continue
		}
		n, isNum := fv.(value.Number)
		i, err := n.Int64()
		if !isNum || err != nil || i < 0 {
			return InitializeResult{}, fmt.Errorf("%w: initialize result: %s is %s, not a non-negative integer", ErrMalformed, key, value.String(fv))
		}
		r.ServerProtocolVersion = i
		break
	}
	switch b, _ := o.Get("supportsBlobRefs"); t := b.(type) {
	case nil:
	case bool:
		r.SupportsBlobRefs = t
	default:
		return InitializeResult{}, fmt.Errorf("%w: initialize result: supportsBlobRefs is a %s, not a boolean", ErrMalformed, value.TypeName(b))
	}
	return r, nil
}

// Observability is the ObservabilityContext of spec §6. Empty fields are
// omitted from the JSON.
type Observability struct {
	TraceID string
	SpanID  string
	RunID   string
	FlowID  string
	StepID  string
}

// Value returns the JSON object, possibly {} (never nil).
func (o Observability) Value() *value.Object {
	obj := value.NewObject(5)
	for _, f := range [...]struct{ k, v string }{
		{"trace_id", o.TraceID}, {"span_id", o.SpanID},
		{"run_id", o.RunID}, {"flow_id", o.FlowID}, {"step_id", o.StepID},
	} {
		if f.v != "" {
			obj.Set(f.k, f.v)
		}
	}
	return obj
}

// ExecuteParams returns the params of components/execute with every field
// the SDKs require: component (the server's own path, leading "/"),
// input, attempt (1-based) and an observability object.
func ExecuteParams(component string, input value.Value, attempt int, obs Observability) *value.Object {
	return value.ObjectOf(
		"component", component,
		"input", input,
		"attempt", value.Int(int64(attempt)),
		"observability", obs.Value(),
	)
}

// InfoParams returns the params of components/info.
func InfoParams(component string) *value.Object {
	return value.ObjectOf("component", component)
}

// ComponentInfo describes one component (spec §4.3). Absent or null
// optional fields are empty.
type ComponentInfo struct {
	Component    string
	Description  string
	InputSchema  value.Value
	OutputSchema value.Value
}

// ParseComponentInfo decodes a ComponentInfo object. Errors wrap
// ErrMalformed.
func ParseComponentInfo(v value.Value) (ComponentInfo, error) {
	o, ok := v.(*value.Object)
	if !ok {
		return ComponentInfo{}, fmt.Errorf("%w: component info is a %s, not an object", ErrMalformed, value.TypeName(v))
	}
	var ci ComponentInfo
	c, _ := o.Get("component")
	if ci.Component, ok = c.(string); !ok {
		return ComponentInfo{}, fmt.Errorf("%w: component info: component is a %s, not a string", ErrMalformed, value.TypeName(c))
	}
	switch d, _ := o.Get("description"); t := d.(type) {
	case nil:
	case string:
		ci.Description = t
	default:
		return ComponentInfo{}, fmt.Errorf("%w: component info %s: description is a %s", ErrMalformed, ci.Component, value.TypeName(d))
	}
	ci.InputSchema, _ = o.Get("input_schema")
	ci.OutputSchema, _ = o.Get("output_schema")
	return ci, nil
}

// ParseListResult decodes the result of components/list,
// {"components":[ComponentInfo…]}. Errors wrap ErrMalformed.
func ParseListResult(v value.Value) ([]ComponentInfo, error) {
	o, ok := v.(*value.Object)
	if !ok {
		return nil, fmt.Errorf("%w: components/list result is a %s, not an object", ErrMalformed, value.TypeName(v))
	}
	cv, _ := o.Get("components")
	arr, ok := cv.([]value.Value)
	if !ok {
		return nil, fmt.Errorf("%w: components/list result: components is a %s, not an array", ErrMalformed, value.TypeName(cv))
	}
	out := make([]ComponentInfo, 0, len(arr))
	for _, e := range arr {
		ci, err := ParseComponentInfo(e)
		if err != nil {
			return nil, err
		}
		out = append(out, ci)
	}
	return out, nil
}

// ParseInfoResult decodes the result of components/info, {"info":…}.
// Errors wrap ErrMalformed.
func ParseInfoResult(v value.Value) (ComponentInfo, error) {
	o, ok := v.(*value.Object)
	if !ok {
		return ComponentInfo{}, fmt.Errorf("%w: components/info result is a %s, not an object", ErrMalformed, value.TypeName(v))
	}
	info, _ := o.Get("info")
	return ParseComponentInfo(info)
}

// ParseExecuteResult returns the output of a components/execute result,
// {"output":…}; the key is required, its value may be null. Errors wrap
// ErrMalformed.
func ParseExecuteResult(v value.Value) (value.Value, error) {
	o, ok := v.(*value.Object)
	if !ok {
		return nil, fmt.Errorf("%w: components/execute result is a %s, not an object", ErrMalformed, value.TypeName(v))
	}
	out, ok := o.Get("output")
	if !ok {
		return nil, fmt.Errorf("%w: components/execute result has no output", ErrMalformed)
	}
	return out, nil
}

// invalidParams is the error a Handler returns for params it cannot
// decode.
func invalidParams(method, format string, args ...any) *RPCError {
	return &RPCError{Code: CodeInvalidParams, Message: fmt.Sprintf("Invalid parameters for %s: ", method) + fmt.Sprintf(format, args...)}
}

// ParsePutBlobParams decodes the params of blobs/put (spec §5.1). A
// missing or null blob_type means "data". Errors are *RPCError with
// CodeInvalidParams, ready to return from a Handler.
func ParsePutBlobParams(params value.Value) (data value.Value, blobType string, err error) {
	o, ok := params.(*value.Object)
	if !ok {
		return nil, "", invalidParams(MethodBlobsPut, "params is a %s, not an object", value.TypeName(params))
	}
	data, ok = o.Get("data")
	if !ok {
		return nil, "", invalidParams(MethodBlobsPut, "missing field `data`")
	}
	blobType = BlobTypeData
	switch bt, _ := o.Get("blob_type"); t := bt.(type) {
	case nil:
	case string:
		if t != BlobTypeData && t != BlobTypeFlow {
			return nil, "", invalidParams(MethodBlobsPut, "unknown blob_type %q", t)
		}
		blobType = t
	default:
		return nil, "", invalidParams(MethodBlobsPut, "blob_type is a %s", value.TypeName(bt))
	}
	return data, blobType, nil
}

// PutBlobResult returns the result of blobs/put: {"blob_id":…}.
func PutBlobResult(blobID string) *value.Object {
	return value.ObjectOf("blob_id", blobID)
}

// ParseGetBlobParams decodes the params of blobs/get (spec §5.2). Errors
// are *RPCError with CodeInvalidParams.
func ParseGetBlobParams(params value.Value) (blobID string, err error) {
	o, ok := params.(*value.Object)
	if !ok {
		return "", invalidParams(MethodBlobsGet, "params is a %s, not an object", value.TypeName(params))
	}
	id, _ := o.Get("blob_id")
	s, ok := id.(string)
	if !ok {
		return "", invalidParams(MethodBlobsGet, "blob_id is a %s, not a string", value.TypeName(id))
	}
	return s, nil
}

// GetBlobResult returns the result of blobs/get: {"data":…,"blob_type":…},
// both keys always present as the SDKs require.
func GetBlobResult(data value.Value, blobType string) *value.Object {
	return value.ObjectOf("data", data, "blob_type", blobType)
}
