package stepflow_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/plugin"
	"github.com/stepflow-go/stepflow/pkg/plugin/pluginapi"
	"github.com/stepflow-go/stepflow/pkg/plugin/stepflow"
	"github.com/stepflow-go/stepflow/pkg/protocol"
	"github.com/stepflow-go/stepflow/pkg/runs"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// Tests shared by every SDK generation run once per SDK: 0.9.2 and
// 0.11.2 over HTTP, 0.7.0 over stdio.
var allSDKs = []sdk{sdkHTTP, sdkHTTP11, sdkStdio}

// httpSDKs are the SDKs of the HTTP transport.
var httpSDKs = []sdk{sdkHTTP, sdkHTTP11}

// TestStartOnceConcurrent: one server process serves every call — 64
// items at once (the fixture only answers once all 64 are in flight, so
// the calls cannot have been serialised) and later calls of other runs —
// and its stderr is logged under the plugin's name.
func TestStartOnceConcurrent(t *testing.T) {
	for _, s := range allSDKs {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, s, envOptions{})

			infos, err := e.sp.Components(context.Background())
			require.NoError(t, err)
			names := map[string]string{}
			for _, ci := range infos {
				names[ci.Component] = ci.Description
			}
			require.Contains(t, names, "/udf")
			require.Equal(t, "Returns its input.", names["/echo"])
			require.Contains(t, names, "/barrier")

			const n = 64
			var wg sync.WaitGroup
			outs := make([]value.Value, n)
			errs := make([]error, n)
			for i := range n {
				wg.Go(func() {
					res, err := e.call("/barrier", fmt.Sprintf(`{"n":%d,"i":%d}`, n, i))
					if err == nil && res.Failed() {
						err = res.Err
					}
					outs[i], errs[i] = res.Value, err
				})
			}
			wg.Wait()
			pids := map[int64]bool{}
			for i := range n {
				require.NoError(t, errs[i], "item %d", i)
				require.Equal(t, value.Int(int64(i)), field(t, outs[i], "i"))
				require.Equal(t, value.Int(n), field(t, outs[i], "peak"))
				pids[pidOf(t, outs[i])] = true
			}
			require.Len(t, pids, 1)

			for range 3 {
				require.Equal(t, `{"a":[1,"x"]}`, value.String(e.mustCall("/echo", `{"a":[1,"x"]}`)))
			}
			require.Equal(t, 1, e.startCount())
			require.Equal(t, 1, e.sp.Starts())

			// stderr is drained into the log, tagged with the plugin.
			var pid int64
			for p := range pids {
				pid = p
			}
			want := "starting"
			found := false
			for _, entry := range e.logs.FilterMessage("component server stderr").All() {
				fields := entry.ContextMap()
				if fields["plugin"] == s.plugin && strings.Contains(fmt.Sprint(fields["line"]), strconv.FormatInt(pid, 10)+" "+want) {
					found = true
				}
			}
			require.True(t, found, "stderr line of pid %d not logged", pid)
			if s.name == "stdio" {
				sizes := e.logs.FilterMessage("stdout pipe size").All()
				require.NotEmpty(t, sizes)
				require.EqualValues(t, 1<<20, sizes[0].ContextMap()["bytes"])
			}
		})
	}
}

// TestComponentFailure: a component that raises is a failed result with
// the SDK's code (-32003, or -32100 from 0.10 on) and message; the server
// is not restarted.
func TestComponentFailure(t *testing.T) {
	for _, s := range allSDKs {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, s, envOptions{})
			pid := pidOf(t, e.mustCall("/barrier", `{"n":1,"i":0}`))

			res, err := e.callReq("/boom", &executor.Request{RunID: executor.NewRunID(), StepID: "b", Input: value.NewObject(0), Attempt: 1})
			require.NoError(t, err)
			require.True(t, res.Failed())
			require.EqualValues(t, s.execCode, res.Err.Code)
			require.Equal(t, "Component execution failed: kaputt", res.Err.Message)
			require.Equal(t, "b", field(t, res.Err.Data, "step_id"))
			require.Equal(t, "/boom", field(t, res.Err.Data, "component"))
			require.Equal(t, `{}`, value.String(field(t, res.Err.Data, "data")))

			// An unknown component is the server's -32001, not a Go error.
			res, err = e.call("/nope", `{}`)
			require.NoError(t, err)
			require.True(t, res.Failed())
			require.EqualValues(t, protocol.CodeComponentNotFound, res.Err.Code)

			require.Equal(t, pid, pidOf(t, e.mustCall("/barrier", `{"n":1,"i":0}`)))
			require.Equal(t, 1, e.startCount())
		})
	}
}

