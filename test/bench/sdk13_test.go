package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	tasksv1 "github.com/stepflow-go/stepflow/proto/tasksv1"
)

// The stepflow-py 0.13 paths of BenchmarkComponentEcho: the SDK's own
// worker (`python -m stepflow_py.worker.main`, whose server registers the
// `echo` component "for benchmarking worker overhead"), over gRPC pull
// and over NATS JetStream, each driven by `stepflow run` and by the
// smallest orchestrator of the same protocol (miniOrch).

// sdk13Env is the worker environment both drivers give the SDK: as many
// concurrent tasks as the batch keeps in flight (the SDK's default is
// 4), and warnings only (at INFO it logs four lines per task).
func sdk13Env() []string {
	return []string{"STEPFLOW_MAX_CONCURRENT=" + strconv.Itoa(echoConcurrency), "STEPFLOW_LOG_LEVEL=WARNING", "PYTHONUNBUFFERED=1"}
}

// sdk13PluginEnv is sdk13Env as a plugin's `env:` block.
func sdk13PluginEnv() string {
	return fmt.Sprintf("    env:\n      STEPFLOW_MAX_CONCURRENT: %q\n      STEPFLOW_LOG_LEVEL: WARNING\n      PYTHONUNBUFFERED: \"1\"\n", strconv.Itoa(echoConcurrency))
}

// miniOrch is the smallest orchestrator a 0.13 worker works with: tasks
// handed out on PullTasks (or published elsewhere), every heartbeat
// answered "in progress", every completion closing its task's channel.
type miniOrch struct {
	tasksv1.UnimplementedTasksServiceServer
	tasksv1.UnimplementedOrchestratorServiceServer

	addr   string // unix:<socket>
	assign chan *tasksv1.TaskAssignment

	mu      sync.Mutex
	waiting map[string]chan *tasksv1.CompleteTaskRequest
}

func (m *miniOrch) PullTasks(_ *tasksv1.PullTasksRequest, stream grpc.ServerStreamingServer[tasksv1.TaskAssignment]) error {
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case t := <-m.assign:
			if err := stream.Send(t); err != nil {
				return err
			}
		}
	}
}

func (m *miniOrch) TaskHeartbeat(context.Context, *tasksv1.TaskHeartbeatRequest) (*tasksv1.TaskHeartbeatResponse, error) {
	return &tasksv1.TaskHeartbeatResponse{Status: tasksv1.TaskStatus_TASK_STATUS_IN_PROGRESS}, nil
}

func (m *miniOrch) CompleteTask(_ context.Context, req *tasksv1.CompleteTaskRequest) (*tasksv1.CompleteTaskResponse, error) {
	m.mu.Lock()
	ch := m.waiting[req.GetTaskId()]
	delete(m.waiting, req.GetTaskId())
	m.mu.Unlock()
	if ch != nil {
		ch <- req
	}
	return &tasksv1.CompleteTaskResponse{}, nil
}

