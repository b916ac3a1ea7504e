package plugin_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/plugin"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// TestUpstreamFlows runs the upstream builtins and mock test flows
// through the executor with these plugins and checks every case's
// expected output with upstream's partial matching.
func TestUpstreamFlows(t *testing.T) {
	t.Parallel()
	root := upstreamDir(t)
	for _, dir := range []string{"builtins", "mock"} {
		cfg, err := config.Load(filepath.Join(root, dir, "stepflow-config.yml"))
		require.NoError(t, err)
		files, err := filepath.Glob(filepath.Join(root, dir, "*.yaml"))
		require.NoError(t, err)
		require.NotEmpty(t, files)
		for _, file := range files {
			t.Run(dir+"/"+filepath.Base(file), func(t *testing.T) {
				t.Parallel()
				f, err := flow.Load(file)
				require.NoError(t, err)
				if f.Test == nil {
					t.Skip("no test cases")
				}
				ps := newPlugins(t, cfg, plugin.Options{})
				exec := executor.New(executor.Config{Router: ps})
				run, err := exec.NewRun(executor.NewRunID(), f, nil)
				require.NoError(t, err)
				for i, c := range f.Test.Cases {
					got := run.Execute(context.Background(), i, c.Input)
					if c.Output == nil {
						continue
					}
					require.True(t, partialMatch(c.Output, got.JSON()),
						"case %q:\nwant %s\ngot  %s", c.Name, value.String(c.Output), value.String(got.JSON()))
				}
			})
		}
	}
}

// partialMatch is upstream's test comparison: expected object keys must
// exist in actual with matching values, arrays match element-wise with
// equal lengths, scalars are equal.
func partialMatch(want, got value.Value) bool {
	switch w := want.(type) {
	case *value.Object:
		g, ok := got.(*value.Object)
		if !ok {
			return false
		}
		for i := range w.Len() {
			k, wv := w.At(i)
			if k == "backtrace" {
				continue
			}
			gv, ok := g.Get(k)
			if !ok || !partialMatch(wv, gv) {
				return false
			}
		}
		return true
	case []value.Value:
		g, ok := got.([]value.Value)
		if !ok || len(g) != len(w) {
			return false
		}
		for i := range w {
			if !partialMatch(w[i], g[i]) {
				return false
			}
		}
		return true
	default:
		return value.Equal(want, got)
	}
}
