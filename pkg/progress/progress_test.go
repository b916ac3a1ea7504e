package progress

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeClock is a Clock whose time only moves when the test advances it and
// whose ticker only ticks when the test calls tick.
type fakeClock struct {
	mu       sync.Mutex
	now      time.Time
	interval time.Duration // interval of the last ticker created
	tickers  int           // number of tickers created

	ticks   chan time.Time // unbuffered: a send returns once the loop has it
	stopped chan struct{}  // closed when the ticker is stopped
}

func newFakeClock() *fakeClock {
	return &fakeClock{
		now:     time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC),
		ticks:   make(chan time.Time),
		stopped: make(chan struct{}),
	}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTicker(d time.Duration) Ticker {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.interval = d
	c.tickers++
	return fakeTicker{c}
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

type fakeTicker struct{ c *fakeClock }

func (t fakeTicker) C() <-chan time.Time { return t.c.ticks }
func (t fakeTicker) Stop()               { close(t.c.stopped) }

// notifyWriter records writes and announces each one on a channel, so tests
// can wait until the background goroutine has rendered.
type notifyWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	writes chan string
}

func newNotifyWriter() *notifyWriter {
	return &notifyWriter{writes: make(chan string, 64)}
}

func (w *notifyWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	w.writes <- string(p)
	return len(p), nil
}

