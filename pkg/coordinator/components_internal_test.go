package coordinator

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/value"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// mergeComponents lists each path once, sorted, takes the schemas from a
// worker that has them, and names the workers whose list is partial.
func TestMergeComponents(t *testing.T) {
	t.Parallel()
	workers := []*stepflowv1.WorkerStatus{
		{WorkerId: "a", ComponentsListed: true, ComponentsSchemasOmitted: true, Components: []*stepflowv1.WorkerComponent{
			{Path: "/python/udf", Description: "runs code"},
			{Path: "/builtin/eval"},
		}},
		{WorkerId: "b", ComponentsListed: true, ComponentsError: `plugin "py": list components: down`, Components: []*stepflowv1.WorkerComponent{
			{Path: "/python/udf", Description: "runs code", InputSchema: []byte(`{"type":"object"}`)},
		}},
		{WorkerId: "c"}, // not listed yet
	}
	list, incomplete, listed := mergeComponents(workers, true)
	require.Equal(t, 2, listed)
	require.Equal(t, `[{"component":"/builtin/eval"},{"component":"/python/udf","description":"runs code","input_schema":{"type":"object"}}]`,
		value.String(list))
	require.Equal(t, `[{"workerId":"a","reason":"schemas left out to fit the worker registry"},`+
		`{"workerId":"b","reason":"plugin \"py\": list components: down"}]`, value.String(incomplete))

	list, _, _ = mergeComponents(workers, false)
	require.Equal(t, `[{"component":"/builtin/eval"},{"component":"/python/udf","description":"runs code"}]`, value.String(list))

	list, incomplete, listed = mergeComponents(nil, true)
	require.Equal(t, `[]`, value.String(list))
	require.Empty(t, incomplete)
	require.Zero(t, listed)
}
