package protocol

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stepflow-go/stepflow/pkg/value"
)

// FuzzStdioFraming feeds arbitrary bytes to the stdio read loop, followed
// by a valid answer to a pending call. The reader must neither panic nor
// hang, and the answer must resolve the call whatever came before it.
func FuzzStdioFraming(f *testing.F) {
	for _, seed := range []string{
		"",
		"garbage\n",
		"{not json",
		"\r\n\r\n\n",
		`{"jsonrpc":"2.0","id":"cb","method":"blobs/put","params":{"data":1}}`,
		`{"jsonrpc":"2.0","id":7,"method":"x","params":null}` + "\n" + `{"id":null,"result":1}`,
		`{"jsonrpc":"2.0","method":"note"}`,
		`{"id":"x","error":{"code":"bad"}}` + "\n" + `{"id":[1],"result":1}`,
		`{"id":1,"result":1}` + "\r",
		strings.Repeat("[", 300),
		`{"id":"a","result":"` + strings.Repeat("é", 100) + `"}`,
		"\x00\xff\xfe{\"id\"",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, noise []byte) {
		inR, inW := io.Pipe()
		outR, outW := io.Pipe()
		// A 16-byte read buffer and a 256-byte line limit exercise long
		// lines and oversize lines with small inputs.
		s := newStdio(outR, inW, StdioOptions{MaxLineBytes: 256}, 16)

		// The fake server: read the requests; report the first id.
		ids := make(chan value.Value, 1)
		serverDone := make(chan struct{})
		go func() {
			defer close(serverDone)
			br := bufio.NewReader(inR)
			for {
				line, err := br.ReadBytes('\n')
				if err != nil {
					return
				}
				if m, err := parseMessage(line); err == nil && m.kind == kindRequest && m.method == "fuzz" {
					ids <- m.id
				}
			}
		}()

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		res := make(chan rpcResult, 1)
		go func() {
			v, err := s.Call(ctx, "fuzz", nil, nil)
			res <- rpcResult{v, err}
		}()
		var id value.Value
		select {
		case id = <-ids:
		case <-ctx.Done():
			t.Fatal("request not written")
		}

		feedDone := make(chan struct{})
		go func() {
			defer close(feedDone)
			var buf bytes.Buffer
			buf.Write(noise)
			buf.WriteString("\n")
			buf.Write(appendResponse(nil, id, value.ObjectOf("ok", true), nil))
			buf.WriteString("\n")
			_, _ = outW.Write(buf.Bytes())
		}()
		r := <-res
		if r.err != nil {
			t.Fatalf("call failed: %v", r.err)
		}
		if got := value.String(r.v); got != `{"ok":true}` {
			t.Fatalf("result %s", got)
		}
		<-feedDone
		_ = outW.Close()
		<-s.Done()
		if err := s.Err(); !errors.Is(err, ErrTransport) {
			t.Fatalf("Err after EOF: %v", err)
		}
		_ = s.Close()
		_ = inR.Close()
		<-serverDone
	})
}

// FuzzSSE reads arbitrary bytes as an event stream (no panic, no hang,
// and it ends), and checks that a well-formed event around an arbitrary
// payload yields exactly that payload.
func FuzzSSE(f *testing.F) {
	for _, seed := range []struct{ raw, payload string }{
		{"", ""},
		{"data: x\n\n", `{"id":1}`},
		{"data:x\r\n\r\ndata: y\n", "a b"},
		{": comment\nevent: e\nid: 1\nretry: 5\ndata\n\n", " leading space"},
		{"data: a\ndata: b\n\n\n\n", "é\x00"},
		{"\r\r\r\n", "data: nested"},
		{"data: " + strings.Repeat("z", 100) + "\n\n", strings.Repeat("q", 100)},
	} {
		f.Add([]byte(seed.raw), seed.payload)
	}
	f.Fuzz(func(t *testing.T, raw []byte, payload string) {
		// A 16-byte buffer exercises lines longer than the buffer.
		r := newSSEReaderSize(bytes.NewReader(raw), 16)
		for i := 0; ; i++ {
			if i > len(raw)+1 {
				t.Fatal("more events than bytes")
			}
			data, err := r.Next()
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("unexpected error %v", err)
				}
				break
			}
			if len(data) > len(raw) {
				t.Fatal("event larger than input")
			}
		}

		payload = strings.NewReplacer("\r", "", "\n", "").Replace(payload)
		half := len(payload) / 2
		stream := ": hello\r\n\r\n" +
			"data: " + payload + "\n\n" +
			"event: x\ndata:" + payload[:half] + "\r\ndata: " + payload[half:] + "\n\n"
		r = newSSEReaderSize(strings.NewReader(stream), 16)
		data, err := r.Next()
		if err != nil || string(data) != payload {
			t.Fatalf("event 1: %q, %v; want %q", data, err, payload)
		}
		data, err = r.Next()
		want := payload[:half] + "\n" + payload[half:]
		if half > 0 && payload[:half][0] == ' ' {
			want = payload[1:half] + "\n" + payload[half:] // "data:" drops one leading space
		}
		if err != nil || string(data) != want {
			t.Fatalf("event 2: %q, %v; want %q", data, err, want)
		}
		if _, err := r.Next(); !errors.Is(err, io.EOF) {
			t.Fatalf("end: %v", err)
		}
	})
}

