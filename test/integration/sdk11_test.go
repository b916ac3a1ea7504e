package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The stepflow-py 0.10/0.11 protocol over HTTP (.venv-sdk-http11,
// stepflow-py[http]==0.11.2): camelCase initialize, blobs through the
// runtime's blob HTTP API. sdk11.yaml runs every item through an echo,
// blobs put by the component and read by /builtin/get_blob (and the other
// way round), and a component that raises when the item asks.

const (
	sdk11Flow   = "test/integration/testdata/sdk11.yaml"
	sdk11Config = "test/integration/testdata/sdk11-config.yml"
	sdk11Items  = 24
	sdk11Hard   = 7  // the item whose step without onError raises
	sdk11Soft   = 11 // the item whose step with onError useDefault raises
)

// sdk11Inputs writes the batch and returns its path.
func sdk11Inputs(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for i := range sdk11Items {
		fmt.Fprintf(&b, `{"i":%d,"soft_fail":%t,"hard_fail":%t}`+"\n", i, i == sdk11Soft, i == sdk11Hard)
	}
	path := filepath.Join(t.TempDir(), "items.jsonl")
	require.NoError(t, os.WriteFile(path, []byte(b.String()), 0o644))
	return path
}

// checkSDK11Results checks every result line of the batch and returns the
// pids of the server processes that served it.
func checkSDK11Results(t *testing.T, out string) map[float64]bool {
	t.Helper()
	ls := lines(out)
	require.Len(t, ls, sdk11Items)
	pids := map[float64]bool{}
	for i, line := range ls {
		var r struct {
			Outcome string         `json:"outcome"`
			Result  map[string]any `json:"result"`
			Error   struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
				Data    any    `json:"data"`
			} `json:"error"`
		}
		require.NoError(t, json.Unmarshal([]byte(line), &r), line)
		if i == sdk11Hard {
			require.Equal(t, "failed", r.Outcome, line)
			require.Contains(t, line, fmt.Sprintf("item %d asked to fail", i))
			require.Contains(t, line, `"hard"`, "the failure names its step")
			continue
		}
		require.Equal(t, "success", r.Outcome, line)
		res := r.Result
		require.EqualValues(t, i, res["i"], line)
		require.Equal(t, "0.11.2", res["sdk"], line)
		mine := map[string]any{"i": float64(i), "from": "python"}
		require.Equal(t, mine, res["back"], "the component's own get_blob: %s", line)
		require.Equal(t, mine, res["builtin_read"], "/builtin/get_blob reads the component's blob: %s", line)
		require.Equal(t, map[string]any{"i": float64(i), "from": "builtin"}, res["python_read"], "the component reads /builtin/put_blob's blob: %s", line)
		if i == sdk11Soft {
			require.Equal(t, "defaulted", res["soft"], "onError useDefault applied: %s", line)
		} else {
			require.EqualValues(t, i, res["soft"], line)
		}
		require.EqualValues(t, i, res["hard"], line)
		pids[res["pid"].(float64)] = true
	}
	return pids
}

// TestSDK11Run: `stepflow run` of the batch; one server process serves
// every item; only the item whose component raised without onError
// fails (exit code 3).
func TestSDK11Run(t *testing.T) {
	skipShort(t)
	t.Parallel()
	requireVenvs(t)
	out := runExample(t, 3, stepflowBin, "run", "--quiet", "--flow", sdk11Flow, "--config", sdk11Config,
		"--inputs", sdk11Inputs(t), "--max-concurrent", "8")
	pids := checkSDK11Results(t, out)
	require.Len(t, pids, 1, "one server process serves the whole batch")
}

// TestSDK11Distributed: the same batch through a coordinator and two
// workers gives the same results (but for the pids: one server process
// per worker).
func TestSDK11Distributed(t *testing.T) {
	skipShort(t)
	t.Parallel()
	requireVenvs(t)
	c := newCluster(t)
	c.addWorker(4, sdk11Config)
	c.addWorker(4, sdk11Config)
	out := c.submit(t, 3, "--flow", sdk11Flow, "--inputs", sdk11Inputs(t), "--max-concurrent", "8")
	pids := checkSDK11Results(t, out)
	require.NotEmpty(t, pids)
	require.LessOrEqual(t, len(pids), 2, "one server process per worker")
}
