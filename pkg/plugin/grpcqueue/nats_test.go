package grpcqueue_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/plugin/grpcqueue"
	"github.com/stepflow-go/stepflow/pkg/plugin/pluginapi"
	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// sdkPython returns the stepflow-py 0.13 venv's python (`make venv`),
// failing the test when it is missing. Under -short the test skips: it
// runs a real SDK worker.
func sdkPython(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("short: runs a real stepflow-py 0.13 worker")
	}
	py, err := filepath.Abs("../../../.venv-sdk-grpc13/bin/python")
	require.NoError(t, err)
	if _, err := os.Stat(py); err != nil {
		t.Fatalf(".venv-sdk-grpc13 is missing: run `make venv` (%v)", err)
	}
	return py
}

// startNATS runs an in-process NATS server with JetStream.
func startNATS(t *testing.T) string {
	t.Helper()
	e := queue.NewEmbedded(queue.EmbeddedConfig{StoreDir: t.TempDir()})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	require.NoError(t, e.Start(ctx))
	t.Cleanup(e.Shutdown)
	return e.ClientURL()
}

// A `type: nats` plugin publishes tasks to a JetStream stream that an
// unmodified stepflow-py 0.13 NATS worker consumes; results, errors and
// blobs come back over the plugin's gRPC services.
func TestNATSWorker(t *testing.T) {
	t.Parallel()
	p := startNATSPlugin(t, nil, grpcqueue.Options{GracePeriod: 2 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	require.NoError(t, p.Health())

	exec := func(name, input string) (value.Value, error, error) {
		c, err := p.Component(name)
		require.NoError(t, err)
		res, err := c.Execute(ctx, &executor.Request{StepID: "s", Input: value.MustParse(input), Attempt: 1})
		if res.Err != nil {
			return nil, res.Err, err
		}
		return res.Value, nil, err
	}
	out, failed, err := exec("/echo13", `{"x": 1}`)
	require.NoError(t, err)
	require.NoError(t, failed)
	o := out.(*value.Object)
	echo, _ := o.Get("echo")
	require.Equal(t, `{"x":1}`, value.String(echo))

	_, failed, err = exec("/check", `{"i": 7, "fail": true}`)
	require.NoError(t, err)
	require.EqualError(t, failed, "item 7 is bad (code 500)")

	out, failed, err = exec("/blobs", `{"data": {"k": [1, 2]}}`)
	require.NoError(t, err)
	require.NoError(t, failed)
	back, _ := out.(*value.Object).Get("back")
	require.Equal(t, `{"k":[1,2]}`, value.String(back))

	infos, err := p.Components(ctx)
	require.NoError(t, err)
	require.NotEmpty(t, infos)
}

// startNATSPlugin starts NATS and a nats plugin running worker.py.
func startNATSPlugin(t *testing.T, env map[string]string, opts grpcqueue.Options) *grpcqueue.Plugin {
	t.Helper()
	py := sdkPython(t)
	url := startNATS(t)
	script, err := filepath.Abs("../../../test/integration/testdata/grpc13/worker.py")
	require.NoError(t, err)
	entry := fmt.Sprintf("plugins:\n  py:\n    type: nats\n    url: %q\n    stream: PY_TASKS\n    consumer: py-workers\n    command: %s\n    args: [%s]\n    queueTimeoutSecs: 20\n", url, py, script)
	if len(env) > 0 {
		entry += "    env:\n"
		for k, v := range env {
			entry += fmt.Sprintf("      %s: %q\n", k, v)
		}
	}
	cfg, err := config.Parse([]byte(entry+"routes: {}\n"), "cfg.yml")
	require.NoError(t, err)
	p, err := grpcqueue.New(cfg.Plugin("py"), pluginapi.Host{Blobs: blob.NewMemory(), Logger: zaptest.NewLogger(t), WorkingDir: t.TempDir()}, opts)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	require.NoError(t, p.Start(ctx))
	t.Cleanup(func() { require.NoError(t, p.Close()) })
	return p
}

// A NATS worker that dies mid-task: its heartbeats stop, the call fails
// as unavailable naming plugin and task, the worker is restarted and
// the next call runs there.
func TestNATSWorkerDies(t *testing.T) {
	t.Parallel()
	marker := filepath.Join(t.TempDir(), "crashed")
	p := startNATSPlugin(t, map[string]string{"GRPC13_CRASH_MARKER": marker},
		grpcqueue.Options{GracePeriod: 2 * time.Second, HeartbeatTimeout: 2 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := p.Component("/crash")
	require.NoError(t, err)
	_, err = c.Execute(ctx, &executor.Request{StepID: "s", Input: value.MustParse(`{"i": 1, "crash": true}`), Attempt: 1})
	var te *grpcqueue.TaskError
	require.ErrorAs(t, err, &te)
	require.ErrorIs(t, err, grpcqueue.ErrHeartbeatTimeout)
	require.ErrorIs(t, err, executor.ErrUnavailable)
	require.Contains(t, err.Error(), `plugin "py": task `+te.TaskID+` (component /crash, queue "PY_TASKS")`)
	require.FileExists(t, marker)
	res, err := c.Execute(ctx, &executor.Request{StepID: "s", Input: value.MustParse(`{"i": 2, "crash": true}`), Attempt: 1})
	require.NoError(t, err)
	i, _ := res.Value.(*value.Object).Get("i")
	require.Equal(t, value.Int(2), i)
	require.Equal(t, 2, p.Starts())
}

// A nats plugin whose server is down fails Start with the URL.
func TestNATSUnreachable(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse([]byte("plugins:\n  py:\n    type: nats\n    url: \"nats://127.0.0.1:1\"\n    stream: S\nroutes: {}\n"), "cfg.yml")
	require.NoError(t, err)
	p, err := grpcqueue.New(cfg.Plugin("py"), pluginapi.Host{Blobs: blob.NewMemory(), Logger: zaptest.NewLogger(t), WorkingDir: t.TempDir()}, grpcqueue.Options{})
	require.NoError(t, err)
	err = p.Start(context.Background())
	require.ErrorContains(t, err, "connect to NATS at nats://127.0.0.1:1")
	require.NoError(t, p.Close())
}
