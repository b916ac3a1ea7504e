package config

import (
	"fmt"
	"strings"
)

// LookupFunc returns the value of an environment variable and whether it
// is set, like os.LookupEnv.
type LookupFunc func(name string) (string, bool)

// SubstError is a failed substitution: an unset variable without default
// (wrapping ErrUnsetVariable) or a syntax error.
type SubstError struct {
	Var string // the variable, "" for syntax errors
	Msg string
	Err error
}

// Error returns the message.
func (e *SubstError) Error() string { return e.Msg }

// Unwrap returns the cause.
func (e *SubstError) Unwrap() error { return e.Err }

// Substitute expands environment variable references in s:
//
//	$NAME, ${NAME}         the variable; an error if it is not set
//	${NAME:default}        default when unset (upstream `subst` syntax)
//	${NAME:-default}       default when unset (shell syntax)
//	\$ \\ \: \{ \}         the character itself
//
// Names are ASCII letters, digits and underscores. Defaults may contain
// references themselves. A `$` not followed by a name or `{`, and a `\`
// before any other character, stand for themselves.
func Substitute(s string, lookup LookupFunc) (string, error) {
	if !strings.ContainsAny(s, `$\`) {
		return s, nil
	}
	p := substParser{src: s, lookup: lookup}
	out, err := p.expand(false, true)
	if err != nil {
		return "", err
	}
	return out, nil
}

type substParser struct {
	src    string
	i      int
	lookup LookupFunc
}

func isNameByte(c byte) bool {
	return c == '_' || ('0' <= c && c <= '9') || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z')
}

// expand reads text up to the end (or, in a default, up to the closing
// brace, which it consumes). When eval is false, it only checks syntax.
func (p *substParser) expand(inDefault, eval bool) (string, error) {
	var b strings.Builder
	for p.i < len(p.src) {
		c := p.src[p.i]
		switch {
		case c == '\\' && p.i+1 < len(p.src) && strings.IndexByte(`$\:{}`, p.src[p.i+1]) >= 0:
			b.WriteByte(p.src[p.i+1])
			p.i += 2
		case c == '}' && inDefault:
			p.i++
			return b.String(), nil
		case c == '$':
			v, err := p.reference(eval)
			if err != nil {
				return "", err
			}
			b.WriteString(v)
		default:
			b.WriteByte(c)
			p.i++
		}
	}
	if inDefault {
		return "", &SubstError{Msg: fmt.Sprintf("unterminated ${…} in %q", p.src)}
	}
	return b.String(), nil
}

// reference reads a reference starting at `$`.
func (p *substParser) reference(eval bool) (string, error) {
	start := p.i
	p.i++ // $
	braced := p.i < len(p.src) && p.src[p.i] == '{'
	if braced {
		p.i++
	}
	nameStart := p.i
	for p.i < len(p.src) && isNameByte(p.src[p.i]) {
		p.i++
	}
	name := p.src[nameStart:p.i]
	if name == "" {
		if braced {
			return "", &SubstError{Msg: fmt.Sprintf("missing variable name after ${ at offset %d in %q", start, p.src)}
		}
		return "$", nil
	}
	if !braced {
		return p.resolve(name, eval)
	}
	if p.i >= len(p.src) {
		return "", &SubstError{Msg: fmt.Sprintf("unterminated ${%s in %q", name, p.src)}
	}
	switch p.src[p.i] {
	case '}':
		p.i++
		return p.resolve(name, eval)
	case ':':
		p.i++
		if p.i < len(p.src) && p.src[p.i] == '-' {
			p.i++ // shell form ${NAME:-default}
		}
		val, set := "", false
		if eval {
			val, set = p.lookup(name)
		}
		def, err := p.expand(true, eval && !set)
		if err != nil {
			return "", err
		}
		if set {
			return val, nil
		}
		return def, nil
	default:
		return "", &SubstError{Msg: fmt.Sprintf("invalid character %q in ${%s…} in %q (expected } or :)", p.src[p.i], name, p.src)}
	}
}

func (p *substParser) resolve(name string, eval bool) (string, error) {
	if !eval {
		return "", nil
	}
	v, ok := p.lookup(name)
	if !ok {
		return "", &SubstError{Var: name, Err: ErrUnsetVariable,
			Msg: fmt.Sprintf("environment variable %q is not set (write ${%s:-default} to give a default)", name, name)}
	}
	return v, nil
}
