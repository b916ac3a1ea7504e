package grpcqueue_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/plugin/grpcqueue"
	"github.com/stepflow-go/stepflow/pkg/plugin/pluginapi"
	"github.com/stepflow-go/stepflow/pkg/value"
	tasksv1 "github.com/stepflow-go/stepflow/proto/tasksv1"
)

// startListeningPlugin starts NATS (unless url is given) and a nats
// plugin without `command` whose gRPC services listen on TCP (`extra`
// adds to its entry, e.g. allowFrom).
func startListeningPlugin(t *testing.T, url, extra string, opts grpcqueue.Options) (*grpcqueue.Plugin, string) {
	t.Helper()
	if url == "" {
		url = startNATS(t)
	}
	entry := fmt.Sprintf("plugins:\n  py:\n    type: nats\n    url: %q\n    stream: PY_TASKS\n    consumer: py-workers\n    listen: \"127.0.0.1:0\"\n    queueTimeoutSecs: 20\n%sroutes: {}\n", url, extra)
	cfg, err := config.Parse([]byte(entry), "cfg.yml")
	require.NoError(t, err)
	p, err := grpcqueue.New(cfg.Plugin("py"), pluginapi.Host{Blobs: blob.NewMemory(), Logger: zaptest.NewLogger(t), WorkingDir: t.TempDir()}, opts)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	require.NoError(t, p.Start(ctx))
	t.Cleanup(func() { require.NoError(t, p.Close()) })
	return p, url
}

// pyWorker is an SDK NATS worker the test started, as a Deployment's pod
// would run one: not launched by the plugin.
type pyWorker struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// startPyWorker runs testdata/grpc13/worker.py with the SDK's NATS
// transport on the plugin's stream and consumer; it completes to the
// orchestrator_service_url of each task and puts blobs at blobURL.
func startPyWorker(t *testing.T, natsURL, blobURL string, env ...string) *pyWorker {
	t.Helper()
	py := sdkPython(t)
	script, err := filepath.Abs("../../../test/integration/testdata/grpc13/worker.py")
	require.NoError(t, err)
	cmd := exec.Command(py, script)
	cmd.Env = append(os.Environ(), "PYTHONUNBUFFERED=1",
		"STEPFLOW_TRANSPORT=nats", "STEPFLOW_NATS_URL="+natsURL,
		"STEPFLOW_NATS_STREAM=PY_TASKS", "STEPFLOW_NATS_CONSUMER=py-workers",
		"STEPFLOW_BLOB_URL="+blobURL)
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = &logWriter{t: t}, &logWriter{t: t}
	require.NoError(t, cmd.Start())
	w := &pyWorker{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(w.done) }()
	t.Cleanup(w.kill)
	return w
}

// kill ends the worker with SIGKILL and waits for it.
func (w *pyWorker) kill() {
	_ = w.cmd.Process.Signal(syscall.SIGKILL)
	<-w.done
}

// logWriter sends a process's output to the test log, line by line.
type logWriter struct {
	t   *testing.T
	mu  sync.Mutex
	buf []byte
}

func (w *logWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			return len(b), nil
		}
		w.t.Log(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
}

// waitFile waits for a file an SDK worker creates.
func waitFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		require.True(t, time.Now().Before(deadline), "%s never appeared", path)
		time.Sleep(10 * time.Millisecond)
	}
}

func callHold(t *testing.T, p *grpcqueue.Plugin, i int, hold bool) <-chan callResult {
	t.Helper()
	c, err := p.Component("/hold")
	require.NoError(t, err)
	ch := make(chan callResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		res, err := c.Execute(ctx, &executor.Request{RunID: uuid.NewString(), StepID: "s", Input: value.MustParse(fmt.Sprintf(`{"i": %d, "hold": %v}`, i, hold)), Attempt: 1})
		r := callResult{value: res.Value, err: err}
		if res.Err != nil {
			r.failed = res.Err
		}
		ch <- r
	}()
	return ch
}

func pidOf(t *testing.T, v value.Value) int {
	t.Helper()
	pid, ok := v.(*value.Object).Get("pid")
	require.True(t, ok, value.String(v))
	n, err := pid.(value.Number).Int64()
	require.NoError(t, err)
	return int(n)
}

