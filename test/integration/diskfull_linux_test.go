//go:build linux

package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/test/diskfull"
)

// An external nats-server whose store fills up during a run, with a flow
// that stores a blob per item. We do not restart an operator's server:
// no item fails for it (the blobs, small, go with their results to the
// coordinator's journal, not to NATS; what does need NATS waits for an
// answer), and the coordinator's health says NATS does not answer its
// writes. Once the operator frees space and restarts the server, the run
// ends with every result exactly once, no process exits, the health is
// back, and the blob of the last item can be read by a later run.
func TestChaosExternalNATSStoreFull(t *testing.T) {
	skipShort(t)
	store := diskfull.Mount(t, 64<<20)
	e := newChaosEnv(t, chaosOptions{externalNATS: true, natsStore: store})
	for _, w := range []string{"w1", "w2"} {
		e.addWorker(w, 4)
	}
	const n = 2000
	special := map[int]string{}
	for i := range n {
		special[i] = `"sleep_ms":20`
	}
	inputs := e.writeInputs("full", n, special)
	flow := filepath.Join(e.dir, "blobs.yaml")
	require.NoError(t, os.WriteFile(flow, []byte(`name: blobs
steps:
  - id: work
    component: /py/work
    input: { $input: "$" }
  - id: keep
    component: /builtin/put_blob
    input: { data: { $step: work }, blob_type: data }
output:
  i: { $step: work, path: i }
  double: { $step: work, path: double }
  blob: { $step: keep, path: blob_id }
`), 0o644))
	run := e.submitNoWait(flow, inputs, 8)
	e.waitCompleted(run, n/5)

	filler := diskfull.Fill(t, store, 0)
	// The server fails a write for want of space (the coordinator's
	// lease renewals, run records), and no item fails for it.
	e.waitUntil("the nats-server fails a write for want of space", func() bool {
		log, _ := os.ReadFile(filepath.Join(e.dir, "nats.log"))
		return strings.Contains(string(log), "no space left on device")
	})
	st, ok := e.status(run)
	require.True(t, ok)
	filledAt := st.Items.Completed + st.Items.Failed
	require.Zero(t, st.Items.Failed, "no item fails for the full store")
	t.Logf("the store filled at %d results", filledAt)
	// The coordinator's health says NATS does not answer its writes (its
	// lease renewals); readiness does not, as the API still answers.
	e.waitUntil("the health reports NATS's unanswered writes", func() bool {
		code, body := getHealth(e.apiURL)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "NATS does not answer")
	})

	require.NoError(t, os.Remove(filler))
	e.nats.stop(t)
	e.startNATS()

	rep := e.verify(run, "full", n)
	e.waitUntil("the health is back", func() bool {
		code, _ := getHealth(e.apiURL)
		return code == http.StatusOK
	})
	e.requireAlive("w1", "w2")
	require.False(t, e.coord.exited(), "the coordinator survives a full NATS store")

	// The blob of the last item, stored after the store filled, is read by
	// another run on whichever worker takes it.
	resp, err := http.Get(fmt.Sprintf("%s/runs/%s/items", e.apiURL, run))
	require.NoError(t, err)
	defer resp.Body.Close()
	var page struct {
		Items []struct {
			ItemIndex int             `json:"itemIndex"`
			Result    json.RawMessage `json:"result"`
		} `json:"items"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&page))
	var last struct {
		Result struct {
			Blob string `json:"blob"`
		} `json:"result"`
	}
	for _, it := range page.Items {
		if it.ItemIndex == n-1 {
			require.NoError(t, json.Unmarshal(it.Result, &last))
		}
	}
	require.NotEmpty(t, last.Result.Blob, "the last item's blob id")
	read := filepath.Join(e.dir, "read.yaml")
	require.NoError(t, os.WriteFile(read, []byte(`name: read
steps:
  - id: get
    component: /builtin/get_blob
    input: { blob_id: { $input: blob } }
output: { $step: get, path: data }
`), 0o644))
	out := runExample(t, 0, stepflowBin, "submit", "--url", e.apiURL, "--flow", read, "--input-json", `{"blob":"`+last.Result.Blob+`"}`)
	require.True(t, strings.Contains(out, fmt.Sprintf(`"double":%d`, 2*(n-1))), "%s", out)
	reportChaos(t, "external NATS store full", n, rep, fmt.Sprintf("filled_at=%d", filledAt))
}

// getHealth returns the status code and body of GET /api/v1/health (0
// while the coordinator does not answer).
func getHealth(api string) (int, string) {
	resp, err := http.Get(api + "/health")
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}
