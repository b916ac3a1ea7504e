package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The fault-injection tests of docs/reliability.md. Each scenario runs a
// batch of chaosItems items through real processes, injects one fault
// mid-batch, and checks that every item has exactly one result with the
// right value and the run ends in the right state; the counting component
// server (testdata/chaos_server.py) makes re-executions visible. Each
// logs a "CHAOS scenario=..." line with its figures. They do not run in
// parallel: they measure redeliveries, which a starved CPU would add.

// Scenario 1: kill -9 one of three workers mid-batch. The batch completes;
// only that worker's in-flight items run again.
func TestChaosWorkerKill(t *testing.T) {
	skipShort(t)
	e := newChaosEnv(t, chaosOptions{externalNATS: true})
	const slots = 4
	for _, w := range []string{"w1", "w2", "w3"} {
		e.addWorker(w, slots)
	}
	run := e.submitNoWait(e.writeFlow("chaos", ""), e.writeInputs("s1", chaosItems, nil), 3*slots)
	e.waitCompleted(run, chaosItems*3/10)

	e.workers["w1"].kill9(t)
	killedAt := len(e.executions())
	rep := e.verify(run, "s1", chaosItems)

	// Only items in flight on w1 ran twice: at most its slots, each first
	// on w1, then once more elsewhere; w1 ran nothing after the kill.
	xs := e.executions()
	for _, x := range xs[killedAt:] {
		require.NotEqual(t, "w1", x.worker, "w1 executed item %d after it was killed", x.index)
	}
	for i, runs := range rep.counts {
		if len(runs) > 1 {
			require.Equal(t, "w1", runs[0].worker, "item %d ran twice but was not in flight on the killed worker: %v", i, runs)
			require.Len(t, runs, 2, "item %d", i)
		}
	}
	require.LessOrEqual(t, rep.reexecuted, slots, "more items ran twice than the killed worker had slots")
	// The killed worker's component server died with it (no orphan).
	pids := map[int]bool{}
	for _, x := range xs {
		if x.worker == "w1" {
			pids[x.pid] = true
		}
	}
	e.waitUntil("the killed worker's component server is gone", func() bool {
		for pid := range pids {
			if !processGone(pid) {
				return false
			}
		}
		return true
	})
	e.requireAlive("w2", "w3")
	reportChaos(t, "1", chaosItems, rep, fmt.Sprintf("killed_worker_slots=%d", slots))
}

// Scenario 2: kill -9 the coordinator, with its embedded NATS server and
// file store, mid-batch; restart it on the same data dir. A `stepflow
// submit` started before the kill rides through the restart, and
// `submit --attach` gives the same results afterwards.
func TestChaosCoordinatorKill(t *testing.T) {
	skipShort(t)
	e := newChaosEnv(t, chaosOptions{})
	for _, w := range []string{"w1", "w2", "w3"} {
		e.addWorker(w, 4)
	}
	out := filepath.Join(e.dir, "out.jsonl")
	submit := startProc(t, "submit", nil, nil, stepflowBin, "submit", "--url", e.apiURL, "--quiet", "--retry-timeout", "90s",
		"--flow", e.writeFlow("chaos", ""), "--inputs", e.writeInputs("s2", chaosItems, nil), "--max-concurrent", "12", "--output", out)
	var run string
	e.waitUntil("the run exists", func() bool {
		ids := e.runIDs()
		if len(ids) == 1 {
			run = ids[0]
		}
		return run != ""
	})
	e.waitCompleted(run, chaosItems*3/10)

	e.coord.kill9(t)
	e.restartCoordinator()
	restarted := time.Now()

	require.Equal(t, 0, submit.waitExit(t, chaosWait), "stepflow submit rides through the restart")
	// Items whose result publish or ack was in flight at the kill are not
	// stuck until their 30s publish timeout: workers send them again when
	// they reconnect. (Before that, the batch finished 50 s after the
	// restart here; now 5 to 15 s, depending on the machine's load.)
	resumed := time.Since(restarted)
	require.Less(t, resumed, 40*time.Second, "the batch took too long to finish after the restart")
	rep := e.verify(run, "s2", chaosItems)
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	requireChaosOutput(t, string(got), chaosItems)

	attached := runExample(t, 0, stepflowBin, "submit", "--url", e.apiURL, "--quiet", "--attach", run)
	require.Equal(t, string(got), attached, "--attach after the restart writes the same results")
	e.requireAlive("w1", "w2", "w3")
	reportChaos(t, "2", chaosItems, rep, fmt.Sprintf("finished_after_restart=%s", resumed.Round(100*time.Millisecond)))
}

