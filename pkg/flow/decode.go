package flow

import (
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/stepflow-go/stepflow/pkg/expr"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// MaxFlowBytes bounds the size of a flow document accepted by Load and
// Parse.
const MaxFlowBytes = 16 << 20

// Sentinel errors wrapped by DecodeError.
var (
	// ErrUnrecognizedExtension is returned by Load for a file whose
	// extension is not .yaml, .yml, .json or .jsonl.
	ErrUnrecognizedExtension = errors.New("unrecognized file extension")
	// ErrTooLarge is returned for documents larger than MaxFlowBytes.
	ErrTooLarge = errors.New("flow document too large")
	// ErrInvalidFlow is wrapped by every error about the content of a flow
	// document (syntax, types, expressions), as opposed to I/O errors.
	ErrInvalidFlow = errors.New("invalid flow")
)

// DecodeError is a flow that cannot be read or decoded, with the place of
// the problem when it is known: `file:line:col: msg`.
type DecodeError = value.PlacedError

// Load reads a flow file. The extension selects the format: .yaml and
// .yml are YAML, .json and .jsonl are JSON (read with the YAML parser, of
// which JSON is a subset, so that errors carry positions).
func Load(path string) (*Flow, error) {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".yaml", ".yml", ".json", ".jsonl":
	default:
		return nil, &DecodeError{File: path, Err: ErrUnrecognizedExtension,
			Msg: fmt.Sprintf("unrecognized file extension %q (expected .yaml, .yml, .json or .jsonl)", filepath.Ext(path))}
	}
	data, err := value.ReadFile(path, MaxFlowBytes, "flow")
	if err != nil {
		return nil, err
	}
	return Parse(data, path)
}

// Parse decodes a flow from YAML or JSON text. file names the source in
// errors and in Flow.File; for a file ending in .json or .jsonl, text that
// the YAML parser rejects is retried as strict JSON (the YAML parser does
// not know every JSON escape).
func Parse(data []byte, file string) (*Flow, error) {
	if len(data) > MaxFlowBytes {
		return nil, &DecodeError{File: file, Err: ErrTooLarge,
			Msg: fmt.Sprintf("flow document is larger than %d bytes", MaxFlowBytes)}
	}
	sm := value.SourceMap{}
	d := decoder{value.Fields{File: file, Source: sm, Kind: ErrInvalidFlow}}
	v, err := parseYAML(data, sm)
	if err != nil {
		yerr := yamlError(file, err)
		ext := strings.ToLower(filepath.Ext(file))
		if ext != ".json" && ext != ".jsonl" {
			return nil, yerr
		}
		jv, jerr := d.ParseStrictJSON(data)
		if jerr != nil {
			return nil, jerr
		}
		v, sm, d.Source = jv, nil, nil
	}
	if v == nil {
		return nil, d.Errorf("", nil, "empty document: a flow must be an object")
	}
	f, err := d.flow(v)
	if err != nil {
		return nil, err
	}
	f.File, f.Source = file, sm
	return f, nil
}

// parseYAML parses a YAML document into a Value, keeping only the parts a
// flow reads: unknown keys of the flow, its steps, test section, test
// cases and examples are dropped before conversion, so that they may hold
// anything YAML can express (such as the non-string mapping keys of a
// mock plugin configuration) without making the file unreadable.
func parseYAML(data []byte, sm value.SourceMap) (value.Value, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, value.YAMLSyntaxError(data, err)
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, nil
	}
	return value.FromYAML(prune(doc.Content[0], flowShape, 0), "$", sm)
}

// shape lists the keys a decoder reads from a mapping; the shape of a key
// describes its value (nil: kept whole). The shape of a sequence applies
// to each element.
type shape map[string]shape

var (
	stepShape = shape{"id": nil, "component": nil, "onError": nil, "input": nil,
		"mustExecute": nil, "metadata": nil}
	caseShape    = shape{"name": nil, "description": nil, "input": nil, "output": nil}
	exampleShape = shape{"name": nil, "description": nil, "input": nil}
	testShape    = shape{"configFile": nil, "config": nil, "stepflow_config": nil, "cases": caseShape}
	flowShape    = shape{"name": nil, "description": nil, "version": nil, "schemas": nil,
		"steps": stepShape, "output": nil, "test": testShape, "examples": exampleShape, "metadata": nil}
)

