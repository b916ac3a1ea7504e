package value

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Pos is a 1-based line and column in a source file.
type Pos struct {
	Line int
	Col  int
}

// IsZero reports whether the position is unknown.
func (p Pos) IsZero() bool { return p.Line == 0 }

func (p Pos) String() string { return fmt.Sprintf("%d:%d", p.Line, p.Col) }

// SourceMap maps the JSON path of a value (in the form `$.steps[0].input`,
// see [PathField]) to where it was written. Code that decodes documents
// records positions in it so that later checks can point at the source.
type SourceMap map[string]Pos

// Lookup returns the position of path, or of its nearest recorded
// ancestor.
func (m SourceMap) Lookup(path string) (Pos, bool) {
	for {
		if p, ok := m[path]; ok {
			return p, true
		}
		i := strings.LastIndexAny(path, ".[")
		if i <= 0 {
			p, ok := m["$"]
			return p, ok
		}
		path = path[:i]
	}
}

// PathField appends a field step to a JSON path, quoting names that are
// not plain identifiers: PathField("$", "a") = "$.a",
// PathField("$", "a.b") = `$["a.b"]`.
func PathField(path, name string) string {
	if isPlainName(name) {
		return path + "." + name
	}
	return path + "[" + strconv.Quote(name) + "]"
}

