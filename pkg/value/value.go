// Package value is the JSON data model of stepflow-go.
//
// Flows, step inputs, step results and batch items are JSON values whose
// details matter for compatibility with upstream Stepflow:
//
//   - object keys keep their source order (results and content hashes
//     depend on it), so objects are [*Object], not Go maps;
//   - numbers keep the integer/float distinction (`1` and `1.0` are
//     different values, and `1.0` is written back as `1.0`), so numbers are
//     [Number], the canonical text of the number;
//   - encoding is compact, never escapes HTML characters or non-ASCII text,
//     and matches serde_json byte for byte, so content hashes agree with
//     upstream.
//
// A Value is one of: nil (JSON null), bool, Number, string, []Value or
// *Object. Values are treated as immutable once built and shared freely
// between goroutines; code that needs to change one copies it first
// ([Clone]).
package value

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
)

// Value is a JSON value: nil, bool, Number, string, []Value or *Object.
type Value = any

// Number is a JSON number in canonical text form. Integers keep their
// digits; floats use the shortest representation that round-trips and
// always carry a fraction or an exponent (`1.0`, `0.5`, `1e20`), as
// serde_json writes them. It is json.Number so that encoding/json writes it
// as a number.
type Number = json.Number

// Int returns the Number for an integer.
func Int(i int64) Number { return Number(strconv.FormatInt(i, 10)) }

// Float returns the canonical Number for a float. NaN and infinities have
// no JSON form; callers must not pass them.
func Float(f float64) Number { return Number(formatFloat(f)) }

// IsInteger reports whether n is written as an integer (no fraction, no
// exponent).
func IsInteger(n Number) bool { return !strings.ContainsAny(string(n), ".eE") }

// Object is a JSON object that keeps its keys in insertion order. The zero
// value is an empty object ready to use. Lookups are linear for small
// objects and indexed for large ones; lookups never modify the object, so
// a finished object may be read from many goroutines.
type Object struct {
	keys  []string
	vals  []Value
	index map[string]int // built lazily once the object is large
}

const indexThreshold = 24

// NewObject returns an empty object with room for n keys.
func NewObject(n int) *Object {
	return &Object{keys: make([]string, 0, n), vals: make([]Value, 0, n)}
}

// ObjectOf builds an object from alternating keys and values:
// ObjectOf("a", 1, "b", "x"). It panics on an odd count or a non-string
// key; it is meant for literals in code and tests.
func ObjectOf(kv ...any) *Object {
	if len(kv)%2 != 0 {
		panic("value.ObjectOf: odd number of arguments")
	}
	o := NewObject(len(kv) / 2)
	for i := 0; i < len(kv); i += 2 {
		o.Set(kv[i].(string), kv[i+1])
	}
	return o
}

// Len returns the number of keys.
func (o *Object) Len() int {
	if o == nil {
		return 0
	}
	return len(o.keys)
}

// At returns the i-th key and value in order.
func (o *Object) At(i int) (string, Value) { return o.keys[i], o.vals[i] }

// Keys returns the keys in order. The slice must not be modified.
func (o *Object) Keys() []string {
	if o == nil {
		return nil
	}
	return o.keys
}

func (o *Object) find(key string) int {
	if o == nil {
		return -1
	}
	if o.index != nil {
		if i, ok := o.index[key]; ok {
			return i
		}
		return -1
	}
	for i, k := range o.keys {
		if k == key {
			return i
		}
	}
	return -1
}

func (o *Object) buildIndex() {
	idx := make(map[string]int, len(o.keys))
	for i, k := range o.keys {
		idx[k] = i
	}
	o.index = idx
}

// Get returns the value of key and whether it is present.
func (o *Object) Get(key string) (Value, bool) {
	i := o.find(key)
	if i < 0 {
		return nil, false
	}
	return o.vals[i], true
}

// Has reports whether key is present.
func (o *Object) Has(key string) bool { return o.find(key) >= 0 }

// Set sets key to v, keeping the key's position if it exists and appending
// it otherwise.
func (o *Object) Set(key string, v Value) {
	if i := o.find(key); i >= 0 {
		o.vals[i] = v
		return
	}
	o.keys = append(o.keys, key)
	o.vals = append(o.vals, v)
	switch {
	case o.index != nil:
		o.index[key] = len(o.keys) - 1
	case len(o.keys) > indexThreshold:
		// Built while the object is being filled (by one goroutine), so
		// that lookups on a finished object never write and may run
		// concurrently.
		o.buildIndex()
	}
}

