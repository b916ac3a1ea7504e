package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/plugin"
	"github.com/stepflow-go/stepflow/pkg/value"
)

func (a *app) validateCommand() *cobra.Command {
	var flowPath, configPath, format string
	var experimental, typeCheck, strict bool
	cmd := &cobra.Command{
		Use:   "validate --flow FILE",
		Short: "Check a flow and its config without running it",
		Long: `Check a flow: parse errors, duplicate or empty step ids, references to
unknown or later steps, cycles, invalid component paths, components that no
route of the config reaches, misspelt builtins, undefined variables,
unreachable steps. Only the files are read: no plugin is started, so a config
whose plugins need programs this machine lacks (uv, npx) still validates.

--type-check also starts the config's plugins, fetches their components'
schemas and checks each step's input against its component's input schema
(literal values and required properties; values computed by expressions are
not checked). --strict (only with --type-check) makes untyped component
outputs errors: components without an output schema, or that their plugin
does not list.

Each diagnostic names its place as file:line:col. Exit 1 when there is a fatal
diagnostic or an error; warnings alone exit 0.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if strict && !typeCheck {
				return usageErr("--strict requires --type-check")
			}
			if format != "text" && format != "json" {
				return usageErr("--format must be text or json, got %q", format)
			}
			f, err := flow.Load(flowPath)
			if err != nil {
				return &ExitError{Code: ExitFailure, Err: err}
			}
			flowDir := ""
			if f.File != "" {
				flowDir = filepath.Dir(f.File)
			}
			cfg, err := discoverConfig(configPath, flowDir)
			if err != nil {
				return &ExitError{Code: ExitFailure, Err: err}
			}
			router, err := plugin.Check(cfg)
			if err != nil {
				return &ExitError{Code: ExitFailure, Err: fmt.Errorf("configuration error: %w", err)}
			}
			diags := validateStatic(f, cfg, router)
			if typeCheck {
				tdiags, err := a.typeCheck(cmd.Context(), f, cfg, flowDir, router, strict)
				if err != nil {
					return &ExitError{Code: ExitFailure, Err: err}
				}
				diags = append(diags, tdiags...)
			}
			if !experimental {
				diags = withoutExperimental(diags)
			}
			if format == "text" {
				printDiagnostics(a.io.Stdout, f.File, diags)
			} else {
				fmt0, e, w := diags.Counts()
				out := value.ObjectOf("diagnostics", diags.JSON(), "numFatal", value.Int(int64(fmt0)), "numError", value.Int(int64(e)), "numWarning", value.Int(int64(w)))
				fmt.Fprintln(a.io.Stdout, value.String(out))
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
	fl.BoolVar(&typeCheck, "type-check", false, "start the plugins and check step inputs against their components' schemas")
	fl.BoolVar(&strict, "strict", false, "with --type-check: untyped component outputs are errors")
	return cmd
}

// validateStatic checks the flow, the config and the routing of every
// step, reading only the files.
func validateStatic(f *flow.Flow, cfg *config.Config, router *plugin.Router) flow.Diagnostics {
	diags := flow.Validate(f)
	for _, d := range cfg.Validate() {
		d.File = cfg.File
		diags = append(diags, d)
	}
	return append(diags, flow.ValidateRoutes(f, router)...)
}

// typeCheck starts the plugins of cfg, lists their components and checks
// the steps of f against the components' schemas.
func (a *app) typeCheck(ctx context.Context, f *flow.Flow, cfg *config.Config, flowDir string, router *plugin.Router, strict bool) (flow.Diagnostics, error) {
	env, err := a.newEnvironment(ctx, cfg, flowDir, "")
	if err != nil {
		return nil, err
	}
	defer env.close()
	infos, err := env.plugins.ListComponents(ctx)
	if err != nil {
		return nil, fmt.Errorf("type check: %w", err)
	}
	byPath := map[string]flow.ComponentSchemas{}
	for _, c := range infos {
		for _, r := range c.Routes {
			if _, ok := byPath[r.ResolvedPath]; !ok {
				byPath[r.ResolvedPath] = flow.ComponentSchemas{Input: c.InputSchema, Output: c.OutputSchema}
			}
		}
	}
	lookup := func(path string) (flow.ComponentSchemas, bool) {
		cs, ok := byPath[path]
		return cs, ok
	}
	return flow.ValidateTypes(f, router, lookup, strict), nil
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
