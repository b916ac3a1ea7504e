package queue_test

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/stepflow-go/stepflow/pkg/queue"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

func TestWorkerKey(t *testing.T) {
	t.Parallel()
	require.Equal(t, "pod-7f9c_x=1", queue.WorkerKey("pod-7f9c_x=1"))
	// Dots (host names), slashes (subtest names), spaces and wildcards are
	// replaced, and a hash keeps ids that differ only there apart.
	a, b := queue.WorkerKey("host.example.com-12"), queue.WorkerKey("host_example_com-12")
	require.NotEqual(t, a, b)
	require.True(t, strings.HasPrefix(a, "host_example_com-12-"), a)
	for _, id := range []string{"a b", "a.b", "a*", "a>", "T/sub", "", "ü"} {
		k := queue.WorkerKey(id)
		require.NotEmpty(t, k)
		for _, c := range []byte(k) {
			require.True(t, c == '-' || c == '_' || c == '=' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'), "%q -> %q", id, k)
		}
	}
}

// TestWorkerRegistry: heartbeats are listed by worker id with the
// server's receive time, the latest one per worker wins, and a clean stop
// removes the worker.
func TestWorkerRegistry(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	reg, err := queue.OpenWorkerRegistry(ctx, b.js)
	require.NoError(t, err)

	ws, err := queue.ListWorkers(ctx, b.js)
	require.NoError(t, err)
	require.Empty(t, ws)

	status := func(id string, busy uint32) *stepflowv1.WorkerStatus {
		return &stepflowv1.WorkerStatus{
			WorkerId: id, Host: "h", Pid: 42, SlotsTotal: 4, SlotsBusy: busy,
			RunBusy:           map[string]uint32{"r1": busy},
			HeartbeatAt:       timestamppb.Now(),
			HeartbeatInterval: durationpb.New(time.Second),
			MeanDuration:      durationpb.New(150 * time.Millisecond),
		}
	}
	before := time.Now().Add(-time.Second)
	require.NoError(t, reg.Put(ctx, status("w.b", 1)))
	require.NoError(t, reg.Put(ctx, status("w-a", 2)))
	require.NoError(t, reg.Put(ctx, status("w.b", 3)))
	require.ErrorIs(t, reg.Put(ctx, &stepflowv1.WorkerStatus{}), queue.ErrInvalidConfig)

	ws, err = queue.ListWorkers(ctx, b.js)
	require.NoError(t, err)
	require.Len(t, ws, 2)
	require.Equal(t, "w-a", ws[0].Status.GetWorkerId())
	require.Equal(t, "w.b", ws[1].Status.GetWorkerId())
	require.Equal(t, uint32(3), ws[1].Status.GetSlotsBusy())
	require.Equal(t, uint32(3), ws[1].Status.GetRunBusy()["r1"])
	require.Equal(t, 150*time.Millisecond, ws[1].Status.GetMeanDuration().AsDuration())
	require.True(t, ws[1].Received.After(before), ws[1].Received)

	require.NoError(t, reg.Delete(ctx, "w.b"))
	require.NoError(t, reg.Delete(ctx, "never-there"))
	ws, err = queue.ListWorkers(ctx, b.js)
	require.NoError(t, err)
	require.Len(t, ws, 1)
	require.Equal(t, "w-a", ws[0].Status.GetWorkerId())
}

// TestMonitor: stream and consumer state as the cluster view reads it.
func TestMonitor(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	ctx := testCtx(t)
	_, err := queue.PublishItems(ctx, b.js, "mon", inputs(0, 10), queue.PublishItemsOptions{})
	require.NoError(t, err)
	cons, err := queue.CreateRunConsumer(ctx, b.js, "mon", queue.RunConsumerConfig{MaxAckPending: 3})
	require.NoError(t, err)

	streams, err := queue.Streams(ctx, b.js)
	require.NoError(t, err)
	require.Len(t, streams, 1)
	require.Equal(t, queue.StreamItems, streams[0].Name)
	require.Equal(t, uint64(10), streams[0].Messages)
	require.Positive(t, streams[0].Bytes)
	require.Equal(t, 1, streams[0].Consumers)
	require.Equal(t, streams[0].FirstSeq+9, streams[0].LastSeq)
	require.False(t, streams[0].FirstTime.IsZero())

	// Take 3 (the run's limit), ack one, nak one: 2 in flight, one of
	// them delivered twice once it comes back.
	batch, err := cons.Fetch(3, jetstream.FetchMaxWait(2*time.Second))
	require.NoError(t, err)
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	require.NoError(t, batch.Error())
	require.Len(t, msgs, 3)
	require.NoError(t, msgs[0].DoubleAck(ctx))
	require.NoError(t, msgs[1].Nak())
	require.NoError(t, b.nc.Flush()) // the nak is processed before the next pull
	again, err := cons.Fetch(1, jetstream.FetchMaxWait(2*time.Second))
	require.NoError(t, err)
	for m := range again.Messages() {
		md, err := m.Metadata()
		require.NoError(t, err)
		require.Equal(t, uint64(2), md.NumDelivered)
	}

	cs, err := queue.RunConsumers(ctx, b.js)
	require.NoError(t, err)
	require.Len(t, cs, 1)
	c := cs[0]
	require.Equal(t, "mon", c.RunID)
	require.Equal(t, queue.RunConsumer("mon"), c.Name)
	require.Equal(t, uint64(7), c.NumPending)
	require.Equal(t, 2, c.NumAckPending)
	require.Equal(t, 1, c.NumRedelivered)
	require.Equal(t, 3, c.MaxAckPending)
	require.False(t, c.LastDelivered.IsZero())
}
