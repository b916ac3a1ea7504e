package coordinator_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/stepflow-go/stepflow/pkg/coordinator"
	"github.com/stepflow-go/stepflow/pkg/queue"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// coordinatorVia starts a coordinator whose NATS connection goes through
// proxy (to srv), with a JetStream API timeout of 1 s so that a lost
// answer costs little.
func coordinatorVia(t *testing.T, proxy *replyDropper, mod func(*coordinator.Config)) *coordinator.Coordinator {
	t.Helper()
	cfg := coordinator.Config{
		DataDir: t.TempDir(), Host: "127.0.0.1", NATSURL: proxy.URL(), Logger: testLogger(t),
		NATSConnect: queue.ConnectOptions{APITimeout: time.Second},
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := coordinator.New(cfg)
	require.NoError(t, err)
	require.NoError(t, c.Start(testCtx(t)))
	t.Cleanup(func() { require.NoError(t, c.Stop(context.Background())) })
	return c
}

func startServer(t *testing.T) *queue.Embedded {
	t.Helper()
	srv := queue.NewEmbedded(queue.EmbeddedConfig{StoreDir: t.TempDir(), Logger: testLogger(t)})
	require.NoError(t, srv.Start(testCtx(t)))
	t.Cleanup(srv.Shutdown)
	return srv
}

// Lease renewals whose answers are lost, although NATS stored them, are
// recognised as the leader's own: it keeps leading under the same token
// (it never took them for another coordinator's, nor let the lease
// expire and took it again). With a TTL of 2 s a renewal gives up
// waiting after 1 s and the next one finds the lost one (across calls);
// with 4 s the renewal reads the lease back itself after the API timeout
// (within the call), three times in a row.
func TestLeaderSurvivesLostRenewalAnswers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		ttl  time.Duration
		lose int
	}{{"across calls", 2 * time.Second, 1}, {"within the call", 4 * time.Second, 3}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := startServer(t)
			proxy := newReplyDropper(t, strings.TrimPrefix(srv.ClientURL(), "nats://"))
			c := coordinatorVia(t, proxy, func(cfg *coordinator.Config) { cfg.Queue.LeaseTTL = tc.ttl })
			kv, err := inspectJS(t, srv).KeyValue(testCtx(t), queue.BucketCoordinators)
			require.NoError(t, err)
			holder := func() queue.Holder {
				e, err := kv.Get(testCtx(t), "leader")
				require.NoError(t, err)
				var h queue.Holder
				require.NoError(t, json.Unmarshal(e.Value(), &h))
				return h
			}
			before := holder()
			require.NotEmpty(t, before.Token)

			w, err := kv.Watch(testCtx(t), "leader", jetstream.UpdatesOnly())
			require.NoError(t, err)
			defer func() { _ = w.Stop() }()
			proxy.lose(tc.lose, onSubject("$KV."+queue.BucketCoordinators+".leader"))
			proxy.waitDropped(t, tc.lose)
			// Renewals go on: tc.lose+2 more writes of the lease.
			for range tc.lose + 2 {
				select {
				case e := <-w.Updates():
					require.NotNil(t, e)
					require.Equal(t, jetstream.KeyValuePut, e.Operation())
				case <-c.Stopped():
					t.Fatal("the coordinator stopped")
				case <-testCtx(t).Done():
					t.Fatal("the leader stopped renewing its lease")
				}
			}
			after := holder()
			require.Equal(t, before.Token, after.Token, "the lease was taken again, not renewed")
			require.False(t, c.LostLeadership())
			r := newClient(t, c).get("/runs")
			require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
			require.Empty(t, r.Header.Get("Stepflow-Forwarded-To"), "it still leads")
		})
	}
}

// Run-record writes whose answers are lost: the creation of the run (the
// upload would fail with "run already exists" or a timeout) and its
// terminal record. The run is created once, completes, and its record
// says so.
func TestRunRecordWritesWithLostAnswers(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	proxy := newReplyDropper(t, strings.TrimPrefix(srv.ClientURL(), "nats://"))
	c := coordinatorVia(t, proxy, nil)
	startWorker(t, srv.ClientURL(), nil)

	runs := "$KV." + queue.BucketRuns + "."
	proxy.lose(1, onSubject(runs)) // the first write of a run is its creation
	proxy.lose(1, func(subject string, data []byte) bool {
		rec := &stepflowv1.RunRecord{}
		return strings.HasPrefix(subject, runs) && proto.Unmarshal(data, rec) == nil && queue.Terminal(rec.GetStatus())
	})
	cl := newClient(t, c)
	flowID := cl.storeFlow()
	const n = 50
	lines := inputLines(n)
	r := cl.uploadJSONL(flowID, "&wait=false", lines, nil)
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	runID := r.JSON(t)["runId"].(string)
	details := cl.waitStatus(runID, "completed")
	require.EqualValues(t, n, details["items"].(map[string]any)["completed"])
	proxy.waitDropped(t, 2)

	store, err := queue.OpenRunStore(testCtx(t), inspectJS(t, srv))
	require.NoError(t, err)
	rec, _, err := store.Get(testCtx(t), runID)
	require.NoError(t, err)
	require.Equal(t, stepflowv1.RunStatus_RUN_STATUS_COMPLETED, rec.GetStatus())
	require.EqualValues(t, n, rec.GetItems().GetCompleted())
	got := cl.itemsJSONL(runID)
	require.Len(t, got, n)
	for i, line := range got {
		require.JSONEq(t, echoResult(lines[i]), line, "item %d", i)
	}
	require.False(t, c.LostLeadership())
}