// prune returns n without the mapping keys that s does not list. n is not
// modified; kept nodes are shared.
func prune(n *yaml.Node, s shape, depth int) *yaml.Node {
	if s == nil || depth > 8 {
		return n
	}
	switch n.Kind {
	case yaml.AliasNode:
		if n.Alias == nil {
			return n
		}
		return prune(n.Alias, s, depth+1)
	case yaml.SequenceNode:
		out := *n
		out.Content = make([]*yaml.Node, len(n.Content))
		for i, c := range n.Content {
			out.Content[i] = prune(c, s, depth+1)
		}
		return &out
	case yaml.MappingNode:
		out := *n
		out.Content = make([]*yaml.Node, 0, len(n.Content))
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind == yaml.ScalarNode && k.Tag == "!!merge" {
				out.Content = append(out.Content, k, prune(v, s, depth+1))
				continue
			}
			kk := k
			if kk.Kind == yaml.AliasNode && kk.Alias != nil {
				kk = kk.Alias
			}
			if kk.Kind != yaml.ScalarNode {
				continue
			}
			if sub, ok := s[kk.Value]; ok {
				out.Content = append(out.Content, k, prune(v, sub, depth+1))
			}
		}
		return &out
	default:
		return n
	}
}

// yamlError turns a value.YAMLError (a syntax error or a problem
// converting YAML to JSON) into a DecodeError.
func yamlError(file string, err error) *DecodeError {
	var ye *value.YAMLError
	if errors.As(err, &ye) {
		return &DecodeError{File: file, Pos: ye.Pos, Msg: ye.Msg, Err: errors.Join(ErrInvalidFlow, err)}
	}
	return &DecodeError{File: file, Msg: "invalid YAML: " + err.Error(), Err: errors.Join(ErrInvalidFlow, err)}
}

// FromValue decodes a flow given as a JSON value, such as a nested flow
// passed to /builtin/map or stored with /builtin/put_blob. Errors name the
// JSON path of the problem (there are no file positions).
func FromValue(v value.Value) (*Flow, error) {
	d := decoder{value.Fields{Kind: ErrInvalidFlow}}
	return d.flow(v)
}

// decoder decodes flow documents, turning problems into DecodeErrors
// positioned through the source map.
type decoder struct {
	value.Fields
}

// exprError converts an expression parse error, placing it at its path.
func (d *decoder) exprError(err error) *DecodeError {
	var pe *expr.ParseError
	if errors.As(err, &pe) {
		return d.Errorf(pe.Path, err, "invalid expression: %s", pe.Msg)
	}
	return d.Errorf("$", err, "invalid expression: %v", err)
}

// optMetadata reads a metadata object: absent gives nil, empty gives nil.
func (d *decoder) optMetadata(o *value.Object, path string) (*value.Object, *DecodeError) {
	v, ok := o.Get("metadata")
	if !ok {
		return nil, nil
	}
	m, err := d.Object(v, value.PathField(path, "metadata"), "`metadata`")
	if err != nil {
		return nil, err
	}
	if m.Len() == 0 {
		return nil, nil
	}
	return m, nil
}

func (d *decoder) flow(v value.Value) (*Flow, error) {
	o, ok := v.(*value.Object)
	if !ok {
		return nil, d.Errorf("$", nil, "a flow must be an object, got %s", value.TypeName(v))
	}
	f := &Flow{cache: &flowCache{}}
	var err *DecodeError
	if f.Name, err = d.OptString(o, "name", "$"); err != nil {
		return nil, err
	}
	if f.Description, err = d.OptString(o, "description", "$"); err != nil {
		return nil, err
	}
	if f.Version, err = d.OptString(o, "version", "$"); err != nil {
		return nil, err
	}
	if f.Schemas, err = d.schemas(o); err != nil {
		return nil, err
	}
	if sv, ok := o.Get("steps"); ok {
		arr, ok := sv.([]value.Value)
		if !ok {
			return nil, d.TypeError("$.steps", "`steps`", "an array of steps", sv)
		}
		f.Steps = make([]*Step, len(arr))
		for i, e := range arr {
			if f.Steps[i], err = d.step(e, value.PathIndex("$.steps", i)); err != nil {
				return nil, err
			}
		}
	}
	if ov, ok := o.Get("output"); ok && ov != nil {
		x, perr := expr.Parse(ov, "$.output")
		if perr != nil {
			return nil, d.exprError(perr)
		}
		f.Output = x
	}
	if tv, ok := o.Get("test"); ok && tv != nil {
		if f.Test, err = d.test(tv, "$.test"); err != nil {
			return nil, err
		}
	}
	if ev, ok := o.Get("examples"); ok && ev != nil {
		arr, ok := ev.([]value.Value)
		if !ok {
			return nil, d.TypeError("$.examples", "`examples`", "an array", ev)
		}
		f.Examples = make([]Example, len(arr))
		for i, e := range arr {
			p := value.PathIndex("$.examples", i)
			eo, err := d.Object(e, p, "an example")
			if err != nil {
				return nil, err
			}
			ex := &f.Examples[i]
			if ex.Name, err = d.ReqString(eo, "name", p, "example"); err != nil {
				return nil, err
			}
			if ex.Description, err = d.OptString(eo, "description", p); err != nil {
				return nil, err
			}
			in, ok := eo.Get("input")
			if !ok {
				return nil, d.Errorf(p, nil, "missing field `input` in example")
			}
			ex.Input = in
		}
	}
	if f.Metadata, err = d.optMetadata(o, "$"); err != nil {
		return nil, err
	}
	return f, nil
}

