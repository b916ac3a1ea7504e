package cli

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/jsonl"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/plugin"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// defaultRetryTimeout is the default --retry-timeout: long enough to ride
// through a coordinator restart.
const defaultRetryTimeout = 2 * time.Minute

// remoteFlags are the connection flags of submit and runs.
type remoteFlags struct {
	url          string
	token        string
	tokenFile    string
	caCert       string
	retryTimeout time.Duration
}

func (r *remoteFlags) register(fl *pflag.FlagSet, getenv func(string) string) {
	fl.StringVar(&r.url, "url", envOr(getenv, "STEPFLOW_URL", defaultCoordinatorURL), "coordinator URL, with or without the /api/v1 suffix; several coordinators sharing NATS, comma-separated, are tried in turn (env STEPFLOW_URL)")
	// The token from the environment is not the flag's documented
	// default: --help would print it.
	fl.StringVar(&r.token, "token", "", "bearer token of the coordinator API; prefer the env variable or --token-file: flags show in the process list (env STEPFLOW_TOKEN)")
	r.token = getenv("STEPFLOW_TOKEN")
	fl.StringVar(&r.tokenFile, "token-file", getenv("STEPFLOW_TOKEN_FILE"), "file holding the bearer token (env STEPFLOW_TOKEN_FILE)")
	fl.StringVar(&r.caCert, "ca-cert", getenv("STEPFLOW_CA_CERT"), "PEM file of the CA that signed an https:// coordinator's certificate, trusted besides the system's (env STEPFLOW_CA_CERT)")
	fl.DurationVar(&r.retryTimeout, "retry-timeout", defaultRetryTimeout, "how long to keep retrying while the coordinator cannot be reached (a restart), with backoff; 0 = no retries")
}

// client returns the API client; a malformed URL, an unreadable token
// file or CA certificate is a failure (exit 1).
func (r *remoteFlags) client() (*apiClient, error) {
	if r.retryTimeout < 0 {
		return nil, usageErr("--retry-timeout must not be negative")
	}
	token := r.token
	if r.tokenFile != "" {
		if token != "" {
			return nil, usageErr("give the token either with --token (or STEPFLOW_TOKEN) or with --token-file (or STEPFLOW_TOKEN_FILE), not both")
		}
		data, err := os.ReadFile(r.tokenFile)
		if err != nil {
			return nil, &ExitError{Code: ExitFailure, Err: fmt.Errorf("--token-file: %w", err)}
		}
		if token = strings.TrimSpace(string(data)); token == "" {
			return nil, &ExitError{Code: ExitFailure, Err: fmt.Errorf("--token-file %s is empty", r.tokenFile)}
		}
	}
	c, err := newAPIClient(r.url, clientOptions{token: token, caCertFile: r.caCert})
	if err != nil {
		return nil, &ExitError{Code: ExitFailure, Err: err}
	}
	return c, nil
}

type submitCmd struct {
	a            *app
	flags        runFlags
	remote       remoteFlags
	quiet        bool
	progressMode string
	noWait       bool
	attach       string
	idemKey      string
	newRun       bool
	spillDir     string
	configPath   string
}

