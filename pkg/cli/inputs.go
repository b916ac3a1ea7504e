package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// inputFlags are the input options shared by run and submit.
type inputFlags struct {
	input       string
	inputJSON   string
	inputYAML   string
	stdinFormat string
	inputs      string
}

func (f *inputFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.input, "input", "", "one input from a file (.json or .yaml/.yml)")
	fl.StringVar(&f.inputJSON, "input-json", "", "one input as JSON text")
	fl.StringVar(&f.inputYAML, "input-yaml", "", "one input as YAML text")
	fl.StringVar(&f.stdinFormat, "stdin-format", "json", "format of a single input read from stdin: json or yaml")
	fl.StringVar(&f.inputs, "inputs", "", "batch mode: a JSON Lines file, one input per line ('-' for stdin)")
	cmd.MarkFlagsMutuallyExclusive("input", "input-json", "input-yaml", "inputs")
}

// batch reports whether the inputs form a batch (JSONL).
func (f *inputFlags) batch() bool { return f.inputs != "" }

// single reads the one input of single mode.
func (f *inputFlags) single(stdin io.Reader) (value.Value, error) {
	switch {
	case f.input != "":
		data, err := os.ReadFile(f.input)
		if err != nil {
			return nil, fmt.Errorf("read input: %w", err)
		}
		switch strings.ToLower(filepath.Ext(f.input)) {
		case ".json", ".jsonl":
			v, err := value.Parse(data)
			if err != nil {
				return nil, fmt.Errorf("%s:%w", f.input, err)
			}
			return v, nil
		case ".yaml", ".yml":
			return parseYAMLText(data, f.input)
		default:
			return nil, fmt.Errorf("input file %s: unrecognized extension (want .json, .yaml or .yml)", f.input)
		}
	case f.inputJSON != "":
		v, err := value.ParseString(f.inputJSON)
		if err != nil {
			return nil, fmt.Errorf("--input-json: invalid JSON input: %w", err)
		}
		return v, nil
	case f.inputYAML != "":
		return parseYAMLText([]byte(f.inputYAML), "--input-yaml")
	default:
		data, err := io.ReadAll(stdin)
		if err != nil {
			return nil, fmt.Errorf("read stdin: %w", err)
		}
		switch f.stdinFormat {
		case "json":
			v, err := value.Parse(data)
			if err != nil {
				return nil, fmt.Errorf("stdin:%w", err)
			}
			return v, nil
		case "yaml":
			return parseYAMLText(data, "stdin")
		default:
			return nil, usageErr("invalid --stdin-format %q: want json or yaml", f.stdinFormat)
		}
	}
}

func parseYAMLText(data []byte, name string) (value.Value, error) {
	v, _, err := value.ParseYAML(data, nil)
	if err != nil {
		return nil, fmt.Errorf("%s: invalid YAML: %w", name, err)
	}
	return v, nil
}

// docFlags is a trio of mutually exclusive flags that give one JSON or
// YAML document: --x FILE, --x-json TEXT, --x-yaml TEXT.
type docFlags struct {
	name                   string
	file, jsonText, yamlTx string
}

func (d *docFlags) register(cmd *cobra.Command, name, what string) {
	d.name = name
	fl := cmd.Flags()
	fl.StringVar(&d.file, name, "", what+" from a JSON or YAML file")
	fl.StringVar(&d.jsonText, name+"-json", "", what+" as JSON text")
	fl.StringVar(&d.yamlTx, name+"-yaml", "", what+" as YAML text")
	cmd.MarkFlagsMutuallyExclusive(name, name+"-json", name+"-yaml")
}

// load returns the document, or nil when none of the flags is set.
func (d *docFlags) load() (value.Value, error) {
	switch {
	case d.file != "":
		data, err := os.ReadFile(d.file)
		if err != nil {
			return nil, fmt.Errorf("--%s: %w", d.name, err)
		}
		return parseYAMLText(data, d.file)
	case d.jsonText != "":
		v, err := value.ParseString(d.jsonText)
		if err != nil {
			return nil, fmt.Errorf("--%s-json: invalid JSON: %w", d.name, err)
		}
		return v, nil
	case d.yamlTx != "":
		return parseYAMLText([]byte(d.yamlTx), "--"+d.name+"-yaml")
	}
	return nil, nil
}

