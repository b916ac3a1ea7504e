package gcpace

import (
	"os"
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestPercent(t *testing.T) {
	for _, c := range []struct {
		live, headroom uint64
		want           int
	}{
		{live: 0, headroom: 64 << 20, want: maxPercent},
		{live: 16 << 20, headroom: 64 << 20, want: 400},
		{live: 64 << 20, headroom: 64 << 20, want: 100},
		{live: 1 << 30, headroom: 64 << 20, want: 100}, // more live than headroom: the default
		{live: 1 << 20, headroom: 64 << 20, want: maxPercent},
		{live: 30 << 20, headroom: 64 << 20, want: 214},
	} {
		require.Equal(t, c.want, Percent(c.live, c.headroom), "live %d headroom %d", c.live, c.headroom)
	}
}

// The pacer raises the GC percent after a collection that found little
// live, shares itself between holders, and restores the percent it found
// when the last one stops.
func TestStartPacesAndRestores(t *testing.T) {
	if _, ok := lookupEnv(); ok {
		t.Fatal("GOGC or GOMEMLIMIT is set in the environment; the test needs neither")
	}
	before := debug.SetGCPercent(137)
	defer debug.SetGCPercent(before)

	adjusted := make(chan int, 16)
	onAdjust = adjusted
	defer func() { onAdjust = nil }()
	stop1 := Start(1<<40, nil) // headroom far above any live heap: the maximum
	stop2 := Start(1, nil)     // a second holder shares the first's pacer
	runtime.GC()
	require.Equal(t, maxPercent, <-adjusted)
	stop1()
	stop1() // idempotent
	mu.Lock()
	require.NotNil(t, current, "still held by the second")
	mu.Unlock()
	stop2()
	require.Equal(t, 137, debug.SetGCPercent(137), "the percent found is restored")
}

func TestStartDefersToTheEnvironment(t *testing.T) {
	t.Setenv("GOGC", "150")
	Start(64<<20, nil)()
	mu.Lock()
	defer mu.Unlock()
	require.Nil(t, current)
}

func lookupEnv() (string, bool) {
	for _, k := range []string{"GOGC", "GOMEMLIMIT"} {
		if v, ok := os.LookupEnv(k); ok {
			return v, true
		}
	}
	return "", false
}
