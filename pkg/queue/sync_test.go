package queue_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/queue"
)

func TestParseSyncPolicy(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]queue.SyncPolicy{
		"":        {},
		"default": {},
		"always":  queue.SyncAlways,
		"ALWAYS":  queue.SyncAlways,
		"1s":      {Interval: time.Second},
		"2m":      {Interval: 2 * time.Minute},
	} {
		got, err := queue.ParseSyncPolicy(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, in := range []string{"sometimes", "0s", "-1s", "2"} {
		_, err := queue.ParseSyncPolicy(in)
		require.ErrorIs(t, err, queue.ErrInvalidConfig, in)
		require.ErrorContains(t, err, `want "always" or a positive duration`, in)
	}
	require.Equal(t, "always", queue.SyncAlways.String())
	require.Equal(t, "1s", queue.SyncPolicy{Interval: time.Second}.String())
	require.Equal(t, "default", queue.SyncPolicy{}.String())
}