// TestProcessExitRestarts: a component whose process exits mid-item is a
// transport failure (a Go error saying so), the server is restarted, and
// the next item succeeds on the new process.
func TestProcessExitRestarts(t *testing.T) {
	for _, s := range allSDKs {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, s, envOptions{})
			pid := pidOf(t, e.mustCall("/barrier", `{"n":1,"i":0}`))

			_, err := e.call("/die", `{}`)
			require.Error(t, err)
			require.ErrorIs(t, err, stepflow.ErrServerFailed)
			require.ErrorIs(t, err, protocol.ErrTransport)
			var se *stepflow.ServerError
			require.ErrorAs(t, err, &se)
			require.True(t, se.Restarting)
			require.Contains(t, err.Error(), fmt.Sprintf("component server %q failed: process exited: exit status 3; restarting", s.plugin))

			pid2 := pidOf(t, e.mustCall("/barrier", `{"n":1,"i":1}`))
			require.NotEqual(t, pid, pid2)
			require.Equal(t, 2, e.startCount())
			require.Equal(t, 2, e.sp.Starts())

			// Through the executor the failure is upstream's 500.
			res := e.runFlow(fmt.Sprintf(`
steps:
  - id: d
    component: /%s/die
    input: {}
output: {$step: d}
`, s.plugin), `{}`)
			require.True(t, res.Failed())
			require.EqualValues(t, 500, res.Err.Code)
			require.Equal(t, `step "d" failed`, res.Err.Message)
			require.Contains(t, value.String(res.Err.Data), "process exited: exit status 3; restarting")
			e.mustCall("/echo", `{}`)
			require.Equal(t, 3, e.startCount())
		})
	}
}

// TestRetryAfterRestart is upstream's restart test
// (tests/python/restart_functionality.yaml): the component kills its
// server on attempt 1; with onError retry the step succeeds on attempt 2
// against the restarted server.
func TestRetryAfterRestart(t *testing.T) {
	for _, s := range allSDKs {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, s, envOptions{})
			res := e.runFlow(fmt.Sprintf(`
steps:
  - id: flaky
    component: /%s/flaky
    onError: {action: retry, maxAttempts: 3}
    input: {}
output: {attempt_count: {$step: flaky, path: attempt}}
`, s.plugin), `{}`)
			require.False(t, res.Failed(), "%s", value.String(res.JSON()))
			require.Equal(t, `{"attempt_count":2}`, value.String(res.Value))
			require.Equal(t, 2, e.startCount())
		})
	}
}

// TestTimeout: a call exceeding timeoutMs fails with a clear error, the
// server is restarted, and the next call succeeds.
func TestTimeout(t *testing.T) {
	for _, s := range allSDKs {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, s, envOptions{pluginYAML: "timeoutMs: 1500"})
			pid := pidOf(t, e.mustCall("/barrier", `{"n":1,"i":0}`))

			_, err := e.call("/hang", `{}`)
			require.ErrorIs(t, err, stepflow.ErrTimeout)
			require.EqualError(t, err, fmt.Sprintf(`component "/hang" of plugin %q timed out after 1.5s (timeoutMs); restarting the server`, s.plugin))

			require.NotEqual(t, pid, pidOf(t, e.mustCall("/barrier", `{"n":1,"i":1}`)))
			require.Equal(t, 2, e.startCount())
		})
	}
}

