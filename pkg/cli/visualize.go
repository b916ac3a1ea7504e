package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/stepflow-go/stepflow/pkg/expr"
	"github.com/stepflow-go/stepflow/pkg/flow"
)

func (a *app) visualizeCommand() *cobra.Command {
	var format, output string
	cmd := &cobra.Command{
		Use:   "visualize FLOW",
		Short: "Print the step graph of a flow as DOT or Mermaid text",
		Long: `Print the step graph of a flow: one node per step (labelled with its id and
component), the input and output, and an edge for every reference. Edges that
only a $if branch or a $coalesce fallback uses are dashed.

Render DOT with Graphviz (stepflow visualize f.yaml | dot -Tsvg > f.svg) or
paste Mermaid into any Markdown viewer that supports it.

A flow with fatal diagnostics or errors (see validate: a reference to an
undefined step, a cycle, …) is not drawn: its diagnostics go to stderr and
the exit code is 1. Routes are not checked (visualize reads no config).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if format != "dot" && format != "mermaid" {
				return usageErr("--format must be dot or mermaid, got %q", format)
			}
			f, err := flow.Load(args[0])
			if err != nil {
				return &ExitError{Code: ExitFailure, Err: err}
			}
			// A flow that does not validate (a reference to an undefined
			// step, a cycle, …) has no graph to draw: report it as
			// validate does and draw nothing.
			if diags := onlyErrors(withoutExperimental(flow.Validate(f))); diags.HasErrors() {
				printDiagnostics(a.io.Stderr, f.File, diags)
				return &ExitError{Code: ExitFailure, Err: errors.New("flow validation failed")}
			}
			var text string
			if format == "dot" {
				text = DOT(f)
			} else {
				text = Mermaid(f)
			}
			var w io.Writer = a.io.Stdout
			if output != "" {
				return writeFile(output, text)
			}
			_, err = io.WriteString(w, text)
			return err
		},
	}
	cmd.Flags().StringVar(&format, "format", "dot", "dot or mermaid")
	cmd.Flags().StringVarP(&output, "output", "o", "", "write to this file instead of stdout")
	return cmd
}

func writeFile(path, text string) error {
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		return &ExitError{Code: ExitFailure, Err: err}
	}
	return nil
}

// edge is a dependency of a node on a step.
type edge struct {
	from, to    string // node ids
	conditional bool   // only under a $if branch or a later $coalesce entry
}

// graphEdges lists the dependencies of every step and of the output.
func graphEdges(f *flow.Flow) []edge {
	var edges []edge
	add := func(to string, e expr.Expr) {
		seen := map[string]int{} // step -> index in edges
		var visit func(e expr.Expr, conditional bool)
		visit = func(e expr.Expr, conditional bool) {
			switch x := e.(type) {
			case *expr.StepRef:
				from := stepNode(x.Step)
				if i, ok := seen[from]; ok {
					edges[i].conditional = edges[i].conditional && conditional
					return
				}
				seen[from] = len(edges)
				edges = append(edges, edge{from: from, to: to, conditional: conditional})
			case *expr.If:
				visit(x.Cond, conditional)
				visit(x.Then, true)
				if x.Else != nil {
					visit(x.Else, true)
				}
			case *expr.Coalesce:
				for i, item := range x.Items {
					visit(item, conditional || i > 0)
				}
			case *expr.Object:
				for _, v := range x.Vals {
					visit(v, conditional)
				}
			case *expr.Array:
				for _, v := range x.Elems {
					visit(v, conditional)
				}
			case *expr.VariableRef:
				if x.Default != nil {
					visit(x.Default, true)
				}
			}
		}
		if e != nil {
			visit(e, false)
		}
	}
	for _, s := range f.Steps {
		add(stepNode(s.ID), s.Input)
	}
	add("output", f.Output)
	return edges
}

func stepNode(id string) string { return "step_" + sanitizeID(id) }

func sanitizeID(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			fmt.Fprintf(&b, "_%x_", r)
		}
	}
	return b.String()
}

// DOT renders the step graph of f in Graphviz DOT.
func DOT(f *flow.Flow) string {
	var b strings.Builder
	name := f.Name
	if name == "" {
		name = "flow"
	}
	fmt.Fprintf(&b, "digraph %q {\n  rankdir=TB;\n  node [shape=box, style=rounded, fontname=\"Helvetica\"];\n", name)
	b.WriteString("  input [label=\"input\", shape=ellipse];\n")
	for _, s := range f.Steps {
		attrs := ""
		if s.MustExecute {
			attrs = ", penwidth=2"
		}
		fmt.Fprintf(&b, "  %s [label=%q%s];\n", stepNode(s.ID), s.ID+"\n"+s.Component, attrs)
	}
	b.WriteString("  output [label=\"output\", shape=ellipse];\n")
	for _, e := range inputEdges(f) {
		fmt.Fprintf(&b, "  input -> %s;\n", e)
	}
	for _, e := range graphEdges(f) {
		style := ""
		if e.conditional {
			style = " [style=dashed]"
		}
		fmt.Fprintf(&b, "  %s -> %s%s;\n", e.from, e.to, style)
	}
	b.WriteString("}\n")
	return b.String()
}

// Mermaid renders the step graph of f as a Mermaid flowchart.
func Mermaid(f *flow.Flow) string {
	var b strings.Builder
	b.WriteString("flowchart TD\n  input([input])\n")
	for _, s := range f.Steps {
		fmt.Fprintf(&b, "  %s[\"%s<br/><small>%s</small>\"]\n", stepNode(s.ID), mermaidText(s.ID), mermaidText(s.Component))
	}
	b.WriteString("  output([output])\n")
	for _, e := range inputEdges(f) {
		fmt.Fprintf(&b, "  input --> %s\n", e)
	}
	for _, e := range graphEdges(f) {
		arrow := "-->"
		if e.conditional {
			arrow = "-.->"
		}
		fmt.Fprintf(&b, "  %s %s %s\n", e.from, arrow, e.to)
	}
	return b.String()
}

func mermaidText(s string) string {
	return strings.NewReplacer(`"`, "#quot;", "<", "#lt;", ">", "#gt;").Replace(s)
}

// inputEdges lists the nodes that read the flow input.
func inputEdges(f *flow.Flow) []string {
	var out []string
	uses := func(e expr.Expr) bool {
		found := false
		expr.Walk(e, "$", func(_ string, x expr.Expr) {
			if _, ok := x.(*expr.InputRef); ok {
				found = true
			}
		})
		return found
	}
	for _, s := range f.Steps {
		if uses(s.Input) {
			out = append(out, stepNode(s.ID))
		}
	}
	if uses(f.Output) {
		out = append(out, "output")
	}
	return out
}
