package flow

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
	"golang.org/x/text/language"
	"golang.org/x/text/message"

	"github.com/stepflow-go/stepflow/pkg/value"
)

// Redacted replaces secret values in redacted copies.
const Redacted = "[REDACTED]"

// ErrInvalidSchema is wrapped when a flow schema does not compile.
var ErrInvalidSchema = errors.New("invalid JSON Schema")

// schemaProperties returns the `properties` object of a schema object.
func schemaProperties(o *value.Object) (*value.Object, bool) {
	pv, _ := o.Get("properties")
	props, ok := pv.(*value.Object)
	return props, ok
}

// requiredSet returns the names listed in a schema's `required`.
func requiredSet(o *value.Object) map[string]bool {
	rv, _ := o.Get("required")
	arr, _ := rv.([]value.Value)
	req := make(map[string]bool, len(arr))
	for _, r := range arr {
		if s, ok := r.(string); ok {
			req[s] = true
		}
	}
	return req
}

// VariableDefaults returns the default value of every declared variable
// that has one (spec §9): the property's explicit `default`; otherwise,
// only for properties not listed in `required`, one implied by `type`:
// "string" → "", "number"/"integer" → 0, "boolean" → false, a type array
// containing "null" → null. The map is new on every call.
func (f *Flow) VariableDefaults() map[string]value.Value {
	out := map[string]value.Value{}
	if f.Schemas == nil {
		return out
	}
	vo, ok := f.Schemas.Variables.(*value.Object)
	if !ok {
		return out
	}
	props, ok := schemaProperties(vo)
	if !ok {
		return out
	}
	required := requiredSet(vo)
	for i := range props.Len() {
		name, pv := props.At(i)
		po, _ := pv.(*value.Object)
		if d, ok := po.Get("default"); ok {
			out[name] = d
			continue
		}
		if required[name] {
			continue
		}
		t, _ := po.Get("type")
		switch t := t.(type) {
		case string:
			switch t {
			case "string":
				out[name] = ""
			case "number", "integer":
				out[name] = value.Int(0)
			case "boolean":
				out[name] = false
			}
		case []value.Value:
			if slices.ContainsFunc(t, func(x value.Value) bool { return x == "null" }) {
				out[name] = nil
			}
		}
	}
	return out
}

// Variables returns the run variables: the schema defaults
// (VariableDefaults) overlaid with the supplied values. When the flow
// declares a variables schema, each supplied variable that the schema
// declares is validated against its property schema; the error (a
// *SchemaError) names the variable. Required variables that are not
// supplied are not an error (as upstream). supplied is not modified.
func (f *Flow) Variables(supplied map[string]value.Value) (map[string]value.Value, error) {
	out := f.VariableDefaults()
	if len(supplied) > 0 {
		validators, err := f.variableValidators()
		if err != nil {
			return nil, err
		}
		names := make([]string, 0, len(supplied))
		for name := range supplied {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			v := supplied[name]
			if sv := validators[name]; sv != nil {
				if err := sv.Validate(v); err != nil {
					return nil, err
				}
			}
			out[name] = v
		}
	}
	return out, nil
}

// SecretVariables returns the names of the declared variables marked
// `is_secret: true`, in schema order.
func (f *Flow) SecretVariables() []string {
	if f.Schemas == nil || f.Schemas.Variables == nil {
		return nil
	}
	vo, ok := f.Schemas.Variables.(*value.Object)
	if !ok {
		return nil
	}
	r := newRefResolver(vo, f.Schemas.Defs)
	var names []string
	for _, sch := range r.branches(vo) {
		props, ok := schemaProperties(sch)
		if !ok {
			continue
		}
		for i := range props.Len() {
			name, pv := props.At(i)
			if r.isSecret(pv) && !slices.Contains(names, name) {
				names = append(names, name)
			}
		}
	}
	return names
}

// RedactVariables returns a copy of vars in which secret variables (and
// secret parts of variables) are replaced by "[REDACTED]".
func (f *Flow) RedactVariables(vars map[string]value.Value) map[string]value.Value {
	out := make(map[string]value.Value, len(vars))
	var vo, defs *value.Object
	if f.Schemas != nil {
		vo, _ = f.Schemas.Variables.(*value.Object)
		defs = f.Schemas.Defs
	}
	r := newRefResolver(vo, defs)
	for k, v := range vars {
		if vo == nil {
			out[k] = v
			continue
		}
		red, _ := r.redact(value.ObjectOf(k, v), []value.Value{vo}, 0)
		out[k], _ = red.(*value.Object).Get(k)
	}
	return out
}

