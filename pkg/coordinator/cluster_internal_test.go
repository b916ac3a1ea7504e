package coordinator

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/stepflow-go/stepflow/pkg/queue"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

func TestWorkerViewsStaleAndSlow(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	entry := func(id string, age, mean time.Duration, items uint32) queue.WorkerEntry {
		return queue.WorkerEntry{Status: &stepflowv1.WorkerStatus{
			WorkerId: id, HeartbeatInterval: durationpb.New(time.Second),
			WindowItems: items, MeanDuration: durationpb.New(mean),
		}, Received: now.Add(-age)}
	}
	judge := func(ws ...queue.WorkerEntry) map[string][2]bool {
		out := map[string][2]bool{}
		for _, v := range workerViews(ws, now) {
			out[v.st.GetWorkerId()] = [2]bool{v.stale, v.slow}
		}
		return out
	}
	// Two workers: the lower median lets the slow one stand out.
	require.Equal(t, map[string][2]bool{"a": {false, false}, "b": {false, true}},
		judge(entry("a", 0, 100*time.Millisecond, 10), entry("b", 0, time.Second, 10)))
	// Exactly twice the median is not slow; stale workers and workers
	// without recent items neither count nor get marked.
	require.Equal(t, map[string][2]bool{"a": {false, false}, "b": {false, false}, "c": {true, false}, "d": {false, false}},
		judge(entry("a", 0, 100*time.Millisecond, 10), entry("b", 1500*time.Millisecond, 200*time.Millisecond, 10),
			entry("c", 2100*time.Millisecond, time.Hour, 10), entry("d", 0, time.Hour, 0)))
	// Sub-millisecond differences are noise, not a slow worker.
	require.Equal(t, map[string][2]bool{"a": {false, false}, "b": {false, false}},
		judge(entry("a", 0, 100*time.Microsecond, 10), entry("b", 0, 900*time.Microsecond, 10)))
	// One worker alone is never slow.
	require.Equal(t, map[string][2]bool{"a": {false, false}}, judge(entry("a", 0, time.Hour, 3)))
	// A fleet of three with one outlier.
	require.Equal(t, map[string][2]bool{"a": {false, false}, "b": {false, false}, "c": {false, true}},
		judge(entry("a", 0, 100*time.Millisecond, 10), entry("b", 0, 120*time.Millisecond, 10), entry("c", 0, 500*time.Millisecond, 10)))
}

func TestSessionValue(t *testing.T) {
	c := &Coordinator{cfg: Config{AuthToken: "tok"}}
	now := time.Now()
	v := sessionValue("tok", now.Add(time.Hour))
	require.NotContains(t, v, "tok")
	check := func(value string, at time.Time) bool {
		r := newRequestWithCookie(value)
		return c.validSession(r, at)
	}
	require.True(t, check(v, now))
	require.False(t, check(v, now.Add(2*time.Hour)), "expired")
	require.False(t, check(sessionValue("other", now.Add(time.Hour)), now), "another token's session")
	require.False(t, check("garbage", now))
	require.False(t, check("", now))
	exp, mac, _ := cutDot(v)
	require.False(t, check(exp+"0."+mac, now), "a later expiry with the old MAC")
}

func newRequestWithCookie(value string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/api/v1/runs", nil)
	if value != "" {
		r.AddCookie(&http.Cookie{Name: SessionCookie, Value: value})
	}
	return r
}

func cutDot(s string) (string, string, bool) { return strings.Cut(s, ".") }
