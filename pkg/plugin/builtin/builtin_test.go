package builtin_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/plugin/builtin"
	"github.com/stepflow-go/stepflow/pkg/plugin/pluginapi"
	"github.com/stepflow-go/stepflow/pkg/value"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type testBundle struct {
	plugin *builtin.Plugin
	blobs  *blob.Memory
	env    map[string]string
	dir    string
	subs   *fakeSubflows
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	b := &testBundle{blobs: blob.NewMemory(), env: map[string]string{}, dir: t.TempDir(), subs: &fakeSubflows{}}
	b.plugin = builtin.New(pluginapi.Host{
		Blobs:      b.blobs,
		WorkingDir: b.dir,
		LookupEnv: func(k string) (string, bool) {
			v, ok := b.env[k]
			return v, ok
		},
	})
	return b
}

// call executes a builtin on a JSON input.
func (b *testBundle) call(t *testing.T, name, input string) (outcome.Result, error) {
	t.Helper()
	c, err := b.plugin.Component(name)
	require.NoError(t, err)
	return c.Execute(context.Background(), &executor.Request{
		RunID: "run-1", StepID: "s", Path: "/builtin" + name, Input: value.MustParse(input), Attempt: 1, Subflows: b.subs,
	})
}

// ok executes and requires a success, returning its compact JSON.
func (b *testBundle) ok(t *testing.T, name, input string) string {
	t.Helper()
	res, err := b.call(t, name, input)
	require.NoError(t, err)
	require.False(t, res.Failed(), "unexpected failure %v", res.Err)
	return value.String(res.Value)
}

// fakeSubflows runs nested flows with a Go function per item.
type fakeSubflows struct {
	mu    sync.Mutex
	calls []subflowCall
	run   func(f *flow.Flow, input value.Value) outcome.Result
	err   error
}

type subflowCall struct {
	flowID         string
	inputs         int
	maxConcurrency int
}

func (s *fakeSubflows) RunSubflow(_ context.Context, f *flow.Flow, inputs []value.Value, maxConcurrency int) ([]outcome.Result, error) {
	s.mu.Lock()
	s.calls = append(s.calls, subflowCall{flowID: f.ID(), inputs: len(inputs), maxConcurrency: maxConcurrency})
	s.mu.Unlock()
	if s.err != nil {
		return nil, s.err
	}
	out := make([]outcome.Result, len(inputs))
	for i, in := range inputs {
		out[i] = s.run(f, in)
	}
	return out, nil
}

func TestComponentsAndUnknown(t *testing.T) {
	t.Parallel()
	b := setup(t)
	infos, err := b.plugin.Components(context.Background())
	require.NoError(t, err)
	var names []string
	for _, i := range infos {
		names = append(names, i.Component)
		require.NotEmpty(t, i.Description)
		in := i.InputSchema.(*value.Object)
		title, _ := in.Get("title")
		require.NotEmpty(t, title, i.Component)
		require.NotNil(t, i.OutputSchema)
	}
	require.Equal(t, []string{"/create_messages", "/eval", "/get_blob", "/iterate", "/load_file", "/map", "/openai", "/put_blob"}, names)
	require.Equal(t, names, builtin.Names(), "Names lists the components the plugin has")
	for _, n := range names {
		require.True(t, builtin.Known(n), n)
	}
	require.False(t, builtin.Known("/get_blb"))
	require.False(t, builtin.Known("get_blob"))
	openai := infos[6].InputSchema.(*value.Object)
	title, _ := openai.Get("title")
	require.Equal(t, "OpenAIInput", title)

	// Under upstream 0.13's root prefix route the name keeps /builtin.
	viaRoot, err := b.plugin.Component("/builtin/eval")
	require.NoError(t, err)
	direct, err := b.plugin.Component("/eval")
	require.NoError(t, err)
	require.Equal(t, direct, viaRoot)
	_, err = b.plugin.Component("/builtin/nope")
	require.ErrorIs(t, err, pluginapi.ErrUnknownComponent)

	_, err = b.plugin.Component("/nope")
	require.ErrorIs(t, err, pluginapi.ErrUnknownComponent)
	require.EqualError(t, err, "unknown component: /nope")
	require.NoError(t, b.plugin.Start(context.Background()))
	require.NoError(t, b.plugin.Close())
}

