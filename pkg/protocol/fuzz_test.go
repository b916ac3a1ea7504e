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
