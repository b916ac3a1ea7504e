package coordinator_test

import (
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/coordinator"
	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/test/diskfull"
)

// An upload that does not fit the coordinator's disk gets 507 with a clear
// message, leaves nothing behind (no run, no run directory), and a run
// accepted before is untouched; once space is back, uploads are accepted
// again with no restart.
func TestUploadOnAFullDisk(t *testing.T) {
	t.Parallel()
	srv := queue.NewEmbedded(queue.EmbeddedConfig{StoreDir: t.TempDir(), Logger: testLogger(t)})
	require.NoError(t, srv.Start(testCtx(t)))
	t.Cleanup(srv.Shutdown)
	dataDir := diskfull.Mount(t, 8<<20)
	c := coordinatorOn(t, srv, dataDir, coordinator.Config{})
	cl := newClient(t, c)
	flowID := cl.storeFlow()

	earlier := cl.uploadJSONL(flowID, "&wait=false", inputLines(3), nil)
	require.Equal(t, http.StatusOK, earlier.Status, "%s", earlier.Body)
	earlierID := earlier.JSON(t)["runId"].(string)

	filler := diskfull.Fill(t, dataDir, 64<<10)
	big := make([]string, 2000)
	for i := range big {
		big[i] = `{"pad":"` + strings.Repeat("x", 1000) + `"}`
	}
	r := cl.uploadJSONL(flowID, "&wait=false", big, nil)
	require.Equal(t, http.StatusInsufficientStorage, r.Status, "%s", r.Body)
	msg := r.JSON(t)["message"].(string)
	require.Contains(t, msg, "no space left on device")
	require.Contains(t, msg, "the upload was rejected and no run was created")
	require.NotContains(t, msg, "coordinator: coordinator:")

	runs := cl.get("/runs").JSON(t)["runs"].([]any)
	require.Len(t, runs, 1, "no run was created")
	entries, err := os.ReadDir(filepath.Join(dataDir, "runs"))
	require.NoError(t, err)
	require.Len(t, entries, 1, "only the earlier run's directory is left: %v", entries)

	require.NoError(t, os.Remove(filler))
	again := cl.uploadJSONL(flowID, "&wait=false", big[:100], nil)
	require.Equal(t, http.StatusOK, again.Status, "%s", again.Body)
	againID := again.JSON(t)["runId"].(string)

	startWorker(t, c.NATSURL(), nil)
	cl.waitStatus(earlierID, "completed")
	cl.waitStatus(againID, "completed")
}

// A disk that fills during a run (the coordinator's data dir, with the
// embedded NATS store on it) pauses the run: readiness and health say
// why; once space is back the run resumes on its own, with no restart,
// and ends with every result exactly once.
func TestRunPausesOnAFullDiskAndResumes(t *testing.T) {
	t.Parallel()
	dataDir := diskfull.Mount(t, 48<<20)
	c := startCoordinator(t, func(cfg *coordinator.Config) { cfg.DataDir = dataDir })
	cl := newClient(t, c)
	flowID := cl.storeFlow()
	lines := make([]string, 3000)
	for i := range lines {
		lines[i] = `{"i":` + strconv.Itoa(i) + `,"pad":"` + strings.Repeat("x", 2000) + `"}`
	}
	r := cl.uploadJSONL(flowID, "&wait=false&maxConcurrency=16", lines, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	runID := r.JSON(t)["runId"].(string)
	startWorker(t, c.NATSURL(), nil)
	done := func() float64 {
		return cl.get("/runs/" + runID).JSON(t)["items"].(map[string]any)["completed"].(float64)
	}
	waitFor(t, 30*time.Second, func() bool { return done() >= 200 }, "the run started")
	filler := diskfull.Fill(t, dataDir, 0)
	waitFor(t, 30*time.Second, func() bool { return c.Ready() != nil }, "not ready while the disk is full")
	require.Regexp(t, `data dir is full|store .* ran out of space`, c.Ready().Error())
	health := cl.get("/health")
	require.Equal(t, http.StatusServiceUnavailable, health.Status, "%s", health.Body)
	require.Equal(t, "unhealthy", health.JSON(t)["status"])
	require.Regexp(t, `runs are paused|resumes on its own|restarts on its own`, health.JSON(t)["reason"])
	// A write to the embedded NATS store fails too (storing a flow): the
	// server fails every later write to that stream until JetStream is
	// restarted, which the coordinator's embedded server does by itself
	// once there is space.
	otherFlow := strings.Replace(echoFlow, `"name":"echo"`, `"name":"echo-`+strings.Repeat("d", 64<<10)+`"`, 1)
	require.NotEqual(t, echoFlow, otherFlow)
	// 64 KiB: more than the page left in the stream's block. Answered 507
	// (the store failed) or 200 (written before the server noticed).
	pr := cl.post("/flows", `{"flow":`+otherFlow+`}`)
	require.Contains(t, []int{http.StatusOK, http.StatusInsufficientStorage}, pr.Status, "%s", pr.Body)
	waitFor(t, 30*time.Second, func() bool { return c.EmbeddedNATS().Health() != nil }, "the embedded server reports its store full")
	paused := done()
	require.Less(t, paused, float64(len(lines)), "the run paused")
	t.Logf("not ready: %v; %v items done", c.Ready(), paused)

	require.NoError(t, os.Remove(filler))
	// (Reads that need JetStream fail while it restarts.)
	waitFor(t, 30*time.Second, func() bool { return c.Ready() == nil }, "ready again")
	cl.waitStatus(runID, "completed")
	require.Equal(t, http.StatusOK, cl.get("/health").Status)
	stored := cl.post("/flows", `{"flow":`+otherFlow+`}`)
	require.Equal(t, http.StatusOK, stored.Status, "%s", stored.Body)
	got := cl.itemsJSONL(runID)
	require.Len(t, got, len(lines))
	for i, line := range got {
		require.JSONEq(t, echoResult(lines[i]), line, "item %d", i)
	}
}
