package flow

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/value"
)

func FuzzDecode(f *testing.F) {
	f.Add([]byte(e3Flow), "f.yaml")
	f.Add([]byte(e7Flow), "f.yaml")
	f.Add([]byte(benchInputFlow), "f.yaml")
	f.Add([]byte(`{"name":"j","steps":[{"id":"a","component":"/c","input":{"$if":{"$input":"x"},"then":{"$literal":1}}}],"output":{"$step":"a","path":"$[\"a.b\"][0]"}}`), "f.json")
	f.Add([]byte("steps:\n  - {id: a, component: /c, onError: {action: retry, maxAttempts: 2, backoffCoefficient: 1.5}}\noutput: {$coalesce: [{$step: a}, {$variable: v, default: 0}]}\n"), "f.yml")
	f.Add([]byte("test:\n  cases:\n    - {name: c, input: {}, output: {outcome: failed, error: {code: 1, message: m}}}\nexamples: [{name: e, input: 1}]\n"), "f.yaml")
	f.Add([]byte("a: &a {x: 1}\nmetadata: {<<: *a, y: 2}\n"), "f.yaml")
	if data, err := os.ReadFile(filepath.Join(upstreamTests, "builtins", "nested_eval.yaml")); err == nil {
		f.Add(data, "nested_eval.yaml")
	}
	f.Fuzz(func(t *testing.T, data []byte, file string) {
		fl, err := Parse(data, file)
		if err != nil {
			var de *DecodeError
			require.ErrorAs(t, err, &de)
			return
		}
		v := fl.Value()
		g, err := FromValue(v)
		require.NoError(t, err, "canonical form %s", value.String(v))
		require.Equal(t, value.String(v), value.String(g.Value()))
		require.Equal(t, fl.ID(), g.ID())
		_ = Validate(fl)
	})
}

func BenchmarkDecode(b *testing.B) {
	data, err := os.ReadFile(filepath.Join(upstreamTests, "python", "udf_text_processing.yaml"))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(data, "bench.yaml"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFromValue(b *testing.B) {
	f, err := Parse([]byte(e3Flow), "e3.yaml")
	require.NoError(b, err)
	v := f.Value()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := FromValue(v); err != nil {
			b.Fatal(err)
		}
	}
}
