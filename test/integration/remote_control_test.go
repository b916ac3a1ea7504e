package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestDistributedRunControl drives a run through the CLI against real
// coordinator and worker processes: an idempotent resubmit, --no-wait and
// --attach, scale and cancel.
func TestDistributedRunControl(t *testing.T) {
	skipShort(t)
	t.Parallel()
	c := newCluster(t)
	dir := t.TempDir()
	var b strings.Builder
	for i := range 40 {
		fmt.Fprintf(&b, `{"name":"n%d","topic":"t%d"}`+"\n", i, i)
	}
	inputs := filepath.Join(dir, "items.jsonl")
	require.NoError(t, os.WriteFile(inputs, []byte(b.String()), 0o644))
	flowArgs := []string{"--flow", "examples/hello/flow.yaml", "--inputs", inputs}

	// No worker yet: the run waits in the queue.
	runID := strings.TrimSpace(c.submit(t, 0, append([]string{"--no-wait", "--max-concurrent", "2"}, flowArgs...)...))
	require.NotEmpty(t, runID)
	again := strings.TrimSpace(c.submit(t, 0, append([]string{"--no-wait", "--max-concurrent", "2"}, flowArgs...)...))
	require.Equal(t, runID, again, "resubmitting the same batch returns the same run")

	out := runExample(t, 0, stepflowBin, "runs", "scale", "--url", c.apiURL, runID, "8")
	require.Contains(t, out, `"maxConcurrency":8`)

	// A worker joins; --attach waits and writes the same results as run.
	c.addWorker(4, "")
	attached := c.submit(t, 0, "--attach", runID)
	local := runExample(t, 0, stepflowBin, "run", "--quiet", "--flow", "examples/hello/flow.yaml", "--inputs", inputs)
	require.Equal(t, local, attached)
	require.Equal(t, local, runExample(t, 0, stepflowBin, "runs", "items", "--url", c.apiURL, runID))

	// Cancel: a second run with no free worker is stopped for good.
	c.stopWorkers()
	other := strings.TrimSpace(c.submit(t, 0, append([]string{"--no-wait", "--new-run"}, flowArgs...)...))
	require.NotEqual(t, runID, other)
	out = runExample(t, 0, stepflowBin, "runs", "cancel", "--url", c.apiURL, other)
	require.Contains(t, out, `"status":"cancelled"`)
	runExample(t, 1, stepflowBin, "submit", "--url", c.apiURL, "--quiet", "--attach", other)
}
