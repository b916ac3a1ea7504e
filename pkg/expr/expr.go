// Package expr implements Stepflow's value-expression language: the JSON
// values of step inputs and flow outputs in which objects with the keys
// `$input`, `$step`, `$variable`, `$literal`, `$if` and `$coalesce` are
// interpreted.
//
// Parsing follows upstream 0.9.0 precedence exactly (see Parse). An
// expression is evaluated against an Env that gives the item input, the
// results of completed steps and the run variables. Evaluation is lazy:
// `$if` evaluates only the chosen branch and `$coalesce` stops at the
// first non-null success, and Needs reports exactly the steps an
// expression is waiting for right now, so an executor can run only what
// the output demands.
package expr

import (
	"fmt"

	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// Expr is a parsed expression. The concrete types are *Literal, *StepRef,
// *InputRef, *VariableRef, *If, *Coalesce, *Object and *Array.
type Expr interface {
	// Eval evaluates the expression for one item.
	Eval(env Env) outcome.Result
	// needs reports the steps that must complete before Eval can give a
	// final answer, given what is complete now.
	needs(env Env, fn func(step string))
	// canonical returns the canonical JSON form of the expression.
	canonical() value.Value
	// walk visits the expression and its children, with the JSON path of
	// each inside the enclosing document.
	walk(path string, fn func(path string, e Expr))
}

// StepState tells how far a step has got, as seen by an expression.
type StepState int

const (
	// StepUnknown means no step has that id.
	StepUnknown StepState = iota
	// StepPending means the step exists but has not completed.
	StepPending
	// StepDone means the step has completed; its result is available.
	StepDone
)

// Env is what an expression is evaluated against.
type Env interface {
	// Input returns the item input.
	Input() value.Value
	// Step returns the state of a step and, when done, its result.
	Step(id string) (outcome.Result, StepState)
	// Variable returns the value of a run variable (supplied or defaulted
	// from the variables schema) and whether it is defined.
	Variable(name string) (value.Value, bool)
}

// Literal is a constant: a scalar, a container without expressions, or an
// escaped `$literal`.
type Literal struct {
	Value value.Value
	// Escaped is true for `{$literal: …}`, which keeps that form when the
	// flow is written back.
	Escaped bool
}

// StepRef is `{$step: id, path: …}`.
type StepRef struct {
	Step string
	Path Path
}

// InputRef is `{$input: path}`.
type InputRef struct {
	Path Path
}

// VariableRef is `{$variable: name-or-path, default: expr}`.
type VariableRef struct {
	Name    string
	Path    Path // within the variable's value
	Default Expr // nil when absent
	// text is the variable reference as written, for the canonical form.
	text string
}

// If is `{$if: cond, then: expr, else: expr}`.
type If struct {
	Cond, Then, Else Expr // Else is nil when absent
}

// Coalesce is `{$coalesce: [expr, …]}`.
type Coalesce struct {
	Items []Expr
}

// Object is an object whose values are expressions.
type Object struct {
	Keys []string
	Vals []Expr
}

// Array is an array whose elements are expressions.
type Array struct {
	Elems []Expr
}

// ParseError is an expression that cannot be parsed, with the JSON path of
// the offending value inside the parsed document.
type ParseError struct {
	Path string
	Msg  string
	Err  error // the underlying cause, if any
}

func (e *ParseError) Error() string { return fmt.Sprintf("%s: %s", e.Path, e.Msg) }

// Unwrap returns the cause.
func (e *ParseError) Unwrap() error { return e.Err }

// Parse parses a JSON value as an expression. path is the JSON path of v
// in its document, used in errors and by Walk. For each object the first
// matching key decides, in this order: `$literal`, `$if`, `$coalesce`,
// `$step`, `$input`, `$variable`; other objects (including ones with
// unknown `$` keys such as legacy `$from`) are plain data.
func Parse(v value.Value, path string) (Expr, error) {
	switch t := v.(type) {
	case *value.Object:
		return parseObject(t, path)
	case []value.Value:
		arr := &Array{Elems: make([]Expr, len(t))}
		constant := true
		for i, e := range t {
			x, err := Parse(e, value.PathIndex(path, i))
			if err != nil {
				return nil, err
			}
			arr.Elems[i] = x
			if l, ok := x.(*Literal); !ok || l.Escaped {
				constant = false
			}
		}
		if constant {
			return &Literal{Value: v}, nil
		}
		return arr, nil
	default:
		return &Literal{Value: v}, nil
	}
}

func parseObject(o *value.Object, path string) (Expr, error) {
	if v, ok := o.Get("$literal"); ok {
		return &Literal{Value: v, Escaped: true}, nil
	}
	if c, ok := o.Get("$if"); ok {
		cond, err := Parse(c, value.PathField(path, "$if"))
		if err != nil {
			return nil, err
		}
		t, ok := o.Get("then")
		if !ok {
			return nil, &ParseError{Path: path, Msg: "then key required for $if"}
		}
		then, err := Parse(t, value.PathField(path, "then"))
		if err != nil {
			return nil, err
		}
		x := &If{Cond: cond, Then: then}
		if e, ok := o.Get("else"); ok {
			if x.Else, err = Parse(e, value.PathField(path, "else")); err != nil {
				return nil, err
			}
		}
		return x, nil
	}
	if c, ok := o.Get("$coalesce"); ok {
		arr, ok := c.([]value.Value)
		if !ok {
			return nil, &ParseError{Path: value.PathField(path, "$coalesce"), Msg: "$coalesce must be an array"}
		}
		x := &Coalesce{Items: make([]Expr, len(arr))}
		for i, e := range arr {
			item, err := Parse(e, value.PathIndex(value.PathField(path, "$coalesce"), i))
			if err != nil {
				return nil, err
			}
			x.Items[i] = item
		}
		return x, nil
	}
	if s, ok := o.Get("$step"); ok {
		id, ok := s.(string)
		if !ok {
			return nil, &ParseError{Path: value.PathField(path, "$step"), Msg: fmt.Sprintf("$step must be a string step id, got %s", value.TypeName(s))}
		}
		x := &StepRef{Step: id}
		if p, ok := o.Get("path"); ok && p != nil {
			ps, ok := p.(string)
			if !ok {
				return nil, &ParseError{Path: value.PathField(path, "path"), Msg: fmt.Sprintf("path must be a string, got %s", value.TypeName(p))}
			}
			jp, err := ParsePath(ps)
			if err != nil {
				return nil, &ParseError{Path: value.PathField(path, "path"), Msg: err.Error(), Err: err}
			}
			x.Path = jp
		}
		return x, nil
	}
	if p, ok := o.Get("$input"); ok {
		if p == nil {
			return &InputRef{}, nil
		}
		ps, ok := p.(string)
		if !ok {
			return nil, &ParseError{Path: value.PathField(path, "$input"), Msg: fmt.Sprintf("$input must be a JSON path string, got %s", value.TypeName(p))}
		}
		jp, err := ParsePath(ps)
		if err != nil {
			return nil, &ParseError{Path: value.PathField(path, "$input"), Msg: err.Error(), Err: err}
		}
		return &InputRef{Path: jp}, nil
	}
	if p, ok := o.Get("$variable"); ok {
		ps, ok := p.(string)
		if !ok {
			return nil, &ParseError{Path: value.PathField(path, "$variable"), Msg: fmt.Sprintf("$variable must be a string, got %s", value.TypeName(p))}
		}
		jp, err := ParsePath(ps)
		if err != nil {
			return nil, &ParseError{Path: value.PathField(path, "$variable"), Msg: err.Error(), Err: err}
		}
		name, rest, ok := jp.Head()
		if !ok {
			return nil, &ParseError{Path: value.PathField(path, "$variable"), Msg: fmt.Sprintf("$variable %q does not name a variable", ps)}
		}
		x := &VariableRef{Name: name, Path: rest, text: ps}
		if d, ok := o.Get("default"); ok {
			if x.Default, err = Parse(d, value.PathField(path, "default")); err != nil {
				return nil, err
			}
		}
		return x, nil
	}
	x := &Object{Keys: make([]string, o.Len()), Vals: make([]Expr, o.Len())}
	constant := true
	for i := range o.Len() {
		k, v := o.At(i)
		e, err := Parse(v, value.PathField(path, k))
		if err != nil {
			return nil, err
		}
		x.Keys[i], x.Vals[i] = k, e
		if l, ok := e.(*Literal); !ok || l.Escaped {
			constant = false
		}
	}
	if constant {
		return &Literal{Value: o}, nil
	}
	return x, nil
}

// MustParse parses v and panics on error; for literals in code and tests.
func MustParse(v value.Value) Expr {
	e, err := Parse(v, "$")
	if err != nil {
		panic(err)
	}
	return e
}

// Canonical returns the canonical JSON form of e, as written back into
// stored flows and hashed: paths in `$.x` form, expressions in the key
// order upstream writes them.
func Canonical(e Expr) value.Value {
	if e == nil {
		return nil
	}
	return e.canonical()
}

// Needs calls fn for each step that e is waiting on right now: steps it
// references whose results are not yet available, following `$if` and
// `$coalesce` lazily. A step may be reported more than once.
func Needs(e Expr, env Env, fn func(step string)) {
	if e != nil {
		e.needs(env, fn)
	}
}

// Walk visits e and every sub-expression with its JSON path, starting
// from path.
func Walk(e Expr, path string, fn func(path string, e Expr)) {
	if e != nil {
		e.walk(path, fn)
	}
}

// StepRefs calls fn for every step referenced anywhere in e, in both
// branches of every `$if` and in every `$coalesce` entry.
func StepRefs(e Expr, fn func(step string)) {
	Walk(e, "$", func(_ string, x Expr) {
		if r, ok := x.(*StepRef); ok {
			fn(r.Step)
		}
	})
}