// TestLargePayloadsHTTP: 10 MB in and 10 MB out over HTTP.
func TestLargePayloadsHTTP(t *testing.T) {
	t.Parallel()
	e := newEnv(t, sdkHTTP, envOptions{})
	const n = 10 << 20
	big := strings.Repeat("y", n)
	out := e.mustCall("/echo", `{"data":"`+big+`"}`)
	require.Equal(t, big, field(t, out, "data"))
	require.Equal(t, value.Int(n), field(t, e.mustCall("/size", `{"data":"`+big+`"}`), "len"))
	out = e.mustCall("/big", fmt.Sprintf(`{"n":%d}`, n))
	require.Len(t, field(t, out, "data"), n)
	require.Equal(t, 1, e.startCount())
}

// TestLargePayloadsStdio: the stdio transport carries answers up to the
// 1 MiB pipe and requests up to the SDK's 512 KiB line limit; a larger
// input fails that call without touching the server.
func TestLargePayloadsStdio(t *testing.T) {
	t.Parallel()
	e := newEnv(t, sdkStdio, envOptions{})
	in := strings.Repeat("y", 500_000)
	require.Equal(t, in, field(t, e.mustCall("/echo", `{"data":"`+in+`"}`), "data"))
	out := e.mustCall("/big", `{"n":900000}`)
	require.Len(t, field(t, out, "data"), 900000)

	_, err := e.call("/size", `{"data":"`+strings.Repeat("z", 600_000)+`"}`)
	var tooLong *protocol.LineTooLongError
	require.ErrorAs(t, err, &tooLong)
	require.NotErrorIs(t, err, stepflow.ErrServerFailed)
	e.mustCall("/echo", `{}`)
	require.Equal(t, 1, e.startCount())
}

// TestBlobCallbacks: a component puts and gets a blob through its
// context: blobs/put and blobs/get callbacks up to 0.9, the host's blob
// HTTP API from 0.10 on.
func TestBlobCallbacks(t *testing.T) {
	for _, s := range allSDKs {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, s, envOptions{})
			data := value.MustParse(`{"k":[1,2.5,"ü"],"n":null}`)
			out := e.mustCall("/blobs", `{"data":`+value.String(data)+`}`)
			id := field(t, out, "blob_id")
			require.Equal(t, blob.ID(data), id)
			require.Equal(t, value.String(data), value.String(field(t, out, "back")))
			b, err := e.blobs.Get(context.Background(), id.(string))
			require.NoError(t, err)
			require.Equal(t, blob.KindData, b.Kind)
		})
	}
}

// TestBlobsSharedWithBuiltins: the blob a Python component puts is the
// one /builtin/get_blob reads in the next step, and a blob
// /builtin/put_blob stored is the one the component gets; a missing blob
// fails only that component, with the SDK's message.
func TestBlobsSharedWithBuiltins(t *testing.T) {
	for _, s := range httpSDKs {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, s, envOptions{})
			res := e.runFlow(`
steps:
  - id: py_put
    component: /python/blobs
    input: {data: {$input: a}}
  - id: read
    component: /builtin/get_blob
    input: {blob_id: {$step: py_put, path: blob_id}}
  - id: put
    component: /builtin/put_blob
    input: {data: {$input: b}, blob_type: data}
  - id: py_get
    component: /python/get_blob
    input: {blob_id: {$step: put, path: blob_id}}
output:
  builtin_read: {$step: read, path: data}
  python_read: {$step: py_get, path: data}
`, `{"a":{"from":"python","n":[1,2]},"b":["from","builtin"]}`)
			require.False(t, res.Failed(), "%s", value.String(res.JSON()))
			require.Equal(t, `{"builtin_read":{"from":"python","n":[1,2]},"python_read":["from","builtin"]}`, value.String(res.Value))

			missing := strings.Repeat("0", 64)
			res2, err := e.call("/get_blob", `{"blob_id":"`+missing+`"}`)
			require.NoError(t, err)
			require.True(t, res2.Failed())
			require.Contains(t, res2.Err.Message, missing)
			if s == sdkHTTP11 {
				require.Contains(t, res2.Err.Message, "404 Not Found")
			}
			e.mustCall("/echo", `{}`)
			require.Equal(t, 1, e.startCount())
		})
	}
}