// FuzzMessage decodes arbitrary bytes as one JSON-RPC message, the
// envelope every transport (stdio lines, HTTP bodies, SSE events) goes
// through: no panic; a refusal wraps ErrMalformed (so ErrTransport); an
// accepted message, written again by the encoder the runtime sends with,
// decodes to the same kind, id, method and payload.
func FuzzMessage(f *testing.F) {
	for _, seed := range []string{
		``, `null`, `[]`, `"x"`, `{}`, `{"jsonrpc":"2.0"}`,
		`{"jsonrpc":"2.0","id":1,"method":"components/execute","params":{"component":"/x","input":{"a":[1,2]}}}`,
		`{"jsonrpc":"2.0","id":"0198c0de-7a1b","method":"blobs/put","params":null}`,
		`{"jsonrpc":"2.0","method":"notifications/initialized"}`,
		`{"jsonrpc":"2.0","id":null,"method":"n","params":[1]}`,
		`{"jsonrpc":"2.0","id":7,"result":{"output":{"outcome":"success","result":1}}}`,
		`{"jsonrpc":"2.0","id":7,"result":null}`,
		`{"jsonrpc":"2.0","id":"a","error":{"code":-32601,"message":"Method not found","data":{"method":"x"}}}`,
		`{"id":"a","error":{"code":1.5}}`, `{"id":"a","error":{"code":99999999999999999999}}`,
		`{"id":"a","error":{"code":1,"message":7}}`, `{"id":"a","error":"boom"}`, `{"id":"a","error":null,"result":2}`,
		`{"id":{"x":1},"result":1}`, `{"id":true,"method":"m"}`, `{"method":3}`, `{"id":1}`,
		`{"id":1e400,"result":1}`, `{"id":-0,"result":"é\u0000"}`, "{\"id\":1,\"result\":\"\xff\"}",
		`{"id":1,"result":1} trailing`, `{"id":1,"id":2,"result":1}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseMessage(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) || !errors.Is(err, ErrTransport) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			if m != nil {
				t.Fatal("message and error")
			}
			return
		}
		var again []byte
		switch m.kind {
		case kindRequest, kindNotification:
			params := m.params
			if params == nil {
				params = value.NewObject(0) // written as {}
			}
			again = appendRequest(nil, m.id, m.method, params)
		case kindResponse:
			again = appendResponse(nil, m.id, m.result, m.err)
		default:
			t.Fatalf("kind %d", m.kind)
		}
		m2, err := parseMessage(again)
		if err != nil {
			t.Fatalf("re-encoded %s: %v", again, err)
		}
		if m2.kind != m.kind || !value.Equal(m2.id, m.id) || m2.method != m.method {
			t.Fatalf("re-encoded %s: kind %d id %s method %q, want %d %s %q", again, m2.kind, value.String(m2.id), m2.method, m.kind, value.String(m.id), m.method)
		}
		if m.params != nil && !value.Equal(m2.params, m.params) {
			t.Fatalf("params %s, want %s", value.String(m2.params), value.String(m.params))
		}
		if !value.Equal(m2.result, m.result) {
			t.Fatalf("result %s, want %s", value.String(m2.result), value.String(m.result))
		}
		if (m.err == nil) != (m2.err == nil) || m.err != nil && (m2.err.Code != m.err.Code || m2.err.Message != m.err.Message || !value.Equal(m2.err.Data, m.err.Data)) {
			t.Fatalf("error %v, want %v", m2.err, m.err)
		}
	})
}

// FuzzHTTPResponse feeds arbitrary statuses and bodies to the reading of
// a plain (non-SSE) HTTP answer: no panic; a result only for a 2xx
// answer to this request; an RPC error only when the body is one for
// this request; anything else wraps ErrTransport. A well-formed answer
// for the request always yields its result.
func FuzzHTTPResponse(f *testing.F) {
	const id = "0198c0de-7a1b-7c3d-8e4f-0123456789ab"
	for _, seed := range []struct {
		status uint16
		body   string
	}{
		{200, `{"jsonrpc":"2.0","id":"` + id + `","result":{"ok":true}}`},
		{500, `{"jsonrpc":"2.0","id":"` + id + `","error":{"code":-32000,"message":"boom"}}`},
		{200, `{"jsonrpc":"2.0","id":"other","result":1}`},
		{502, `<html>Bad Gateway</html>`},
		{200, ``}, {204, `{}`}, {0, `{"id":"` + id + `","result":1}`}, {999, `null`},
		{200, `{"jsonrpc":"2.0","id":"` + id + `","method":"blobs/get","params":{}}`},
	} {
		f.Add(seed.status, []byte(seed.body), []byte(`{"a":[1,"x",null]}`))
	}
	f.Fuzz(func(t *testing.T, status uint16, body, result []byte) {
		v, err := directResponse(int(status), body, id, "m")
		var rpcErr *RPCError
		switch {
		case err == nil:
			m, perr := parseMessage(body)
			if status/100 != 2 || perr != nil || m.kind != kindResponse || m.id != id || m.err != nil || !value.Equal(v, m.result) {
				t.Fatalf("status %d body %q: accepted %s", status, body, value.String(v))
			}
		case errors.As(err, &rpcErr):
			m, perr := parseMessage(body)
			if perr != nil || m.kind != kindResponse || m.id != id || m.err == nil {
				t.Fatalf("status %d body %q: RPC error %v", status, body, err)
			}
		case !errors.Is(err, ErrTransport):
			t.Fatalf("status %d body %q: %v does not wrap ErrTransport", status, body, err)
		}

		rv, perr := value.Parse(result)
		if perr != nil {
			return
		}
		v, err = directResponse(200, appendResponse(nil, id, rv, nil), id, "m")
		if err != nil || !value.Equal(v, rv) {
			t.Fatalf("well-formed answer %s: %s, %v", result, value.String(v), err)
		}
	})
}
