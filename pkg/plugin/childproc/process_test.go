package childproc_test

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/stepflow-go/stepflow/pkg/plugin/childproc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestResolveCommand(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "bin", "server")
	require.NoError(t, os.MkdirAll(filepath.Dir(script), 0o755))
	require.NoError(t, os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "plain"), []byte(""), 0o644))

	got, err := childproc.ResolveCommand("bin/server", dir)
	require.NoError(t, err)
	require.Equal(t, script, got)
	got, err = childproc.ResolveCommand(script, "/elsewhere")
	require.NoError(t, err)
	require.Equal(t, script, got)

	sh, err := childproc.ResolveCommand("sh", dir) // on PATH
	require.NoError(t, err)
	require.True(t, filepath.IsAbs(sh), sh)

	_, err = childproc.ResolveCommand("./plain", dir)
	require.ErrorIs(t, err, fs.ErrPermission)
	_, err = childproc.ResolveCommand("./bin", dir)
	require.ErrorContains(t, err, "not a regular file")
	_, err = childproc.ResolveCommand("./missing", dir)
	require.ErrorIs(t, err, fs.ErrNotExist)
	_, err = childproc.ResolveCommand("no-such-command-anywhere", dir)
	require.ErrorIs(t, err, exec.ErrNotFound)
	_, err = childproc.ResolveCommand("", dir)
	require.ErrorIs(t, err, childproc.ErrEmptyCommand)
}

// start starts `sh -c script` named "test" with a logger observed at
// info level.
func start(t *testing.T, spec childproc.Spec, script string) (*childproc.Process, childproc.Pipes, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zap.InfoLevel)
	spec.Command, spec.Args, spec.Dir, spec.Name, spec.Log = "sh", []string{"-c", script}, t.TempDir(), "test", zap.New(core)
	if spec.Stderr.Msg == "" {
		spec.Stderr.Msg = "test stderr"
	}
	pr, ps, err := childproc.Start(spec)
	require.NoError(t, err)
	t.Cleanup(func() { pr.Stop(0) })
	return pr, ps, logs
}

// readLine reads one line of r.
func readLine(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	line, err := r.ReadString('\n')
	require.NoError(t, err)
	return strings.TrimSuffix(line, "\n")
}

// signalled returns the signal that ended the process, or 0.
func signalled(t *testing.T, pr *childproc.Process) syscall.Signal {
	t.Helper()
	var ee *exec.ExitError
	require.ErrorAs(t, pr.Err(), &ee)
	ws := ee.Sys().(syscall.WaitStatus)
	if !ws.Signaled() {
		return 0
	}
	return ws.Signal()
}

func lines(logs *observer.ObservedLogs, msg string) []string {
	var out []string
	for _, e := range logs.FilterMessage(msg).All() {
		out = append(out, e.ContextMap()["line"].(string))
	}
	return out
}

// TestDrainTail: both streams are logged line by line with the pid; the
// tail keeps the last TailLines lines of the tailed streams; First takes
// the lines it wants from the log.
func TestDrainTail(t *testing.T) {
	t.Parallel()
	first := make(chan string, 1)
	pr, ps, logs := start(t, childproc.Spec{
		Stdout: &childproc.Drain{Msg: "test stdout", First: func(line string) bool {
			if strings.HasPrefix(line, "port") {
				first <- line
				return true
			}
			return false
		}},
		Stderr: childproc.Drain{Msg: "test stderr", Tail: true},
	}, `echo out1; echo port 1; echo port 2; i=1; while [ $i -le 25 ]; do echo err$i >&2; i=$((i+1)); done`)
	require.Nil(t, ps.Stdout)
	require.Nil(t, ps.Stdin)
	<-pr.Exited()
	require.NoError(t, pr.Err())
	pr.CloseReadEnds(time.Minute) // the drains see EOF at once
	require.Equal(t, "port 1", <-first)

	var want []string
	for i := 26 - childproc.TailLines; i <= 25; i++ {
		want = append(want, fmt.Sprintf("err%d", i))
	}
	require.Equal(t, want, pr.Tail())
	require.Len(t, lines(logs, "test stderr"), 25)
	require.Equal(t, []string{"out1", "port 2"}, lines(logs, "test stdout"))
	for _, e := range logs.All() {
		require.Equal(t, int64(pr.Pid()), e.ContextMap()["pid"])
	}
}

