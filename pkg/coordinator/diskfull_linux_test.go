package coordinator_test

import (
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/stepflow-go/stepflow/pkg/coordinator"
	"github.com/stepflow-go/stepflow/pkg/queue"
)

// mountTmpfs mounts a tmpfs of size bytes on a new directory and unmounts
// it at cleanup. It needs root (CI runs as root); elsewhere the test
// fails, naming what it needs.
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "small")
	require.NoError(t, os.Mkdir(dir, 0o755))
	err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+strconv.Itoa(size))
	require.NoError(t, err, "mounting a %d-byte tmpfs for a full-disk test needs root (CI runs as root)", size)
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// fillDisk writes a file that leaves about keep bytes free on dir's
// filesystem and returns its path.
func fillDisk(t *testing.T, dir string, keep int64) string {
	t.Helper()
	var st syscall.Statfs_t
	require.NoError(t, syscall.Statfs(dir, &st))
	free := int64(st.Bavail) * st.Bsize
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	require.NoError(t, err)
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for left := free - keep; left > 0; {
		n := min(left, int64(len(chunk)))
		if _, err := f.Write(chunk[:n]); err != nil {
			break // full already: fine
		}
		left -= n
	}
	return path
}

// An upload that does not fit the coordinator's disk gets 507 with a clear
// message, leaves nothing behind (no run, no run directory), and a run
// accepted before is untouched; once space is back, uploads are accepted
// again with no restart.
func TestUploadOnAFullDisk(t *testing.T) {
	t.Parallel()
	srv := queue.NewEmbedded(queue.EmbeddedConfig{StoreDir: t.TempDir(), Logger: testLogger(t)})
	require.NoError(t, srv.Start(testCtx(t)))
	t.Cleanup(srv.Shutdown)
	dataDir := mountTmpfs(t, 8<<20)
	c := coordinatorOn(t, srv, dataDir, coordinator.Config{})
	cl := newClient(t, c)
	flowID := cl.storeFlow()

	earlier := cl.uploadJSONL(flowID, "&wait=false", inputLines(3), nil)
	require.Equal(t, http.StatusOK, earlier.Status, "%s", earlier.Body)
	earlierID := earlier.JSON(t)["runId"].(string)

	filler := fillDisk(t, dataDir, 64<<10)
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
