package value

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// PlacedError is a problem in a document (a flow, a config), with its
// place: the file, the line and column, and the JSON path of the
// offending value.
type PlacedError struct {
	File string // "" when the document did not come from a file
	Pos  Pos    // zero when unknown; Col is 0 when only the line is known
	Path string // JSON path of the offending value (`$.steps[0].onError`), "" when unknown
	Msg  string
	Err  error // the cause, if any
}

// Error returns `file:line:col: msg`, leaving out the parts that are not
// known. Without a position, the JSON path stands in for it.
func (e *PlacedError) Error() string {
	place := Place(e.File, e.Pos)
	if e.Pos.IsZero() && e.Path != "" {
		if place != "" {
			place += ": "
		}
		place += e.Path
	}
	if place == "" {
		return e.Msg
	}
	return place + ": " + e.Msg
}

// Place formats a place in a file as `file:line:col`, leaving out what is
// unknown (the column when it is 0, the position when it is zero, the
// file when it is ""); "" when nothing is known.
func Place(file string, pos Pos) string {
	var b strings.Builder
	b.WriteString(file)
	if !pos.IsZero() {
		if b.Len() > 0 {
			b.WriteByte(':')
		}
		b.WriteString(strconv.Itoa(pos.Line))
		if pos.Col > 0 {
			b.WriteByte(':')
			b.WriteString(strconv.Itoa(pos.Col))
		}
	}
	return b.String()
}

// Unwrap returns the cause.
func (e *PlacedError) Unwrap() error { return e.Err }

// Fields reads typed fields out of a decoded document and turns problems
// into PlacedErrors positioned through the document's SourceMap. Flow and
// config decoders embed it.
type Fields struct {
	// File names the document in errors.
	File string
	// Source places JSON paths; nil when unknown.
	Source SourceMap
	// Kind is wrapped by every error (errors.Is), e.g. flow.ErrInvalidFlow.
	Kind error
}

// Pos returns the position of path, or of its nearest placed ancestor.
func (d Fields) Pos(path string) Pos {
	if d.Source == nil {
		return Pos{}
	}
	p, _ := d.Source.Lookup(path)
	return p
}

// Errorf returns a PlacedError at path wrapping d.Kind and cause.
func (d Fields) Errorf(path string, cause error, format string, args ...any) *PlacedError {
	e := &PlacedError{File: d.File, Path: path, Pos: d.Pos(path), Msg: fmt.Sprintf(format, args...)}
	switch {
	case cause != nil && d.Kind != nil:
		e.Err = errors.Join(d.Kind, cause)
	case cause != nil:
		e.Err = cause
	default:
		e.Err = d.Kind
	}
	return e
}

// TypeError reports a value of the wrong JSON type for field, showing
// short values.
func (d Fields) TypeError(path, field, want string, got Value) *PlacedError {
	desc := TypeName(got)
	switch t := got.(type) {
	case Number, bool:
		desc += " " + String(t)
	case string:
		if len(t) <= 40 {
			desc += " " + strconv.Quote(t)
		}
	}
	hint := ""
	if want == "a string" {
		if _, ok := got.(Number); ok {
			hint = " (quote it)"
		}
	}
	return d.Errorf(path, nil, "invalid type for %s: expected %s, got %s%s", field, want, desc, hint)
}

// Object requires v to be an object.
func (d Fields) Object(v Value, path, field string) (*Object, *PlacedError) {
	o, ok := v.(*Object)
	if !ok {
		return nil, d.TypeError(path, field, "an object", v)
	}
	return o, nil
}

// OptString reads an optional string field (absent or null gives "").
func (d Fields) OptString(o *Object, key, path string) (string, *PlacedError) {
	v, ok := o.Get(key)
	if !ok || v == nil {
		return "", nil
	}
	s, ok := v.(string)
	if !ok {
		return "", d.TypeError(PathField(path, key), "`"+key+"`", "a string", v)
	}
	return s, nil
}

// ReqString reads a required string field; what names the enclosing
// thing in the error ("step", "plugin").
func (d Fields) ReqString(o *Object, key, path, what string) (string, *PlacedError) {
	v, ok := o.Get(key)
	if !ok {
		return "", d.Errorf(path, nil, "missing field `%s` in %s", key, what)
	}
	s, ok := v.(string)
	if !ok {
		return "", d.TypeError(PathField(path, key), "`"+key+"`", "a string", v)
	}
	return s, nil
}

// ReadFile reads a document file of at most limit bytes (one byte more is
// read, so that the caller's size check can reject it). Errors are
// PlacedErrors naming the file: `cannot read <what>: <cause>`.
func ReadFile(path string, limit int64, what string) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, &PlacedError{File: path, Msg: fmt.Sprintf("cannot read %s: %v", what, unwrapPathError(err)), Err: err}
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, limit+1))
	if err != nil {
		return nil, &PlacedError{File: path, Msg: fmt.Sprintf("cannot read %s: %v", what, unwrapPathError(err)), Err: err}
	}
	return data, nil
}

func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// ParseStrictJSON parses a document as JSON, for .json files whose text
// the YAML parser rejected (it does not know every JSON escape). Errors
// are PlacedErrors wrapping d.Kind, at the line and column of a syntax
// error.
func (d Fields) ParseStrictJSON(data []byte) (Value, error) {
	v, err := Parse(data)
	if err == nil {
		return v, nil
	}
	e := &PlacedError{File: d.File, Msg: "invalid JSON: " + err.Error(), Err: err}
	var se *SyntaxError
	if errors.As(err, &se) {
		e.Pos, e.Msg = Pos{Line: se.Line, Col: se.Col}, "invalid JSON: "+se.Msg
	}
	if d.Kind != nil {
		e.Err = errors.Join(d.Kind, err)
	}
	return nil, e
}