// TestDrainTailBothStreams: a grpc worker's tail holds both streams.
func TestDrainTailBothStreams(t *testing.T) {
	t.Parallel()
	pr, _, _ := start(t, childproc.Spec{
		Stdout: &childproc.Drain{Msg: "test stdout", Tail: true},
		Stderr: childproc.Drain{Msg: "test stderr", Tail: true},
	}, `echo out; echo err >&2; exit 3`)
	<-pr.Exited()
	require.ErrorContains(t, pr.Err(), "exit status 3")
	pr.CloseReadEnds(time.Minute)
	require.ElementsMatch(t, []string{"out", "err"}, pr.Tail())
}

// TestStdinStdout: without a stdout drain the caller gets stdout's read
// end; with Stdin a pipe to the child's stdin.
func TestStdinStdout(t *testing.T) {
	t.Parallel()
	pr, ps, logs := start(t, childproc.Spec{Stdin: true, StdoutSize: 1 << 20}, `exec cat`)
	require.NotNil(t, ps.Stdin)
	_, err := io.WriteString(ps.Stdin, "hello\n")
	require.NoError(t, err)
	require.NoError(t, ps.Stdin.Close())
	out, err := io.ReadAll(ps.Stdout)
	require.NoError(t, err)
	require.Equal(t, "hello\n", string(out))
	<-pr.Exited()
	require.NoError(t, pr.Err())
	require.Equal(t, 1, logs.FilterMessage("stdout pipe size").Len()+logs.FilterMessage("could not raise the stdout pipe size").Len())
}

// TestStopGrace: Stop sends SIGTERM and waits up to grace; a process that
// ignores it is SIGKILLed with a warning. Stop is idempotent.
func TestStopGrace(t *testing.T) {
	t.Parallel()
	t.Run("honoured", func(t *testing.T) {
		t.Parallel()
		pr, ps, logs := start(t, childproc.Spec{}, `echo ready; exec sleep 1000`)
		require.Equal(t, "ready", readLine(t, bufio.NewReader(ps.Stdout)))
		pr.Stop(time.Minute)
		require.Equal(t, syscall.SIGTERM, signalled(t, pr))
		require.Zero(t, logs.FilterMessage("test ignored SIGTERM; killing it").Len())
		pr.Stop(time.Minute)
	})
	t.Run("ignored", func(t *testing.T) {
		t.Parallel()
		pr, ps, logs := start(t, childproc.Spec{}, `trap '' TERM; echo ready; exec sleep 1000`)
		require.Equal(t, "ready", readLine(t, bufio.NewReader(ps.Stdout)))
		pr.Stop(50 * time.Millisecond)
		require.Equal(t, syscall.SIGKILL, signalled(t, pr))
		require.Equal(t, 1, logs.FilterMessage("test ignored SIGTERM; killing it").Len())
	})
	t.Run("exited", func(t *testing.T) {
		t.Parallel()
		pr, _, _ := start(t, childproc.Spec{}, `exit 0`)
		<-pr.Exited()
		pr.Stop(time.Minute)
		require.NoError(t, pr.Err())
	})
}

// TestGroupKill: a signal reaches the whole process group: the
// grandchild holding stdout dies too, so stdout reaches EOF.
func TestGroupKill(t *testing.T) {
	t.Parallel()
	pr, ps, logs := start(t, childproc.Spec{}, `sleep 1000 & echo $!; wait`)
	r := bufio.NewReader(ps.Stdout)
	grandchild, err := strconv.Atoi(readLine(t, r))
	require.NoError(t, err)
	require.NotEqual(t, pr.Pid(), grandchild)
	pr.Signal(syscall.SIGKILL)
	<-pr.Exited()
	_, err = io.ReadAll(r) // EOF only once the grandchild's copy is closed
	require.NoError(t, err)
	pr.Stop(time.Minute)
	pr.Signal(syscall.SIGKILL) // the group is gone: no error, no warning
	require.Zero(t, logs.FilterMessage("signal process group").Len())
}

// TestStartFailure: a command that cannot be resolved leaves nothing
// open (goleak; the pipes are made only after resolving).
func TestStartFailure(t *testing.T) {
	t.Parallel()
	_, _, err := childproc.Start(childproc.Spec{Command: "./missing", Dir: t.TempDir(), Log: zap.NewNop()})
	require.ErrorIs(t, err, fs.ErrNotExist)
	_, _, err = childproc.Start(childproc.Spec{Command: "", Log: zap.NewNop()})
	require.ErrorIs(t, err, childproc.ErrEmptyCommand)
}