func (a *app) submitCommand() *cobra.Command {
	s := &submitCmd{a: a}
	cmd := &cobra.Command{
		Use:   "submit --flow FILE [--inputs FILE.jsonl | --input FILE | --input-json JSON | --input-yaml YAML] | submit --attach RUN_ID",
		Short: "Run a flow on a coordinator (distributed mode) and write its results",
		Long: `Submit a flow and its inputs to a stepflow coordinator (see 'stepflow serve'),
follow the run's progress, and write the results like 'stepflow run':
single mode prints the FlowResult, batch mode (--inputs) one FlowResult per
line, in input order, to --output or stdout.

The inputs file is streamed to the coordinator, never loaded in memory.
Variables (--variables*, --env-variables) are resolved here against the
flow's variable schema and sent with the run.

--no-wait prints the run id and exits; 'submit --attach RUN_ID' later waits
for that run and writes its results (always as JSON Lines).

Retries: while the coordinator cannot be reached (say it restarts), every
request is retried with backoff for up to --retry-timeout; the event stream
resumes where it stopped (Last-Event-ID) and the result download at the
first line it has not written.

Idempotency: the run is created with an Idempotency-Key, by default
derived from the flow id, the overrides, the variables and the SHA-256 of
the inputs (the bytes of the --inputs file, or the single input's JSON).
So running the same command again - after a crash, a lost connection or
a Ctrl-C - reattaches to the run it started instead of starting a second
one, as long as the coordinator keeps that run. --new-run starts a fresh
run anyway; --idempotency-key KEY sets the key.

Exit codes: 0 all items succeeded, 1 the run could not start (bad flow,
coordinator unreachable or refusing the request, run cancelled), 2 usage
error, 3 the run finished but some items failed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return s.run(cmd) },
	}
	s.flags.registerShared(cmd, 0)
	s.remote.register(cmd.Flags(), a.io.Getenv)
	fl := cmd.Flags()
	fl.BoolVarP(&s.quiet, "quiet", "q", false, "no progress output")
	fl.StringVar(&s.progressMode, "progress", "auto", "progress display: auto (a live bar on a terminal, plain lines otherwise), bar, plain or none")
	fl.BoolVar(&s.noWait, "no-wait", false, "print the run id on stdout and exit once the run is created")
	fl.StringVar(&s.attach, "attach", "", "wait for an existing run and write its results (no flow or input flags)")
	fl.StringVar(&s.idemKey, "idempotency-key", "", "Idempotency-Key of the run (default: derived from the flow, overrides, variables and inputs)")
	fl.BoolVar(&s.newRun, "new-run", false, "start a new run even if the same submission was made before (a random Idempotency-Key)")
	fl.StringVar(&s.spillDir, "spill-dir", "", "directory for the copy of inputs read from stdin (--inputs -); default the system temp dir")
	fl.StringVar(&s.configPath, "config", "", "the workers' stepflow-config.yml: check before submitting that a route reaches every step's component (the workers check it otherwise, item by item)")
	cmd.MarkFlagsMutuallyExclusive("idempotency-key", "new-run")
	cmd.MarkFlagsMutuallyExclusive("attach", "no-wait")
	return cmd
}

func (s *submitCmd) run(cmd *cobra.Command) error {
	ctx := cmd.Context()
	fl := cmd.Flags()
	concSet := fl.Changed("max-concurrent") || fl.Changed("max-concurrency")
	if concSet && s.flags.maxConcurrent < 1 {
		return usageErr("--max-concurrent must be at least 1, got %d", s.flags.maxConcurrent)
	}
	if !concSet {
		s.flags.maxConcurrent = 0
	}
	if s.attach != "" {
		for _, name := range []string{"flow", "input", "input-json", "input-yaml", "inputs", "max-concurrent", "max-concurrency",
			"variables", "variables-json", "variables-yaml", "env-variables", "overrides", "overrides-json", "overrides-yaml", "idempotency-key", "new-run", "config"} {
			if fl.Changed(name) {
				return usageErr("--attach follows an existing run: --%s does not apply", name)
			}
		}
	} else if s.flags.flowPath == "" {
		return usageErr(`required flag(s) "flow" not set`)
	}
	c, err := s.remote.client()
	if err != nil {
		return err
	}
	defer c.close()
	rt := &retrier{timeout: s.remote.retryTimeout, stderr: s.a.io.Stderr, log: s.a.log}
	if s.attach != "" {
		return s.attachRun(ctx, c, rt, s.attach)
	}
	return s.submit(ctx, c, rt)
}

// failure is an exit-1 error.
func failure(err error) error { return &ExitError{Code: ExitFailure, Err: err} }

// preparedInputs are the inputs of a submission, ready to upload.
type preparedInputs struct {
	count  int
	hash   string                               // hex SHA-256 of the body
	body   func() (io.ReadCloser, int64, error) // a fresh reader per attempt
	single bool
	close  func()
}

func (s *submitCmd) submit(ctx context.Context, c *apiClient, rt *retrier) error {
	stderr := s.a.io.Stderr
	f, err := flow.Load(s.flags.flowPath)
	if err != nil {
		return failure(err)
	}
	if err := s.checkRoutes(f); err != nil {
		return err
	}
	_, overrides, err := s.flags.applyOverrides(f)
	if err != nil {
		return failure(err)
	}
	vars, err := s.flags.resolveVariables(f, s.a.io.Environ)
	if err != nil {
		return failure(err)
	}
	var varsDoc value.Value
	if len(vars) > 0 {
		o := value.NewObject(len(vars))
		for _, k := range slices.Sorted(maps.Keys(vars)) {
			o.Set(k, vars[k])
		}
		varsDoc = o
	}
	in, err := s.prepareInputs()
	if err != nil {
		return err
	}
	defer in.close()
	if !in.single && in.count == 0 {
		fmt.Fprintln(stderr, "No inputs provided, nothing to submit")
		if s.flags.output != "" {
			if err := os.WriteFile(s.flags.output, nil, 0o644); err != nil {
				return failure(fmt.Errorf("create output: %w", err))
			}
		}
		return nil
	}
	key := s.idempotencyKey(f.ID(), overrides, varsDoc, in)

	stored, err := retry(ctx, rt, func() (storeFlowResponse, error) { return c.storeFlow(ctx, f.Value()) })
	if err != nil {
		return failure(fmt.Errorf("store flow: %w", err))
	}
	diags := serverDiagnostics(f, stored.Diagnostics.Diagnostics)
	if len(diags) > 0 {
		printDiagnostics(stderr, f.File, diags)
	}
	if !stored.Stored {
		return failure(errors.New("flow validation failed: the coordinator did not store the flow"))
	}
	if diags.HasErrors() { // like `stepflow run`: every item would fail
		return failure(errors.New("flow validation failed"))
	}

	if !in.single && !s.quiet {
		fmt.Fprintf(stderr, "Submitting batch with %d inputs\n", in.count)
	}
	created, err := retry(ctx, rt, func() (createRunResponse, error) {
		return c.createRun(ctx, createRunRequest{
			FlowID:         stored.FlowID,
			MaxConcurrency: s.flags.maxConcurrent,
			Overrides:      overrides,
			Variables:      varsDoc,
			IdempotencyKey: key,
			Body:           in.body,
		})
	})
	if err != nil {
		return failure(fmt.Errorf("create run: %w", err))
	}
	s.a.log.Info("run created", zap.String("run", created.RunID), zap.Bool("replayed", created.Replayed))
	if s.noWait {
		fmt.Fprintln(s.a.io.Stdout, created.RunID)
		return nil
	}
	if !s.quiet {
		fmt.Fprintf(stderr, "run_id: %s\n", created.RunID)
		if created.Replayed {
			fmt.Fprintf(stderr, "The same submission was made before: following run %s (use --new-run for a new one)\n", created.RunID)
		}
	}
	return s.follow(ctx, c, rt, created.RunID, in.single)
}

// checkRoutes checks, with --config, that a route of the workers' config
// reaches the component of every step. The coordinator cannot: routes
// are the workers' business.
func (s *submitCmd) checkRoutes(f *flow.Flow) error {
	if s.configPath == "" {
		return nil
	}
	cfg, err := config.Load(s.configPath)
	if err != nil {
		return failure(err)
	}
	router, err := plugin.NewRouter(cfg)
	if err != nil {
		return failure(err)
	}
	if diags := flow.ValidateRoutes(f, router); len(diags) > 0 {
		printDiagnostics(s.a.io.Stderr, f.File, diags)
		if diags.HasErrors() {
			return failure(errors.New("flow validation failed"))
		}
	}
	return nil
}

func (s *submitCmd) attachRun(ctx context.Context, c *apiClient, rt *retrier, runID string) error {
	if _, err := retry(ctx, rt, func() (runSummary, error) {
		sum, _, err := c.getRun(ctx, runID)
		return sum, err
	}); err != nil {
		return failure(fmt.Errorf("run %s: %w", runID, err))
	}
	return s.follow(ctx, c, rt, runID, false)
}

// serverDiagnostics turns the coordinator's fatal and error diagnostics
// into flow diagnostics, with the positions in the local file of the
// same diagnostics found locally.
func serverDiagnostics(f *flow.Flow, wire []wireDiagnostic) flow.Diagnostics {
	type key struct {
		code int
		path string
	}
	pos := map[key]value.Pos{}
	for _, d := range flow.Validate(f) {
		pos[key{d.Code, d.Path}] = d.Pos
	}
	var out flow.Diagnostics
	for _, w := range wire {
		level := flow.Level(w.Level)
		if level == flow.LevelWarning || level == "" {
			continue
		}
		out = append(out, flow.Diagnostic{Kind: w.Kind, Code: w.Code, Level: level, Message: w.Formatted, Path: w.Path, Pos: pos[key{w.Code, w.Path}]})
	}
	return out
}

// prepareInputs checks and counts the inputs and hashes them, in one pass
// over the --inputs file (stdin is copied to a temporary file first, so
// that an upload can be retried).
func (s *submitCmd) prepareInputs() (*preparedInputs, error) {
	in := &s.flags.inputs
	if !in.batch() {
		v, err := in.single(s.a.io.Stdin)
		if err != nil {
			var ee *ExitError
			if errors.As(err, &ee) {
				return nil, err
			}
			return nil, failure(err)
		}
		data := append(value.Marshal(v), '\n')
		sum := sha256.Sum256(data)
		return &preparedInputs{
			count:  1,
			single: true,
			hash:   hex.EncodeToString(sum[:]),
			body: func() (io.ReadCloser, int64, error) {
				return io.NopCloser(bytes.NewReader(data)), int64(len(data)), nil
			},
			close: func() {},
		}, nil
	}
	path, name := in.inputs, in.inputs
	cleanup := func() {}
	if path == "-" {
		name = "stdin"
		tmp, err := os.CreateTemp(s.spillDir, "stepflow-submit-*.jsonl")
		if err != nil {
			return nil, failure(fmt.Errorf("copy stdin: %w", err))
		}
		cleanup = func() { _ = os.Remove(tmp.Name()) }
		_, err = io.Copy(tmp, s.a.io.Stdin)
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			cleanup()
			return nil, failure(fmt.Errorf("copy stdin: %w", err))
		}
		path = tmp.Name()
	}
	fh, err := os.Open(path)
	if err != nil {
		cleanup()
		return nil, failure(fmt.Errorf("open inputs: %w", err))
	}
	h := sha256.New()
	n, err := jsonl.Validate(bufio.NewReaderSize(io.TeeReader(fh, h), 1<<20), jsonl.WithName(name))
	_ = fh.Close()
	if err != nil {
		cleanup()
		return nil, failure(err)
	}
	return &preparedInputs{
		count: n,
		hash:  hex.EncodeToString(h.Sum(nil)),
		body: func() (io.ReadCloser, int64, error) {
			fh, err := os.Open(path)
			if err != nil {
				return nil, 0, fmt.Errorf("open inputs: %w", err)
			}
			st, err := fh.Stat()
			if err != nil {
				_ = fh.Close()
				return nil, 0, fmt.Errorf("open inputs: %w", err)
			}
			return fh, st.Size(), nil
		},
		close: cleanup,
	}, nil
}

// idempotencyKey is --idempotency-key, a random key with --new-run, or a
// key derived from everything that makes the submission what it is: the
// flow id, the overrides, the variables and the inputs' hash (not
// --max-concurrent, which only tunes the run and can be changed with
// `stepflow runs scale`).
func (s *submitCmd) idempotencyKey(flowID string, overrides, vars value.Value, in *preparedInputs) string {
	switch {
	case s.idemKey != "":
		return s.idemKey
	case s.newRun:
		return "submit-" + uuid.NewString()
	}
	h := sha256.New()
	for _, part := range [][]byte{[]byte("stepflow-submit/v1"), []byte(flowID), marshalOrNil(overrides), marshalOrNil(vars), []byte(in.hash)} {
		_, _ = h.Write(part)
		_, _ = h.Write([]byte{0})
	}
	return "submit-" + hex.EncodeToString(h.Sum(nil))
}

func marshalOrNil(v value.Value) []byte {
	if v == nil {
		return nil
	}
	return value.Marshal(v)
}

// writeSingleResult writes the one FlowResult of a single-mode run like
// `stepflow run` does.
func writeSingleResult(stdout io.Writer, path string, line []byte) (outcome.Result, error) {
	v, err := value.Parse(bytes.TrimSpace(line))
	if err != nil {
		return outcome.Result{}, fmt.Errorf("the coordinator's result is not JSON: %w", err)
	}
	res, err := outcome.Parse(v)
	if err != nil {
		return outcome.Result{}, fmt.Errorf("the coordinator's result is not a FlowResult: %w", err)
	}
	return res, writeSingle(stdout, path, res)
}