// Two SDK NATS workers started apart share the plugin's stream and
// consumer and complete over TCP to the plugin's `listen` address: both
// get tasks; one killed mid-batch leaves its tasks to fail by heartbeat
// (unavailable, naming the task) while the other finishes the rest.
func TestNATSRemoteWorkers(t *testing.T) {
	t.Parallel()
	p, url := startListeningPlugin(t, "", "", grpcqueue.Options{HeartbeatTimeout: 2 * time.Second})
	require.False(t, strings.HasPrefix(p.Addr(), "unix:"), p.Addr())
	require.True(t, strings.HasPrefix(p.Addr(), "127.0.0.1:"), p.Addr())
	require.NotEqual(t, "127.0.0.1:0", p.Addr(), "the bound port is advertised")
	hold := t.TempDir()
	env := []string{"GRPC13_HOLD_DIR=" + hold, "STEPFLOW_MAX_CONCURRENT=2"}
	a := startPyWorker(t, url, p.Addr(), env...)
	b := startPyWorker(t, url, p.Addr(), env...)

	// Four held items, two slots per worker: each worker holds two.
	var held []<-chan callResult
	for i := range 4 {
		held = append(held, callHold(t, p, i, true))
	}
	for i := range 4 {
		waitFile(t, filepath.Join(hold, fmt.Sprintf("started-%d", i)))
	}
	a.kill()
	require.NoError(t, os.WriteFile(filepath.Join(hold, "release"), nil, 0o644))
	var lost, done int
	for _, ch := range held {
		r := wait(t, ch)
		if r.err != nil {
			var te *grpcqueue.TaskError
			require.ErrorAs(t, r.err, &te)
			require.ErrorIs(t, r.err, grpcqueue.ErrHeartbeatTimeout)
			require.ErrorIs(t, r.err, executor.ErrUnavailable)
			require.Contains(t, r.err.Error(), `plugin "py": task `+te.TaskID+` (component /hold, queue "PY_TASKS")`)
			lost++
			continue
		}
		require.NoError(t, r.failed)
		require.Equal(t, b.cmd.Process.Pid, pidOf(t, r.value))
		done++
	}
	require.Equal(t, 2, lost, "the killed worker held two items")
	require.Equal(t, 2, done, "the other worker finished its two")

	// The rest of the batch runs on the surviving worker.
	var rest []<-chan callResult
	for i := 4; i < 10; i++ {
		rest = append(rest, callHold(t, p, i, false))
	}
	for _, ch := range rest {
		r := wait(t, ch)
		require.NoError(t, r.err)
		require.NoError(t, r.failed)
		require.Equal(t, b.cmd.Process.Pid, pidOf(t, r.value))
	}

	// Blobs travel over TCP too (STEPFLOW_BLOB_URL is the endpoint).
	c, err := p.Component("/blobs")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	res, err := c.Execute(ctx, &executor.Request{StepID: "s", Input: value.MustParse(`{"data": {"k": 1}}`), Attempt: 1})
	require.NoError(t, err)
	require.Nil(t, res.Err)
	back, _ := res.Value.(*value.Object).Get("back")
	require.Equal(t, `{"k":1}`, value.String(back))
}

// The TCP endpoint answers no one it should not: completions and
// heartbeats of tasks it never assigned (a forged or stale
// orchestrator_service_url) are NOT_FOUND naming the task, PullTasks is
// not served there, and nested runs need a task of their run in flight.
func TestNATSRemoteRefusals(t *testing.T) {
	t.Parallel()
	p, _ := startListeningPlugin(t, "", "", grpcqueue.Options{})
	conn, err := grpc.NewClient(p.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer func() { require.NoError(t, conn.Close()) }()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	orch := tasksv1.NewOrchestratorServiceClient(conn)

	id := uuid.NewString()
	_, err = orch.CompleteTask(ctx, &tasksv1.CompleteTaskRequest{TaskId: id,
		Result: &tasksv1.CompleteTaskRequest_Response{Response: &tasksv1.ComponentExecuteResponse{}}})
	require.Equal(t, codes.NotFound, status.Code(err), "%v", err)
	require.Contains(t, status.Convert(err).Message(), fmt.Sprintf(`plugin "py": CompleteTask for task %s, which this runtime never assigned; ignored`, id))
	_, err = orch.TaskHeartbeat(ctx, &tasksv1.TaskHeartbeatRequest{TaskId: id, WorkerId: "w"})
	require.Equal(t, codes.NotFound, status.Code(err), "%v", err)
	require.Contains(t, status.Convert(err).Message(), id)

	run := uuid.NewString()
	_, err = orch.SubmitRun(ctx, &tasksv1.OrchestratorSubmitRunRequest{RootRunId: &run,
		RunRequest: &tasksv1.CreateRunRequest{FlowId: "f"}})
	require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
	require.Contains(t, status.Convert(err).Message(), fmt.Sprintf(`plugin "py": SubmitRun with root_run_id %q: no task of that run is in flight here; refused`, run))
	_, err = orch.GetRun(ctx, &tasksv1.OrchestratorGetRunRequest{RunId: run})
	require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)

	stream, err := tasksv1.NewTasksServiceClient(conn).PullTasks(ctx, &tasksv1.PullTasksRequest{QueueName: "PY_TASKS", WorkerId: "w"})
	require.NoError(t, err)
	_, err = stream.Recv()
	require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
}

// Peers outside `allowFrom` are disconnected before any call.
func TestNATSRemoteAllowFrom(t *testing.T) {
	t.Parallel()
	p, _ := startListeningPlugin(t, "", "    allowFrom: [10.0.0.0/8]\n", grpcqueue.Options{})
	conn, err := grpc.NewClient(p.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer func() { require.NoError(t, conn.Close()) }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = tasksv1.NewOrchestratorServiceClient(conn).CompleteTask(ctx, &tasksv1.CompleteTaskRequest{TaskId: uuid.NewString()})
	require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
}