// RedactInput returns a copy of an item input with the values that the
// flow's input schema marks secret replaced by "[REDACTED]".
func (f *Flow) RedactInput(v value.Value) value.Value {
	if f.Schemas == nil || f.Schemas.Input == nil {
		return v
	}
	out, _ := newRefResolver(f.Schemas.Input, f.Schemas.Defs).redact(v, []value.Value{f.Schemas.Input}, 0)
	return out
}

// Redact returns a copy of v in which every value whose schema has
// `is_secret: true` is replaced by "[REDACTED]". Object `properties`,
// `additionalProperties`, array `items` and `prefixItems`, `allOf`,
// `anyOf`, `oneOf` and local `$ref`s to `#/$defs/…` (or
// `#/definitions/…`) of schema are followed. v is not modified; the copy
// shares the parts that need no change.
func Redact(v value.Value, schema value.Value) value.Value {
	out, _ := newRefResolver(schema, nil).redact(v, []value.Value{schema}, 0)
	return out
}

// SecretPaths returns the JSON paths of the values a schema marks secret:
// `$.api_key`, `$.auth.token`, `$.keys[*]`, `$.extra.*` (`[*]` is every
// element of an array, `.*` every other member of an object). A schema that is itself secret gives `$`. A recursive schema is
// followed into itself once.
func SecretPaths(schema value.Value) []string {
	r := newRefResolver(schema, nil)
	var out []string
	active := map[*value.Object]int{} // times each schema is being walked

	var walk func(s value.Value, path string, depth int)
	walk = func(s value.Value, path string, depth int) {
		so, ok := s.(*value.Object)
		if !ok || depth > maxSchemaDepth {
			return
		}
		bs := r.branches(so)
		for _, b := range bs {
			if isSecretFlag(b) {
				if !slices.Contains(out, path) {
					out = append(out, path)
				}
				return
			}
		}
		for _, b := range bs {
			if active[b] >= 2 {
				continue
			}
			active[b]++
			if props, ok := schemaProperties(b); ok {
				for i := range props.Len() {
					k, ps := props.At(i)
					walk(ps, value.PathField(path, k), depth+1)
				}
			}
			if pv, ok := b.Get("prefixItems"); ok {
				arr, _ := pv.([]value.Value)
				for i, ps := range arr {
					walk(ps, value.PathIndex(path, i), depth+1)
				}
			}
			if items, ok := b.Get("items"); ok {
				walk(items, path+"[*]", depth+1)
			}
			if ap, ok := b.Get("additionalProperties"); ok {
				walk(ap, path+".*", depth+1)
			}
			active[b]--
		}
	}
	walk(schema, "$", 0)
	return out
}

// maxSchemaDepth bounds recursion through schemas and values.
const maxSchemaDepth = 256

// refResolver resolves `$ref`s against a schema's own `$defs` and the
// flow's shared `$defs`.
type refResolver struct {
	root *value.Object // the schema document ($defs, definitions)
	defs *value.Object // the flow's schemas.$defs
}

func newRefResolver(root value.Value, defs *value.Object) *refResolver {
	ro, _ := root.(*value.Object)
	return &refResolver{root: ro, defs: defs}
}

// lookup resolves one `$ref` text, or returns nil.
func (r *refResolver) lookup(ref string) value.Value {
	var name string
	var fromRoot []string
	switch {
	case strings.HasPrefix(ref, "#/$defs/"):
		name, fromRoot = ref[len("#/$defs/"):], []string{"$defs"}
	case strings.HasPrefix(ref, "#/definitions/"):
		name, fromRoot = ref[len("#/definitions/"):], []string{"definitions"}
	case strings.HasPrefix(ref, "#/schemas/$defs/"):
		name = ref[len("#/schemas/$defs/"):]
	default:
		return nil
	}
	name = unescapePointer(name)
	for _, key := range fromRoot {
		dv, _ := r.root.Get(key)
		if do, ok := dv.(*value.Object); ok {
			if s, ok := do.Get(name); ok {
				return s
			}
		}
	}
	if s, ok := r.defs.Get(name); ok {
		return s
	}
	return nil
}

func unescapePointer(s string) string {
	if u, err := url.PathUnescape(s); err == nil {
		s = u
	}
	return strings.ReplaceAll(strings.ReplaceAll(s, "~1", "/"), "~0", "~")
}

