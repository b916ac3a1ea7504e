package coordinator

import (
	"net/http"
	"net/http/httptest"
	"path/filepath"
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
	v := sessionValue("tok", "id1", now.Add(time.Hour))
	require.NotContains(t, v, "tok")
	check := func(value string, at time.Time) bool {
		r := newRequestWithCookie(value)
		return c.validSession(r, at)
	}
	require.True(t, check(v, now))
	require.False(t, check(v, now.Add(2*time.Hour)), "expired")
	require.False(t, check(sessionValue("other", "id1", now.Add(time.Hour)), now), "another token's session")
	require.False(t, check("garbage", now))
	require.False(t, check("", now))
	exp, rest, _ := cutDot(v)
	require.False(t, check(exp+"0."+rest, now), "a later expiry with the old MAC")
	_, mac, _ := cutDot(rest)
	require.False(t, check(exp+".id2."+mac, now), "another id with the old MAC")

	// A signed-out session is refused, across a restart too.
	path := filepath.Join(t.TempDir(), "signed-out")
	rev, err := loadSessionRevocations(path, now)
	require.NoError(t, err)
	c.revoked = rev
	require.True(t, check(v, now))
	require.NoError(t, rev.revoke("id1", now.Add(time.Hour).Unix(), now))
	require.False(t, check(v, now), "signed out")
	require.NoError(t, rev.revoke("old", now.Add(-time.Minute).Unix(), now))
	again, err := loadSessionRevocations(path, now)
	require.NoError(t, err)
	require.True(t, again.has("id1"))
	require.False(t, again.has("old"), "expired entries are dropped")
	later, err := loadSessionRevocations(path, now.Add(2*time.Hour))
	require.NoError(t, err)
	require.False(t, later.has("id1"), "entries go once their session would have expired")
}

func TestLoginLimiter(t *testing.T) {
	var l loginLimiter
	now := time.Now()
	for range loginFreeFailures {
		require.Zero(t, l.wait("1.2.3.4", now))
		l.failed("1.2.3.4", now)
	}
	require.Equal(t, loginFailureDelay, l.wait("1.2.3.4", now), "after five failures, a wait")
	require.Zero(t, l.wait("5.6.7.8", now), "per client")
	require.Zero(t, l.wait("1.2.3.4", now.Add(loginFailureDelay)))
	l.failed("1.2.3.4", now.Add(loginFailureDelay))
	require.Equal(t, loginFailureDelay, l.wait("1.2.3.4", now.Add(loginFailureDelay)))
	l.succeeded("1.2.3.4")
	require.Zero(t, l.wait("1.2.3.4", now.Add(loginFailureDelay)))
	l.failed("9.9.9.9", now)
	for range loginFreeFailures {
		l.failed("9.9.9.9", now.Add(loginForgetAfter+time.Second))
	}
	require.NotZero(t, l.wait("9.9.9.9", now.Add(loginForgetAfter+time.Second)), "old failures forgotten, new ones counted")
}

func newRequestWithCookie(value string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/api/v1/runs", nil)
	if value != "" {
		r.AddCookie(&http.Cookie{Name: SessionCookie, Value: value})
	}
	return r
}

func cutDot(s string) (string, string, bool) { return strings.Cut(s, ".") }
