//go:build soak

package integration

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// soakFor is how long TestSoak runs: `make soak` (SOAK=10m).
var soakFor = flag.Duration("soak", 10*time.Minute, "how long TestSoak runs batches")

// TestSoak runs batches back to back for -soak on a three-node NATS
// cluster (R3) with a coordinator and three workers, and during each
// batch, at a random point, kills (-9) a random worker, a random NATS
// node, or both, restarting each once results flow again. Every batch is
// checked like a chaos scenario: each item exactly one result, its own,
// and the run's counters right. Not part of `make test` (build tag soak);
// its figures are in docs/reliability.md.
//
//	make soak            # 10 minutes
//	make soak SOAK=30m
func TestSoak(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, seed>>1))
	t.Logf("SOAK seed=%d duration=%s", seed, *soakFor)

	c := newNATSCluster(t)
	for i := range 3 {
		c.start(i)
	}
	// At info, the coordinator logs its reconnects and its runs' ends.
	e := newClusterEnv(t, c, nil, "--log-level", "info")
	e.addWorker("w3", 4)
	workers := []string{"w1", "w2", "w3"}
	flowPath := e.writeFlow("soak", "")

	var batches, items, reexecuted, workerKills, natsKills int
	var worstRecovery time.Duration
	deadline := time.Now().Add(*soakFor)
	for b := 0; time.Now().Before(deadline); b++ {
		n := 500 + rng.IntN(2500)
		tag := fmt.Sprintf("b%d", b)
		conc := 4 + rng.IntN(9)
		run := e.submitNoWait(flowPath, e.writeInputs(tag, n, nil), conc)
		e.waitCompleted(run, n*rng.IntN(80)/100)

		fault := rng.IntN(3)
		at := time.Now()
		var faults []string
		if fault != 1 {
			w := workers[rng.IntN(len(workers))]
			e.workers[w].kill9(t)
			e.addWorker(w, 4)
			workerKills++
			faults = append(faults, "kill-9:"+w)
		}
		var recovery time.Duration
		if fault != 0 {
			node := rng.IntN(3)
			c.kill9(node)
			natsKills++
			faults = append(faults, fmt.Sprintf("kill-9:n%d", node))
			recovery, _ = e.progressAfter(run, n, at)
			c.start(node)
		}
		rep := e.verify(run, tag, n)
		require.False(t, e.coord.exited(), "the coordinator exited: %v", e.coord.exitErr())
		batches++
		items += n
		reexecuted += rep.reexecuted
		worstRecovery = max(worstRecovery, recovery)
		t.Logf("SOAK batch=%d items=%d max_concurrent=%d faults=%v lost=%d duplicates=%d reexecuted=%d results_again_after=%s",
			b, n, conc, faults, rep.lost, rep.duplicates, rep.reexecuted, recovery.Round(100*time.Millisecond))
	}
	e.requireAlive(workers...)
	t.Logf("SOAK total batches=%d items=%d lost=0 duplicates=0 reexecuted=%d worker_kills=%d nats_kills=%d worst_results_again_after=%s",
		batches, items, reexecuted, workerKills, natsKills, worstRecovery.Round(100*time.Millisecond))
}
