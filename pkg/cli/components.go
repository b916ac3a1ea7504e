package cli

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/stepflow-go/stepflow/pkg/plugin"
	"github.com/stepflow-go/stepflow/pkg/value"
)

func (a *app) listComponentsCommand() *cobra.Command {
	var configPath, format string
	var schemas, hideUnreachable string
	cmd := &cobra.Command{
		Use:   "list-components",
		Short: "List the components the config's plugins provide",
		Long: `List every component of every plugin in the config, with the routes that
reach it. --format json and yaml give upstream's shape:
{"components":[{"component","description","input_schema","output_schema","plugin","routes"}]}.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			withSchemas := format != "pretty"
			switch schemas {
			case "":
			case "true":
				withSchemas = true
			case "false":
				withSchemas = false
			default:
				return usageErr("--schemas must be true or false")
			}
			cwd, err := os.Getwd()
			if err != nil {
				return err
			}
			cfg, err := discoverConfig(configPath, cwd)
			if err != nil {
				return &ExitError{Code: ExitFailure, Err: err}
			}
			env, err := a.newEnvironment(cmd.Context(), cfg, cwd, "")
			if err != nil {
				return &ExitError{Code: ExitFailure, Err: err}
			}
			defer env.close()
			infos, err := env.plugins.ListComponents(cmd.Context())
			if err != nil {
				return &ExitError{Code: ExitFailure, Err: err}
			}
			if hideUnreachable != "false" {
				kept := infos[:0]
				for _, c := range infos {
					if len(c.Routes) > 0 {
						kept = append(kept, c)
					}
				}
				infos = kept
			}
			switch format {
			case "pretty":
				printComponents(a.io.Stdout, infos, withSchemas)
				return nil
			case "json", "yaml":
				doc := componentsJSON(infos, withSchemas)
				if format == "json" {
					_, err := fmt.Fprintln(a.io.Stdout, value.String(doc))
					return err
				}
				text, err := value.MarshalYAML(doc)
				if err != nil {
					return err
				}
				_, err = a.io.Stdout.Write(text)
				return err
			default:
				return usageErr("--format must be pretty, json or yaml, got %q", format)
			}
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&configPath, "config", "", "stepflow-config.yml (default: in the current directory)")
	fl.StringVar(&format, "format", "pretty", "pretty, json or yaml")
	fl.StringVar(&schemas, "schemas", "", "include input and output schemas: true or false (default: false for pretty, true otherwise)")
	fl.StringVar(&hideUnreachable, "hide-unreachable", "true", "hide components that no route reaches: true or false")
	return cmd
}

func componentsJSON(infos []plugin.ComponentInfo, withSchemas bool) value.Value {
	list := make([]value.Value, 0, len(infos))
	for _, c := range infos {
		if !withSchemas {
			c.InputSchema, c.OutputSchema = nil, nil
		}
		list = append(list, c.Value())
	}
	return value.ObjectOf("components", list)
}

func printComponents(w interface{ Write([]byte) (int, error) }, infos []plugin.ComponentInfo, withSchemas bool) {
	if len(infos) == 0 {
		fmt.Fprintln(w, "No components found.")
		return
	}
	for _, c := range infos {
		fmt.Fprintf(w, "%s  (plugin %s)\n", c.Component, c.Plugin)
		if c.Description != "" {
			fmt.Fprintf(w, "  %s\n", strings.TrimSpace(c.Description))
		}
		for _, r := range c.Routes {
			cond := ""
			if r.IsConditional {
				cond = " (conditional)"
			}
			fmt.Fprintf(w, "  route: %s -> %s%s\n", r.PathPattern, r.ResolvedPath, cond)
		}
		if withSchemas {
			fmt.Fprintf(w, "  input schema:  %s\n  output schema: %s\n", value.String(c.InputSchema), value.String(c.OutputSchema))
		}
	}
}
