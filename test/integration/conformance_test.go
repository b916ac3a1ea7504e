package integration

import (
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestUpstreamPythonConformance runs upstream's tests/python flows (UDFs,
// blobs through the component's context, errors, a crashing server)
// against the published stepflow-py 0.9.2 worker. Three cases expect
// upstream behaviour we change on purpose, and only those fail:
//   - a component's JSON-RPC error keeps its own code and message
//     (-32003 "Component execution failed: …") instead of upstream's
//     500 `step "error_step" failed` (two cases);
//   - a crashed server is restarted, but the item in flight is retried
//     only when its onError says so, not behind the flow's back.
func TestUpstreamPythonConformance(t *testing.T) {
	skipShort(t)
	t.Parallel()
	requireVenvs(t)
	out := runExample(t, 1, stepflowBin, "test", "--config", "test/conformance/python-config.yml", "test/conformance/upstream/python")
	require.Contains(t, out, "Total test cases: 14\nPassed: 11\nFailed: 3\n")
	failed := regexp.MustCompile(`Test Case (.+) failed`).FindAllStringSubmatch(out, -1)
	var names []string
	for _, m := range failed {
		names = append(names, m[1])
	}
	require.ElementsMatch(t, []string{
		"ValueError is surfaced correctly",
		"RuntimeError is wrapped and surfaced",
		"Test restart functionality with process crash",
	}, names)
	require.Contains(t, out, "code: -32003")
}
