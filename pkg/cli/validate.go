package cli

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/value"
)

func (a *app) validateCommand() *cobra.Command {
	var flowPath, configPath, format string
	var experimental bool
	cmd := &cobra.Command{
		Use:   "validate --flow FILE",
		Short: "Check a flow and its config without running it",
		Long: `Check a flow: parse errors, duplicate or empty step ids, references to
unknown or later steps, cycles, invalid component paths, components that no
route of the config reaches, undefined variables, unreachable steps.

Each diagnostic names its place as file:line:col. Exit 1 when there is a fatal
diagnostic or an error; warnings alone exit 0.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := flow.Load(flowPath)
			if err != nil {
				return &ExitError{Code: ExitFailure, Err: err}
			}
			env, err := a.loadEnvironment(cmd.Context(), configPath, f, "")
			if err != nil {
				return &ExitError{Code: ExitFailure, Err: err}
			}
			defer env.close()
			diags := env.validate(f)
			if !experimental {
				diags = withoutExperimental(diags)
			}
			switch format {
			case "text":
				printDiagnostics(a.io.Stdout, f.File, diags)
			case "json":
				fmt0, e, w := diags.Counts()
				out := value.ObjectOf("diagnostics", diags.JSON(), "numFatal", value.Int(int64(fmt0)), "numError", value.Int(int64(e)), "numWarning", value.Int(int64(w)))
				fmt.Fprintln(a.io.Stdout, value.String(out))
			default:
				return usageErr("--format must be text or json, got %q", format)
			}
			if diags.HasErrors() {
				return &ExitError{Code: ExitFailure, Err: errors.New("flow validation failed")}
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&flowPath, "flow", "", "the flow file")
	_ = cmd.MarkFlagRequired("flow")
	fl.StringVar(&configPath, "config", "", "stepflow-config.yml (default: found next to the flow, then in the current directory)")
	fl.StringVar(&format, "format", "text", "text or json (upstream's diagnostics shape)")
	fl.BoolVar(&experimental, "experimental", false, "also report experimental diagnostics (unvalidatedFieldAccess)")
	return cmd
}

func withoutExperimental(ds flow.Diagnostics) flow.Diagnostics {
	out := ds[:0:0]
	for _, d := range ds {
		if !d.Experimental {
			out = append(out, d)
		}
	}
	return out
}

// onlyErrors keeps fatal diagnostics and errors.
func onlyErrors(ds flow.Diagnostics) flow.Diagnostics {
	out := ds[:0:0]
	for _, d := range ds {
		if d.Level != flow.LevelWarning {
			out = append(out, d)
		}
	}
	return out
}

// printDiagnostics writes one line per diagnostic and a summary line.
func printDiagnostics(w io.Writer, file string, ds flow.Diagnostics) {
	if len(ds) == 0 {
		fmt.Fprintln(w, "✅ Validation passed with no errors")
		return
	}
	for _, d := range ds {
		fmt.Fprintln(w, d.String(file))
	}
	f, e, wn := ds.Counts()
	fmt.Fprintf(w, "📊 Validation results: %d fatal, %d errors, %d warnings\n", f, e, wn)
}