func TestCreateMessages(t *testing.T) {
	t.Parallel()
	b := setup(t)
	require.Equal(t, `{"messages":[{"role":"user","content":"Hello"}]}`, b.ok(t, builtin.CreateMessages, `{"user_prompt":"Hello"}`))
	require.Equal(t, `{"messages":[{"role":"user","content":"Hello"}]}`, b.ok(t, builtin.CreateMessages, `{"user_prompt":"Hello","system_instructions":null,"extra":1}`))
	require.Equal(t, `{"messages":[{"role":"system","content":"Be terse."},{"role":"user","content":"Hi"}]}`,
		b.ok(t, builtin.CreateMessages, `{"system_instructions":"Be terse.","user_prompt":"Hi"}`))
	for _, in := range []string{`{}`, `{"user_prompt":1}`, `"x"`, `{"user_prompt":"a","system_instructions":2}`} {
		_, err := b.call(t, builtin.CreateMessages, in)
		require.ErrorIs(t, err, builtin.ErrInvalidInput, in)
		require.True(t, strings.HasPrefix(err.Error(), "invalid input"), err.Error())
	}
}

func TestBlobs(t *testing.T) {
	t.Parallel()
	b := setup(t)
	data := `{"message":"Hello, blobs!","number":42,"nested":{"array":[1,2,3],"boolean":true}}`
	const id = "868591347a854ba1d0f4875b2dd44e1e8335052af03725a9819f89e0142318b0"
	require.Equal(t, `{"blob_id":"`+id+`"}`, b.ok(t, builtin.PutBlob, `{"data":`+data+`,"blob_type":"data"}`))
	require.Equal(t, `{"data":`+data+`}`, b.ok(t, builtin.GetBlob, `{"blob_id":"`+id+`"}`))
	// null data is allowed.
	require.Equal(t, `{"blob_id":"`+blob.ID(nil)+`"}`, b.ok(t, builtin.PutBlob, `{"data":null,"blob_type":"data"}`))

	for _, in := range []string{`{"blob_type":"data"}`, `{"data":1}`, `{"data":1,"blob_type":"x"}`} {
		_, err := b.call(t, builtin.PutBlob, in)
		require.ErrorIs(t, err, builtin.ErrInvalidInput, in)
	}
	_, err := b.call(t, builtin.GetBlob, `{"blob_id":"abc"}`)
	require.ErrorIs(t, err, builtin.ErrInvalidInput)
	_, err = b.call(t, builtin.GetBlob, `{"blob_id":"`+strings.ToUpper(id)+`"}`)
	require.ErrorIs(t, err, builtin.ErrInvalidInput)
	_, err = b.call(t, builtin.GetBlob, `{"blob_id":"`+blob.ID("missing")+`"}`)
	require.ErrorIs(t, err, builtin.ErrInternal)
	require.ErrorIs(t, err, blob.ErrNotFound)
	require.True(t, strings.HasPrefix(err.Error(), "internal error"))
}

const nestedFlow = `{"schema":"https://stepflow.org/schemas/v1/flow.json","name":"simple_nested",
	"steps":[{"id":"inner_step","component":"/builtin/create_messages","input":{"user_prompt":"Hello from nested flow"}}],
	"output":{"result":{"$step":"inner_step"}}}`