// PathIndex appends an index step to a JSON path: PathIndex("$.a", 2) = "$.a[2]".
func PathIndex(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

func isPlainName(s string) bool {
	if s == "" {
		return false
	}
	for i := range len(s) {
		c := s[i]
		if c == '.' || c == '[' || c == ']' || c == '"' || c == '\'' || c == ' ' || c < 0x20 {
			return false
		}
	}
	return true
}

// YAMLError is a problem converting YAML to JSON, with its place.
type YAMLError struct {
	Pos Pos
	Msg string
}

func (e *YAMLError) Error() string { return fmt.Sprintf("%s: %s", e.Pos, e.Msg) }

// FromYAML converts a YAML node to a Value with the scalar rules of
// serde_yaml: only true/false are booleans, timestamps stay strings,
// integers and floats keep their distinction. When sm is not nil, the
// position of every node is recorded under its JSON path, starting at
// path. Aliases are expanded; documents whose size comes mostly from
// alias expansion ("billion laughs") are rejected.
func FromYAML(n *yaml.Node, path string, sm SourceMap) (Value, error) {
	c := yamlConverter{sm: sm}
	return c.convert(n, path, 0)
}

// yamlConverter carries the state of one FromYAML conversion.
type yamlConverter struct {
	sm SourceMap
	// nodes counts converted nodes, aliased those converted while
	// expanding an alias (aliasDepth > 0).
	nodes, aliased, aliasDepth int
}

// Alias expansion limits: small documents may come almost entirely from
// aliases, large ones only to a small part (the policy of yaml.v3's own
// decoder).
const (
	aliasRatioLow  = 400_000
	aliasRatioHigh = 4_000_000
)

func allowedAliasRatio(nodes int) float64 {
	switch {
	case nodes <= aliasRatioLow:
		return 0.99
	case nodes >= aliasRatioHigh:
		return 0.10
	default:
		return 0.99 - 0.89*float64(nodes-aliasRatioLow)/float64(aliasRatioHigh-aliasRatioLow)
	}
}

func (c *yamlConverter) convert(n *yaml.Node, path string, depth int) (Value, error) {
	if depth > MaxDepth {
		return nil, &YAMLError{Pos{n.Line, n.Column}, "YAML nested too deeply"}
	}
	c.nodes++
	if c.aliasDepth > 0 {
		c.aliased++
		if c.aliased > 100 && c.nodes > 1000 && float64(c.aliased)/float64(c.nodes) > allowedAliasRatio(c.nodes) {
			return nil, &YAMLError{Pos{n.Line, n.Column}, "document contains excessive aliasing"}
		}
	}
	if c.sm != nil {
		c.sm[path] = Pos{n.Line, n.Column}
	}
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) == 0 {
			return nil, nil
		}
		return c.convert(n.Content[0], path, depth+1)
	case yaml.AliasNode:
		if n.Alias == nil {
			return nil, &YAMLError{Pos{n.Line, n.Column}, "unknown anchor"}
		}
		c.aliasDepth++
		v, err := c.convert(n.Alias, path, depth+1)
		c.aliasDepth--
		return v, err
	case yaml.SequenceNode:
		out := make([]Value, 0, len(n.Content))
		for i, e := range n.Content {
			v, err := c.convert(e, PathIndex(path, i), depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	case yaml.MappingNode:
		o := NewObject(len(n.Content) / 2)
		var explicit map[string]*yaml.Node // keys written (not merged) so far
		if len(n.Content) > 2 {
			explicit = make(map[string]*yaml.Node, len(n.Content)/2)
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, vn := n.Content[i], n.Content[i+1]
			if k.Kind == yaml.AliasNode && k.Alias != nil {
				k = k.Alias
			}
			if k.Kind != yaml.ScalarNode {
				return nil, &YAMLError{Pos{k.Line, k.Column}, "mapping keys must be strings"}
			}
			if k.Tag == "!!merge" {
				// `<<: *base` merges the aliased mapping's keys.
				sm := c.sm
				c.sm = nil
				merged, err := c.convert(vn, path, depth+1)
				c.sm = sm
				if err != nil {
					return nil, err
				}
				if mo, ok := merged.(*Object); ok {
					for j, mk := range mo.keys {
						if !o.Has(mk) {
							o.Set(mk, mo.vals[j])
						}
					}
				}
				continue
			}
			if explicit != nil {
				// YAML requires unique keys (serde_yaml and yaml.v3's own
				// decoder refuse duplicates); a node tree keeps both.
				if first, dup := explicit[k.Value]; dup {
					return nil, &YAMLError{Pos{n.Content[i].Line, n.Content[i].Column},
						fmt.Sprintf("duplicate key %q (first at line %d, column %d)", k.Value, first.Line, first.Column)}
				}
				explicit[k.Value] = n.Content[i]
			}
			v, err := c.convert(vn, PathField(path, k.Value), depth+1)
			if err != nil {
				return nil, err
			}
			o.Set(k.Value, v)
		}
		return o, nil
	case yaml.ScalarNode:
		return scalar(n)
	}
	return nil, &YAMLError{Pos{n.Line, n.Column}, "unsupported YAML node"}
}

func scalar(n *yaml.Node) (Value, error) {
	switch n.ShortTag() {
	case "!!null":
		return nil, nil
	case "!!bool":
		switch n.Value {
		case "true":
			return true, nil
		case "false":
			return false, nil
		}
		return n.Value, nil // True, TRUE, ... are strings for serde_yaml
	case "!!int":
		text := strings.ReplaceAll(n.Value, "_", "")
		if i, err := strconv.ParseInt(text, 0, 64); err == nil {
			return Int(i), nil
		}
		if u, err := strconv.ParseUint(text, 0, 64); err == nil {
			return Number(strconv.FormatUint(u, 10)), nil
		}
		if text, ok := strings.CutPrefix(text, "0o"); ok {
			if i, err := strconv.ParseInt(text, 8, 64); err == nil {
				return Int(i), nil
			}
		}
		return n.Value, nil
	case "!!float":
		f, err := strconv.ParseFloat(strings.ReplaceAll(n.Value, "_", ""), 64)
		if err != nil {
			switch strings.ToLower(strings.TrimLeft(n.Value, "+-")) {
			case ".inf", ".nan":
				return nil, &YAMLError{Pos{n.Line, n.Column}, fmt.Sprintf("%s has no JSON representation", n.Value)}
			}
			return n.Value, nil
		}
		if math.IsInf(f, 0) || math.IsNaN(f) {
			return nil, &YAMLError{Pos{n.Line, n.Column}, fmt.Sprintf("%s has no JSON representation", n.Value)}
		}
		return Float(f), nil
	default: // !!str, !!timestamp, !!binary and custom tags stay text
		return n.Value, nil
	}
}

// ToYAML converts a Value to a YAML node tree for encoding with yaml.v3.
// Strings that would read back as another type are quoted.
func ToYAML(v Value) *yaml.Node {
	switch t := v.(type) {
	case nil:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Value: "null"}
	case bool:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: strconv.FormatBool(t)}
	case Number:
		tag := "!!float"
		if IsInteger(t) {
			tag = "!!int"
		}
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: tag, Value: string(t)}
	case string:
		n := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: t}
		if strings.Contains(t, "\n") {
			n.Style = yaml.LiteralStyle
		}
		return n
	case []Value:
		n := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
		for _, e := range t {
			n.Content = append(n.Content, ToYAML(e))
		}
		return n
	case *Object:
		n := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
		for i, k := range t.keys {
			n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: k}, ToYAML(t.vals[i]))
		}
		return n
	default:
		return ToYAML(FromGo(v))
	}
}

// MarshalYAML encodes v as a YAML document.
func MarshalYAML(v Value) ([]byte, error) {
	var sb strings.Builder
	enc := yaml.NewEncoder(&sb)
	enc.SetIndent(2)
	if err := enc.Encode(ToYAML(v)); err != nil {
		return nil, fmt.Errorf("encode yaml: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encode yaml: %w", err)
	}
	return []byte(sb.String()), nil
}

// ParseYAML parses a YAML (or JSON) document into a Value, recording
// positions in sm when it is not nil.
func ParseYAML(data []byte, sm SourceMap) (Value, *yaml.Node, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, nil, err
	}
	if doc.Kind == 0 {
		return nil, &doc, nil
	}
	v, err := FromYAML(&doc, "$", sm)
	return v, &doc, err
}
