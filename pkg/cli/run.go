package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/batch"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/jsonl"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/progress"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// defaultConcurrency is the default --max-concurrent: items in flight.
func defaultConcurrency() int { return max(16, 4*runtime.NumCPU()) }

type runCmd struct {
	a             *app
	flags         runFlags
	configPath    string
	onInvalidLine string
	quiet         bool
	progressMode  string
	spillDir      string
}

func (a *app) runCommand() *cobra.Command {
	r := &runCmd{a: a}
	cmd := &cobra.Command{
		Use:   "run --flow FILE [--inputs FILE.jsonl | --input FILE | --input-json JSON | --input-yaml YAML]",
		Short: "Run a flow locally on one input or a JSON Lines batch",
		Long: `Run a flow in this process.

Single mode (--input, --input-json, --input-yaml or stdin) prints the item's
FlowResult. Batch mode (--inputs) writes one FlowResult per line, in input
order, to --output or stdout, with progress on stderr.

--max-concurrent bounds the ITEMS in flight (upstream Stepflow's
--max-concurrency bounds concurrent step tasks instead; both spellings are
accepted here and mean items). Steps of one item that do not depend on each
other always run in parallel.

Exit codes: 0 all items succeeded, 1 the run could not start, 2 usage error,
3 the run completed but some items failed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return r.run(cmd.Context()) },
	}
	r.flags.register(cmd, defaultConcurrency())
	fl := cmd.Flags()
	fl.StringVar(&r.configPath, "config", "", "stepflow-config.yml (default: found next to the flow, then in the current directory)")
	fl.StringVar(&r.onInvalidLine, "on-invalid-line", "fail", "what a malformed --inputs line does: fail (report it before anything runs) or fail-item (that item fails, the others run)")
	fl.BoolVarP(&r.quiet, "quiet", "q", false, "no progress output")
	fl.StringVar(&r.progressMode, "progress", "auto", "progress display: auto (a live bar on a terminal, plain lines otherwise), bar, plain or none")
	fl.StringVar(&r.spillDir, "spill-dir", "", "directory for temporary files of large batches (default: the system temp dir)")
	return cmd
}

func (r *runCmd) run(ctx context.Context) error {
	if r.flags.maxConcurrent < 1 {
		return usageErr("--max-concurrent must be at least 1, got %d", r.flags.maxConcurrent)
	}
	if r.onInvalidLine != "fail" && r.onInvalidLine != "fail-item" {
		return usageErr("--on-invalid-line must be fail or fail-item, got %q", r.onInvalidLine)
	}
	stderr := r.a.io.Stderr

	f, err := flow.Load(r.flags.flowPath)
	if err != nil {
		return &ExitError{Code: ExitFailure, Err: err}
	}
	env, err := r.a.loadEnvironment(ctx, r.configPath, f, r.spillDir)
	if err != nil {
		return &ExitError{Code: ExitFailure, Err: err}
	}
	defer env.close()

	diags := onlyErrors(env.validate(f))
	if len(diags) > 0 {
		printDiagnostics(stderr, f.File, diags)
	}
	if diags.HasErrors() {
		return &ExitError{Code: ExitFailure, Err: errors.New("flow validation failed")}
	}
	if err := env.storeFlow(ctx, f); err != nil {
		return &ExitError{Code: ExitFailure, Err: err}
	}
	patched, _, err := r.flags.applyOverrides(f)
	if err != nil {
		return &ExitError{Code: ExitFailure, Err: err}
	}
	vars, err := r.flags.resolveVariables(patched, r.a.io.Environ)
	if err != nil {
		return &ExitError{Code: ExitFailure, Err: err}
	}
	run, err := env.exec.NewRun(executor.NewRunID(), patched, vars)
	if err != nil {
		return &ExitError{Code: ExitFailure, Err: err}
	}
	if r.flags.inputs.batch() {
		return r.runBatch(ctx, run)
	}
	return r.runSingle(ctx, run)
}

func (r *runCmd) runSingle(ctx context.Context, run *executor.Run) error {
	input, err := r.flags.inputs.single(r.a.io.Stdin)
	if err != nil {
		return &ExitError{Code: ExitFailure, Err: err}
	}
	res := run.Execute(ctx, 0, input)
	if err := writeSingle(r.a.io.Stdout, r.flags.output, res); err != nil {
		return &ExitError{Code: ExitFailure, Err: err}
	}
	if res.Failed() {
		return errItemsFailed
	}
	return nil
}

// writeSingle writes one FlowResult: compact JSON on stdout (with a
// newline), or to a file whose extension picks JSON or YAML.
func writeSingle(stdout io.Writer, path string, res outcome.Result) error {
	if path == "" {
		_, err := stdout.Write(append(res.AppendJSON(nil), '\n'))
		return err
	}
	var data []byte
	switch strings.ToLower(filepath.Ext(path)) {
	case ".json", ".jsonl":
		data = append(res.AppendJSON(nil), '\n')
	case ".yaml", ".yml":
		var err error
		if data, err = value.MarshalYAML(res.JSON()); err != nil {
			return err
		}
	default:
		return fmt.Errorf("--output %s: unrecognized extension (want .json, .yaml or .yml)", path)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}

func (r *runCmd) runBatch(ctx context.Context, run *executor.Run) error {
	stderr := r.a.io.Stderr
	name := r.flags.inputs.inputs
	var in io.Reader
	total := -1
	if name == "-" {
		name = "stdin"
		in = r.a.io.Stdin
	} else {
		file, err := os.Open(name)
		if err != nil {
			return &ExitError{Code: ExitFailure, Err: fmt.Errorf("open inputs: %w", err)}
		}
		defer file.Close()
		// Check the whole file before anything runs, so that a bad line
		// is reported at once, and learn the total for progress.
		if r.onInvalidLine == "fail" {
			n, err := jsonl.Validate(bufio.NewReaderSize(file, 1<<20), jsonl.WithName(name))
			if err != nil {
				return &ExitError{Code: ExitFailure, Err: err}
			}
			total = n
			if _, err := file.Seek(0, io.SeekStart); err != nil {
				return &ExitError{Code: ExitFailure, Err: fmt.Errorf("rewind inputs: %w", err)}
			}
		}
		in = file
	}

	out := r.a.io.Stdout
	var outFile *os.File
	if r.flags.output != "" {
		var err error
		if outFile, err = os.Create(r.flags.output); err != nil {
			return &ExitError{Code: ExitFailure, Err: fmt.Errorf("create output: %w", err)}
		}
		defer outFile.Close()
		out = outFile
	}
	bw := bufio.NewWriterSize(out, 256<<10)

	tracker := &progress.Tracker{}
	if total >= 0 {
		tracker.SetTotal(int64(total))
	}
	rep := progress.NewReporter(stderr, tracker, progress.WithMode(r.progress()))
	rep.Start(ctx)
	policy := batch.StopOnInvalid
	if r.onInvalidLine == "fail-item" {
		policy = batch.FailInvalidItems
	}
	sum, err := batch.Run(ctx, batch.Options{
		Run:           run,
		Input:         in,
		Name:          name,
		MaxConcurrent: r.flags.maxConcurrent,
		Output:        bw,
		Tracker:       tracker,
		InvalidLines:  policy,
		SpillDir:      r.spillDir,
	})
	rep.Stop()
	if ferr := bw.Flush(); ferr != nil && err == nil {
		err = fmt.Errorf("write results: %w", ferr)
	}
	if outFile != nil {
		if cerr := outFile.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("write results: %w", cerr)
		}
	}
	r.a.log.Info("batch finished", zap.String("run", run.ID), zap.Int("items", sum.Total), zap.Int("failed", sum.Failed))
	if err != nil {
		return &ExitError{Code: ExitFailure, Err: err}
	}
	if r.flags.output != "" && !r.quiet {
		fmt.Fprintf(stderr, "Results written to %s\n", r.flags.output)
	}
	if sum.Failed > 0 {
		return errItemsFailed
	}
	return nil
}

func (r *runCmd) progress() progress.Mode {
	return progressMode(r.quiet, r.progressMode, r.a.io.Stderr)
}

// progressMode maps --quiet and --progress onto a progress.Mode; "auto"
// draws a bar when stderr is a terminal.
func progressMode(quiet bool, mode string, stderr io.Writer) progress.Mode {
	if quiet {
		return progress.ModeQuiet
	}
	switch mode {
	case "none":
		return progress.ModeQuiet
	case "bar":
		return progress.ModeTTY
	case "plain":
		return progress.ModePlain
	}
	if f, ok := stderr.(*os.File); ok && progress.IsTerminal(f) {
		return progress.ModeTTY
	}
	return progress.ModePlain
}
