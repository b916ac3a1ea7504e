package stepflow

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/value"
)

func TestResolveCommand(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "bin", "server")
	require.NoError(t, os.MkdirAll(filepath.Dir(script), 0o755))
	require.NoError(t, os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "plain"), []byte(""), 0o644))

	got, err := resolveCommand("bin/server", dir)
	require.NoError(t, err)
	require.Equal(t, script, got)
	got, err = resolveCommand(script, "/elsewhere")
	require.NoError(t, err)
	require.Equal(t, script, got)

	sh, err := resolveCommand("sh", dir) // on PATH
	require.NoError(t, err)
	require.True(t, filepath.IsAbs(sh), sh)

	_, err = resolveCommand("./plain", dir)
	require.ErrorIs(t, err, fs.ErrPermission)
	_, err = resolveCommand("./bin", dir)
	require.ErrorContains(t, err, "not a regular file")
	_, err = resolveCommand("./missing", dir)
	require.ErrorIs(t, err, fs.ErrNotExist)
	_, err = resolveCommand("no-such-command-anywhere", dir)
	require.Error(t, err)
}

func TestReadLines(t *testing.T) {
	long := strings.Repeat("x", maxLogLine+10)
	var got []string
	readLines(strings.NewReader("a\r\n\nb\n"+long+"\nlast"), func(l string) { got = append(got, l) })
	require.Len(t, got, 5)
	require.Equal(t, []string{"a", "", "b"}, got[:3])
	require.True(t, strings.HasSuffix(got[3], "… (10 more bytes)"))
	require.Len(t, got[3], maxLogLine+len("… (10 more bytes)"))
	require.Equal(t, "last", got[4])
}

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
