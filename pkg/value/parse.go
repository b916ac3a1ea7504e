package value

import (
	"errors"
	"fmt"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// SyntaxError describes malformed JSON text. Line and Col are 1-based and
// count bytes within the line.
type SyntaxError struct {
	Offset int
	Line   int
	Col    int
	Msg    string
}

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("%d:%d: %s", e.Line, e.Col, e.Msg)
}

// ErrDepth is returned for JSON nested deeper than MaxDepth.
var ErrDepth = errors.New("value: JSON nested too deeply")

// MaxDepth bounds the nesting of parsed JSON so that hostile input cannot
// exhaust the stack.
const MaxDepth = 10000

// Parse decodes one JSON value from data (surrounding whitespace allowed).
// Objects keep key order; a repeated key keeps its first position and its
// last value, as serde_json does. Numbers are canonicalised ([Number]).
func Parse(data []byte) (Value, error) { return parse(data, false) }

// ParseStrict is Parse for input from outside (request bodies, items): it
// refuses what Parse repairs or resolves silently, with the place: a
// string that is not valid UTF-8 (Parse replaces the bad bytes with
// U+FFFD), an escaped UTF-16 surrogate without its pair (Parse: U+FFFD),
// and a key repeated in an object (Parse keeps the last value).
func ParseStrict(data []byte) (Value, error) { return parse(data, true) }

func parse(data []byte, strict bool) (Value, error) {
	p := parser{data: data, strict: strict}
	p.skipWS()
	v, err := p.value(0)
	if err != nil {
		return nil, err
	}
	p.skipWS()
	if p.pos < len(p.data) {
		return nil, p.errorf("trailing characters after JSON value")
	}
	return v, nil
}

// ParseString is Parse for a string.
func ParseString(s string) (Value, error) { return Parse([]byte(s)) }

// MustParse parses s and panics on error; for literals in code and tests.
func MustParse(s string) Value {
	v, err := ParseString(s)
	if err != nil {
		panic(err)
	}
	return v
}

type parser struct {
	data   []byte
	pos    int
	strict bool // ParseStrict
}

func (p *parser) errorf(format string, args ...any) error {
	line, col := 1, 1
	for i := 0; i < p.pos && i < len(p.data); i++ {
		if p.data[i] == '\n' {
			line++
			col = 1
		} else {
			col++
		}
	}
	return &SyntaxError{Offset: p.pos, Line: line, Col: col, Msg: fmt.Sprintf(format, args...)}
}

func (p *parser) skipWS() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func (p *parser) value(depth int) (Value, error) {
	if depth > MaxDepth {
		return nil, fmt.Errorf("%w (%s)", ErrDepth, p.errorf("depth %d", depth))
	}
	if p.pos >= len(p.data) {
		return nil, p.errorf("unexpected end of JSON input")
	}
	switch c := p.data[p.pos]; {
	case c == '{':
		return p.object(depth)
	case c == '[':
		return p.array(depth)
	case c == '"':
		return p.str()
	case c == 't':
		return true, p.literal("true")
	case c == 'f':
		return false, p.literal("false")
	case c == 'n':
		return nil, p.literal("null")
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number()
	default:
		return nil, p.errorf("invalid character %q looking for beginning of value", c)
	}
}

func (p *parser) literal(word string) error {
	if len(p.data)-p.pos < len(word) || string(p.data[p.pos:p.pos+len(word)]) != word {
		return p.errorf("invalid literal, expected %s", word)
	}
	p.pos += len(word)
	return nil
}

func (p *parser) object(depth int) (Value, error) {
	p.pos++ // {
	o := &Object{}
	p.skipWS()
	if p.pos < len(p.data) && p.data[p.pos] == '}' {
		p.pos++
		return o, nil
	}
	for {
		p.skipWS()
		if p.pos >= len(p.data) || p.data[p.pos] != '"' {
			return nil, p.errorf("expected string object key")
		}
		keyAt := p.pos
		key, err := p.str()
		if err != nil {
			return nil, err
		}
		if p.strict && o.Has(key) {
			p.pos = keyAt
			return nil, p.errorf("duplicate key %q in object", key)
		}
		p.skipWS()
		if p.pos >= len(p.data) || p.data[p.pos] != ':' {
			return nil, p.errorf("expected ':' after object key")
		}
		p.pos++
		p.skipWS()
		v, err := p.value(depth + 1)
		if err != nil {
			return nil, err
		}
		o.Set(key, v)
		p.skipWS()
		if p.pos >= len(p.data) {
			return nil, p.errorf("unexpected end of JSON input in object")
		}
		switch p.data[p.pos] {
		case ',':
			p.pos++
		case '}':
			p.pos++
			return o, nil
		default:
			return nil, p.errorf("expected ',' or '}' in object")
		}
	}
}

func (p *parser) array(depth int) (Value, error) {
	p.pos++ // [
	arr := make([]Value, 0, 4)
	p.skipWS()
	if p.pos < len(p.data) && p.data[p.pos] == ']' {
		p.pos++
		return arr, nil
	}
	for {
		p.skipWS()
		v, err := p.value(depth + 1)
		if err != nil {
			return nil, err
		}
		arr = append(arr, v)
		p.skipWS()
		if p.pos >= len(p.data) {
			return nil, p.errorf("unexpected end of JSON input in array")
		}
		switch p.data[p.pos] {
		case ',':
			p.pos++
		case ']':
			p.pos++
			return arr, nil
		default:
			return nil, p.errorf("expected ',' or ']' in array")
		}
	}
}

