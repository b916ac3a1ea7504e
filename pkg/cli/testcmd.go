package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/value"
)

type testCmd struct {
	a              *app
	configPath     string
	cases          []string
	update         bool
	diff           bool
	maxConcurrency int
}

func (a *app) testCommand() *cobra.Command {
	t := &testCmd{a: a}
	cmd := &cobra.Command{
		Use:   "test [PATH]...",
		Short: "Run the test cases embedded in flow files",
		Long: `Run the test.cases embedded in flows. Each PATH is a flow file or a directory
searched recursively for *.yaml and *.yml files. Every case's input runs through
the flow and its result is compared with the case's expected output: objects
match when every expected key matches (extra keys are allowed), arrays need the
same length, scalars must be equal (15 and 15.0 differ).

The config of each file is the first of: --config; test.configFile; the inline
test.config; stepflow-config.test.yml next to the flow; the usual discovery.

Exit 1 when any case failed or could not run.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				args = []string{"."}
			}
			return t.run(cmd.Context(), args)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&t.configPath, "config", "", "use this config for every file")
	fl.StringArrayVar(&t.cases, "case", nil, "run only the named case (repeatable)")
	fl.BoolVar(&t.update, "update", false, "rewrite the files with the actual results as expected outputs")
	fl.BoolVar(&t.diff, "diff", false, "show a line diff of expected and actual results on mismatch")
	fl.IntVar(&t.maxConcurrency, "max-concurrency", 10, "test cases run at once per file")
	return cmd
}

type fileReport struct {
	path            string
	skipped         string // reason, when skipped
	errMsg          string // setup error
	passed, total   int
	errors          int
	updated         bool
	updatedFlowText []byte
}

func (t *testCmd) run(ctx context.Context, paths []string) error {
	out := t.a.io.Stdout
	if t.maxConcurrency < 1 {
		return usageErr("--max-concurrency must be at least 1")
	}
	var files []string
	for _, p := range paths {
		info, err := os.Stat(p)
		if err != nil {
			return &ExitError{Code: ExitFailure, Err: errors.New("Missing file: " + p)}
		}
		if !info.IsDir() {
			files = append(files, p)
			continue
		}
		err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() && (strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
				files = append(files, path)
			}
			return nil
		})
		if err != nil {
			return &ExitError{Code: ExitFailure, Err: err}
		}
	}
	slices.Sort(files)
	if len(files) == 0 {
		fmt.Fprintln(out, "No workflow files found")
		return nil
	}
	var reports []*fileReport
	for _, file := range files {
		rep := t.runFile(ctx, file)
		reports = append(reports, rep)
	}
	fmt.Fprintln(out)
	var tested, skipped, errored, total, passed, failed, execErrors, updates int
	for _, r := range reports {
		switch {
		case r.errMsg != "":
			errored++
			fmt.Fprintf(out, "%s: Error %s\n", r.path, r.errMsg)
		case r.skipped != "":
			skipped++
			fmt.Fprintf(out, "%s: Skipped (%s)\n", r.path, r.skipped)
		default:
			tested++
			total += r.total
			passed += r.passed
			execErrors += r.errors
			failed += r.total - r.passed - r.errors
			suffix := ""
			if r.errors > 0 {
				suffix = fmt.Sprintf(" (%d errors)", r.errors)
			}
			fmt.Fprintf(out, "%s: %d/%d passed%s\n", r.path, r.passed, r.total, suffix)
			if r.updated {
				updates++
			}
		}
	}
	fmt.Fprintln(out, "=== Test Summary ===")
	fmt.Fprintf(out, "Files tested: %d\n", tested)
	if skipped > 0 {
		fmt.Fprintf(out, "Files skipped: %d\n", skipped)
	}
	if errored > 0 {
		fmt.Fprintf(out, "Files errored: %d\n", errored)
	}
	fmt.Fprintf(out, "Total test cases: %d\nPassed: %d\nFailed: %d\n", total, passed, failed)
	if execErrors > 0 {
		fmt.Fprintf(out, "Execution errors: %d\n", execErrors)
	}
	if t.update {
		n := 0
		for _, r := range reports {
			if r.updated {
				if err := os.WriteFile(r.path, r.updatedFlowText, 0o644); err != nil {
					return &ExitError{Code: ExitFailure, Err: err}
				}
				n++
			}
		}
		fmt.Fprintf(out, "Applied %d output update(s) across %d file(s)\n", updates, n)
	}
	if failed+execErrors > 0 {
		return &ExitError{Code: ExitFailure}
	}
	return nil
}

func (t *testCmd) runFile(ctx context.Context, path string) *fileReport {
	out := t.a.io.Stdout
	rep := &fileReport{path: path}
	f, err := flow.Load(path)
	if err != nil {
		rep.skipped = "invalid or non-flow file"
		t.a.log.Debug("skipping file: " + err.Error())
		return rep
	}
	var cases []flow.TestCase
	if f.Test != nil {
		for _, c := range f.Test.Cases {
			if len(t.cases) == 0 || slices.Contains(t.cases, c.Name) {
				cases = append(cases, c)
			}
		}
	}
	if len(cases) == 0 {
		rep.skipped = "no test cases"
		return rep
	}
	cfg, err := t.configFor(f, path)
	if err != nil {
		rep.errMsg = err.Error()
		return rep
	}
	env, err := t.a.newEnvironment(ctx, cfg, filepath.Dir(path), "")
	if err != nil {
		rep.errMsg = err.Error()
		return rep
	}
	defer env.close()
	fmt.Fprintln(out, "----------")
	fmt.Fprintf(out, "Running %d test cases in batch mode (max_concurrency=%d)\n", len(cases), t.maxConcurrency)
	if diags := env.validate(f); diags.HasFatal() {
		printDiagnostics(out, f.File, onlyErrors(diags))
		rep.errMsg = "flow has fatal validation errors"
		return rep
	}
	run, err := env.exec.NewRun(executor.NewRunID(), f, nil)
	if err != nil {
		rep.errMsg = err.Error()
		return rep
	}
	inputs := make([]value.Value, len(cases))
	for i, c := range cases {
		inputs[i] = c.Input
	}
	results := run.ExecuteAll(ctx, inputs, t.maxConcurrency, nil)
	rep.total = len(cases)
	changed := false
	for i, c := range cases {
		actual := Normalize(results[i].JSON())
		if c.Output == nil {
			fmt.Fprintf(out, "Test Case %s output:\n%s", c.Name, yamlText(actual))
			t.setOutput(f, c.Name, actual)
			changed = true
			continue
		}
		expected := Normalize(c.Output)
		if MatchResult(expected, actual) {
			rep.passed++
			continue
		}
		if t.diff {
			fmt.Fprintf(out, "Test Case %s failed:\n%s", c.Name, lineDiff(yamlText(expected), yamlText(actual)))
		} else {
			fmt.Fprintf(out, "Test Case %s failed. New Output:\n%s", c.Name, yamlText(actual))
		}
		t.setOutput(f, c.Name, actual)
		changed = true
	}
	fmt.Fprintf(out, "%s: %d/%d passed\n", path, rep.passed, rep.total)
	if t.update && changed {
		text, err := flowText(f, path)
		if err != nil {
			rep.errMsg = err.Error()
			return rep
		}
		rep.updated, rep.updatedFlowText = true, text
	}
	return rep
}

// setOutput records the actual result as the expected output of a case,
// for --update.
func (t *testCmd) setOutput(f *flow.Flow, name string, actual value.Value) {
	if !t.update {
		return
	}
	for i := range f.Test.Cases {
		if f.Test.Cases[i].Name == name {
			f.Test.Cases[i].Output = actual
		}
	}
}

func flowText(f *flow.Flow, path string) ([]byte, error) {
	if strings.HasSuffix(path, ".json") {
		return append(value.Marshal(f.Value()), '\n'), nil
	}
	return value.MarshalYAML(f.Value())
}

// configFor picks the config of one test file.
func (t *testCmd) configFor(f *flow.Flow, path string) (*config.Config, error) {
	dir := filepath.Dir(path)
	if t.configPath != "" {
		return config.Load(t.configPath)
	}
	if f.Test != nil && f.Test.ConfigFile != "" && f.Test.Config != nil {
		return nil, errors.New("test.config and test.configFile are mutually exclusive")
	}
	if f.Test != nil && f.Test.ConfigFile != "" {
		return config.Load(filepath.Join(dir, f.Test.ConfigFile))
	}
	if f.Test != nil && f.Test.Config != nil {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return nil, err
		}
		return config.FromValue(f.Test.Config, abs)
	}
	for _, name := range []string{"stepflow-config.test.yml", "stepflow-config.test.yaml", "stepflow_config.test.yml", "stepflow_config.test.yaml"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return config.Load(p)
		}
	}
	return discoverConfig("", dir)
}

// Normalize prepares a result for comparison and display: object keys
// sorted, `run_id` strings replaced by a fixed UUID, `backtrace` keys
// removed.
func Normalize(v value.Value) value.Value {
	switch t := v.(type) {
	case []value.Value:
		out := make([]value.Value, len(t))
		for i, e := range t {
			out[i] = Normalize(e)
		}
		return out
	case *value.Object:
		keys := slices.Clone(t.Keys())
		slices.Sort(keys)
		o := value.NewObject(len(keys))
		for _, k := range keys {
			if k == "backtrace" {
				continue
			}
			e, _ := t.Get(k)
			if _, isStr := e.(string); isStr && k == "run_id" {
				o.Set(k, "00000000-0000-0000-0000-000000000000")
				continue
			}
			o.Set(k, Normalize(e))
		}
		return o
	default:
		return v
	}
}

// MatchResult compares an expected FlowResult with an actual one: same
// outcome; for successes a partial match of the results; for failures
// equal code and message, and a partial match of data when expected.
func MatchResult(expected, actual value.Value) bool {
	exp, err1 := outcome.Parse(expected)
	act, err2 := outcome.Parse(actual)
	if err1 != nil || err2 != nil {
		return false
	}
	if exp.Failed() != act.Failed() {
		return false
	}
	if !exp.Failed() {
		return PartialMatch(exp.Value, act.Value)
	}
	if exp.Err.Code != act.Err.Code || exp.Err.Message != act.Err.Message {
		return false
	}
	return exp.Err.Data == nil || PartialMatch(exp.Err.Data, act.Err.Data)
}

// PartialMatch reports whether actual has everything expected has:
// objects may have extra keys, arrays must have the same length, scalars
// must be equal.
func PartialMatch(expected, actual value.Value) bool {
	switch e := expected.(type) {
	case *value.Object:
		a, ok := actual.(*value.Object)
		if !ok {
			return false
		}
		for i := range e.Len() {
			k, ev := e.At(i)
			av, ok := a.Get(k)
			if !ok || !PartialMatch(ev, av) {
				return false
			}
		}
		return true
	case []value.Value:
		a, ok := actual.([]value.Value)
		if !ok || len(a) != len(e) {
			return false
		}
		for i := range e {
			if !PartialMatch(e[i], a[i]) {
				return false
			}
		}
		return true
	default:
		return value.Equal(expected, actual)
	}
}

func yamlText(v value.Value) string {
	b, err := value.MarshalYAML(v)
	if err != nil {
		return value.String(v) + "\n"
	}
	return string(b)
}

// lineDiff is a small LCS line diff in the `--- Expected / +++ Actual`
// form.
func lineDiff(a, b string) string {
	x := strings.Split(strings.TrimSuffix(a, "\n"), "\n")
	y := strings.Split(strings.TrimSuffix(b, "\n"), "\n")
	n, m := len(x), len(y)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if x[i] == y[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var sb strings.Builder
	sb.WriteString("--- Expected\n+++ Actual\n")
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && x[i] == y[j]:
			sb.WriteString(" " + x[i] + "\n")
			i++
			j++
		case j < m && (i == n || lcs[i][j+1] >= lcs[i+1][j]):
			sb.WriteString("+" + y[j] + "\n")
			j++
		default:
			sb.WriteString("-" + x[i] + "\n")
			i++
		}
	}
	return sb.String()
}
