package stepflow

import (
	"fmt"

	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/plugin/childproc"
)

// startProcess starts cfg.Command with cfg.Args in dir with the
// environment env (config.ProcessEnv: the base variables and cfg.Env,
// never the worker's whole environment), in its own process group, its
// stderr drained into the log (and kept for crash reports). stdin is a
// pipe when withStdin, else /dev/null. stdoutSize > 0 raises the stdout
// pipe to that size first. stdout is drained into the log when
// stdoutFirst is set (each line offered to it until it returns true: the
// port announcement), else handed to the caller for the stdio transport.
func startProcess(cfg *config.StepflowPlugin, env []string, dir string, withStdin bool, stdoutSize int,
	stdoutFirst func(line string) bool, log *zap.Logger) (*childproc.Process, childproc.Pipes, error) {
	if cfg.Command == "" {
		return nil, childproc.Pipes{}, fmt.Errorf("%w: empty command", ErrConfig)
	}
	spec := childproc.Spec{
		Command:    cfg.Command,
		Args:       cfg.Args,
		Env:        env,
		Dir:        dir,
		Name:       "component server",
		Stdin:      withStdin,
		StdoutSize: stdoutSize,
		Stderr:     childproc.Drain{Msg: "component server stderr", Tail: true},
		Log:        log,
	}
	if stdoutFirst != nil {
		spec.Stdout = &childproc.Drain{Msg: "component server stdout", First: stdoutFirst}
	}
	return childproc.Start(spec)
}

// exitCause returns the cause to report once the process has exited.
func exitCause(pr *childproc.Process) error { return &ExitError{Err: pr.Err()} }