// branches returns the distinct schema objects that apply to a value
// together: s itself, the targets of its `$ref`s and its
// allOf/anyOf/oneOf members, recursively (bounded).
func (r *refResolver) branches(s *value.Object) []*value.Object {
	var out []*value.Object
	var add func(s *value.Object, depth int)
	add = func(s *value.Object, depth int) {
		if depth > 16 || len(out) >= 256 || slices.Contains(out, s) {
			return
		}
		out = append(out, s)
		if ref, ok := s.Get("$ref"); ok {
			if rs, ok := ref.(string); ok {
				if t, ok := r.lookup(rs).(*value.Object); ok {
					add(t, depth+1)
				}
			}
		}
		for _, key := range []string{"allOf", "anyOf", "oneOf"} {
			lv, _ := s.Get(key)
			arr, _ := lv.([]value.Value)
			for _, b := range arr {
				if bo, ok := b.(*value.Object); ok {
					add(bo, depth+1)
				}
			}
		}
	}
	add(s, 0)
	return out
}

func isSecretFlag(o *value.Object) bool {
	v, _ := o.Get("is_secret")
	return v == true
}

// isSecret reports whether a schema (or one of its branches) is marked
// `is_secret: true`.
func (r *refResolver) isSecret(s value.Value) bool {
	so, ok := s.(*value.Object)
	if !ok {
		return false
	}
	for _, b := range r.branches(so) {
		if isSecretFlag(b) {
			return true
		}
	}
	return false
}

// expand returns the distinct schema objects that apply to a value
// described by schemas, with refs and allOf/anyOf/oneOf expanded.
func (r *refResolver) expand(schemas []value.Value) []*value.Object {
	var out []*value.Object
	for _, s := range schemas {
		so, ok := s.(*value.Object)
		if !ok {
			continue
		}
		for _, b := range r.branches(so) {
			if !slices.Contains(out, b) {
				out = append(out, b)
			}
		}
	}
	return out
}

// redact returns v with the parts that schemas mark secret replaced, and
// whether anything changed; unchanged parts are shared.
func (r *refResolver) redact(v value.Value, schemas []value.Value, depth int) (value.Value, bool) {
	if depth > maxSchemaDepth {
		return v, false
	}
	bs := r.expand(schemas)
	for _, b := range bs {
		if isSecretFlag(b) {
			return Redacted, true
		}
	}
	switch t := v.(type) {
	case *value.Object:
		var out *value.Object
		for i := range t.Len() {
			k, x := t.At(i)
			var subs []value.Value
			for _, b := range bs {
				if sub := propertySchema(b, k); sub != nil {
					subs = append(subs, sub)
				}
			}
			nx, changed := x, false
			if len(subs) > 0 {
				nx, changed = r.redact(x, subs, depth+1)
			}
			if changed && out == nil {
				out = value.NewObject(t.Len())
				for j := range i {
					out.Set(t.At(j))
				}
			}
			if out != nil {
				out.Set(k, nx)
			}
		}
		if out == nil {
			return v, false
		}
		return out, true
	case []value.Value:
		var out []value.Value
		for i, x := range t {
			var subs []value.Value
			for _, b := range bs {
				if sub := itemSchema(b, i); sub != nil {
					subs = append(subs, sub)
				}
			}
			nx, changed := x, false
			if len(subs) > 0 {
				nx, changed = r.redact(x, subs, depth+1)
			}
			if changed && out == nil {
				out = make([]value.Value, len(t))
				copy(out, t[:i])
			}
			if out != nil {
				out[i] = nx
			}
		}
		if out == nil {
			return v, false
		}
		return out, true
	default:
		return v, false
	}
}

// propertySchema returns the schema of object member k: from
// `properties`, else from an object `additionalProperties`.
func propertySchema(s *value.Object, k string) value.Value {
	if props, ok := schemaProperties(s); ok {
		if ps, ok := props.Get(k); ok {
			return ps
		}
	}
	if ap, ok := s.Get("additionalProperties"); ok {
		if apo, ok := ap.(*value.Object); ok {
			return apo
		}
	}
	return nil
}

// itemSchema returns the schema of array element i: `prefixItems[i]`, an
// array-form `items[i]` (older drafts), or `items`.
func itemSchema(s *value.Object, i int) value.Value {
	if pv, ok := s.Get("prefixItems"); ok {
		if arr, ok := pv.([]value.Value); ok && i < len(arr) {
			return arr[i]
		}
	}
	iv, ok := s.Get("items")
	if !ok {
		return nil
	}
	if arr, ok := iv.([]value.Value); ok {
		if i < len(arr) {
			return arr[i]
		}
		return nil
	}
	return iv
}

// --- JSON Schema validation ------------------------------------------------

// SchemaValidator checks values against a compiled JSON Schema. It is
// safe for concurrent use.
type SchemaValidator struct {
	schema  *jsonschema.Schema
	subject string // "input does not match the flow's input schema"
	root    string // JSON path of the validated value in messages, "$"
	printer *message.Printer
}

