// Package cli implements the `stepflow` command line: run, validate, test,
// visualize and list-components locally; submit, runs and top against a
// coordinator (distributed mode); serve runs a coordinator and workers in
// one process; coordinator and worker run them as processes of their own
// (bin/coordinator and bin/worker run these two commands as root commands,
// with the same global flags, environment variables and exit codes).
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
	// singleDash: the command accepts -flag for --flag (standalone).
	singleDash bool
}

// Execute runs the stepflow command line with args and returns the exit
// code. Signals are main's business: it passes a context that ends on
// SIGINT/SIGTERM.
func Execute(ctx context.Context, args []string, stdio IO) int {
	return execute(ctx, args, stdio, (*app).rootCommand)
}

// ExecuteCoordinator runs `stepflow coordinator` as a command of its own,
// named coordinator (bin/coordinator), with args (without the program
// name) and returns the exit code.
func ExecuteCoordinator(ctx context.Context, args []string, stdio IO) int {
	return execute(ctx, args, stdio, func(a *app) *cobra.Command { return a.standalone(a.coordinatorCommand()) })
}

// ExecuteWorker runs `stepflow worker` as a command of its own, named
// worker (bin/worker), with args (without the program name) and returns
// the exit code.
func ExecuteWorker(ctx context.Context, args []string, stdio IO) int {
	return execute(ctx, args, stdio, func(a *app) *cobra.Command { return a.standalone(a.workerCommand()) })
}

func execute(ctx context.Context, args []string, stdio IO, command func(*app) *cobra.Command) int {
	stdio.defaults()
	a := &app{io: stdio}
	root := command(a)
	if a.singleDash {
		args = doubleDashes(root, args)
	}
	root.SetArgs(args)
	root.SetIn(stdio.Stdin)
	root.SetOut(stdio.Stdout)
	root.SetErr(stdio.Stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if a.log != nil {
		_ = a.log.Sync()
	}
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
		if cmd == nil {
			cmd = root
		}
		fmt.Fprintf(stdio.Stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
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
		Use:   "stepflow",
		Short: "Run Stepflow workflows over batches of inputs",
		Long:  "stepflow runs Stepflow flows (YAML files of steps that call components) over single inputs or JSON Lines batches.",
	}
	a.setupRoot(root)
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
		a.coordinatorCommand(),
		a.workerCommand(),
	)
	return root
}

// standalone makes cmd, a command of stepflow, a root command of its
// own: bin/coordinator and bin/worker. It takes the global flags, the
// exit codes and the error handling of stepflow, and also accepts the
// single-dash long flags (-nats-url) of the flag package that these
// binaries used to parse with, rewriting them to --nats-url.
func (a *app) standalone(cmd *cobra.Command) *cobra.Command {
	a.setupRoot(cmd)
	cmd.InitDefaultHelpFlag() // so that -help is rewritten too
	cmd.InitDefaultVersionFlag()
	a.singleDash = true
	return cmd
}

// doubleDashes rewrites the single-dash long flags of args that name a
// flag of cmd (-nats-url, -nats-url=x) to their double-dash form; it
// leaves shorthands (-h), values (-1) and everything after "--" alone.
func doubleDashes(cmd *cobra.Command, args []string) []string {
	out := make([]string, 0, len(args))
	for i, arg := range args {
		if arg == "--" {
			return append(out, args[i:]...)
		}
		if len(arg) > 2 && arg[0] == '-' && arg[1] != '-' {
			name, _, _ := strings.Cut(arg[1:], "=")
			if len(name) > 1 && (cmd.Flags().Lookup(name) != nil || cmd.PersistentFlags().Lookup(name) != nil) {
				arg = "-" + arg
			}
		}
		out = append(out, arg)
	}
	return out
}

// setupRoot gives root the global flags (logging) and behaviour of every
// stepflow command line: errors are printed once by execute, flag errors
// are usage errors.
func (a *app) setupRoot(root *cobra.Command) {
	root.SilenceUsage = true
	root.SilenceErrors = true
	root.Version = Version
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		return a.setupLogger()
	}
	root.SetVersionTemplate("stepflow {{.Version}}\n")
	pf := root.PersistentFlags()
	pf.StringVar(&a.logLevel, "log-level", envOr(a.io.Getenv, "STEPFLOW_LOG_LEVEL", "warn"), "log level: debug, info, warn, error (env STEPFLOW_LOG_LEVEL)")
	pf.StringVar(&a.logFormat, "log-format", envOr(a.io.Getenv, "STEPFLOW_LOG_FORMAT", "text"), "log format: text or json (env STEPFLOW_LOG_FORMAT)")
	pf.StringVar(&a.logFile, "log-file", a.io.Getenv("STEPFLOW_LOG_FILE"), "write logs to this file instead of stderr (env STEPFLOW_LOG_FILE)")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageErr("%v", err) })
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
