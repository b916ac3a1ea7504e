package protocol

import (
	"errors"
	"testing"

	"github.com/stepflow-go/stepflow/pkg/value"
	"github.com/stretchr/testify/require"
)

func TestExecuteParams(t *testing.T) {
	p := ExecuteParams("/x", value.MustParse(`{"b":1,"a":2}`), 2, Observability{RunID: "r", StepID: "s"})
	require.Equal(t, `{"component":"/x","input":{"b":1,"a":2},"attempt":2,"observability":{"run_id":"r","step_id":"s"}}`, value.String(p))
	p = ExecuteParams("/x", nil, 1, Observability{})
	require.Equal(t, `{"component":"/x","input":null,"attempt":1,"observability":{}}`, value.String(p))
	require.Equal(t, `{"component":"/x"}`, value.String(InfoParams("/x")))
}

func TestInitialize(t *testing.T) {
	require.Equal(t, `{"runtime_protocol_version":1,"runtimeProtocolVersion":1}`, value.String(InitializeParams(Capabilities{})))
	require.Equal(t, `{"runtime_protocol_version":1,"runtimeProtocolVersion":1,"capabilities":{"blobApiUrl":"http://127.0.0.1:9/t/blobs"}}`,
		value.String(InitializeParams(Capabilities{BlobAPIURL: "http://127.0.0.1:9/t/blobs"})))
	require.Equal(t, `{"runtime_protocol_version":1,"runtimeProtocolVersion":1,"capabilities":{"blobApiUrl":"http://h/b","blobThreshold":1024}}`,
		value.String(InitializeParams(Capabilities{BlobAPIURL: "http://h/b", BlobThreshold: 1024})))

	for _, tc := range []struct {
		in   string
		want InitializeResult
	}{
		{`{"server_protocol_version":1}`, InitializeResult{ServerProtocolVersion: 1}},
		{`{"serverProtocolVersion":1,"supportsBlobRefs":true}`, InitializeResult{ServerProtocolVersion: 1, SupportsBlobRefs: true}},
		{`{"serverProtocolVersion":2,"supportsBlobRefs":false}`, InitializeResult{ServerProtocolVersion: 2}},
		{`{"serverProtocolVersion":null,"supportsBlobRefs":null}`, InitializeResult{}},
		{`{}`, InitializeResult{}},
	} {
		got, err := ParseInitializeResult(value.MustParse(tc.in))
		require.NoError(t, err, tc.in)
		require.Equal(t, tc.want, got, tc.in)
	}
	for in, msg := range map[string]string{
		`[]`:                             "initialize result is a array, not an object",
		`{"serverProtocolVersion":"1"}`:  `serverProtocolVersion is "1", not a non-negative integer`,
		`{"server_protocol_version":-1}`: "server_protocol_version is -1, not a non-negative integer",
		`{"serverProtocolVersion":1.5}`:  "serverProtocolVersion is 1.5, not a non-negative integer",
		`{"supportsBlobRefs":"yes"}`:     "supportsBlobRefs is a string, not a boolean",
	} {
		_, err := ParseInitializeResult(value.MustParse(in))
		require.ErrorIs(t, err, ErrMalformed, in)
		require.ErrorContains(t, err, msg, in)
	}
}