// SchemaError is a value that does not match a schema. Its message is one
// line: `<subject>: <path>: <reason>`, naming the most specific failure,
// e.g. `input does not match the flow's input schema: $.data: missing
// property 'value'`.
type SchemaError struct {
	Subject string // what failed, e.g. "input does not match the flow's input schema"
	Path    string // JSON path of the offending value, e.g. "$.data"
	Reason  string // e.g. "missing property 'value'"
	Err     error  // the validator's full error
}

// Error returns `<subject>: <path>: <reason>`.
func (e *SchemaError) Error() string { return e.Subject + ": " + e.Path + ": " + e.Reason }

// Unwrap returns the validator's full error.
func (e *SchemaError) Unwrap() error { return e.Err }

// noLoader refuses to load schemas from anywhere: flow schemas are
// self-contained (local refs and the flow's $defs).
type noLoader struct{}

func (noLoader) Load(u string) (any, error) {
	return nil, fmt.Errorf("external schema references are not supported: %s", u)
}

// schemaURL is the base URL of compiled flow schemas.
const schemaURL = "stepflow:///flow-schema.json"

// compileSchema compiles schema, with the flow's $defs added to its own so
// that `$ref: "#/$defs/X"` works, and returns validators for the fragments
// (JSON pointers, "" for the root).
func compileSchema(schema value.Value, defs *value.Object, fragments []string) ([]*jsonschema.Schema, error) {
	doc := schema
	if so, ok := schema.(*value.Object); ok && defs.Len() > 0 {
		merged := value.NewObject(so.Len() + 1)
		for i := range so.Len() {
			k, v := so.At(i)
			merged.Set(k, v)
		}
		all := value.NewObject(defs.Len())
		if own, ok := so.Get("$defs"); ok {
			if oo, ok := own.(*value.Object); ok {
				for i := range oo.Len() {
					k, v := oo.At(i)
					all.Set(k, v)
				}
			}
		}
		for i := range defs.Len() {
			k, v := defs.At(i)
			if !all.Has(k) {
				all.Set(k, v)
			}
		}
		merged.Set("$defs", all)
		// `#/schemas/$defs/X`, the form upstream documents, resolves too.
		merged.Set("schemas", value.ObjectOf("$defs", all))
		doc = merged
	}
	c := jsonschema.NewCompiler()
	c.UseLoader(noLoader{})
	if err := c.AddResource(schemaURL, toAny(doc)); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidSchema, err)
	}
	out := make([]*jsonschema.Schema, len(fragments))
	for i, frag := range fragments {
		s, err := c.Compile(schemaURL + "#" + frag)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidSchema, err)
		}
		out[i] = s
	}
	return out, nil
}

// NewSchemaValidator compiles a JSON Schema (with shared $defs, which may
// be nil). subject starts the messages of its errors, e.g. "input does
// not match the flow's input schema".
func NewSchemaValidator(schema value.Value, defs *value.Object, subject string) (*SchemaValidator, error) {
	s, err := compileSchema(schema, defs, []string{""})
	if err != nil {
		return nil, err
	}
	return newValidator(s[0], subject, "$"), nil
}

func newValidator(s *jsonschema.Schema, subject, root string) *SchemaValidator {
	return &SchemaValidator{schema: s, subject: subject, root: root, printer: message.NewPrinter(language.English)}
}

// InputValidator returns the validator of the flow's input schema, or nil
// (and no error) when the flow declares none. It is compiled once per
// flow made by Load, Parse, FromValue or ApplyOverrides (on every call for
// a Flow built by hand).
func (f *Flow) InputValidator() (*SchemaValidator, error) {
	compile := func() (*SchemaValidator, error) {
		if f.Schemas == nil || f.Schemas.Input == nil {
			return nil, nil
		}
		v, err := NewSchemaValidator(f.Schemas.Input, f.Schemas.Defs, "input does not match the flow's input schema")
		if err != nil {
			return nil, fmt.Errorf("flow input schema: %w", err)
		}
		return v, nil
	}
	if f.cache == nil {
		return compile()
	}
	c := f.cache
	c.inputOnce.Do(func() { c.input, c.inputErr = compile() })
	return c.input, c.inputErr
}