func TestPutFlowBlobAndEval(t *testing.T) {
	t.Parallel()
	b := setup(t)
	f, err := flow.FromValue(value.MustParse(nestedFlow))
	require.NoError(t, err)
	out := b.ok(t, builtin.PutBlob, `{"data":`+nestedFlow+`,"blob_type":"flow"}`)
	require.Equal(t, `{"blob_id":"`+f.ID()+`"}`, out)
	stored, err := b.blobs.Get(context.Background(), f.ID())
	require.NoError(t, err)
	require.Equal(t, blob.KindFlow, stored.Kind)
	require.Equal(t, value.String(f.Value()), value.String(stored.Data))

	b.subs.run = func(f *flow.Flow, input value.Value) outcome.Result {
		return outcome.Success(value.ObjectOf("result", value.ObjectOf("flow", f.Name, "input", input)))
	}
	got := b.ok(t, builtin.Eval, `{"flow_id":"`+f.ID()+`","input":{"x":1}}`)
	require.Equal(t, `{"result":{"outcome":"success","result":{"result":{"flow":"simple_nested","input":{"x":1}}}},"run_id":"run-1"}`, got)
	require.Equal(t, []subflowCall{{flowID: f.ID(), inputs: 1, maxConcurrency: 1}}, b.subs.calls)

	// A failed nested flow does not fail the step.
	b.subs.run = func(*flow.Flow, value.Value) outcome.Result { return outcome.Failure(outcome.Errorf(7, "nope")) }
	got = b.ok(t, builtin.Eval, `{"flow_id":"`+f.ID()+`","input":null}`)
	require.Equal(t, `{"result":{"outcome":"failed","error":{"code":7,"message":"nope"}},"run_id":"run-1"}`, got)

	// Not a flow: invalid data for blob_type flow.
	_, err = b.call(t, builtin.PutBlob, `{"data":{"steps":3},"blob_type":"flow"}`)
	require.ErrorIs(t, err, builtin.ErrInternal)

	// Eval of a data blob, of an unknown blob, of a malformed id, without input.
	dataID := blob.ID(value.MustParse(`{"a":1}`))
	b.ok(t, builtin.PutBlob, `{"data":{"a":1},"blob_type":"data"}`)
	_, err = b.call(t, builtin.Eval, `{"flow_id":"`+dataID+`","input":1}`)
	require.ErrorIs(t, err, builtin.ErrInternal)
	require.Contains(t, err.Error(), "is not a flow")
	_, err = b.call(t, builtin.Eval, `{"flow_id":"`+blob.ID(5)+`","input":1}`)
	require.ErrorIs(t, err, blob.ErrNotFound)
	_, err = b.call(t, builtin.Eval, `{"flow_id":"x","input":1}`)
	require.ErrorIs(t, err, builtin.ErrInvalidInput)
	_, err = b.call(t, builtin.Eval, `{"flow_id":"`+f.ID()+`"}`)
	require.ErrorIs(t, err, builtin.ErrInvalidInput)

	// Subflow machinery failure.
	b.subs.err = errors.New("executor gone")
	_, err = b.call(t, builtin.Eval, `{"flow_id":"`+f.ID()+`","input":1}`)
	require.ErrorIs(t, err, builtin.ErrInternal)
	require.ErrorContains(t, err, "running nested flow")
}

const mapFlow = `{"steps":[{"id":"s","component":"/builtin/create_messages","input":{"user_prompt":{"$input":"$"}}}],"output":{"$step":"s"}}`