// Scenario 3: kill -9 the external NATS server (file store) mid-batch and
// restart it on the same store; workers and coordinator reconnect.
func TestChaosNATSKill(t *testing.T) {
	skipShort(t)
	e := newChaosEnv(t, chaosOptions{externalNATS: true})
	for _, w := range []string{"w1", "w2", "w3"} {
		e.addWorker(w, 4)
	}
	run := e.submitNoWait(e.writeFlow("chaos", ""), e.writeInputs("s3", chaosItems, nil), 12)
	e.waitCompleted(run, chaosItems*3/10)

	e.nats.kill9(t)
	e.startNATS()

	rep := e.verify(run, "s3", chaosItems)
	e.requireAlive("w1", "w2", "w3")
	require.False(t, e.coord.exited(), "the coordinator survives the NATS restart")
	reportChaos(t, "3", chaosItems, rep)
}

// Scenario 5: a poison item crashes its component server every time. Each
// delivery runs it twice: once with the others, and once more alone after
// the crash (an item whose server died under it does). After MaxDeliver
// (5) deliveries it is failed with an error naming them and the last
// error; the other items complete, none of them running out of
// deliveries, and the workers keep running.
func TestChaosPoisonItem(t *testing.T) {
	skipShort(t)
	e := newChaosEnv(t, chaosOptions{externalNATS: true})
	for _, w := range []string{"w1", "w2", "w3"} {
		e.addWorker(w, 4)
	}
	const poison = 17
	run := e.submitNoWait(e.writeFlow("chaos", ""), e.writeInputs("s5", chaosItems, map[int]string{poison: `"crash":true`}), 12)
	rep := e.verify(run, "s5", chaosItems, poison)

	fr := rep.results[poison]
	t.Logf("poison item's error: %s", fr.Error.Message)
	require.Contains(t, fr.Error.Message, fmt.Sprintf("item %d exceeded its maximum deliveries (5); last error: ", poison))
	require.Contains(t, fr.Error.Message, `component server "py" failed: process exited: exit status 1`)
	require.Len(t, rep.counts[poison], 10, "the poison item ran twice per delivery (the second time alone on its worker)")
	e.requireAlive("w1", "w2", "w3")
	// Innocent items in flight on a crashing server ran again on their
	// worker, on the same delivery; they are the other re-executions.
	innocent := rep.reexecuted - 1
	reportChaos(t, "5", chaosItems, rep, fmt.Sprintf("poison_executions=%d innocent_reexecuted=%d", len(rep.counts[poison]), innocent))
}

// Scenario 6: an item three times slower than AckWait is kept alive by
// in-progress heartbeats and never redelivered.
func TestChaosSlowItemHeartbeat(t *testing.T) {
	skipShort(t)
	e := newChaosEnv(t, chaosOptions{externalNATS: true, ackWait: 2 * time.Second})
	for _, w := range []string{"w1", "w2", "w3"} {
		e.addWorker(w, 4)
	}
	const slow = 5
	run := e.submitNoWait(e.writeFlow("chaos", ""), e.writeInputs("s6", chaosItems, map[int]string{slow: `"sleep_ms":6000`}), 12)
	rep := e.verify(run, "s6", chaosItems)
	require.Len(t, rep.counts[slow], 1, "the slow item ran once")
	reportChaos(t, "6", chaosItems, rep, fmt.Sprintf("ack_wait=2s slow_item_ms=6000 slow_item_executions=%d", len(rep.counts[slow])))
}