func (w *notifyWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// harness wires a Tracker, a Reporter, a fake clock and a recording writer.
type harness struct {
	t       *testing.T
	tracker *Tracker
	clock   *fakeClock
	out     *notifyWriter
	rep     *Reporter
}

func newHarness(t *testing.T, opts ...Option) *harness {
	h := &harness{t: t, tracker: &Tracker{}, clock: newFakeClock(), out: newNotifyWriter()}
	h.rep = NewReporter(h.out, h.tracker, append([]Option{WithClock(h.clock)}, opts...)...)
	t.Cleanup(h.rep.Stop)
	return h
}

// set makes the tracker's counters equal the given values.
func (h *harness) set(started, ok, failed int64) {
	s := h.tracker.Snapshot()
	for range started - s.Started {
		h.tracker.Started()
	}
	for range ok - s.Succeeded {
		h.tracker.Finished(true)
	}
	for range failed - s.Failed {
		h.tracker.Finished(false)
	}
}

// tick advances the clock by d, delivers a tick and returns what the
// Reporter wrote in response.
func (h *harness) tick(d time.Duration) string {
	h.t.Helper()
	h.clock.advance(d)
	h.clock.ticks <- h.clock.Now()
	return <-h.out.writes
}

// written returns what was written without waiting.
func (h *harness) written() string {
	var b bytes.Buffer
	for {
		select {
		case s := <-h.out.writes:
			b.WriteString(s)
		default:
			return b.String()
		}
	}
}

func TestTTYKnownTotal(t *testing.T) {
	h := newHarness(t, WithMode(ModeTTY))
	h.tracker.SetTotal(10_000)
	h.rep.Start(t.Context())
	require.Equal(t, DefaultTTYInterval, h.clock.interval)
	require.Equal(t,
		"\r[>                   ]  0/10,000  0%  ok 0  failed 0  in flight 0\x1b[K",
		h.written(), "the line is drawn at Start")

	h.set(2020, 1990, 10)
	require.Equal(t,
		"\r[====>               ]  2,000/10,000  20%  ok 1,990  failed 10  in flight 20  1,000 items/s  ETA 8s\x1b[K",
		h.tick(2*time.Second))

	h.set(10_000, 9990, 10)
	h.clock.advance(6100 * time.Millisecond)
	h.rep.Stop()
	// Rate over the window: (10000-2000)/6.1s; the summary averages over
	// the whole 8.1s.
	require.Equal(t,
		"\r[====================]  10,000/10,000  100%  ok 9,990  failed 10  in flight 0  1,311 items/s\x1b[K\n"+
			"done: 10000 items in 8.1s (1235 items/s): 9990 succeeded, 10 failed\n",
		h.written())
	<-h.clock.stopped
}

func TestTTYUnknownTotal(t *testing.T) {
	h := newHarness(t, WithMode(ModeTTY), WithInterval(time.Second))
	h.rep.Start(t.Context())
	require.Equal(t, time.Second, h.clock.interval)
	require.Equal(t, "\r0 done  ok 0  failed 0  in flight 0\x1b[K", h.written())

	h.set(1503, 1500, 0)
	require.Equal(t, "\r1,500 done  ok 1,500  failed 0  in flight 3  750 items/s\x1b[K", h.tick(2*time.Second))

	h.set(1503, 1500, 3)
	h.clock.advance(2 * time.Second)
	h.rep.Stop()
	require.Equal(t,
		"\r1,503 done  ok 1,500  failed 3  in flight 0  376 items/s\x1b[K\n"+
			"done: 1503 items in 4.0s (376 items/s): 1500 succeeded, 3 failed\n",
		h.written())
}

func TestPlain(t *testing.T) {
	h := newHarness(t)
	h.tracker.SetTotal(10_000)
	h.rep.Start(t.Context())
	require.Equal(t, DefaultPlainInterval, h.clock.interval)
	require.Empty(t, h.written(), "plain mode prints nothing at Start")

	h.set(2020, 1990, 10)
	require.Equal(t,
		"progress: 2000/10000 done (20%), 10 failed, 20 in flight, 400 items/s, ETA 20s\n",
		h.tick(5*time.Second))

	h.set(4230, 4200, 10)
	require.Equal(t,
		"progress: 4210/10000 done (42%), 10 failed, 20 in flight, 442 items/s, ETA 14s\n",
		h.tick(5*time.Second))

	// Unchanged counters still produce a heartbeat line.
	require.Equal(t,
		"progress: 4210/10000 done (42%), 10 failed, 20 in flight, 0.0 items/s\n",
		h.tick(5*time.Second))

	h.clock.advance(time.Second)
	h.rep.Stop()
	require.Equal(t,
		"done: 4210 of 10000 items in 16.0s (263 items/s): 4200 succeeded, 10 failed\n",
		h.written(), "the final state is not repeated when unchanged")
}

func TestPlainFinalStateAndUnknownTotal(t *testing.T) {
	h := newHarness(t, WithMode(ModePlain))
	h.rep.Start(t.Context())
	h.set(30, 20, 5)
	require.Equal(t, "progress: 25 done, 5 failed, 5 in flight, 5.0 items/s\n", h.tick(5*time.Second))

	h.set(30, 25, 5)
	h.clock.advance(5 * time.Second)
	h.rep.Stop()
	require.Equal(t,
		"progress: 30 done, 5 failed, 0 in flight, 1.0 items/s\n"+
			"done: 30 items in 10.0s (3.0 items/s): 25 succeeded, 5 failed\n",
		h.written())
}

func TestRateUsesRecentWindow(t *testing.T) {
	h := newHarness(t, WithInterval(time.Second))
	h.tracker.SetTotal(100_000)
	h.rep.Start(t.Context())
	var done int64
	for sec := 1; sec <= 12; sec++ {
		if sec <= 10 {
			done += 100
		} else {
			done += 1000
		}
		h.set(done, done, 0)
		line := h.tick(time.Second)
		if sec == 12 {
			// The base is the sample at t=7s (done 700), not the
			// start: (3000-700)/5s = 460/s, versus 250/s overall.
			require.Equal(t, "progress: 3000/100000 done (3%), 0 failed, 0 in flight, 460 items/s, ETA 3m31s\n", line)
		}
	}
	require.LessOrEqual(t, len(h.rep.samples), 7, "old samples are dropped")
}

func TestRateWindowOption(t *testing.T) {
	h := newHarness(t, WithInterval(time.Second), WithRateWindow(2*time.Second))
	h.rep.Start(t.Context())
	h.set(10, 10, 0)
	h.tick(time.Second)
	h.set(20, 20, 0)
	h.tick(time.Second)
	h.set(60, 60, 0)
	require.Equal(t, "progress: 60 done, 0 failed, 0 in flight, 25 items/s\n", h.tick(time.Second))
}

func TestQuiet(t *testing.T) {
	h := newHarness(t, WithMode(ModeQuiet))
	h.tracker.SetTotal(3)
	h.rep.Start(t.Context())
	h.set(3, 2, 1)
	h.rep.Stop()
	require.Empty(t, h.out.String())
	require.Zero(t, h.clock.tickers, "no ticker, no goroutine")
}

func TestStopIdempotent(t *testing.T) {
	h := newHarness(t, WithMode(ModeTTY))
	h.rep.Start(t.Context())
	h.set(1, 1, 0)

	var wg sync.WaitGroup
	for range 4 {
		wg.Go(h.rep.Stop)
	}
	wg.Wait()
	h.rep.Stop()
	out := h.out.String()
	require.Equal(t, 1, bytes.Count([]byte(out), []byte("done: ")), "one summary: %q", out)

	h.rep.Start(t.Context())
	require.Equal(t, 1, h.clock.tickers, "Start after Stop does nothing")
}

func TestStopBeforeStart(t *testing.T) {
	h := newHarness(t, WithMode(ModeTTY))
	h.rep.Stop()
	h.rep.Stop()
	h.rep.Start(t.Context())
	require.Empty(t, h.out.String())
	require.Zero(t, h.clock.tickers)
}

func TestStartTwice(t *testing.T) {
	h := newHarness(t, WithMode(ModeTTY))
	h.rep.Start(t.Context())
	h.rep.Start(t.Context())
	require.Equal(t, 1, h.clock.tickers)
	require.Len(t, h.written(), len("\r0 done  ok 0  failed 0  in flight 0\x1b[K"))
}

func TestContextCancelEndsLoop(t *testing.T) {
	h := newHarness(t)
	ctx, cancel := context.WithCancel(t.Context())
	h.rep.Start(ctx)
	cancel()
	<-h.clock.stopped // the loop stopped its ticker on its way out

	h.set(5, 5, 0)
	h.clock.advance(2 * time.Second)
	h.rep.Stop()
	require.Equal(t,
		"progress: 5 done, 0 failed, 0 in flight, 2.5 items/s\n"+
			"done: 5 items in 2.0s (2.5 items/s): 5 succeeded, 0 failed\n",
		h.written())
}

func TestSystemClock(t *testing.T) {
	// The real clock, with Stop right after Start: no sleeping, only a
	// check that the default wiring works and leaks nothing.
	var out bytes.Buffer
	tr := &Tracker{}
	tr.SetTotal(2)
	rep := NewReporter(&out, tr, WithMode(ModeTTY))
	rep.Start(t.Context())
	tr.Started()
	tr.Finished(true)
	tr.Started()
	tr.Finished(false)
	rep.Stop()
	require.Regexp(t, regexp.MustCompile(`^\r\[>\s+\]  0/2  0%.*\x1b\[K`), out.String())
	require.Regexp(t, regexp.MustCompile(`\r\[=+\]  2/2  100%  ok 1  failed 1  in flight 0.*\x1b\[K\n`+
		`done: 2 items in \d+\.\ds( \(.* items/s\))?: 1 succeeded, 1 failed\n$`), out.String())
}

func TestTracker(t *testing.T) {
	var tr Tracker
	require.Equal(t, Snapshot{}, tr.Snapshot())
	tr.SetTotal(-5)
	require.Zero(t, tr.Snapshot().Total)

	const workers, per = 8, 1000
	var wg sync.WaitGroup
	stop := make(chan struct{})
	observerDone := make(chan struct{})
	go func() {
		defer close(observerDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			s := tr.Snapshot()
			if s.Started < s.Done() {
				t.Errorf("snapshot has more finished than started: %+v", s)
				return
			}
		}
	}()
	for w := range workers {
		wg.Go(func() {
			for i := range per {
				tr.Started()
				tr.Finished((i+w)%10 != 0)
			}
		})
	}
	wg.Wait()
	close(stop)
	<-observerDone

	tr.SetTotal(workers * per)
	s := tr.Snapshot()
	require.Equal(t, Snapshot{Total: 8000, Started: 8000, Succeeded: 7200, Failed: 800}, s)
	require.Equal(t, int64(8000), s.Done())
	require.Zero(t, s.InFlight())
	require.Equal(t, int64(0), Snapshot{Started: 1, Succeeded: 2}.InFlight(), "never negative")
}

func TestIsTerminal(t *testing.T) {
	require.False(t, IsTerminal(nil))
	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	defer w.Close()
	require.False(t, IsTerminal(w))
}

func TestFormatting(t *testing.T) {
	str := func(f func([]byte) []byte) string { return string(f(nil)) }

	for n, want := range map[int64]string{0: "0", 7: "7", 999: "999", 1000: "1,000", 1234567: "1,234,567", -12345: "-12,345"} {
		require.Equal(t, want, str(func(b []byte) []byte { return appendGrouped(b, n) }))
	}
	for d, want := range map[time.Duration]string{
		200 * time.Millisecond: "1s",
		5 * time.Second:        "5s",
		59 * time.Second:       "59s",
		60 * time.Second:       "1m00s",
		3599 * time.Second:     "59m59s",
		3600 * time.Second:     "1h00m",
		3601 * time.Second:     "1h01m",
		50 * time.Hour:         "50h00m",
	} {
		require.Equal(t, want, str(func(b []byte) []byte { return appendETA(b, d) }), "ETA %v", d)
	}
	for d, want := range map[time.Duration]string{
		0:                        "0.0s",
		8100 * time.Millisecond:  "8.1s",
		59960 * time.Millisecond: "1m00s",
		65 * time.Second:         "1m05s",
		3723 * time.Second:       "1h02m03s",
	} {
		require.Equal(t, want, str(func(b []byte) []byte { return appendElapsed(b, d) }), "elapsed %v", d)
	}
	for _, tc := range []struct {
		rate    float64
		grouped bool
		want    string
	}{
		{0, false, "0.0"}, {2.5, false, "2.5"}, {9.96, false, "10"}, {1234.5, false, "1235"}, {12345.4, true, "12,345"},
	} {
		require.Equal(t, tc.want, str(func(b []byte) []byte { return appendRate(b, tc.rate, tc.grouped) }))
	}
	for _, tc := range []struct {
		done, total int64
		want        string
	}{
		{0, 10, "[>                   ]"},
		{5, 10, "[==========>         ]"},
		{19, 20, "[===================>]"},
		{10, 10, "[====================]"},
		{11, 10, "[====================]"},
	} {
		require.Equal(t, tc.want, str(func(b []byte) []byte { return appendBar(b, tc.done, tc.total) }))
	}
	require.Equal(t, int64(100), percent(11, 10))
}