func TestMap(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.subs.run = func(_ *flow.Flow, input value.Value) outcome.Result {
		if input == "boom" {
			return outcome.Failure(outcome.Errorf(500, "failed"))
		}
		return outcome.Success(value.ObjectOf("messages", []value.Value{value.ObjectOf("role", "user", "content", input)}))
	}
	got := b.ok(t, builtin.Map, `{"workflow":`+mapFlow+`,"items":["Hello","boom","Test"],"max_concurrency":2}`)
	require.Equal(t, `{"results":[`+
		`{"outcome":"success","result":{"messages":[{"role":"user","content":"Hello"}]}},`+
		`{"outcome":"failed","error":{"code":500,"message":"failed"}},`+
		`{"outcome":"success","result":{"messages":[{"role":"user","content":"Test"}]}}],"successful":2,"failed":1}`, got)
	require.Equal(t, 3, b.subs.calls[0].inputs)
	require.Equal(t, 2, b.subs.calls[0].maxConcurrency)

	require.Equal(t, `{"results":[],"successful":0,"failed":0}`, b.ok(t, builtin.Map, `{"workflow":`+mapFlow+`,"items":[]}`))
	require.Len(t, b.subs.calls, 1, "no sub-run for no items")
	b.ok(t, builtin.Map, `{"workflow":`+mapFlow+`,"items":[1],"max_concurrency":null}`)
	require.Equal(t, 0, b.subs.calls[1].maxConcurrency)

	for _, in := range []string{
		`{"items":[]}`, `{"workflow":` + mapFlow + `}`, `{"workflow":` + mapFlow + `,"items":{}}`,
		`{"workflow":{"steps":1},"items":[]}`, `{"workflow":` + mapFlow + `,"items":[],"max_concurrency":-1}`,
	} {
		_, err := b.call(t, builtin.Map, in)
		require.ErrorIs(t, err, builtin.ErrInvalidInput, in)
	}
}

func TestIterate(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// count up to 3: {n} -> {next: {n+1}} until n == 3 -> {result: n}
	b.subs.run = func(_ *flow.Flow, input value.Value) outcome.Result {
		n, _ := input.(*value.Object).Get("n")
		i, _ := n.(value.Number).Int64()
		switch {
		case i < 0:
			return outcome.Failure(outcome.Errorf(9, "negative"))
		case i == 100:
			return outcome.Success(value.ObjectOf("other", 1))
		case i == 50:
			return outcome.Success(value.ObjectOf("next", "ignored", "result", "both"))
		case i >= 3:
			return outcome.Success(value.ObjectOf("result", i))
		}
		return outcome.Success(value.ObjectOf("next", value.ObjectOf("n", value.Int(i+1))))
	}
	require.Equal(t, `{"result":3,"iterations":4,"terminated":false}`, b.ok(t, builtin.Iterate, `{"flow":`+mapFlow+`,"initial_input":{"n":0}}`))
	require.Equal(t, `{"result":{"n":2},"iterations":2,"terminated":true}`, b.ok(t, builtin.Iterate, `{"flow":`+mapFlow+`,"initial_input":{"n":0},"max_iterations":2}`))
	require.Equal(t, `{"result":{"n":0},"iterations":0,"terminated":true}`, b.ok(t, builtin.Iterate, `{"flow":`+mapFlow+`,"initial_input":{"n":0},"max_iterations":0}`))
	require.Equal(t, `{"result":"both","iterations":1,"terminated":false}`, b.ok(t, builtin.Iterate, `{"flow":`+mapFlow+`,"initial_input":{"n":50}}`))

	res, err := b.call(t, builtin.Iterate, `{"flow":`+mapFlow+`,"initial_input":{"n":-1}}`)
	require.NoError(t, err)
	require.Equal(t, `{"outcome":"failed","error":{"code":9,"message":"negative"}}`, value.String(res.JSON()))

	res, err = b.call(t, builtin.Iterate, `{"flow":`+mapFlow+`,"initial_input":{"n":100}}`)
	require.NoError(t, err)
	require.Equal(t, `{"outcome":"failed","error":{"code":400,"message":"Workflow result must contain either 'result' or 'next' field"}}`, value.String(res.JSON()))

	for _, in := range []string{`{"initial_input":1}`, `{"flow":` + mapFlow + `}`, `{"flow":` + mapFlow + `,"initial_input":1,"max_iterations":null}`,
		`{"flow":` + mapFlow + `,"initial_input":1,"max_iterations":1.5}`} {
		_, err := b.call(t, builtin.Iterate, in)
		require.ErrorIs(t, err, builtin.ErrInvalidInput, in)
	}
}

