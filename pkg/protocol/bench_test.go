package protocol

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stepflow-go/stepflow/pkg/value"
)

// The echo benchmarks measure one sequential components/execute of /echo
// with a small input against the real SDK servers. Each has a baseline
// that drives the same server with the simplest possible client (a
// prebuilt request, no id matching beyond a byte check, no parsing), so
// that the transport's own overhead is the difference.

var benchInput = value.MustParse(`{"text":"hello big world","n":3}`)

func BenchmarkHTTPEcho(b *testing.B) {
	_, h := newHTTPTransport(b)
	ctx := testCtx(b)
	for b.Loop() {
		out, err := execute(ctx, h, "/echo", benchInput, nil)
		if err != nil || out == nil {
			b.Fatal(out, err)
		}
	}
}

func BenchmarkHTTPEchoBaseline(b *testing.B) {
	_, base := startHTTPServer(b)
	client := NewHTTPClient()
	defer client.CloseIdleConnections()
	body := appendRequest(nil, "bench", MethodComponentsExecute,
		ExecuteParams("/echo", benchInput, 1, Observability{RunID: "r1", FlowID: "f1", StepID: "s1"}))
	want := []byte(`"output":`)
	for b.Loop() {
		req, _ := http.NewRequest(http.MethodPost, base+"/", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", acceptHeader)
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		data, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !bytes.Contains(data, want) {
			b.Fatal(string(data), err)
		}
	}
}

func BenchmarkStdioEcho(b *testing.B) {
	_, s := startStdioServer(b, StdioOptions{})
	ctx := testCtx(b)
	for b.Loop() {
		out, err := execute(ctx, s, "/echo", benchInput, nil)
		if err != nil || out == nil {
			b.Fatal(out, err)
		}
	}
}

func BenchmarkStdioEchoBaseline(b *testing.B) {
	py := stdioPython(b)
	outR, outW := mustPipe(b)
	inR, inW := mustPipe(b)
	p := &proc{cmd: exec.Command(py, filepath.Join("testdata", "stdio_server.py")), stderr: newLineLog()}
	p.cmd.Stdin, p.cmd.Stdout, p.cmd.Stderr = inR, outW, os.Stderr
	p.start(b, inR, outW)
	close(p.stderr.done) // stderr goes straight to ours
	defer func() {
		_ = inW.Close()
		p.kill()
		_ = outR.Close()
	}()
	line := appendRequest(nil, value.Int(1), MethodComponentsExecute,
		ExecuteParams("/echo", benchInput, 1, Observability{RunID: "r1", FlowID: "f1", StepID: "s1"}))
	line = append(line, '\n')
	br := bufio.NewReader(outR)
	want := []byte(`"output":`)
	for b.Loop() {
		if _, err := inW.Write(line); err != nil {
			b.Fatal(err)
		}
		resp, err := br.ReadSlice('\n')
		if err != nil || !bytes.Contains(resp, want) {
			b.Fatal(string(resp), err)
		}
	}
}