// schemas reads the `schemas` section (§2.1 wire format).
func (d *decoder) schemas(o *value.Object) (*Schemas, *DecodeError) {
	s := &Schemas{}
	v, ok := o.Get("schemas")
	if !ok || v == nil {
		return s, nil
	}
	so, err := d.Object(v, "$.schemas", "`schemas`")
	if err != nil {
		return nil, err
	}
	if dv, ok := so.Get("$defs"); ok && dv != nil {
		defs, err := d.Object(dv, "$.schemas.$defs", "`$defs`")
		if err != nil {
			return nil, err
		}
		for i := range defs.Len() {
			k, sch := defs.At(i)
			if err := d.checkSchema(sch, value.PathField("$.schemas.$defs", k)); err != nil {
				return nil, err
			}
		}
		if defs.Len() > 0 {
			s.Defs = defs
		}
	}
	pv, ok := so.Get("properties")
	props, isObj := pv.(*value.Object)
	if !ok || !isObj {
		// Anything but an object carries no schemas (upstream ignores it).
		return s, nil
	}
	const pp = "$.schemas.properties"
	read := func(key string) (value.Value, *DecodeError) {
		sch, ok := props.Get(key)
		if !ok || sch == nil {
			return nil, nil
		}
		if err := d.checkSchema(sch, value.PathField(pp, key)); err != nil {
			return nil, err
		}
		return sch, nil
	}
	if s.Input, err = read("input"); err != nil {
		return nil, err
	}
	if s.Output, err = read("output"); err != nil {
		return nil, err
	}
	if s.Variables, err = read("variables"); err != nil {
		return nil, err
	}
	if stv, ok := props.Get("steps"); ok {
		sto, _ := stv.(*value.Object)
		stp, _ := sto.Get("properties")
		if spo, ok := stp.(*value.Object); ok && spo.Len() > 0 {
			s.Steps = make(map[string]value.Value, spo.Len())
			for i := range spo.Len() {
				id, sch := spo.At(i)
				if err := d.checkSchema(sch, value.PathField(pp+".steps.properties", id)); err != nil {
					return nil, err
				}
				if _, dup := s.Steps[id]; !dup {
					s.StepOrder = append(s.StepOrder, id)
				}
				s.Steps[id] = sch
			}
		}
	}
	return s, nil
}

// checkSchema accepts a JSON Schema: an object or a boolean.
func (d *decoder) checkSchema(v value.Value, path string) *DecodeError {
	switch v.(type) {
	case *value.Object, bool:
		return nil
	}
	return d.TypeError(path, "schema", "a JSON Schema object", v)
}

func (d *decoder) step(v value.Value, path string) (*Step, *DecodeError) {
	o, err := d.Object(v, path, "a step")
	if err != nil {
		return nil, err
	}
	s := &Step{}
	if s.ID, err = d.ReqString(o, "id", path, "step"); err != nil {
		return nil, err
	}
	if s.Component, err = d.ReqString(o, "component", path, "step"); err != nil {
		return nil, err
	}
	if ev, ok := o.Get("onError"); ok && ev != nil {
		if s.OnError, err = d.errorAction(ev, value.PathField(path, "onError")); err != nil {
			return nil, err
		}
	}
	if iv, ok := o.Get("input"); ok && iv != nil {
		x, perr := expr.Parse(iv, value.PathField(path, "input"))
		if perr != nil {
			return nil, d.exprError(perr)
		}
		s.Input = x
	}
	if mv, ok := o.Get("mustExecute"); ok && mv != nil {
		b, ok := mv.(bool)
		if !ok {
			return nil, d.TypeError(value.PathField(path, "mustExecute"), "`mustExecute`", "a boolean", mv)
		}
		s.MustExecute = b
	}
	if s.Metadata, err = d.optMetadata(o, path); err != nil {
		return nil, err
	}
	return s, nil
}

