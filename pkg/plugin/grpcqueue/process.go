package grpcqueue

import (
	"fmt"
	"strings"

	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/plugin/childproc"
)

// startWorker starts a launched SDK worker in its own process group,
// its stdout and stderr drained into the log (and kept for exit
// reports).
func startWorker(command string, args, env []string, dir string, log *zap.Logger) (*childproc.Process, error) {
	wp, _, err := childproc.Start(childproc.Spec{
		Command: command,
		Args:    args,
		Env:     env,
		Dir:     dir,
		Name:    "worker",
		Stdout:  &childproc.Drain{Msg: "worker stdout", Tail: true},
		Stderr:  childproc.Drain{Msg: "worker stderr", Tail: true},
		Log:     log,
	})
	return wp, err
}

// exitError describes how the worker ended, with its last output lines
// (after the drains reached EOF, or childproc.DrainWait).
func exitError(wp *childproc.Process) error {
	wp.CloseReadEnds(childproc.DrainWait)
	status := "exit status 0"
	if err := wp.Err(); err != nil {
		status = err.Error()
	}
	tail := wp.Tail()
	if len(tail) == 0 {
		return fmt.Errorf("worker process %d exited: %s", wp.Pid(), status)
	}
	return fmt.Errorf("worker process %d exited: %s; last output: %s", wp.Pid(), status, strings.Join(tail, " | "))
}
