package expr

import (
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// Eval evaluates e against env; a nil expression is null.
func Eval(e Expr, env Env) outcome.Result {
	if e == nil {
		return outcome.Success(nil)
	}
	return e.Eval(env)
}

// Eval returns the literal value.
func (l *Literal) Eval(Env) outcome.Result { return outcome.Success(l.Value) }

// Eval returns the step result, or its sub-value at Path. A null step
// result is null whatever the path; a failed step fails with its own
// error, unchanged.
func (r *StepRef) Eval(env Env) outcome.Result {
	res, state := env.Step(r.Step)
	switch state {
	case StepUnknown:
		return outcome.Failure(outcome.Errorf(outcome.CodeNotFound, "Unknown step: %s", r.Step))
	case StepPending:
		return outcome.Failure(outcome.Errorf(outcome.CodeComponent, "Step %s not completed", r.Step))
	}
	if res.Failed() || res.Value == nil || r.Path.IsRoot() {
		return res
	}
	v, ok := r.Path.Lookup(res.Value)
	if !ok {
		return outcome.Failure(outcome.Errorf(outcome.CodeExpression, "Path %s not found", r.Path))
	}
	return outcome.Success(v)
}

// Eval returns the input or its sub-value.
func (r *InputRef) Eval(env Env) outcome.Result {
	v, ok := r.Path.Lookup(env.Input())
	if !ok {
		return outcome.Failure(outcome.Errorf(outcome.CodeExpression, "Input path %s not found", r.Path))
	}
	return outcome.Success(v)
}

// Eval returns the variable (or its sub-value); when it is undefined or
// the sub-path is missing, the inline default.
func (r *VariableRef) Eval(env Env) outcome.Result {
	if v, ok := env.Variable(r.Name); ok {
		if sub, ok := r.Path.Lookup(v); ok {
			return outcome.Success(sub)
		}
	}
	if r.Default != nil {
		return r.Default.Eval(env)
	}
	return outcome.Failure(outcome.Errorf(outcome.CodeExpression, "Undefined variable: %s", r.Name))
}

// Eval evaluates the condition and then only the chosen branch. A failed
// condition counts as false.
func (x *If) Eval(env Env) outcome.Result {
	c := x.Cond.Eval(env)
	if !c.Failed() && value.Truthy(c.Value) {
		return x.Then.Eval(env)
	}
	if x.Else == nil {
		return outcome.Success(nil)
	}
	return x.Else.Eval(env)
}

// Eval returns the first entry that is a non-null success, or the first
// failure; null when every entry is null.
func (x *Coalesce) Eval(env Env) outcome.Result {
	for _, item := range x.Items {
		r := item.Eval(env)
		if r.Failed() || r.Value != nil {
			return r
		}
	}
	return outcome.Success(nil)
}

// Eval builds the object; the first failing member (in source order)
// fails it.
func (x *Object) Eval(env Env) outcome.Result {
	o := value.NewObject(len(x.Keys))
	for i, k := range x.Keys {
		r := x.Vals[i].Eval(env)
		if r.Failed() {
			return r
		}
		o.Set(k, r.Value)
	}
	return outcome.Success(o)
}

// Eval builds the array; the first failing element fails it.
func (x *Array) Eval(env Env) outcome.Result {
	arr := make([]value.Value, len(x.Elems))
	for i, e := range x.Elems {
		r := e.Eval(env)
		if r.Failed() {
			return r
		}
		arr[i] = r.Value
	}
	return outcome.Success(arr)
}

// --- needs -------------------------------------------------------------

func (*Literal) needs(Env, func(string))  {}
func (*InputRef) needs(Env, func(string)) {}

func (r *StepRef) needs(env Env, fn func(string)) {
	if _, state := env.Step(r.Step); state == StepPending {
		fn(r.Step)
	}
}

func (r *VariableRef) needs(env Env, fn func(string)) {
	if r.Default == nil {
		return
	}
	if v, ok := env.Variable(r.Name); ok {
		if _, ok := r.Path.Lookup(v); ok {
			return
		}
	}
	// Unlike upstream, a default that references a step is tracked.
	r.Default.needs(env, fn)
}

// pending reports whether e is waiting on any step.
func pending(e Expr, env Env) bool {
	waiting := false
	e.needs(env, func(string) { waiting = true })
	return waiting
}

func (x *If) needs(env Env, fn func(string)) {
	if pending(x.Cond, env) {
		x.Cond.needs(env, fn)
		return
	}
	c := x.Cond.Eval(env)
	if !c.Failed() && value.Truthy(c.Value) {
		x.Then.needs(env, fn)
	} else if x.Else != nil {
		x.Else.needs(env, fn)
	}
}

func (x *Coalesce) needs(env Env, fn func(string)) {
	for _, item := range x.Items {
		if pending(item, env) {
			item.needs(env, fn)
			return
		}
		if r := item.Eval(env); r.Failed() || r.Value != nil {
			return
		}
	}
}

func (x *Object) needs(env Env, fn func(string)) {
	for _, v := range x.Vals {
		v.needs(env, fn)
	}
}

func (x *Array) needs(env Env, fn func(string)) {
	for _, e := range x.Elems {
		e.needs(env, fn)
	}
}

// --- canonical form -----------------------------------------------------

func (l *Literal) canonical() value.Value {
	if l.Escaped {
		return value.ObjectOf("$literal", l.Value)
	}
	return l.Value
}

func (r *StepRef) canonical() value.Value {
	o := value.ObjectOf("$step", r.Step)
	if !r.Path.IsRoot() {
		o.Set("path", r.Path.String())
	}
	return o
}

func (r *InputRef) canonical() value.Value { return value.ObjectOf("$input", r.Path.String()) }

func (r *VariableRef) canonical() value.Value {
	text := r.Name
	if !r.Path.IsRoot() || !plainName(r.Name) {
		text = Path{segs: append([]segment{{field: r.Name}}, r.Path.segs...)}.String()
	}
	o := value.ObjectOf("$variable", text)
	if r.Default != nil {
		o.Set("default", r.Default.canonical())
	}
	return o
}

func (x *If) canonical() value.Value {
	o := value.ObjectOf("$if", x.Cond.canonical(), "then", x.Then.canonical())
	if x.Else != nil {
		o.Set("else", x.Else.canonical())
	}
	return o
}

func (x *Coalesce) canonical() value.Value {
	arr := make([]value.Value, len(x.Items))
	for i, e := range x.Items {
		arr[i] = e.canonical()
	}
	return value.ObjectOf("$coalesce", arr)
}

func (x *Object) canonical() value.Value {
	o := value.NewObject(len(x.Keys))
	for i, k := range x.Keys {
		o.Set(k, x.Vals[i].canonical())
	}
	return o
}

func (x *Array) canonical() value.Value {
	arr := make([]value.Value, len(x.Elems))
	for i, e := range x.Elems {
		arr[i] = e.canonical()
	}
	return arr
}

// --- walk ---------------------------------------------------------------

func (l *Literal) walk(path string, fn func(string, Expr))  { fn(path, l) }
func (r *StepRef) walk(path string, fn func(string, Expr))  { fn(path, r) }
func (r *InputRef) walk(path string, fn func(string, Expr)) { fn(path, r) }

func (r *VariableRef) walk(path string, fn func(string, Expr)) {
	fn(path, r)
	if r.Default != nil {
		r.Default.walk(value.PathField(path, "default"), fn)
	}
}

func (x *If) walk(path string, fn func(string, Expr)) {
	fn(path, x)
	x.Cond.walk(value.PathField(path, "$if"), fn)
	x.Then.walk(value.PathField(path, "then"), fn)
	if x.Else != nil {
		x.Else.walk(value.PathField(path, "else"), fn)
	}
}

func (x *Coalesce) walk(path string, fn func(string, Expr)) {
	fn(path, x)
	for i, e := range x.Items {
		e.walk(value.PathIndex(value.PathField(path, "$coalesce"), i), fn)
	}
}

func (x *Object) walk(path string, fn func(string, Expr)) {
	fn(path, x)
	for i, k := range x.Keys {
		x.Vals[i].walk(value.PathField(path, k), fn)
	}
}

func (x *Array) walk(path string, fn func(string, Expr)) {
	fn(path, x)
	for i, e := range x.Elems {
		e.walk(value.PathIndex(path, i), fn)
	}
}
