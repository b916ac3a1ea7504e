// Package cli implements the `stepflow` command line: run, validate, test,
// visualize and list-components locally; submit, runs and top against a
// coordinator (distributed mode); serve runs a coordinator and workers in
// one process.
//
// Commands write results to stdout and everything else (progress,
// diagnostics, logs) to stderr, so that `stepflow run ... > out.jsonl`
// captures only results. The exit code tells a script what happened:
//
//	0  every item succeeded
//	1  the command could not run (bad flow, config, input file, ...)
//	2  usage error (unknown flag, conflicting flags, missing --flow)
//	3  the run completed, but at least one item failed
//
// Upstream Stepflow exits 0 when items fail; we return 3 so that scripts
// can tell a clean batch from a partial one without parsing the output.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/logging"
)

// Exit codes.
const (
	ExitOK          = 0
	ExitFailure     = 1
	ExitUsage       = 2
	ExitItemsFailed = 3
)

// ExitError carries the exit code of a failed command.
type ExitError struct {
	Code int
	Err  error // nil when there is nothing more to print
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit %d", e.Code)
	}
	return e.Err.Error()
}

// Unwrap returns the cause.
func (e *ExitError) Unwrap() error { return e.Err }

func usageErr(format string, args ...any) error {
	return &ExitError{Code: ExitUsage, Err: fmt.Errorf(format, args...)}
}

// errItemsFailed is returned by run-like commands when some items failed;
// the summary was already printed.
var errItemsFailed = &ExitError{Code: ExitItemsFailed}

// IO is what a command reads and writes. Stderr is an *os.File in main so
// that progress can tell whether it is a terminal.
type IO struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Getenv reads the environment; default os.Getenv.
	Getenv func(string) string
	// LookupEnv reads the environment; default os.LookupEnv.
	LookupEnv func(string) (string, bool)
	// Environ lists the environment; default os.Environ.
	Environ func() []string
}

func (s *IO) defaults() {
	if s.Stdin == nil {
		s.Stdin = os.Stdin
	}
	if s.Stdout == nil {
		s.Stdout = os.Stdout
	}
	if s.Stderr == nil {
		s.Stderr = os.Stderr
	}
	if s.Getenv == nil {
		s.Getenv = os.Getenv
	}
	if s.LookupEnv == nil {
		s.LookupEnv = os.LookupEnv
	}
	if s.Environ == nil {
		s.Environ = os.Environ
	}
}

// app is the state shared by all commands of one invocation.
type app struct {
	io        IO
	logLevel  string
	logFormat string
	logFile   string
	log       *zap.Logger
	closeLog  func()
}

// Execute runs the stepflow command line with args and returns the exit
// code. Signals are main's business: it passes a context that ends on
// SIGINT/SIGTERM.
func Execute(ctx context.Context, args []string, stdio IO) int {
	stdio.defaults()
	a := &app{io: stdio}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(stdio.Stdin)
	root.SetOut(stdio.Stdout)
	root.SetErr(stdio.Stderr)
	err := root.ExecuteContext(ctx)
	if a.closeLog != nil {
		a.closeLog()
	}
	if err == nil {
		return ExitOK
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		if ee.Err != nil {
			fmt.Fprintf(stdio.Stderr, "Error: %v\n", ee.Err)
		}
		return ee.Code
	}
	fmt.Fprintf(stdio.Stderr, "Error: %v\n", err)
	if isUsageError(err) {
		fmt.Fprintln(stdio.Stderr, "Run 'stepflow --help' for usage.")
		return ExitUsage
	}
	return ExitFailure
}

// isUsageError recognises cobra's and pflag's command-line errors.
func isUsageError(err error) bool {
	msg := err.Error()
	for _, s := range []string{"unknown flag", "unknown shorthand flag", "unknown command", "required flag", "flag needs an argument", "invalid argument", "accepts ", "if any flags in the group", "none of the others can be"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "stepflow",
		Short:         "Run Stepflow workflows over batches of inputs",
		Long:          "stepflow runs Stepflow flows (YAML files of steps that call components) over single inputs or JSON Lines batches.",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       Version,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return a.setupLogger()
		},
	}
	root.SetVersionTemplate("stepflow {{.Version}}\n")
	pf := root.PersistentFlags()
	pf.StringVar(&a.logLevel, "log-level", envOr(a.io.Getenv, "STEPFLOW_LOG_LEVEL", "warn"), "log level: debug, info, warn, error (env STEPFLOW_LOG_LEVEL)")
	pf.StringVar(&a.logFormat, "log-format", envOr(a.io.Getenv, "STEPFLOW_LOG_FORMAT", "text"), "log format: text or json (env STEPFLOW_LOG_FORMAT)")
	pf.StringVar(&a.logFile, "log-file", a.io.Getenv("STEPFLOW_LOG_FILE"), "write logs to this file instead of stderr (env STEPFLOW_LOG_FILE)")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageErr("%v", err) })

	root.AddCommand(
		a.runCommand(),
		a.validateCommand(),
		a.testCommand(),
		a.visualizeCommand(),
		a.listComponentsCommand(),
		a.submitCommand(),
		a.runsCommand(),
		a.topCommand(),
		a.serveCommand(),
	)
	return root
}

// Version is the stepflow-go version, set at build time with
// -ldflags "-X github.com/stepflow-go/stepflow/pkg/cli.Version=...".
var Version = "0.1.0-dev"

func envOr(getenv func(string) string, key, def string) string {
	if v := getenv(key); v != "" {
		return v
	}
	return def
}

func (a *app) setupLogger() error {
	var sink io.Writer = a.io.Stderr
	if a.logFile != "" {
		f, err := os.OpenFile(a.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return &ExitError{Code: ExitFailure, Err: fmt.Errorf("open log file: %w", err)}
		}
		sink = f
		a.closeLog = func() { _ = f.Close() }
	}
	log, err := logging.New(a.logLevel, a.logFormat, sink)
	if err != nil {
		return usageErr("%v", err)
	}
	a.log = log
	return nil
}
