package value

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
)

// Syntax errors get the line and column of the problem (yaml.v3 gives a
// line only, for parser errors the 0-based line of the construct).
func TestYAMLSyntaxErrorPositions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ src, v3, want string }{
		{"a: [1, 2\nb: 3\n", "yaml: line 1: did not find expected ',' or ']'",
			"2:2: invalid YAML: did not find expected ',' or ']' (while parsing a flow sequence that starts at line 1, column 4)"},
		{"a:\n  - x\n - y\n", "yaml: line 2: did not find expected key",
			"3:2: invalid YAML: did not find expected key (while parsing a block mapping that starts at line 1, column 1)"},
		{"a: 'x\n", "yaml: line 2: found unexpected end of stream",
			"2:1: invalid YAML: found unexpected end of stream (while scanning a quoted scalar that starts at line 1, column 4)"},
	} {
		var n yaml.Node
		err := yaml.Unmarshal([]byte(tc.src), &n)
		require.EqualError(t, err, tc.v3, tc.src)
		require.EqualError(t, YAMLSyntaxError([]byte(tc.src), err), tc.want, tc.src)
	}
	// When the second parser accepts the text, the first one's line is kept.
	require.EqualError(t, YAMLSyntaxError([]byte("a: 1\n"), errors.New("yaml: line 7: odd")), "7:0: invalid YAML: odd")
}

// Mapping keys must be unique; keys merged with `<<` may be overridden.
func TestYAMLDuplicateKeys(t *testing.T) {
	t.Parallel()
	_, _, err := ParseYAML([]byte("a: 1\nb: 2\na: 3\n"), nil)
	require.EqualError(t, err, `3:1: duplicate key "a" (first at line 1, column 1)`)
	_, _, err = ParseYAML([]byte("x:\n  - {k: 1, k: 2}\n"), nil)
	require.EqualError(t, err, `2:12: duplicate key "k" (first at line 2, column 6)`)

	v, _, err := ParseYAML([]byte("base: &b {a: 1, b: 2}\nuse: {<<: *b, a: 3}\n"), nil)
	require.NoError(t, err)
	require.Equal(t, `{"base":{"a":1,"b":2},"use":{"a":3,"b":2}}`, String(v))
}