// TestBlobRefs: with a blob threshold, stepflow-py 0.11 stores output
// fields larger than it as blobs and returns {"$blob": id} references;
// the flow sees the values.
func TestBlobRefs(t *testing.T) {
	t.Parallel()
	opts := fastOptions
	opts.BlobThreshold = 64
	e := newEnv(t, sdkHTTP11, envOptions{opts: &opts})
	small := e.mustCall("/echo", `{"a":"short"}`)
	require.Equal(t, `{"a":"short"}`, value.String(small))
	require.Equal(t, 0, e.blobs.Len(), "nothing under the threshold is a blob")

	out := e.mustCall("/big", `{"n":1000}`)
	require.Equal(t, strings.Repeat("x", 1000), field(t, out, "data"), "the reference is resolved")
	require.Equal(t, 1, e.blobs.Len(), "the SDK stored the large field through the blob API")
	_, err := e.blobs.Get(context.Background(), blob.ID(strings.Repeat("x", 1000)))
	require.NoError(t, err)

	res := e.runFlow(`
steps:
  - id: big
    component: /python/big
    input: {n: 500}
  - id: size
    component: /python/size
    input: {data: {$step: big, path: data}}
output: {$step: size}
`, `{}`)
	require.False(t, res.Failed(), "%s", value.String(res.JSON()))
	require.Equal(t, `{"len":500}`, value.String(res.Value))
}

const childFlowHTTP = `
name: parent
steps:
  - id: fan
    component: /python/fan_out
    input:
      texts: {$input: texts}
      max_concurrency: 3
output: {$step: fan}
`

// TestNestedRunsHTTP: runs/submit with wait through a real runs.Local.
// The parent batch has one slot, and its item's component waits on a
// nested run of 10 items that call the same server; it completes, and
// the nested run names the parent run.
func TestNestedRunsHTTP(t *testing.T) {
	for _, s := range httpSDKs {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			testNestedRuns(t, s)
		})
	}
}

func testNestedRuns(t *testing.T, s sdk) {
	e := newEnv(t, s, envOptions{})
	parentID := e.storeFlow(childFlowHTTP)
	texts := make([]value.Value, 10)
	for i := range texts {
		texts[i] = strings.TrimSpace(strings.Repeat("w ", i+1))
	}
	inputs := []value.Value{value.ObjectOf("texts", texts), value.ObjectOf("texts", texts[:4])}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	st, err := e.local.Submit(ctx, runs.Request{FlowID: parentID, Inputs: inputs, MaxConcurrency: 1, Wait: true})
	require.NoError(t, err)
	require.Equal(t, runs.StatusCompleted, st.Status, "%s", value.String(st.Value()))
	require.Len(t, st.Results, 2)

	out := st.Results[0].Result.Value
	require.Equal(t, `[1,2,3,4,5,6,7,8,9,10]`, value.String(field(t, out, "counts")))
	require.Equal(t, value.Int(10), field(t, out, "completed"))
	require.Equal(t, value.Int(0), field(t, out, "failed"))
	require.Equal(t, "completed", field(t, out, "status"))
	require.Equal(t, value.Int(10), field(t, out, "get_run_completed"))
	require.Equal(t, value.Int(10), field(t, out, "get_run_results"))
	require.Equal(t, `[1,2,3,4]`, value.String(field(t, st.Results[1].Result.Value, "counts")))

	// The flow the component stored is a flow blob whose id is its flow id.
	b, err := e.blobs.Get(ctx, field(t, out, "flow_id").(string))
	require.NoError(t, err)
	require.Equal(t, blob.KindFlow, b.Kind)

	nested, err := e.local.Get(ctx, field(t, out, "run_id").(string), runs.GetOptions{})
	require.NoError(t, err)
	require.Equal(t, st.RunID, nested.ParentRunID)
	require.Equal(t, 1, e.startCount())
}

