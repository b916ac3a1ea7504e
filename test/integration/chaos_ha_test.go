package integration

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Scenario 4: two coordinators share an external NATS server and a data
// dir. Both serve the API: the leader (holder of the lease) runs the
// runs, the standby forwards requests to it. `stepflow submit` is given
// both URLs. kill -9 of either one mid-batch loses nothing: a killed
// leader's lease expires and the standby takes the runs over; a killed
// standby only moves the client on to the other URL.
func TestChaosTwoCoordinators(t *testing.T) {
	skipShort(t)
	for _, victim := range []string{"leader", "standby"} {
		t.Run("kill the "+victim, func(t *testing.T) {
			e := newChaosEnv(t, chaosOptions{externalNATS: true, coordArgs: []string{"--lease-ttl", "3s"}})
			leader, leaderURL := e.coord, e.apiURL
			e.startCoordinator(0, 0) // the standby, on the same data dir
			standby, standbyURL := e.coord, e.apiURL
			requireForwardedBy(t, standbyURL)
			for _, w := range []string{"w1", "w2", "w3"} {
				e.addWorker(w, 4)
			}

			// The client talks to the victim first.
			victimProc, urls := leader, leaderURL+","+standbyURL
			e.apiURL = standbyURL // where the test reads the run
			if victim == "standby" {
				victimProc, urls = standby, standbyURL+","+leaderURL
				e.apiURL = leaderURL
			}
			out := filepath.Join(e.dir, "out.jsonl")
			submit := startProc(t, "submit", nil, nil, stepflowBin, "submit", "--url", urls, "--quiet", "--retry-timeout", "90s",
				"--flow", e.writeFlow("chaos", ""), "--inputs", e.writeInputs("s4", chaosItems, nil), "--max-concurrent", "12", "--output", out)
			var run string
			e.waitUntil("the run exists", func() bool {
				ids := e.runIDs()
				if len(ids) == 1 {
					run = ids[0]
				}
				return run != ""
			})
			e.waitCompleted(run, chaosItems*3/10)

			victimProc.kill9(t)
			killed := time.Now()
			require.Equal(t, 0, submit.waitExit(t, chaosWait), "stepflow submit moves on to the other coordinator")
			finished := time.Since(killed)
			rep := e.verify(run, "s4", chaosItems)
			got, err := os.ReadFile(out)
			require.NoError(t, err)
			requireChaosOutput(t, string(got), chaosItems)
			if victim == "leader" {
				require.False(t, standby.exited(), "the standby took over")
				r, err := http.Get(standbyURL + "/runs/" + run)
				require.NoError(t, err)
				r.Body.Close()
				require.Empty(t, r.Header.Get("Stepflow-Forwarded-To"), "the standby leads now")
			}
			e.requireAlive("w1", "w2", "w3")
			reportChaos(t, "4-"+victim, chaosItems, rep, fmt.Sprintf("finished_after_kill=%s", finished.Round(100*time.Millisecond)))
		})
	}
}

// requireForwardedBy checks that the coordinator at url is a standby: it
// forwards API requests to the leader.
func requireForwardedBy(t *testing.T, url string) {
	t.Helper()
	r, err := http.Get(url + "/runs")
	require.NoError(t, err)
	r.Body.Close()
	require.Equal(t, http.StatusOK, r.StatusCode)
	require.NotEmpty(t, strings.TrimSpace(r.Header.Get("Stepflow-Forwarded-To")), "the second coordinator stands by")
}
