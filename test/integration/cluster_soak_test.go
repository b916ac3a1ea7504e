//go:build soak

package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Cluster scenarios not in `make test`: run by `make soak`.
//
// The rolling restart passed locally but stalled once in CI: after the
// first node came back, no result came for 90 s (the cause is not found
// yet; docs/reliability.md lists it as open).

// A rolling restart of the three nodes, one at a time, each stopped with
// SIGTERM (what a Kubernetes upgrade of the NATS StatefulSet does) and
// started again once results flow: the batch completes exactly once.
func TestClusterRollingRestart(t *testing.T) {
	skipShort(t)
	c := newNATSCluster(t)
	for i := range 3 {
		c.start(i)
	}
	e := newClusterEnv(t, c, nil)
	run := e.submitNoWait(e.writeFlow("cluster", ""), e.writeInputs("c4", clusterItems, nil), 8)
	e.waitCompleted(run, clusterItems/5)

	began := time.Now()
	var gaps []string
	for i := range 3 {
		c.procs[i].stop(t)
		stopped := time.Now()
		c.start(i)
		gaps = append(gaps, fmt.Sprintf("n%d=%s", i, e.progressAfter(run, stopped).Round(100*time.Millisecond)))
	}
	rep := e.verify(run, "c4", clusterItems)
	require.False(t, e.coord.exited(), "the coordinator exited: %v", e.coord.exitErr())
	e.requireAlive("w1", "w2")
	reportCluster(t, "rolling-restart", clusterItems, rep, fmt.Sprintf("results_again_after_each=%s finished_after=%s",
		strings.Join(gaps, ","), time.Since(began).Round(100*time.Millisecond)))
}