// OutputValidator returns the validator of the flow's output schema, or
// nil (and no error) when the flow declares none. It is compiled once,
// like InputValidator.
func (f *Flow) OutputValidator() (*SchemaValidator, error) {
	compile := func() (*SchemaValidator, error) {
		if f.Schemas == nil || f.Schemas.Output == nil {
			return nil, nil
		}
		v, err := NewSchemaValidator(f.Schemas.Output, f.Schemas.Defs, "output does not match the flow's output schema")
		if err != nil {
			return nil, fmt.Errorf("flow output schema: %w", err)
		}
		return v, nil
	}
	if f.cache == nil {
		return compile()
	}
	c := f.cache
	c.outputOnce.Do(func() { c.output, c.outputErr = compile() })
	return c.output, c.outputErr
}

// variableValidators returns a validator per declared variable.
func (f *Flow) variableValidators() (map[string]*SchemaValidator, error) {
	compile := func() (map[string]*SchemaValidator, error) {
		if f.Schemas == nil {
			return nil, nil
		}
		vo, ok := f.Schemas.Variables.(*value.Object)
		if !ok {
			return nil, nil
		}
		props, ok := schemaProperties(vo)
		if !ok || props.Len() == 0 {
			return nil, nil
		}
		names := props.Keys()
		frags := make([]string, len(names))
		for i, n := range names {
			frags[i] = "/properties/" + escapePointer(n)
		}
		schemas, err := compileSchema(vo, f.Schemas.Defs, frags)
		if err != nil {
			return nil, fmt.Errorf("flow variables schema: %w", err)
		}
		out := make(map[string]*SchemaValidator, len(names))
		for i, n := range names {
			out[n] = newValidator(schemas[i],
				fmt.Sprintf("variable '%s' does not match the flow's variables schema", n), value.PathField("$", n))
		}
		return out, nil
	}
	if f.cache == nil {
		return compile()
	}
	c := f.cache
	c.varsOnce.Do(func() { c.vars, c.varsErr = compile() })
	return c.vars, c.varsErr
}

// escapePointer escapes a name as a JSON pointer token inside a URL
// fragment.
func escapePointer(s string) string {
	s = strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
	return url.PathEscape(s)
}

// Validate checks x against the schema. The error is a *SchemaError.
func (v *SchemaValidator) Validate(x value.Value) error {
	err := v.schema.Validate(toAny(x))
	if err == nil {
		return nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return &SchemaError{Subject: v.subject, Path: v.root, Reason: err.Error(), Err: err}
	}
	leaf := mostSpecific(ve)
	return &SchemaError{
		Subject: v.subject,
		Path:    instancePath(v.root, x, leaf.InstanceLocation),
		Reason:  reason(leaf.ErrorKind, v),
		Err:     err,
	}
}

// reason describes a failed keyword without quoting the offending value:
// the value may be a secret, and messages end up in logs and results.
func reason(k jsonschema.ErrorKind, v *SchemaValidator) string {
	switch k := k.(type) {
	case *kind.Pattern:
		return fmt.Sprintf("value does not match pattern %q", k.Want)
	case *kind.Format:
		return fmt.Sprintf("value is not a valid %s", k.Want)
	default:
		return k.LocalizedString(v.printer)
	}
}

// mostSpecific returns the failure deepest in the instance (the first
// such leaf in the error tree).
func mostSpecific(e *jsonschema.ValidationError) *jsonschema.ValidationError {
	best, bestDepth := e, -1
	var walk func(e *jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		if len(e.Causes) == 0 {
			if d := len(e.InstanceLocation); d > bestDepth {
				best, bestDepth = e, d
			}
			return
		}
		for _, c := range e.Causes {
			walk(c)
		}
	}
	walk(e)
	return best
}

// instancePath turns the validator's instance location into a JSON path,
// telling array indexes from field names by walking x.
func instancePath(root string, x value.Value, tokens []string) string {
	path := root
	cur := x
	for _, tok := range tokens {
		switch t := cur.(type) {
		case []value.Value:
			i, err := strconv.Atoi(tok)
			if err == nil && i >= 0 && i < len(t) {
				path = value.PathIndex(path, i)
				cur = t[i]
				continue
			}
			path = value.PathField(path, tok)
			cur = nil
		case *value.Object:
			path = value.PathField(path, tok)
			cur, _ = t.Get(tok)
		default:
			path = value.PathField(path, tok)
			cur = nil
		}
	}
	return path
}

// toAny converts a Value to the types the validator expects:
// map[string]any, []any, json.Number (which value.Number is), string,
// bool, nil.
func toAny(v value.Value) any {
	switch t := v.(type) {
	case *value.Object:
		m := make(map[string]any, t.Len())
		for i := range t.Len() {
			k, x := t.At(i)
			m[k] = toAny(x)
		}
		return m
	case []value.Value:
		a := make([]any, len(t))
		for i, x := range t {
			a[i] = toAny(x)
		}
		return a
	default:
		return v
	}
}
