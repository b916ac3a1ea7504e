package builtin

import (
	"strconv"

	"github.com/stepflow-go/stepflow/pkg/value"
)

// input reads a component input object; every problem is an invalid
// input error naming the field. Unknown fields are ignored, as upstream.
type input struct {
	o *value.Object
}

func decodeInput(v value.Value) (input, error) {
	o, ok := v.(*value.Object)
	if !ok {
		return input{}, invalidInput("expected an object, got %s", value.TypeName(v))
	}
	return input{o: o}, nil
}

func describe(v value.Value) string {
	s := value.TypeName(v)
	switch t := v.(type) {
	case value.Number, bool:
		s += " " + value.String(t)
	case string:
		if len(t) <= 40 {
			s += " " + strconv.Quote(t)
		}
	}
	return s
}

// reqAny reads a required field of any type (null allowed).
func (in input) reqAny(key string) (value.Value, error) {
	v, ok := in.o.Get(key)
	if !ok {
		return nil, invalidInput("missing field `%s`", key)
	}
	return v, nil
}

// reqString reads a required string field.
func (in input) reqString(key string) (string, error) {
	v, err := in.reqAny(key)
	if err != nil {
		return "", err
	}
	s, ok := v.(string)
	if !ok {
		return "", invalidInput("`%s`: expected a string, got %s", key, describe(v))
	}
	return s, nil
}

// optString reads an optional string field; absent and null give ok ==
// false.
func (in input) optString(key string) (s string, ok bool, err error) {
	v, present := in.o.Get(key)
	if !present || v == nil {
		return "", false, nil
	}
	s, isString := v.(string)
	if !isString {
		return "", false, invalidInput("`%s`: expected a string or null, got %s", key, describe(v))
	}
	return s, true, nil
}

// optUint reads an optional non-negative integer field up to max; absent
// and null give ok == false unless nullOK is false, when null is an error.
func (in input) optUint(key string, max uint64, nullOK bool) (n uint64, ok bool, err error) {
	v, present := in.o.Get(key)
	if !present || (v == nil && nullOK) {
		return 0, false, nil
	}
	num, isNum := v.(value.Number)
	if isNum && value.IsInteger(num) {
		if u, perr := strconv.ParseUint(string(num), 10, 64); perr == nil && u <= max {
			return u, true, nil
		}
	}
	return 0, false, invalidInput("`%s`: expected an integer from 0 to %d, got %s", key, max, describe(v))
}

// optNumber reads an optional number field; absent and null give ok ==
// false.
func (in input) optNumber(key string) (n value.Number, ok bool, err error) {
	v, present := in.o.Get(key)
	if !present || v == nil {
		return "", false, nil
	}
	num, isNum := v.(value.Number)
	if !isNum {
		return "", false, invalidInput("`%s`: expected a number or null, got %s", key, describe(v))
	}
	return num, true, nil
}