// runFlags are the flow options shared by run and submit.
type runFlags struct {
	flowPath      string
	inputs        inputFlags
	maxConcurrent int
	output        string
	variables     docFlags
	envVariables  bool
	overrides     docFlags
}

func (r *runFlags) register(cmd *cobra.Command, defaultConcurrency int) {
	r.registerShared(cmd, defaultConcurrency)
	_ = cmd.MarkFlagRequired("flow")
}

// registerShared registers the flags without making --flow required
// (submit --attach needs none).
func (r *runFlags) registerShared(cmd *cobra.Command, defaultConcurrency int) {
	fl := cmd.Flags()
	fl.StringVar(&r.flowPath, "flow", "", "the flow file (.yaml, .yml or .json)")
	r.inputs.register(cmd)
	fl.IntVar(&r.maxConcurrent, "max-concurrent", defaultConcurrency, "maximum number of items in flight at once")
	fl.IntVar(&r.maxConcurrent, "max-concurrency", defaultConcurrency, "alias of --max-concurrent")
	fl.StringVar(&r.output, "output", "", "write results to this file instead of stdout (single mode: .json or .yaml by extension; batch: JSON Lines)")
	r.variables.register(cmd, "variables", "run variables")
	fl.BoolVar(&r.envVariables, "env-variables", false, "read variables from STEPFLOW_VAR_<NAME> environment variables")
	r.overrides.register(cmd, "overrides", "step overrides")
}

// variables resolves the run variables: schema defaults, then
// STEPFLOW_VAR_* (with --env-variables), then the variables document.
func (r *runFlags) resolveVariables(f *flow.Flow, environ func() []string) (map[string]value.Value, error) {
	supplied := map[string]value.Value{}
	if r.envVariables {
		for k, v := range envVariables(f, environ()) {
			supplied[k] = v
		}
	}
	doc, err := r.variables.load()
	if err != nil {
		return nil, err
	}
	if doc != nil {
		o, ok := doc.(*value.Object)
		if !ok {
			return nil, fmt.Errorf("variables must be an object of name: value, got %s", value.TypeName(doc))
		}
		for i := range o.Len() {
			k, v := o.At(i)
			supplied[k] = v
		}
	}
	vars, err := f.Variables(supplied)
	if err != nil {
		return nil, fmt.Errorf("variables: %w", err)
	}
	return vars, nil
}

// envVariables reads STEPFLOW_VAR_<NAME>. A declared variable matches its
// upper-cased name; other names are lower-cased. Values are JSON when they
// parse as JSON (and the variable is not declared as a string), text
// otherwise.
func envVariables(f *flow.Flow, environ []string) map[string]value.Value {
	declared := map[string]string{} // UPPER -> name
	stringTyped := map[string]bool{}
	if s, ok := f.Schemas.Variables.(*value.Object); ok {
		if props, ok := s.Get("properties"); ok {
			if po, ok := props.(*value.Object); ok {
				for i := range po.Len() {
					name, schema := po.At(i)
					declared[strings.ToUpper(name)] = name
					if so, ok := schema.(*value.Object); ok {
						if t, _ := so.Get("type"); t == "string" {
							stringTyped[name] = true
						}
					}
				}
			}
		}
	}
	out := map[string]value.Value{}
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		rest, ok := strings.CutPrefix(k, "STEPFLOW_VAR_")
		if !ok || rest == "" {
			continue
		}
		name, ok := declared[strings.ToUpper(rest)]
		if !ok {
			name = strings.ToLower(rest)
		}
		if !stringTyped[name] {
			if parsed, err := value.ParseString(v); err == nil {
				out[name] = parsed
				continue
			}
		}
		out[name] = v
	}
	return out
}

// applyOverrides loads the overrides document and applies it to f.
func (r *runFlags) applyOverrides(f *flow.Flow) (*flow.Flow, value.Value, error) {
	doc, err := r.overrides.load()
	if err != nil || doc == nil {
		return f, nil, err
	}
	ov, err := flow.ParseOverrides(doc)
	if err != nil {
		return nil, nil, fmt.Errorf("overrides: %w", err)
	}
	if len(ov) == 0 {
		return f, nil, nil
	}
	patched, err := f.ApplyOverrides(ov)
	if err != nil {
		return nil, nil, fmt.Errorf("overrides: %w", err)
	}
	return patched, doc, nil
}