func TestLoadFile(t *testing.T) {
	t.Parallel()
	b := setup(t)
	write := func(name, content string) {
		require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(b.dir, name)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(b.dir, name), []byte(content), 0o600))
	}
	write("d.json", `{"b":1,"a":[1.0,"x"]}`)
	write("sub/d.yaml", "b: 1\na: [1.0, x]\nwhen: 2024-01-01\n")
	write("d.yml", "- true\n- ~\n")
	write("notes.txt", "héllo\n")
	write("bad.json", `{"a":`)
	write("bin.dat", "\xff\xfe")

	got := b.ok(t, builtin.LoadFile, `{"path":"d.json"}`)
	require.Equal(t, `{"data":{"b":1,"a":[1.0,"x"]},"metadata":{"resolved_path":"`+b.dir+`/d.json","size_bytes":21,"format":"json"}}`, got)
	got = b.ok(t, builtin.LoadFile, `{"path":"./sub/d.yaml"}`)
	require.Equal(t, `{"data":{"b":1,"a":[1.0,"x"],"when":"2024-01-01"},"metadata":{"resolved_path":"`+b.dir+`/./sub/d.yaml","size_bytes":34,"format":"yaml"}}`, got)
	got = b.ok(t, builtin.LoadFile, `{"path":"d.yml"}`)
	require.Equal(t, `{"data":[true,null],"metadata":{"resolved_path":"`+b.dir+`/d.yml","size_bytes":11,"format":"yaml"}}`, got)
	got = b.ok(t, builtin.LoadFile, `{"path":"`+b.dir+`/notes.txt"}`)
	require.Equal(t, `{"data":"héllo\n","metadata":{"resolved_path":"`+b.dir+`/notes.txt","size_bytes":7,"format":"text"}}`, got)
	// Explicit format overrides the extension.
	got = b.ok(t, builtin.LoadFile, `{"path":"d.json","format":"text"}`)
	require.Contains(t, got, `"data":"{\"b\":1,\"a\":[1.0,\"x\"]}"`)
	got = b.ok(t, builtin.LoadFile, `{"path":"d.yml","format":null}`)
	require.Contains(t, got, `"format":"yaml"`)

	for _, in := range []string{`{"path":"missing.json"}`, `{"path":"bad.json"}`, `{"path":"bin.dat"}`, `{"path":"sub"}`,
		`{"path":"d.json","format":"xml"}`, `{}`, `{"path":3}`} {
		_, err := b.call(t, builtin.LoadFile, in)
		require.ErrorIs(t, err, builtin.ErrInvalidInput, in)
	}
}

// TestLoadFileConfined: with Host.ConfineFiles (workers), /load_file reads
// inside the working directory only: absolute paths, ".." and symlinks
// leading out fail, so a submitted flow cannot read the worker's files
// (such as its environment in /proc/self/environ).
func TestLoadFileConfined(t *testing.T) {
	t.Parallel()
	dir, outside := t.TempDir(), t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "sub"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "sub", "d.json"), []byte(`{"a":1}`), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(outside, "secret.txt"), []byte("s3cret"), 0o600))
	require.NoError(t, os.Symlink(filepath.Join(outside, "secret.txt"), filepath.Join(dir, "link.txt")))
	p := builtin.New(pluginapi.Host{WorkingDir: dir, ConfineFiles: true})
	c, err := p.Component(builtin.LoadFile)
	require.NoError(t, err)
	call := func(path string) (outcome.Result, error) {
		return c.Execute(context.Background(), &executor.Request{RunID: "r", StepID: "s", Path: "/builtin/load_file",
			Input: value.ObjectOf("path", path), Attempt: 1})
	}
	res, err := call("sub/d.json")
	require.NoError(t, err)
	require.Equal(t, `{"data":{"a":1},"metadata":{"resolved_path":"`+dir+`/sub/d.json","size_bytes":7,"format":"json"}}`, value.String(res.Value))
	for _, path := range []string{"/proc/self/environ", filepath.Join(outside, "secret.txt"), "../" + filepath.Base(outside) + "/secret.txt", "link.txt", "sub/../../x"} {
		res, err := call(path)
		require.ErrorIs(t, err, builtin.ErrInvalidInput, path)
		require.Nil(t, res.Value, path)
	}

	// The worker's config, which its working directory holds by default,
	// is hidden however it is reached: by name, a symlink or a hard link.
	cfgPath := filepath.Join(dir, "stepflow-config.yml")
	require.NoError(t, os.WriteFile(cfgPath, []byte("plugins: {}\n"), 0o600))
	require.NoError(t, os.Symlink("stepflow-config.yml", filepath.Join(dir, "cfg-link.yml")))
	require.NoError(t, os.Link(cfgPath, filepath.Join(dir, "sub", "copy.yml")))
	fi, err := os.Stat(cfgPath)
	require.NoError(t, err)
	p = builtin.New(pluginapi.Host{WorkingDir: dir, ConfineFiles: true, HiddenFiles: []os.FileInfo{fi}})
	c, err = p.Component(builtin.LoadFile)
	require.NoError(t, err)
	for _, path := range []string{"stepflow-config.yml", "./stepflow-config.yml", "cfg-link.yml", "sub/copy.yml", "sub/../stepflow-config.yml"} {
		res, err := call(path)
		require.ErrorIs(t, err, builtin.ErrInvalidInput, path)
		require.ErrorContains(t, err, "does not let flows read its configuration file", path)
		require.Nil(t, res.Value, path)
	}
	res, err = call("sub/d.json")
	require.NoError(t, err, "other files still read")
	require.NotNil(t, res.Value)
}