// startMiniOrch serves miniOrch on a Unix socket in dir, as the plugin
// serves its own.
func startMiniOrch(b *testing.B, dir string) *miniOrch {
	b.Helper()
	sock := filepath.Join(dir, "mini.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	m := &miniOrch{addr: "unix:" + sock, assign: make(chan *tasksv1.TaskAssignment), waiting: map[string]chan *tasksv1.CompleteTaskRequest{}}
	g := grpc.NewServer()
	tasksv1.RegisterTasksServiceServer(g, m)
	tasksv1.RegisterOrchestratorServiceServer(g, m)
	done := make(chan struct{})
	go func() { defer close(done); _ = g.Serve(l) }()
	b.Cleanup(func() { g.Stop(); <-done })
	return m
}

// drive keeps echoConcurrency echo tasks in flight until n completed;
// submit hands one to the worker. It fails when the worker exits.
func (m *miniOrch) drive(b *testing.B, n int, exited <-chan struct{}, submit func(*tasksv1.TaskAssignment) error) {
	b.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, echoConcurrency)
	for range echoConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				in, err := structpb.NewValue(map[string]any{"i": i, "text": "item " + strconv.Itoa(i)})
				if err != nil {
					errs <- err
					return
				}
				id := strconv.Itoa(i)
				ch := make(chan *tasksv1.CompleteTaskRequest, 1)
				m.mu.Lock()
				m.waiting[id] = ch
				m.mu.Unlock()
				if err := submit(&tasksv1.TaskAssignment{
					TaskId: id,
					Task: &tasksv1.TaskAssignment_Execute{Execute: &tasksv1.ComponentExecuteRequest{
						ComponentId: "echo", Input: in, Attempt: 1, Observability: &tasksv1.ObservabilityContext{}}},
					Context:               &tasksv1.TaskContext{OrchestratorServiceUrl: m.addr},
					HeartbeatIntervalSecs: 1,
				}); err != nil {
					errs <- fmt.Errorf("submit task %s: %w", id, err)
					return
				}
				select {
				case res := <-ch:
					if res.GetResponse() == nil {
						errs <- fmt.Errorf("task %s: %v", id, res.GetError())
						return
					}
				case <-exited:
					errs <- errors.New("the worker exited")
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// startWorker13 launches the SDK's worker with env (after PATH and HOME);
// the returned channel is closed when it exits. stop kills it and
// reports its CPU per item.
func startWorker13(b *testing.B, python string, env []string, n int) (exited <-chan struct{}, stop func()) {
	b.Helper()
	cmd := exec.Command(python, "-m", "stepflow_py.worker.main")
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, append(sdk13Env(), env...)...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	ch := make(chan struct{})
	go func() { _ = cmd.Wait(); close(ch) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			_ = cmd.Process.Kill()
			<-ch
			reportCPU(b, "direct-server-cpu-ms/item", cmd.ProcessState, n)
		})
	}
	b.Cleanup(stop)
	return ch, stop
}

// directGRPC13: the worker pulls from miniOrch's PullTasks stream; the
// time includes the worker's start-up, as stepflow's does.
func directGRPC13(b *testing.B, python string, n int) time.Duration {
	b.Helper()
	start := time.Now()
	defer reportClientCPU(b, selfCPU(b), n)
	m := startMiniOrch(b, b.TempDir())
	exited, stop := startWorker13(b, python, []string{"STEPFLOW_TRANSPORT=grpc", "STEPFLOW_TASKS_URL=" + m.addr, "STEPFLOW_QUEUE_NAME=python"}, n)
	defer stop()
	m.drive(b, n, exited, func(t *tasksv1.TaskAssignment) error {
		select {
		case m.assign <- t:
			return nil
		case <-exited:
			return errors.New("the worker exited")
		}
	})
	return time.Since(start)
}

// startNATS runs a JetStream-enabled NATS server in this process (both
// drivers of the NATS path use it, each with a stream of its own).
func startNATS(b *testing.B) string {
	b.Helper()
	s, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: b.TempDir(), NoSigs: true})
	if err != nil {
		b.Fatal(err)
	}
	s.Start()
	b.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	if !s.ReadyForConnections(30 * time.Second) {
		b.Fatal("nats server did not start")
	}
	return s.ClientURL()
}

// directNATS13: tasks published to a WorkQueue stream's `<stream>.tasks`,
// which the worker's durable consumer fetches; heartbeats and
// completions come back to miniOrch over gRPC, as with the plugin.
func directNATS13(b *testing.B, python, natsURL string, n int) time.Duration {
	b.Helper()
	start := time.Now()
	defer reportClientCPU(b, selfCPU(b), n)
	nc, err := nats.Connect(natsURL)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	const stream = "BASELINE_TASKS"
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: stream, Subjects: []string{stream + ".tasks"}, Retention: jetstream.WorkQueuePolicy}); err != nil {
		b.Fatal(err)
	}
	m := startMiniOrch(b, b.TempDir())
	exited, stop := startWorker13(b, python, []string{"STEPFLOW_TRANSPORT=nats", "STEPFLOW_NATS_URL=" + natsURL,
		"STEPFLOW_NATS_STREAM=" + stream, "STEPFLOW_NATS_CONSUMER=baseline", "STEPFLOW_TASKS_URL=" + m.addr}, n)
	defer stop()
	m.drive(b, n, exited, func(t *tasksv1.TaskAssignment) error {
		data, err := proto.Marshal(t)
		if err != nil {
			return err
		}
		_, err = js.Publish(ctx, stream+".tasks", data)
		return err
	})
	return time.Since(start)
}