// TestRemote: a server started elsewhere is reached by url; no process is
// started and a transport failure is not followed by a restart. A server
// at a loopback address gets the blob API.
func TestRemote(t *testing.T) {
	for _, s := range httpSDKs {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			testRemote(t, s)
		})
	}
}

func testRemote(t *testing.T, s sdk) {
	url := startRemoteServer(t, s)
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
plugins:
  remote: {type: stepflow, url: %q}
routes:
  "/remote/{*component}":
    - plugin: remote
`, url)), "")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	ps, err := plugin.New(ctx, cfg, plugin.Options{Factories: map[config.PluginType]plugin.Factory{config.TypeStepflow: stepflow.NewFactory(fastOptions)}})
	require.NoError(t, err)
	defer func() { require.NoError(t, ps.Close()) }()

	exec := executor.New(executor.Config{Router: ps})
	f := `
steps:
  - id: s
    component: /remote/%s
    input: {$input: "$"}
output: {$step: s}
`
	run := func(comp, input string) outcome.Result {
		fl, err := flow.Parse([]byte(fmt.Sprintf(f, comp)), "")
		require.NoError(t, err)
		r, err := exec.NewRun(executor.NewRunID(), fl, nil)
		require.NoError(t, err)
		return r.Execute(ctx, 0, value.MustParse(input))
	}
	res := run("echo", `{"x":1}`)
	require.Equal(t, `{"x":1}`, value.String(res.Value))
	res = run("boom", `{}`)
	require.EqualValues(t, s.execCode, res.Err.Code)
	res = run("blobs", `{"data":[1,2]}`)
	require.False(t, res.Failed(), "%s", value.String(res.JSON()))
	require.Equal(t, `[1,2]`, value.String(field(t, res.Value, "back")))

	comp, err := ps.Route("/remote/die", nil)
	require.NoError(t, err)
	_, err = comp.Execute(ctx, &executor.Request{RunID: executor.NewRunID(), StepID: "s", Input: value.NewObject(0), Attempt: 1})
	require.ErrorIs(t, err, stepflow.ErrServerFailed)
	require.ErrorIs(t, err, protocol.ErrTransport)
	require.NotContains(t, err.Error(), "restarting")
	require.Equal(t, 0, ps.Plugin("remote").(*stepflow.Plugin).Starts())
}

// TestCloseKillsGroup: Close sends SIGTERM, waits the grace period for a
// server that ignores it, then SIGKILLs the whole process group (a
// grandchild holding the output pipes included) and returns only once
// the output drains ended (goleak checks the rest).
func TestCloseKillsGroup(t *testing.T) {
	t.Parallel()
	opts := fastOptions
	opts.GracePeriod = 700 * time.Millisecond
	e := newEnv(t, sdkHTTP, envOptions{opts: &opts})
	server := pidOf(t, e.mustCall("/ignore_sigterm", `{}`))
	child := pidOf(t, e.mustCall("/grandchild", `{}`))
	start := time.Now()
	require.NoError(t, e.plugins.Close())
	require.GreaterOrEqual(t, time.Since(start), opts.GracePeriod)
	for _, pid := range []int64{server, child} {
		require.True(t, gone(int(pid)), "process %d still alive", pid)
	}
	_, err := e.call("/echo", `{}`)
	require.ErrorIs(t, err, stepflow.ErrClosed)
}

// gone reports whether pid no longer runs: absent, or a zombie not yet
// reaped. Its descriptors are closed either way, which is what Close
// waited for (the drains saw EOF).
func gone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	return len(f) > 0 && f[0] == "Z"
}

// TestNoRunsHost: without Host.Runs, runs/submit answers -32000 and the
// component sees the error (it fails, nothing hangs).
func TestNoRunsHost(t *testing.T) {
	t.Parallel()
	e := newEnv(t, sdkHTTP, envOptions{noRuns: true})
	res, err := e.call("/fan_out", `{"texts":["a"]}`)
	require.NoError(t, err)
	require.True(t, res.Failed())
	require.Contains(t, res.Err.Message, "JSON-RPC error -32000: nested runs are not available here")
}

var _ pluginapi.Plugin = (*stepflow.Plugin)(nil)
