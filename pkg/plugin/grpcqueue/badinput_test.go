package grpcqueue_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/plugin/grpcqueue"
	"github.com/stepflow-go/stepflow/pkg/plugin/pluginapi"
	"github.com/stepflow-go/stepflow/pkg/value"
	tasksv1 "github.com/stepflow-go/stepflow/proto/tasksv1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testTimeout = 30 * time.Second

// newPlugin starts a grpc plugin named "py" from the YAML of its entry
// (after `type: grpc`).
func newPlugin(t *testing.T, entry string, opts grpcqueue.Options) *grpcqueue.Plugin {
	t.Helper()
	cfg, err := config.Parse([]byte("plugins:\n  py:\n    type: grpc\n"+entry+"routes: {}\n"), "cfg.yml")
	require.NoError(t, err)
	p, err := grpcqueue.New(cfg.Plugin("py"), pluginapi.Host{Blobs: blob.NewMemory(), Logger: zaptest.NewLogger(t), WorkingDir: t.TempDir()}, opts)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	require.NoError(t, p.Start(ctx))
	t.Cleanup(func() { require.NoError(t, p.Close()) })
	return p
}

// rawWorker is a hand-driven worker: the test decides what it answers,
// to produce what a well-behaved SDK never sends.
type rawWorker struct {
	t      *testing.T
	conn   *grpc.ClientConn
	orch   tasksv1.OrchestratorServiceClient
	cancel context.CancelFunc
	tasks  chan *tasksv1.TaskAssignment
	done   chan struct{}
}

// connect opens a PullTasks stream on the queue; it answers the
// ListComponents task with one component, "echo" at /echo, and hands the
// other tasks to the test.
func connect(t *testing.T, p *grpcqueue.Plugin, queue, workerID string) *rawWorker {
	t.Helper()
	conn, err := grpc.NewClient(p.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	w := &rawWorker{t: t, conn: conn, orch: tasksv1.NewOrchestratorServiceClient(conn), cancel: cancel,
		tasks: make(chan *tasksv1.TaskAssignment, 16), done: make(chan struct{})}
	stream, err := tasksv1.NewTasksServiceClient(conn).PullTasks(ctx, &tasksv1.PullTasksRequest{QueueName: queue, WorkerId: workerID})
	require.NoError(t, err)
	go func() {
		defer close(w.done)
		for {
			a, err := stream.Recv()
			if err != nil {
				return
			}
			if a.GetListComponents() != nil {
				_, err := w.orch.CompleteTask(ctx, &tasksv1.CompleteTaskRequest{TaskId: a.GetTaskId(), Result: &tasksv1.CompleteTaskRequest_ListComponents{
					ListComponents: &tasksv1.ListComponentsResult{Components: []*tasksv1.ComponentInfo{{ComponentId: "echo_fn", Path: "/echo"}}}}})
				if err != nil && ctx.Err() == nil {
					t.Errorf("complete list_components: %v", err)
				}
				continue
			}
			w.tasks <- a
		}
	}()
	t.Cleanup(w.close)
	return w
}

// close ends the stream (as a dying worker's does).
func (w *rawWorker) close() {
	w.cancel()
	<-w.done
	_ = w.conn.Close()
}

func (w *rawWorker) next() *tasksv1.TaskAssignment {
	w.t.Helper()
	select {
	case a := <-w.tasks:
		return a
	case <-time.After(testTimeout):
		w.t.Fatal("no task arrived")
		return nil
	}
}

func (w *rawWorker) beat(id, workerID string) (*tasksv1.TaskHeartbeatResponse, error) {
	return w.orch.TaskHeartbeat(context.Background(), &tasksv1.TaskHeartbeatRequest{TaskId: id, WorkerId: workerID})
}

func (w *rawWorker) complete(id string, out *structpb.Value) error {
	_, err := w.orch.CompleteTask(context.Background(), &tasksv1.CompleteTaskRequest{TaskId: id,
		Result: &tasksv1.CompleteTaskRequest_Response{Response: &tasksv1.ComponentExecuteResponse{Output: out}}})
	return err
}

// call executes /echo in the background.
func call(t *testing.T, p *grpcqueue.Plugin, input string) <-chan callResult {
	t.Helper()
	c, err := p.Component("/echo")
	require.NoError(t, err)
	ch := make(chan callResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		res, err := c.Execute(ctx, &executor.Request{RunID: "0190a000-0000-7000-8000-000000000001", StepID: "s", Input: value.MustParse(input), Attempt: 1})
		ch <- callResult{res.Value, res.Err, err}
	}()
	return ch
}

type callResult struct {
	value  value.Value
	failed error
	err    error
}

func wait(t *testing.T, ch <-chan callResult) callResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(testTimeout):
		t.Fatal("the call did not return")
		return callResult{}
	}
}

