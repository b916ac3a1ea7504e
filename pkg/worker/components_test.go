package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/proto"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/plugin"
	"github.com/stepflow-go/stepflow/pkg/queue"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// flakyPlugin fails its first listings.
type flakyPlugin struct{ failures atomic.Int32 }

func (p *flakyPlugin) Start(context.Context) error { return nil }
func (p *flakyPlugin) Close() error                { return nil }
func (p *flakyPlugin) Component(name string) (executor.Component, error) {
	return nil, fmt.Errorf("%w: %s", plugin.ErrUnknownComponent, name)
}
func (p *flakyPlugin) Components(context.Context) ([]plugin.ComponentInfo, error) {
	if p.failures.Add(-1) >= 0 {
		return nil, errors.New("server not answering")
	}
	return []plugin.ComponentInfo{{Component: "/udf", Description: "runs code"}}, nil
}

// The catalogue lists every routed component once with its schemas,
// keeps what listed when another plugin fails, and lists the failed
// plugin again at the next refresh.
func TestCatalogue(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse([]byte(`
plugins:
  builtin: {type: builtin}
  py: {type: mock, components: {}}
routes:
  "/builtin/{*component}": [{plugin: builtin}]
  "/python/{*component}": [{plugin: py}]
  "/also/{*component}": [{plugin: builtin}]
`), "")
	require.NoError(t, err)
	flaky := &flakyPlugin{}
	flaky.failures.Store(1)
	ps, err := plugin.New(testCtx(t), cfg, plugin.Options{Factories: map[config.PluginType]plugin.Factory{
		config.TypeMock: func(context.Context, *config.Plugin, plugin.Host) (plugin.Plugin, error) { return flaky, nil },
	}})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, ps.Close()) })

	c := newCatalogue(ps, zaptest.NewLogger(t), queue.MaxComponentsBytes)
	now := time.Now()
	c.refresh(testCtx(t), now)
	st := &stepflowv1.WorkerStatus{}
	c.fill(st)
	require.True(t, st.GetComponentsListed())
	require.Contains(t, st.GetComponentsError(), "server not answering")
	var paths []string
	for _, wc := range st.GetComponents() {
		paths = append(paths, wc.GetPath())
	}
	require.Contains(t, paths, "/builtin/put_blob")
	require.Contains(t, paths, "/also/put_blob", "one entry per routed path")
	require.NotContains(t, paths, "/python/udf")
	require.LessOrEqual(t, proto.Size(st), queue.MaxComponentsBytes+1024, "the builtins fit with their schemas")
	require.False(t, st.GetComponentsSchemasOmitted())
	t.Logf("component list: %d bytes", proto.Size(st))
	for _, wc := range st.GetComponents() {
		if wc.GetPath() == "/builtin/put_blob" {
			require.Contains(t, string(wc.GetInputSchema()), `"data"`)
			require.NotEmpty(t, wc.GetOutputSchema())
			require.Equal(t, "builtin", wc.GetPlugin())
		}
	}

	c.refresh(testCtx(t), now.Add(time.Second)) // the failed plugin again
	st = &stepflowv1.WorkerStatus{}
	c.fill(st)
	require.Empty(t, st.GetComponentsError())
	paths = paths[:0]
	for _, wc := range st.GetComponents() {
		paths = append(paths, wc.GetPath())
	}
	require.Contains(t, paths, "/python/udf")
	require.IsNonDecreasing(t, paths)
}

// fitComponents drops schemas first, then components, to stay within
// the bound.
func TestFitComponents(t *testing.T) {
	t.Parallel()
	mk := func() []*stepflowv1.WorkerComponent {
		var out []*stepflowv1.WorkerComponent
		for i := range 10 {
			out = append(out, &stepflowv1.WorkerComponent{Path: fmt.Sprintf("/p/c%d", i),
				InputSchema: []byte(`{"description":"` + strings.Repeat("x", 200) + `"}`)})
		}
		return out
	}
	list, omitted, truncated := fitComponents(mk(), 1<<20)
	require.Len(t, list, 10)
	require.False(t, omitted || truncated)

	list, omitted, truncated = fitComponents(mk(), 500)
	require.Len(t, list, 10, "without schemas they all fit")
	require.True(t, omitted)
	require.False(t, truncated)
	require.Empty(t, list[0].GetInputSchema())

	list, omitted, truncated = fitComponents(mk(), 50)
	require.True(t, omitted)
	require.True(t, truncated)
	require.Less(t, len(list), 10)
	n := 0
	for _, wc := range list {
		n += proto.Size(wc) + 4
	}
	require.LessOrEqual(t, n, 50)
}