// fakeOpenAI is a local stand-in for the chat completions API.
type fakeOpenAI struct {
	t      *testing.T
	mu     sync.Mutex
	bodies []string
	auths  []string
	paths  []string
	status int
	reply  string
}

func (f *fakeOpenAI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), 500)
		return
	}
	f.mu.Lock()
	f.bodies = append(f.bodies, string(body))
	f.auths = append(f.auths, r.Header.Get("Authorization"))
	f.paths = append(f.paths, r.URL.RequestURI())
	status, reply := f.status, f.reply
	f.mu.Unlock()
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
		http.Error(w, "bad request", 400)
		return
	}
	if status == 0 {
		status = 200
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, reply)
}

func (f *fakeOpenAI) set(status int, reply string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status, f.reply = status, reply
}

func TestOpenAI(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fake := &fakeOpenAI{t: t, reply: `{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"Hi there"}}]}`}
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	b.env["OPENAI_API_BASE"] = srv.URL + "/v1/"
	b.env["OPENAI_API_KEY"] = "sk-env"

	got := b.ok(t, builtin.OpenAI, `{"messages":[{"role":"system","content":"Be terse."},{"role":"user","content":"Hi"}]}`)
	require.Equal(t, `{"response":"Hi there"}`, got)
	require.Equal(t, `{"model":"gpt-3.5-turbo","messages":[{"role":"system","content":"Be terse."},{"role":"user","content":"Hi"}]}`, fake.bodies[0])
	require.Equal(t, "Bearer sk-env", fake.auths[0])
	require.Equal(t, "/v1/chat/completions", fake.paths[0])

	// model, temperature and max_tokens are sent; api_key overrides the
	// environment; empty content is sent as null.
	got = b.ok(t, builtin.OpenAI, `{"messages":[{"role":"user","content":""}],"model":"gpt-4o","temperature":0.2,"max_tokens":100,"api_key":"sk-input"}`)
	require.Equal(t, `{"response":"Hi there"}`, got)
	require.Equal(t, `{"model":"gpt-4o","messages":[{"role":"user","content":null}],"temperature":0.2,"max_tokens":100}`, fake.bodies[1])
	require.Equal(t, "Bearer sk-input", fake.auths[1])

	// A query string in the base is kept.
	b.env["OPENAI_API_BASE"] = srv.URL + "/openai?api-version=1"
	b.ok(t, builtin.OpenAI, `{"messages":[]}`)
	require.Equal(t, "/openai/chat/completions?api-version=1", fake.paths[2])
	b.env["OPENAI_API_BASE"] = srv.URL

	// null content in the reply gives "".
	fake.set(200, `{"choices":[{"message":{"role":"assistant","content":null}}]}`)
	require.Equal(t, `{"response":""}`, b.ok(t, builtin.OpenAI, `{"messages":[]}`))

	// Error paths.
	fake.set(200, `{"choices":[]}`)
	_, err := b.call(t, builtin.OpenAI, `{"messages":[]}`)
	require.ErrorIs(t, err, builtin.ErrOpenAI)
	require.EqualError(t, err, "openai error: missing completion")

	fake.set(401, `{"error":{"message":"bad key"}}`)
	_, err = b.call(t, builtin.OpenAI, `{"messages":[]}`)
	require.ErrorIs(t, err, builtin.ErrOpenAI)
	require.EqualError(t, err, "openai error: generating completion")
	require.ErrorContains(t, errors.Unwrap(err), "HTTP 401")

	fake.set(200, `not json`)
	_, err = b.call(t, builtin.OpenAI, `{"messages":[]}`)
	require.EqualError(t, err, "openai error: generating completion")

	fake.set(200, `{"object":"nothing"}`)
	_, err = b.call(t, builtin.OpenAI, `{"messages":[]}`)
	require.EqualError(t, err, "openai error: generating completion")

	delete(b.env, "OPENAI_API_KEY")
	_, err = b.call(t, builtin.OpenAI, `{"messages":[]}`)
	require.ErrorIs(t, err, builtin.ErrMissingAPIKey)
	require.EqualError(t, err, `missing value ("api_key") or environment variable ("OPENAI_API_KEY")`)

	b.env["OPENAI_API_KEY"] = "k"
	for _, in := range []string{`{}`, `{"messages":[{"role":"User","content":"x"}]}`, `{"messages":[{"role":"user","content":1}]}`,
		`{"messages":[{"role":"user"}]}`, `{"messages":[],"max_tokens":70000}`, `{"messages":[],"max_tokens":-1}`,
		`{"messages":[],"temperature":"hot"}`, `{"messages":[],"model":4}`, `{"messages":[],"api_key":1}`, `{"messages":"x"}`} {
		_, err := b.call(t, builtin.OpenAI, in)
		require.ErrorIs(t, err, builtin.ErrInvalidInput, in)
	}

	// Transport failure.
	b.env["OPENAI_API_BASE"] = "http://127.0.0.1:1"
	_, err = b.call(t, builtin.OpenAI, `{"messages":[]}`)
	require.EqualError(t, err, "openai error: generating completion")
}