func TestCompletion(t *testing.T) {
	t.Parallel()
	p := newPlugin(t, "", grpcqueue.Options{})
	w := connect(t, p, "py", "w1")
	ch := call(t, p, `{"a": [1, 2.5, "x", null, true]}`)
	a := w.next()
	require.Equal(t, "echo_fn", a.GetExecute().GetComponentId(), "the path /echo maps to the listed component id")
	require.Equal(t, "0190a000-0000-7000-8000-000000000001", a.GetContext().GetRootRunId())
	require.Equal(t, p.Addr(), a.GetContext().GetOrchestratorServiceUrl())
	res, err := w.beat(a.GetTaskId(), "w1")
	require.NoError(t, err)
	require.Equal(t, tasksv1.TaskStatus_TASK_STATUS_IN_PROGRESS, res.GetStatus())
	require.NoError(t, w.complete(a.GetTaskId(), a.GetExecute().GetInput()))
	r := wait(t, ch)
	require.NoError(t, r.err)
	require.Equal(t, `{"a":[1,2.5,"x",null,true]}`, value.String(r.value))

	// A second completion of the same task is refused, naming plugin and
	// task, and counts for nothing.
	err = w.complete(a.GetTaskId(), structpb.NewStringValue("again"))
	require.Equal(t, codes.NotFound, status.Code(err))
	require.Contains(t, err.Error(), `plugin "py": CompleteTask for task `+a.GetTaskId()+`, which already finished (completed); ignored`)

	// A task this runtime never assigned.
	err = w.complete("5f0c7a52-0000-4000-8000-000000000000", structpb.NewNullValue())
	require.Equal(t, codes.NotFound, status.Code(err))
	require.Contains(t, err.Error(), `plugin "py": CompleteTask for task 5f0c7a52-0000-4000-8000-000000000000, which this runtime never assigned; ignored`)
	_, err = w.beat("5f0c7a52-0000-4000-8000-000000000000", "w1")
	require.Equal(t, codes.NotFound, status.Code(err))
}

func TestSecondWorkerCannotClaim(t *testing.T) {
	t.Parallel()
	p := newPlugin(t, "", grpcqueue.Options{})
	w := connect(t, p, "py", "w1")
	ch := call(t, p, `1`)
	a := w.next()
	_, err := w.beat(a.GetTaskId(), "w1")
	require.NoError(t, err)
	res, err := w.beat(a.GetTaskId(), "intruder")
	require.NoError(t, err)
	require.True(t, res.GetShouldAbort())
	require.Equal(t, tasksv1.TaskStatus_TASK_STATUS_ALREADY_CLAIMED, res.GetStatus())
	require.NoError(t, w.complete(a.GetTaskId(), structpb.NewNumberValue(1)))
	r := wait(t, ch)
	require.NoError(t, r.err)
	require.Equal(t, value.Int(1), r.value)
}

func TestComponentErrorIsAFailedResult(t *testing.T) {
	t.Parallel()
	p := newPlugin(t, "", grpcqueue.Options{})
	w := connect(t, p, "py", "w1")
	ch := call(t, p, `{}`)
	a := w.next()
	_, err := w.beat(a.GetTaskId(), "w1")
	require.NoError(t, err)
	_, err = w.orch.CompleteTask(context.Background(), &tasksv1.CompleteTaskRequest{TaskId: a.GetTaskId(),
		Result: &tasksv1.CompleteTaskRequest_Error{Error: &tasksv1.TaskError{Code: tasksv1.TaskErrorCode_TASK_ERROR_CODE_INVALID_INPUT, Message: "no"}}})
	require.NoError(t, err)
	r := wait(t, ch)
	require.NoError(t, r.err)
	require.EqualError(t, r.failed, "no (code 500)")
}

func TestHeartbeatsStop(t *testing.T) {
	t.Parallel()
	p := newPlugin(t, "", grpcqueue.Options{HeartbeatTimeout: 300 * time.Millisecond})
	w := connect(t, p, "py", "w1")
	ch := call(t, p, `{}`)
	a := w.next()
	_, err := w.beat(a.GetTaskId(), "w1")
	require.NoError(t, err)
	r := wait(t, ch)
	var te *grpcqueue.TaskError
	require.ErrorAs(t, r.err, &te)
	require.Equal(t, a.GetTaskId(), te.TaskID)
	require.ErrorIs(t, r.err, grpcqueue.ErrHeartbeatTimeout)
	require.ErrorIs(t, r.err, executor.ErrUnavailable)
	require.Contains(t, r.err.Error(), `plugin "py": task `+a.GetTaskId()+` (component /echo, queue "py"): the worker stopped heartbeating the task`)
	// Its late completion is refused.
	err = w.complete(a.GetTaskId(), structpb.NewNullValue())
	require.Equal(t, codes.NotFound, status.Code(err))
	require.Contains(t, err.Error(), "already finished (failed: the worker stopped heartbeating")
}

