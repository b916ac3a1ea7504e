package queue_test

import (
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/stepflow-go/stepflow/pkg/queue"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

const fuzzRun = "0198c0de-7a1b-7c3d-8e4f-0123456789ab"

// fuzzItem is an item with every field set, for seeds.
func fuzzItem() *stepflowv1.Item {
	return &stepflowv1.Item{
		RunId: fuzzRun, Index: 7, Input: []byte(`{"name":"Ada","n":[1,2.5,null]}`),
		FlowId: "ab12", ReplySubject: queue.ResultSubject(fuzzRun), ParentRunId: "p-1", RootRunId: "r_2",
		EnqueuedAt: timestamppb.New(timestamppb.Now().AsTime()), Deadline: &timestamppb.Timestamp{Seconds: -1, Nanos: 5},
		HeartbeatInterval: durationpb.New(1500000000), MaxDeliver: 5,
		TraceContext: map[string]string{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
	}
}

func mustMarshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	data, err := proto.Marshal(m)
	require.NoError(t, err)
	return data
}

// FuzzDecodeItem: DecodeItem never panics and refuses with ErrBadMessage
// whatever is not an item of a valid run; what it accepts encodes and
// decodes again to the same item; and an item built from arbitrary
// fields round-trips exactly when its run id is valid.
func FuzzDecodeItem(f *testing.F) {
	full := mustMarshal(f, fuzzItem())
	blob := fuzzItem()
	blob.Input, blob.InputBlobId = nil, "sha256-0123"
	for _, data := range [][]byte{
		nil, {0}, {0xff}, full, full[:len(full)/2], append(append([]byte{}, full...), 0x08),
		mustMarshal(f, blob),
		mustMarshal(f, &stepflowv1.Item{RunId: fuzzRun}),
		mustMarshal(f, &stepflowv1.Item{RunId: "bad.run"}),
		mustMarshal(f, &stepflowv1.Item{Index: 3}),
		[]byte("\x0a\xff\xff\xff\xff\x0f"),  // a length prefix past the end
		[]byte("\x62\x05\x0a\x01a\x12\x00"), // a map entry (trace_context)
	} {
		f.Add(data, fuzzRun, uint64(0), []byte(`{}`))
	}
	f.Add([]byte{}, "run.with.dots", uint64(1<<63), []byte("\x00not json"))
	f.Add([]byte{}, "", uint64(0), []byte(nil))

	f.Fuzz(func(t *testing.T, data []byte, runID string, index uint64, input []byte) {
		it, err := queue.DecodeItem(data)
		if err != nil {
			require.ErrorIs(t, err, queue.ErrBadMessage)
			require.Nil(t, it)
		} else {
			require.NoError(t, queue.ValidateRunID(it.GetRunId()))
			again, err := queue.DecodeItem(mustMarshal(t, it))
			require.NoError(t, err)
			require.True(t, proto.Equal(it, again), "%v != %v", it, again)
		}

		built := fuzzItem()
		built.RunId, built.Index, built.Input = runID, index, input
		encoded, err := proto.Marshal(built)
		if queue.ValidateRunID(runID) != nil {
			// Not even encodable when it is not UTF-8; refused otherwise.
			if err == nil {
				_, err = queue.DecodeItem(encoded)
				require.ErrorIs(t, err, queue.ErrBadMessage)
			}
			return
		}
		require.NoError(t, err)
		got, err := queue.DecodeItem(encoded)
		require.NoError(t, err)
		if len(input) == 0 {
			built.Input = nil // proto3 bytes: empty and absent are one
		}
		require.True(t, proto.Equal(built, got), "%v != %v", built, got)
	})
}

// FuzzDecodeResult: the same properties for result messages.
func FuzzDecodeResult(f *testing.F) {
	res := &stepflowv1.ItemResult{
		RunId: fuzzRun, Index: 3, Result: []byte(`{"outcome":"failed","error":{"code":500,"message":"boom"}}`), Failed: true,
		Source: stepflowv1.ResultSource_RESULT_SOURCE_WORKER, WorkerId: "w-1", Deliveries: 2, Attempts: 1,
		StartedAt: timestamppb.Now(), FinishedAt: timestamppb.Now(), ItemStreamSeq: 99,
	}
	full := mustMarshal(f, res)
	for _, data := range [][]byte{
		nil, {0}, full, full[:len(full)-3],
		mustMarshal(f, &stepflowv1.ItemResult{RunId: fuzzRun, ResultBlobId: "sha256-ff", Source: stepflowv1.ResultSource(42)}),
		mustMarshal(f, &stepflowv1.ItemResult{RunId: "x y"}),
		[]byte("\x0a\x03abc\x28\x02"), // failed = 2 (any varint is true)
	} {
		f.Add(data, fuzzRun, uint64(0), []byte(`{"outcome":"success","result":1}`), false)
	}
	f.Add([]byte{}, "", uint64(5), []byte(nil), true)

	f.Fuzz(func(t *testing.T, data []byte, runID string, index uint64, result []byte, failed bool) {
		r, err := queue.DecodeResult(data)
		if err != nil {
			require.ErrorIs(t, err, queue.ErrBadMessage)
			require.Nil(t, r)
		} else {
			require.NoError(t, queue.ValidateRunID(r.GetRunId()))
			again, err := queue.DecodeResult(mustMarshal(t, r))
			require.NoError(t, err)
			require.True(t, proto.Equal(r, again), "%v != %v", r, again)
		}

		built := proto.CloneOf(res)
		built.RunId, built.Index, built.Result, built.Failed = runID, index, result, failed
		encoded, err := proto.Marshal(built)
		if queue.ValidateRunID(runID) != nil {
			// Not even encodable when it is not UTF-8; refused otherwise.
			if err == nil {
				_, err = queue.DecodeResult(encoded)
				require.ErrorIs(t, err, queue.ErrBadMessage)
			}
			return
		}
		require.NoError(t, err)
		got, err := queue.DecodeResult(encoded)
		require.NoError(t, err)
		if len(result) == 0 {
			built.Result = nil
		}
		require.True(t, proto.Equal(built, got), "%v != %v", built, got)
	})
}