// staleKinds is a caching store whose cache still has every blob as data:
// only a read past the cache sees its kind.
type staleKinds struct{ *blob.Memory }

func (s staleKinds) Get(ctx context.Context, id string) (blob.Blob, error) {
	b, err := s.Memory.Get(ctx, id)
	if err == nil && !blob.CacheBypassed(ctx) {
		b.Kind = blob.KindData
	}
	return b, err
}

// /eval re-reads a blob found as data past the store's cache: the cached
// kind may predate the blob's storing as a flow.
func TestEvalRereadsStaleKind(t *testing.T) {
	t.Parallel()
	mem := blob.NewMemory()
	p := builtin.New(pluginapi.Host{Blobs: staleKinds{mem}})
	f, err := flow.FromValue(value.MustParse(nestedFlow))
	require.NoError(t, err)
	_, err = mem.Put(context.Background(), blob.KindFlow, f.Value())
	require.NoError(t, err)
	subs := &fakeSubflows{run: func(*flow.Flow, value.Value) outcome.Result { return outcome.Success(nil) }}
	c, err := p.Component(builtin.Eval)
	require.NoError(t, err)
	res, err := c.Execute(context.Background(), &executor.Request{
		RunID: "run-1", StepID: "s", Path: "/builtin" + builtin.Eval,
		Input: value.ObjectOf("flow_id", f.ID(), "input", nil), Attempt: 1, Subflows: subs,
	})
	require.NoError(t, err)
	require.False(t, res.Failed())
	require.Len(t, subs.calls, 1)
}