func TestWorkerGoesAway(t *testing.T) {
	t.Parallel()
	p := newPlugin(t, "", grpcqueue.Options{})
	w := connect(t, p, "py", "w1")
	ch := call(t, p, `{}`)
	a := w.next()
	_, err := w.beat(a.GetTaskId(), "w1")
	require.NoError(t, err)
	w.close()
	r := wait(t, ch)
	require.ErrorIs(t, r.err, grpcqueue.ErrWorkerGone)
	require.ErrorIs(t, r.err, executor.ErrUnavailable)
	require.Contains(t, r.err.Error(), `plugin "py": task `+a.GetTaskId())
}

func TestWrongKindOfCompletion(t *testing.T) {
	t.Parallel()
	p := newPlugin(t, "", grpcqueue.Options{})
	w := connect(t, p, "py", "w1")
	ch := call(t, p, `{}`)
	a := w.next()
	_, err := w.orch.CompleteTask(context.Background(), &tasksv1.CompleteTaskRequest{TaskId: a.GetTaskId(),
		Result: &tasksv1.CompleteTaskRequest_ListComponents{ListComponents: &tasksv1.ListComponentsResult{}}})
	require.Equal(t, codes.FailedPrecondition, status.Code(err))
	r := wait(t, ch)
	require.ErrorIs(t, r.err, grpcqueue.ErrProtocol)
	require.Contains(t, r.err.Error(), "carries a component list")
}

// A worker that pulls but never claims: the task times out (queueTimeoutSecs)
// with an error naming plugin, queue and task.
func TestPulledButNeverClaimed(t *testing.T) {
	t.Parallel()
	p := newPlugin(t, "    queueTimeoutSecs: 1\n", grpcqueue.Options{})
	w := connect(t, p, "py", "lazy")
	ch := call(t, p, `{}`)
	a := w.next()
	r := wait(t, ch)
	require.ErrorIs(t, r.err, grpcqueue.ErrQueueTimeout)
	require.Contains(t, r.err.Error(), `plugin "py": task `+a.GetTaskId()+` (component /echo, queue "py"): no worker claimed the task in time (queueTimeoutSecs 1s: worker "lazy" received the task but never sent TaskHeartbeat)`)
}

// A launched worker that never pulls: the call fails after
// queueTimeoutSecs, naming the plugin and the task; nothing hangs.
func TestWorkerNeverPulls(t *testing.T) {
	t.Parallel()
	p := newPlugin(t, "    command: sleep\n    args: [\"60\"]\n    queueTimeoutSecs: 1\n", grpcqueue.Options{ConnectTimeout: 100 * time.Millisecond, GracePeriod: time.Second})
	r := wait(t, call(t, p, `{}`))
	var te *grpcqueue.TaskError
	require.ErrorAs(t, r.err, &te)
	require.ErrorIs(t, r.err, grpcqueue.ErrQueueTimeout)
	require.Contains(t, r.err.Error(), `component /echo: list the worker's components: plugin "py": task `+te.TaskID+` (component list_components, queue "py"): no worker claimed the task in time (queueTimeoutSecs 1s: no worker is connected to the queue)`)
	require.Error(t, p.Health())
}

// A worker that exits before pulling fails Start with its output.
func TestWorkerExitsAtStart(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse([]byte("plugins:\n  py:\n    type: grpc\n    command: sh\n    args: [-c, \"echo no module named stepflow_py >&2; exit 3\"]\nroutes: {}\n"), "cfg.yml")
	require.NoError(t, err)
	p, err := grpcqueue.New(cfg.Plugin("py"), pluginapi.Host{Blobs: blob.NewMemory(), Logger: zaptest.NewLogger(t), WorkingDir: t.TempDir()}, grpcqueue.Options{})
	require.NoError(t, err)
	err = p.Start(context.Background())
	require.ErrorContains(t, err, "worker exited before pulling tasks: worker process")
	require.ErrorContains(t, err, "exit status 3; last output: no module named stepflow_py")
	require.NoError(t, p.Close())
}