func (d *decoder) errorAction(v value.Value, path string) (ErrorAction, *DecodeError) {
	o, err := d.Object(v, path, "`onError`")
	if err != nil {
		return ErrorAction{}, err
	}
	av, ok := o.Get("action")
	if !ok {
		return ErrorAction{}, d.Errorf(path, nil, "missing field `action` in onError")
	}
	action, ok := av.(string)
	if !ok {
		return ErrorAction{}, d.TypeError(value.PathField(path, "action"), "`action`", "a string", av)
	}
	var a ErrorAction
	switch ErrorActionKind(action) {
	case OnErrorFail:
		a.Action = OnErrorFail
	case OnErrorUseDefault:
		a.Action = OnErrorUseDefault
		a.DefaultValue, a.HasDefault = o.Get("defaultValue")
	case OnErrorRetry:
		a.Action = OnErrorRetry
		if a.Retry, err = d.retryPolicy(o, path); err != nil {
			return ErrorAction{}, err
		}
	default:
		return ErrorAction{}, d.Errorf(value.PathField(path, "action"), nil,
			"unknown onError action %q: expected `fail`, `useDefault` or `retry`", action)
	}
	return a, nil
}

// maxDelayMs bounds millisecond fields so that they fit a time.Duration.
const maxDelayMs = math.MaxInt64 / int64(time.Millisecond)

func (d *decoder) retryPolicy(o *value.Object, path string) (RetryPolicy, *DecodeError) {
	var p RetryPolicy
	intField := func(key string, limit int64) (int64, *DecodeError) {
		v, ok := o.Get(key)
		if !ok || v == nil {
			return 0, nil
		}
		n, ok := v.(value.Number)
		var i int64
		var err error
		if ok && value.IsInteger(n) {
			i, err = n.Int64()
		}
		if !ok || !value.IsInteger(n) || err != nil || i < 0 || i > limit {
			return 0, d.TypeError(value.PathField(path, key), "`"+key+"`", fmt.Sprintf("an integer between 0 and %d", limit), v)
		}
		return i, nil
	}
	n, err := intField("maxAttempts", math.MaxInt32)
	if err != nil {
		return p, err
	}
	p.MaxAttempts = int(n)
	if n, err = intField("initialDelayMs", maxDelayMs); err != nil {
		return p, err
	}
	p.InitialDelay = time.Duration(n) * time.Millisecond
	if n, err = intField("maxDelayMs", maxDelayMs); err != nil {
		return p, err
	}
	p.MaxDelay = time.Duration(n) * time.Millisecond
	if v, ok := o.Get("backoffCoefficient"); ok && v != nil {
		num, ok := v.(value.Number)
		var c float64
		var perr error
		if ok {
			c, perr = num.Float64()
		}
		if !ok || perr != nil || c < 0 || math.IsInf(c, 0) {
			return p, d.TypeError(value.PathField(path, "backoffCoefficient"), "`backoffCoefficient`", "a non-negative number", v)
		}
		p.BackoffCoefficient = c
	}
	return p, nil
}

func (d *decoder) test(v value.Value, path string) (*TestConfig, *DecodeError) {
	o, err := d.Object(v, path, "`test`")
	if err != nil {
		return nil, err
	}
	t := &TestConfig{}
	if t.ConfigFile, err = d.OptString(o, "configFile", path); err != nil {
		return nil, err
	}
	key := "config"
	cv, ok := o.Get(key)
	if !ok {
		key = "stepflow_config"
		cv, ok = o.Get(key)
	}
	if ok && cv != nil {
		if t.Config, err = d.Object(cv, value.PathField(path, key), "`"+key+"`"); err != nil {
			return nil, err
		}
	}
	if cv, ok := o.Get("cases"); ok && cv != nil {
		arr, ok := cv.([]value.Value)
		if !ok {
			return nil, d.TypeError(value.PathField(path, "cases"), "`cases`", "an array", cv)
		}
		t.Cases = make([]TestCase, len(arr))
		for i, e := range arr {
			p := value.PathIndex(value.PathField(path, "cases"), i)
			co, err := d.Object(e, p, "a test case")
			if err != nil {
				return nil, err
			}
			c := &t.Cases[i]
			if c.Name, err = d.ReqString(co, "name", p, "test case"); err != nil {
				return nil, err
			}
			if c.Description, err = d.OptString(co, "description", p); err != nil {
				return nil, err
			}
			in, ok := co.Get("input")
			if !ok {
				return nil, d.Errorf(p, nil, "missing field `input` in test case %q", c.Name)
			}
			c.Input = in
			if out, ok := co.Get("output"); ok && out != nil {
				if _, perr := outcome.Parse(out); perr != nil {
					return nil, d.Errorf(value.PathField(p, "output"), perr, "invalid expected output of test case %q: %v", c.Name, perr)
				}
				c.Output = out
			}
		}
	}
	return t, nil
}
