package stepflow

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/value"
)

func TestParsePort(t *testing.T) {
	for line, want := range map[string]int{`{"port": 8123}`: 8123, `{"port":1}`: 1} {
		p, ok := parsePort(line)
		require.True(t, ok)
		require.Equal(t, want, p)
	}
	for _, line := range []string{`port 8123`, `{"port":"8123"}`, `{"port":0}`, `{"port":70000}`, `[8123]`, ``} {
		_, ok := parsePort(line)
		require.False(t, ok, line)
	}
}

func TestOverridesUnwrap(t *testing.T) {
	parse := func(s string) value.Value {
		v, err := overrides(value.ObjectOf("overrides", value.MustParse(s)), "overrides")
		require.NoError(t, err)
		return v
	}
	require.Equal(t, `{"a":{"value":1}}`, value.String(parse(`{"steps":{"a":{"value":1}}}`)))
	require.Equal(t, `{"a":{"value":1}}`, value.String(parse(`{"a":{"value":1}}`)))
	// A step named "steps" in the bare form stays as it is.
	require.Equal(t, `{"steps":{"value":1}}`, value.String(parse(`{"steps":{"value":1}}`)))
	require.Nil(t, parse(`null`))
	require.Nil(t, parse(`{"steps":null}`))
	_, err := overrides(value.ObjectOf("overrides", "x"), "overrides")
	require.Error(t, err)
}

func TestRunTracker(t *testing.T) {
	tr := &runTracker{counts: map[string]int{}}
	require.Equal(t, "", tr.sole())
	a1 := tr.add("a")
	a2 := tr.add("a")
	require.Equal(t, "a", tr.sole())
	b := tr.add("b")
	require.Equal(t, "", tr.sole())
	a1()
	a2()
	require.Equal(t, "b", tr.sole())
	b()
	require.Equal(t, "", tr.sole())
}