// Scenario 7: SIGTERM to workers mid-batch. A worker stops fetching,
// finishes its in-flight items within its drain timeout or hands them
// back, and exits 0; nothing is lost.
//
// Items 1500-1511 sleep 5s: as many as the workers have slots, so once
// they have started every slot of every worker holds one. Then w1 (drain
// timeout 1s) must hand its slow items back, and w2 (drain timeout 30s)
// must finish its own.
func TestChaosWorkerSIGTERM(t *testing.T) {
	skipShort(t)
	e := newChaosEnv(t, chaosOptions{externalNATS: true})
	const slots, first = 4, 1500
	e.addWorker("w1", slots, "--drain-timeout", "1s")
	e.addWorker("w2", slots, "--drain-timeout", "30s")
	e.addWorker("w3", slots)
	special := map[int]string{}
	for i := first; i < first+3*slots; i++ {
		special[i] = `"sleep_ms":5000`
	}
	run := e.submitNoWait(e.writeFlow("chaos", ""), e.writeInputs("s7", chaosItems, special), 3*slots)
	e.waitUntil("every slow item has started", func() bool {
		started := 0
		for i, xs := range byIndex(e.executions(), "s7") {
			if special[i] != "" && len(xs) > 0 {
				started++
			}
		}
		return started == len(special)
	})
	slowOn := map[string][]int{}
	for i, xs := range byIndex(e.executions(), "s7") {
		if special[i] != "" {
			slowOn[xs[0].worker] = append(slowOn[xs[0].worker], i)
		}
	}
	require.Len(t, slowOn["w1"], slots, "w1's slots all hold slow items: %v", slowOn)
	require.Len(t, slowOn["w2"], slots, "w2's slots all hold slow items: %v", slowOn)

	signalled := time.Now()
	before := len(e.executions())
	e.workers["w1"].signal(t, syscall.SIGTERM)
	e.workers["w2"].signal(t, syscall.SIGTERM)
	require.Equal(t, 0, e.workers["w1"].waitExit(t, 20*time.Second), "w1 exits 0 after handing its items back")
	w1Took := time.Since(signalled)
	require.Equal(t, 0, e.workers["w2"].waitExit(t, 40*time.Second), "w2 exits 0 after finishing its items")
	w2Took := time.Since(signalled)
	require.Less(t, w1Took, 1*time.Second+15*time.Second, "w1 exceeded its drain timeout and grace")

	for _, x := range e.executions()[before:] {
		require.NotContains(t, []string{"w1", "w2"}, x.worker, "a draining worker started item %d", x.index)
	}
	rep := e.verify(run, "s7", chaosItems)
	handedBack := 0
	for i, xs := range rep.counts {
		if len(xs) == 1 {
			continue
		}
		require.Equal(t, "w1", xs[0].worker, "item %d ran twice without being handed back by w1: %v", i, xs)
		require.Contains(t, slowOn["w1"], i, "item %d", i)
		handedBack++
	}
	require.Equal(t, slots, handedBack, "w1 hands back its in-flight items")
	for _, i := range slowOn["w2"] {
		require.Len(t, rep.counts[i], 1, "w2 finished item %d", i)
	}
	e.requireAlive("w3")
	reportChaos(t, "7", chaosItems, rep, fmt.Sprintf("handed_back=%d finished_in_drain=%d w1_exit_after=%s w2_exit_after=%s",
		handedBack, len(slowOn["w2"]), w1Took.Round(100*time.Millisecond), w2Took.Round(100*time.Millisecond)))
}

// Scenario 8: a component call that hangs. It times out (timeoutMs), the
// server is restarted, and the item retries or fails as its step's onError
// says; the other items complete.
func TestChaosHangingComponent(t *testing.T) {
	skipShort(t)
	e := newChaosEnv(t, chaosOptions{externalNATS: true, timeoutMs: 2000})
	for _, w := range []string{"w1", "w2", "w3"} {
		e.addWorker(w, 4)
	}
	// One run after the other: two calls hanging on one server at once
	// would see the server killed for the other's timeout (a transport
	// failure: the item is handed back and runs again).
	const hung = 7
	retryRun := e.submitNoWait(e.writeFlow("retry", "{ action: retry, maxAttempts: 3, initialDelayMs: 100 }"),
		e.writeInputs("s8retry", chaosItems, map[int]string{hung: `"hang_once":true`}), 12)
	rep := e.verify(retryRun, "s8retry", chaosItems)
	require.Len(t, rep.counts[hung], 2, "the hung call timed out and its retry ran on the restarted server")
	reportChaos(t, "8-retry", chaosItems, rep, fmt.Sprintf("hung_item_executions=%d", len(rep.counts[hung])))

	failRun := e.submitNoWait(e.writeFlow("fail", ""),
		e.writeInputs("s8fail", chaosItems, map[int]string{hung: `"hang":true`}), 12)
	rep = e.verify(failRun, "s8fail", chaosItems, hung)
	require.Len(t, rep.counts[hung], 1, "onError fail: no retry")
	msg := fmt.Sprint(rep.results[hung].Error.Data)
	t.Logf("hung item's error: %s %s", rep.results[hung].Error.Message, msg)
	require.Contains(t, msg, `component "/work" of plugin "py" timed out after 2s`)
	e.requireAlive("w1", "w2", "w3")
	reportChaos(t, "8-fail", chaosItems, rep, fmt.Sprintf("hung_item_executions=%d", len(rep.counts[hung])))
}

// requireChaosOutput checks a results file written by stepflow submit:
// one line per item, in input order, each with its item's value.
func requireChaosOutput(t *testing.T, out string, n int) {
	t.Helper()
	ls := lines(out)
	require.Len(t, ls, n)
	for i, l := range ls {
		require.Equal(t, fmt.Sprintf(`{"outcome":"success","result":{"i":%d,"double":%d}}`, i, 2*i), l, "line %d", i+1)
	}
}

// runIDs lists the ids of the coordinator's runs (none while it does not
// answer).
func (e *chaosEnv) runIDs() []string {
	resp, err := http.Get(e.apiURL + "/runs")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var list struct {
		Runs []runStatus `json:"runs"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&list) != nil {
		return nil
	}
	var ids []string
	for _, r := range list.Runs {
		ids = append(ids, r.RunID)
	}
	return ids
}
