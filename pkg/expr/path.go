package expr

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/stepflow-go/stepflow/pkg/value"
)

// ErrPathSyntax is wrapped by every JSON path parse error.
var ErrPathSyntax = errors.New("invalid JSON path")

// segment is one step of a Path: a field name or an array index.
type segment struct {
	field   string
	index   int
	isIndex bool
}

// Path is a parsed JSON path of the upstream subset: `$`, `.name`, `[N]`
// and `["name"]`. The zero Path is the root (the whole value).
type Path struct {
	segs []segment
}

// Root is the path of the whole value.
var Root = Path{}

// ParsePath parses a path in upstream syntax:
//
//   - "" or "$" is the whole value;
//   - a string that does not start with "$" is one field name, taken
//     literally ("a.b" is the key "a.b");
//   - otherwise a sequence of `.name`, `[N]`, `["name"]` or `['name']`.
func ParsePath(s string) (Path, error) {
	t := strings.TrimSpace(s)
	if t == "" || t == "$" {
		return Root, nil
	}
	if t[0] != '$' {
		return Path{segs: []segment{{field: s}}}, nil
	}
	var segs []segment
	i := 1
	for i < len(t) {
		switch t[i] {
		case '.':
			j := i + 1
			for j < len(t) && t[j] != '.' && t[j] != '[' {
				j++
			}
			if j > i+1 {
				segs = append(segs, segment{field: t[i+1 : j]})
			}
			i = j
		case '[':
			j := i + 1
			if j < len(t) && (t[j] == '"' || t[j] == '\'') {
				q := t[j]
				end := strings.Index(t[j+1:], string(q)+"]")
				if end < 0 {
					return Path{}, fmt.Errorf("%w %q: unclosed quoted name at position %d", ErrPathSyntax, s, i)
				}
				segs = append(segs, segment{field: t[j+1 : j+1+end]})
				i = j + 1 + end + 2
				continue
			}
			end := strings.IndexByte(t[j:], ']')
			if end < 0 {
				return Path{}, fmt.Errorf("%w %q: unclosed bracket at position %d", ErrPathSyntax, s, i)
			}
			num := t[j : j+end]
			n, err := strconv.ParseUint(num, 10, 31)
			if err != nil || num == "" || num[0] == '+' {
				return Path{}, fmt.Errorf("%w %q: invalid index %q at position %d (expected a non-negative integer)", ErrPathSyntax, s, num, i)
			}
			segs = append(segs, segment{index: int(n), isIndex: true})
			i = j + end + 1
		default:
			return Path{}, fmt.Errorf("%w %q: invalid character %q at position %d, expected '.' or '['", ErrPathSyntax, s, t[i], i)
		}
	}
	return Path{segs: segs}, nil
}

// MustParsePath parses s and panics on error; for literals.
func MustParsePath(s string) Path {
	p, err := ParsePath(s)
	if err != nil {
		panic(err)
	}
	return p
}

// IsRoot reports whether p is the whole value.
func (p Path) IsRoot() bool { return len(p.segs) == 0 }

// Len returns the number of segments.
func (p Path) Len() int { return len(p.segs) }

// Head splits off the first field: for `$.name.sub[0]` it returns "name",
// `$.sub[0]` and true. It returns false when the path is the root or
// starts with an index.
func (p Path) Head() (string, Path, bool) {
	if len(p.segs) == 0 || p.segs[0].isIndex {
		return "", Root, false
	}
	return p.segs[0].field, Path{segs: p.segs[1:]}, true
}

// String returns the canonical text of the path: `$` followed by `.name`
// or `[N]`; names that contain '.', '[', ']', quotes or spaces are written
// `["name"]` so that parsing the text gives the same path back.
func (p Path) String() string {
	if len(p.segs) == 0 {
		return "$"
	}
	var b strings.Builder
	b.WriteByte('$')
	for _, s := range p.segs {
		if s.isIndex {
			b.WriteByte('[')
			b.WriteString(strconv.Itoa(s.index))
			b.WriteByte(']')
			continue
		}
		if plainName(s.field) {
			b.WriteByte('.')
			b.WriteString(s.field)
			continue
		}
		q := `"`
		if strings.Contains(s.field, `"]`) {
			q = `'`
		}
		b.WriteString("[" + q + s.field + q + "]")
	}
	return b.String()
}

func plainName(s string) bool {
	if s == "" || strings.TrimSpace(s) != s {
		return false
	}
	return !strings.ContainsAny(s, ".[]\"' \t\n")
}

// Lookup returns the sub-value of v at p. A field step needs an object and
// an index step an array; anything else is not found.
func (p Path) Lookup(v value.Value) (value.Value, bool) {
	for _, s := range p.segs {
		if s.isIndex {
			arr, ok := v.([]value.Value)
			if !ok || s.index >= len(arr) {
				return nil, false
			}
			v = arr[s.index]
			continue
		}
		obj, ok := v.(*value.Object)
		if !ok {
			return nil, false
		}
		if v, ok = obj.Get(s.field); !ok {
			return nil, false
		}
	}
	return v, true
}