// Route params send a call to another queue.
func TestQueueNameParam(t *testing.T) {
	t.Parallel()
	p := newPlugin(t, "", grpcqueue.Options{})
	gpu := connect(t, p, "gpu", "g1")
	c, err := p.ComponentWithParams("/echo", map[string]string{"queueName": "gpu"})
	require.NoError(t, err)
	ch := make(chan error, 1)
	go func() {
		_, err := c.Execute(context.Background(), &executor.Request{Input: value.MustParse(`7`)})
		ch <- err
	}()
	a := gpu.next()
	_, err = gpu.beat(a.GetTaskId(), "g1")
	require.NoError(t, err)
	require.NoError(t, gpu.complete(a.GetTaskId(), structpb.NewNumberValue(7)))
	select {
	case err := <-ch:
		require.NoError(t, err)
	case <-time.After(testTimeout):
		t.Fatal("no answer")
	}
}

// timeoutMs bounds the whole call; the abandoned task's heartbeats and
// completion are refused afterwards.
func TestCallTimeout(t *testing.T) {
	t.Parallel()
	p := newPlugin(t, "    timeoutMs: 300\n", grpcqueue.Options{})
	w := connect(t, p, "py", "w1")
	ch := call(t, p, `{}`)
	a := w.next()
	_, err := w.beat(a.GetTaskId(), "w1")
	require.NoError(t, err)
	r := wait(t, ch)
	require.ErrorIs(t, r.err, grpcqueue.ErrCallTimeout)
	require.NotErrorIs(t, r.err, executor.ErrUnavailable)
	require.Contains(t, r.err.Error(), `plugin "py": task `+a.GetTaskId()+` (component /echo, queue "py"): the component call exceeded timeoutMs (300ms)`)
	_, err = w.beat(a.GetTaskId(), "w1")
	require.Equal(t, codes.NotFound, status.Code(err))
}

// A path the workers did not register fails its step (not found), after
// one fresh listing.
func TestUnknownComponent(t *testing.T) {
	t.Parallel()
	p := newPlugin(t, "", grpcqueue.Options{})
	connect(t, p, "py", "w1")
	c, err := p.Component("/nope")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	res, err := c.Execute(ctx, &executor.Request{StepID: "s", Input: value.MustParse(`1`)})
	require.NoError(t, err)
	require.EqualError(t, res.Err, `component /nope not found on the workers of plugin "py" (code 500)`)
	infos, err := p.Components(ctx)
	require.NoError(t, err)
	require.Len(t, infos, 1)
	require.Equal(t, "/echo", infos[0].Component)
}

// The services listen on a Unix socket in a directory only this user can
// enter, removed by Close.
func TestPrivateSocket(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse([]byte("plugins:\n  py:\n    type: grpc\nroutes: {}\n"), "cfg.yml")
	require.NoError(t, err)
	p, err := grpcqueue.New(cfg.Plugin("py"), pluginapi.Host{Blobs: blob.NewMemory(), Logger: zaptest.NewLogger(t), WorkingDir: t.TempDir()}, grpcqueue.Options{})
	require.NoError(t, err)
	require.NoError(t, p.Start(context.Background()))
	sock, ok := strings.CutPrefix(p.Addr(), "unix:")
	require.True(t, ok, p.Addr())
	fi, err := os.Stat(filepath.Dir(sock))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), fi.Mode().Perm())
	require.NoError(t, p.Close())
	_, err = os.Stat(filepath.Dir(sock))
	require.ErrorIs(t, err, os.ErrNotExist)
}

// executionTimeoutSecs bounds a claimed task, heartbeats or not.
func TestExecutionTimeout(t *testing.T) {
	t.Parallel()
	p := newPlugin(t, "    executionTimeoutSecs: 1\n", grpcqueue.Options{})
	w := connect(t, p, "py", "w1")
	ch := call(t, p, `{}`)
	a := w.next()
	_, err := w.beat(a.GetTaskId(), "w1")
	require.NoError(t, err)
	stop := make(chan struct{})
	beats := make(chan struct{})
	go func() { // a worker that heartbeats forever
		defer close(beats)
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				if _, err := w.beat(a.GetTaskId(), "w1"); err != nil {
					return
				}
			}
		}
	}()
	r := wait(t, ch)
	close(stop)
	<-beats
	require.ErrorIs(t, r.err, grpcqueue.ErrExecutionTimeout)
	require.Contains(t, r.err.Error(), `plugin "py": task `+a.GetTaskId()+` (component /echo, queue "py"): the task exceeded executionTimeoutSecs (1s)`)
}