func (p *parser) str() (string, error) {
	p.pos++ // opening quote
	start := p.pos
	// Fast path: no escapes, valid UTF-8.
	for p.pos < len(p.data) {
		c := p.data[p.pos]
		if c == '"' {
			s := p.data[start:p.pos]
			if !utf8.Valid(s) {
				if p.strict {
					return "", p.invalidUTF8(start, s)
				}
				p.pos++
				return string([]rune(string(s))), nil
			}
			p.pos++
			return string(s), nil
		}
		if c == '\\' {
			break
		}
		if c < 0x20 {
			return "", p.errorf("invalid control character in string")
		}
		p.pos++
	}
	buf := append([]byte(nil), p.data[start:p.pos]...)
	for p.pos < len(p.data) {
		c := p.data[p.pos]
		switch {
		case c == '"':
			if !utf8.Valid(buf) {
				if p.strict {
					return "", p.invalidUTF8(start, p.data[start:p.pos])
				}
				p.pos++
				return string([]rune(string(buf))), nil
			}
			p.pos++
			return string(buf), nil
		case c < 0x20:
			return "", p.errorf("invalid control character in string")
		case c == '\\':
			p.pos++
			if p.pos >= len(p.data) {
				return "", p.errorf("unexpected end of string escape")
			}
			e := p.data[p.pos]
			p.pos++
			switch e {
			case '"', '\\', '/':
				buf = append(buf, e)
			case 'b':
				buf = append(buf, '\b')
			case 'f':
				buf = append(buf, '\f')
			case 'n':
				buf = append(buf, '\n')
			case 'r':
				buf = append(buf, '\r')
			case 't':
				buf = append(buf, '\t')
			case 'u':
				r, err := p.hex4()
				if err != nil {
					return "", err
				}
				if utf16.IsSurrogate(r) {
					escAt := p.pos - 6
					r2 := rune(-1)
					if p.pos+1 < len(p.data) && p.data[p.pos] == '\\' && p.data[p.pos+1] == 'u' {
						save := p.pos
						p.pos += 2
						r2, err = p.hex4()
						if err != nil {
							return "", err
						}
						if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
							r = dec
						} else {
							p.pos = save
							r = utf8.RuneError
						}
					} else {
						r = utf8.RuneError
					}
					if r == utf8.RuneError && p.strict {
						p.pos = escAt
						return "", p.errorf("unpaired UTF-16 surrogate escape in string")
					}
				}
				buf = utf8.AppendRune(buf, r)
			default:
				p.pos--
				return "", p.errorf("invalid escape character %q in string", e)
			}
		default:
			buf = append(buf, c)
			p.pos++
		}
	}
	return "", p.errorf("unexpected end of JSON input in string")
}

// invalidUTF8 is the error for the string s starting at start: its first
// byte that is not valid UTF-8.
func (p *parser) invalidUTF8(start int, s []byte) error {
	i := 0
	for i < len(s) {
		r, n := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && n <= 1 {
			break
		}
		i += n
	}
	p.pos = start + i
	return p.errorf("invalid UTF-8 in string")
}

func (p *parser) hex4() (rune, error) {
	if len(p.data)-p.pos < 4 {
		return 0, p.errorf("invalid \\u escape")
	}
	n, err := strconv.ParseUint(string(p.data[p.pos:p.pos+4]), 16, 32)
	if err != nil {
		return 0, p.errorf("invalid \\u escape")
	}
	p.pos += 4
	return rune(n), nil
}

func (p *parser) number() (Value, error) {
	start := p.pos
	isFloat := false
	if p.data[p.pos] == '-' {
		p.pos++
	}
	if p.pos >= len(p.data) {
		return nil, p.errorf("invalid number")
	}
	if p.data[p.pos] == '0' {
		p.pos++
	} else if p.data[p.pos] >= '1' && p.data[p.pos] <= '9' {
		for p.pos < len(p.data) && p.data[p.pos] >= '0' && p.data[p.pos] <= '9' {
			p.pos++
		}
	} else {
		return nil, p.errorf("invalid number")
	}
	if p.pos < len(p.data) && p.data[p.pos] == '.' {
		isFloat = true
		p.pos++
		d := p.pos
		for p.pos < len(p.data) && p.data[p.pos] >= '0' && p.data[p.pos] <= '9' {
			p.pos++
		}
		if p.pos == d {
			return nil, p.errorf("invalid number: expected digit after '.'")
		}
	}
	if p.pos < len(p.data) && (p.data[p.pos] == 'e' || p.data[p.pos] == 'E') {
		isFloat = true
		p.pos++
		if p.pos < len(p.data) && (p.data[p.pos] == '+' || p.data[p.pos] == '-') {
			p.pos++
		}
		d := p.pos
		for p.pos < len(p.data) && p.data[p.pos] >= '0' && p.data[p.pos] <= '9' {
			p.pos++
		}
		if p.pos == d {
			return nil, p.errorf("invalid number: expected digit in exponent")
		}
	}
	text := string(p.data[start:p.pos])
	if !isFloat && len(text) < 19 {
		return Number(text), nil
	}
	return canonicalNumber(text), nil
}