func TestParseResults(t *testing.T) {
	infos, err := ParseListResult(value.MustParse(`{"components":[
		{"component":"/a","description":null,"input_schema":{},"output_schema":null},
		{"component":"/b","description":"B","input_schema":{"type":"object"}}]}`))
	require.NoError(t, err)
	require.Len(t, infos, 2)
	require.Equal(t, "/a", infos[0].Component)
	require.Empty(t, infos[0].Description)
	require.Equal(t, "{}", value.String(infos[0].InputSchema))
	require.Nil(t, infos[0].OutputSchema)
	require.Equal(t, "B", infos[1].Description)
	require.Equal(t, `{"type":"object"}`, value.String(infos[1].InputSchema))
	require.Nil(t, infos[1].OutputSchema)

	info, err := ParseInfoResult(value.MustParse(`{"info":{"component":"/c"}}`))
	require.NoError(t, err)
	require.Equal(t, "/c", info.Component)

	out, err := ParseExecuteResult(value.MustParse(`{"output":null}`))
	require.NoError(t, err)
	require.Nil(t, out)

	for _, bad := range []string{`[]`, `{"components":{}}`, `{"components":[{"component":1}]}`,
		`{"components":[{"component":"/a","description":5}]}`} {
		_, err := ParseListResult(value.MustParse(bad))
		require.ErrorIs(t, err, ErrMalformed, bad)
		require.ErrorIs(t, err, ErrTransport, bad)
	}
	_, err = ParseInfoResult(value.MustParse(`{}`))
	require.ErrorIs(t, err, ErrMalformed)
	_, err = ParseExecuteResult(value.MustParse(`{"result":1}`))
	require.ErrorIs(t, err, ErrMalformed)
	_, err = ParseExecuteResult("x")
	require.ErrorIs(t, err, ErrMalformed)
}

func TestBlobParams(t *testing.T) {
	data, bt, err := ParsePutBlobParams(value.MustParse(`{"data":{"a":1},"blob_type":"flow","observability":null}`))
	require.NoError(t, err)
	require.Equal(t, `{"a":1}`, value.String(data))
	require.Equal(t, BlobTypeFlow, bt)
	_, bt, err = ParsePutBlobParams(value.MustParse(`{"data":null,"blob_type":null}`))
	require.NoError(t, err)
	require.Equal(t, BlobTypeData, bt)
	for _, bad := range []string{`null`, `{}`, `{"data":1,"blob_type":"x"}`, `{"data":1,"blob_type":1}`} {
		_, _, err := ParsePutBlobParams(value.MustParse(bad))
		var re *RPCError
		require.True(t, errors.As(err, &re), bad)
		require.Equal(t, int64(CodeInvalidParams), re.Code)
	}
	id, err := ParseGetBlobParams(value.MustParse(`{"blob_id":"abc","observability":null}`))
	require.NoError(t, err)
	require.Equal(t, "abc", id)
	_, err = ParseGetBlobParams(value.MustParse(`{"blob_id":1}`))
	require.Error(t, err)
	require.Equal(t, `{"blob_id":"i"}`, value.String(PutBlobResult("i")))
	require.Equal(t, `{"data":null,"blob_type":"data"}`, value.String(GetBlobResult(nil, BlobTypeData)))
}

func TestEnvelope(t *testing.T) {
	require.Equal(t, `{"jsonrpc":"2.0","id":"i","method":"m","params":{}}`, string(appendRequest(nil, "i", "m", nil)))
	require.Equal(t, `{"jsonrpc":"2.0","method":"m","params":{"a":1}}`,
		string(appendRequest(nil, nil, "m", value.ObjectOf("a", value.Int(1)))))
	require.Equal(t, `{"jsonrpc":"2.0","id":7,"result":null}`, string(appendResponse(nil, value.Int(7), nil, nil)))
	require.Equal(t, `{"jsonrpc":"2.0","id":"7","error":{"code":-32601,"message":"x","data":null}}`,
		string(appendResponse(nil, "7", nil, &RPCError{Code: CodeMethodNotFound, Message: "x"})))

	m, err := parseMessage([]byte(`{"id":1,"error":{"code":-32003,"message":"m"},"jsonrpc":"2.0"}`))
	require.NoError(t, err)
	require.Equal(t, kindResponse, m.kind)
	require.Equal(t, value.Int(1), m.id)
	require.Equal(t, &RPCError{Code: -32003, Message: "m"}, m.err)
	m, err = parseMessage([]byte(`{"id":null,"method":"n","params":{}}`))
	require.NoError(t, err)
	require.Equal(t, kindNotification, m.kind)
	for _, bad := range []string{`1`, `{}`, `{"id":1}`, `{"id":{},"result":1}`, `{"method":1}`,
		`{"id":1,"error":{"code":1.5,"message":"m"}}`, `{"id":1,"error":"x"}`} {
		_, err := parseMessage([]byte(bad))
		require.ErrorIs(t, err, ErrMalformed, bad)
	}
}