// Delete removes key if present.
func (o *Object) Delete(key string) {
	i := o.find(key)
	if i < 0 {
		return
	}
	o.keys = append(o.keys[:i], o.keys[i+1:]...)
	o.vals = append(o.vals[:i], o.vals[i+1:]...)
	o.index = nil
	if len(o.keys) > indexThreshold {
		o.buildIndex()
	}
}

// MarshalJSON encodes the object compactly with its key order, so that
// *Object values inside structs encode correctly with encoding/json.
func (o *Object) MarshalJSON() ([]byte, error) { return Append(nil, o), nil }

// UnmarshalJSON decodes a JSON object keeping key order.
func (o *Object) UnmarshalJSON(data []byte) error {
	v, err := Parse(data)
	if err != nil {
		return err
	}
	obj, ok := v.(*Object)
	if !ok {
		return &json.UnmarshalTypeError{Value: TypeName(v), Type: nil}
	}
	*o = *obj
	return nil
}

// TypeName names the JSON type of v: null, boolean, number, string, array,
// object.
func TypeName(v Value) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case Number:
		return "number"
	case string:
		return "string"
	case []Value:
		return "array"
	case *Object:
		return "object"
	default:
		return "unknown"
	}
}

// Clone returns a deep copy of v.
func Clone(v Value) Value {
	switch t := v.(type) {
	case []Value:
		out := make([]Value, len(t))
		for i, e := range t {
			out[i] = Clone(e)
		}
		return out
	case *Object:
		out := NewObject(t.Len())
		for i, k := range t.keys {
			out.keys = append(out.keys, k)
			out.vals = append(out.vals, Clone(t.vals[i]))
		}
		if len(out.keys) > indexThreshold {
			out.buildIndex()
		}
		return out
	default:
		return v
	}
}

// Equal reports whether a and b are the same JSON value. Objects are equal
// when they have the same keys with equal values, in any order. Numbers are
// equal when both are integers with the same value or both are floats with
// the same value: 15 and 15.0 differ, as they do upstream.
func Equal(a, b Value) bool {
	switch x := a.(type) {
	case nil:
		return b == nil
	case bool:
		y, ok := b.(bool)
		return ok && x == y
	case string:
		y, ok := b.(string)
		return ok && x == y
	case Number:
		y, ok := b.(Number)
		return ok && NumberEqual(x, y)
	case []Value:
		y, ok := b.([]Value)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !Equal(x[i], y[i]) {
				return false
			}
		}
		return true
	case *Object:
		y, ok := b.(*Object)
		if !ok || x.Len() != y.Len() {
			return false
		}
		for i, k := range x.keys {
			w, ok := y.Get(k)
			if !ok || !Equal(x.vals[i], w) {
				return false
			}
		}
		return true
	}
	return false
}

// NumberEqual compares two numbers as Equal does.
func NumberEqual(a, b Number) bool {
	if a == b {
		return true
	}
	ai, bi := IsInteger(a), IsInteger(b)
	if ai != bi {
		return false
	}
	if ai {
		x, err1 := strconv.ParseInt(string(a), 10, 64)
		y, err2 := strconv.ParseInt(string(b), 10, 64)
		if err1 == nil && err2 == nil {
			return x == y
		}
	}
	x, err1 := strconv.ParseFloat(string(a), 64)
	y, err2 := strconv.ParseFloat(string(b), 64)
	return err1 == nil && err2 == nil && x == y
}

// Truthy reports whether v counts as true in a `$if` condition: everything
// but null and false, including 0, "" and empty containers.
func Truthy(v Value) bool {
	switch t := v.(type) {
	case nil:
		return false
	case bool:
		return t
	default:
		return true
	}
}

// FromGo converts plain Go values (as produced by encoding/json into any,
// or built by hand: map[string]any with sorted keys, []any, float64, int,
// json.Number, string, bool, nil) into a Value. It is for interop at the
// edges; the hot paths never need it.
func FromGo(v any) Value {
	switch t := v.(type) {
	case nil, bool, string, Number:
		return t
	case *Object:
		return t
	case []Value:
		out := make([]Value, len(t))
		for i, e := range t {
			out[i] = FromGo(e)
		}
		return out
	case map[string]any:
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		o := NewObject(len(keys))
		for _, k := range keys {
			o.Set(k, FromGo(t[k]))
		}
		return o
	case []string:
		out := make([]Value, len(t))
		for i, e := range t {
			out[i] = e
		}
		return out
	case int:
		return Int(int64(t))
	case int64:
		return Int(t)
	case uint32:
		return Int(int64(t))
	case float64:
		return Float(t)
	default:
		b, err := json.Marshal(v)
		if err != nil {
			return nil
		}
		out, err := Parse(b)
		if err != nil {
			return nil
		}
		return out
	}
}
