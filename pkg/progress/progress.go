// Package progress reports the progress of a batch run on a terminal or log.
//
// The package has two halves. A [Tracker] holds atomic counters that the
// executor updates from any goroutine: [Tracker.Started] when an item begins,
// [Tracker.Finished] when it ends, and [Tracker.SetTotal] once the number of
// items is known. Updating a Tracker is cheap and never blocks, so the
// executor does not depend on how, or whether, progress is displayed.
//
// A [Reporter] reads the counters periodically and renders them to an
// [io.Writer], normally os.Stderr, in one of three modes:
//
//   - [ModeTTY]: a single status line redrawn in place every 200ms, with a bar
//     when the total is known:
//
//     [========>           ]  4,210/10,000  42%  ok 4,200  failed 10  in flight 20  1,234 items/s  ETA 5s
//
//   - [ModePlain]: a line appended every 5s, suitable for logs and pipes:
//
//     progress: 4210/10000 done (42%), 10 failed, 20 in flight, 1234 items/s, ETA 5s
//
//   - [ModeQuiet]: nothing at all.
//
// On [Reporter.Stop], the Reporter renders the final state and a summary:
//
//	done: 10000 items in 8.1s (1234 items/s): 9990 succeeded, 10 failed
//
// The caller chooses the mode, typically:
//
//	mode := progress.ModePlain
//	if progress.IsTerminal(os.Stderr) {
//		mode = progress.ModeTTY
//	}
//	if quiet {
//		mode = progress.ModeQuiet
//	}
//	rep := progress.NewReporter(os.Stderr, tracker, progress.WithMode(mode))
//	rep.Start(ctx)
//	defer rep.Stop()
//
// The throughput shown while running is measured over a recent window (5s by
// default, see [WithRateWindow]) rather than since the start, so it follows
// changes in speed; the ETA is the number of remaining items divided by that
// rate, and is shown only when the total is known. The summary reports the
// average rate over the whole run.
//
// All timing goes through a [Clock], which tests replace (see [WithClock]) to
// drive ticks by hand and check the exact output without sleeping.
//
// Progress output is best effort: errors from the writer are ignored, so a
// closed stderr never fails a batch.
package progress

import (
	"context"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/term"
)

// Tracker counts items of a batch. The zero value is ready to use, and all
// methods are safe for concurrent use.
type Tracker struct {
	total     atomic.Int64
	started   atomic.Int64
	succeeded atomic.Int64
	failed    atomic.Int64
}

// SetTotal sets the total number of items; 0 means unknown.
func (t *Tracker) SetTotal(n int64) { t.total.Store(max(n, 0)) }

// Started records that an item began executing.
func (t *Tracker) Started() { t.started.Add(1) }

// Finished records that an item ended, successfully if ok is true.
func (t *Tracker) Finished(ok bool) {
	if ok {
		t.succeeded.Add(1)
	} else {
		t.failed.Add(1)
	}
}

// Snapshot returns the current counters.
func (t *Tracker) Snapshot() Snapshot {
	// Read the finish counters before Started, so that an item finishing
	// concurrently cannot make InFlight negative.
	s := Snapshot{
		Total:     t.total.Load(),
		Succeeded: t.succeeded.Load(),
		Failed:    t.failed.Load(),
	}
	s.Started = t.started.Load()
	return s
}

// Snapshot is a point-in-time copy of a Tracker's counters.
type Snapshot struct {
	// Total is the number of items in the batch, or 0 if unknown.
	Total int64
	// Started counts items that began executing.
	Started int64
	// Succeeded counts items that finished successfully.
	Succeeded int64
	// Failed counts items that finished with a failure.
	Failed int64
}

// Done returns the number of finished items.
func (s Snapshot) Done() int64 { return s.Succeeded + s.Failed }

// InFlight returns the number of items started but not finished.
func (s Snapshot) InFlight() int64 { return max(s.Started-s.Done(), 0) }

// IsTerminal reports whether f is a terminal, in which case [ModeTTY] is
// appropriate for it.
func IsTerminal(f *os.File) bool {
	return f != nil && term.IsTerminal(int(f.Fd()))
}

// Mode selects how a [Reporter] renders progress.
type Mode int

const (
	// ModePlain appends a progress line at a fixed interval (5s by
	// default). It suits logs, files and pipes. It is the default.
	ModePlain Mode = iota
	// ModeTTY redraws a single status line in place (200ms interval by
	// default), using '\r' and the ANSI erase-to-end-of-line sequence.
	ModeTTY
	// ModeQuiet prints nothing, not even the summary.
	ModeQuiet
)

// Default intervals and rate window.
const (
	DefaultTTYInterval   = 200 * time.Millisecond
	DefaultPlainInterval = 5 * time.Second
	DefaultRateWindow    = 5 * time.Second
)

// barWidth is the number of cells of the TTY progress bar.
const barWidth = 20

// Clock is the time source of a [Reporter].
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// NewTicker returns a Ticker that ticks every d.
	NewTicker(d time.Duration) Ticker
}

// Ticker delivers ticks, like [time.Ticker].
type Ticker interface {
	// C returns the channel on which ticks are delivered.
	C() <-chan time.Time
	// Stop turns the ticker off.
	Stop()
}

// systemClock is the Clock backed by package time.
type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) NewTicker(d time.Duration) Ticker { return systemTicker{time.NewTicker(d)} }

type systemTicker struct{ t *time.Ticker }

func (t systemTicker) C() <-chan time.Time { return t.t.C }
func (t systemTicker) Stop()               { t.t.Stop() }

// Option configures a [Reporter].
type Option func(*Reporter)

// WithMode sets the rendering mode. The default is [ModePlain].
func WithMode(m Mode) Option {
	return func(r *Reporter) { r.mode = m }
}

// WithInterval sets how often progress is rendered, overriding the mode's
// default ([DefaultTTYInterval] or [DefaultPlainInterval]). Values <= 0 are
// ignored.
func WithInterval(d time.Duration) Option {
	return func(r *Reporter) {
		if d > 0 {
			r.interval = d
		}
	}
}

// WithRateWindow sets the span of recent history over which the items/s
// rate is computed. The default is [DefaultRateWindow]. Values <= 0 are
// ignored.
func WithRateWindow(d time.Duration) Option {
	return func(r *Reporter) {
		if d > 0 {
			r.window = d
		}
	}
}

// WithClock sets the time source, for tests. The default uses package time.
func WithClock(c Clock) Option {
	return func(r *Reporter) {
		if c != nil {
			r.clock = c
		}
	}
}

// Reporter periodically renders a Tracker's counters. Create it with
// [NewReporter], call [Reporter.Start] once the batch begins and
// [Reporter.Stop] when it ends. Start and Stop are safe for concurrent use.
type Reporter struct {
	w        io.Writer
	tracker  *Tracker
	mode     Mode
	interval time.Duration
	window   time.Duration
	clock    Clock

	mu      sync.Mutex // serializes Start and Stop
	started bool
	stopped bool
	stop    chan struct{} // closed by Stop to end the loop
	done    chan struct{} // closed when the loop has returned

	// Owned by the loop goroutine while it runs, then by Stop.
	start     time.Time
	samples   []sample
	lastPlain Snapshot
	havePlain bool
	buf       []byte
}

// sample is the number of finished items at a point in time.
type sample struct {
	t    time.Time
	done int64
}

// NewReporter returns a Reporter that renders the counters of t to w.
func NewReporter(w io.Writer, t *Tracker, opts ...Option) *Reporter {
	r := &Reporter{w: w, tracker: t, window: DefaultRateWindow, clock: systemClock{}}
	for _, o := range opts {
		o(r)
	}
	if r.interval == 0 {
		r.interval = DefaultPlainInterval
		if r.mode == ModeTTY {
			r.interval = DefaultTTYInterval
		}
	}
	return r
}

// Start begins rendering in a background goroutine. In TTY mode the status
// line is drawn immediately. Rendering ends when ctx is done or Stop is
// called; only Stop prints the summary. Calling Start more than once, or
// after Stop, has no effect.
func (r *Reporter) Start(ctx context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started || r.stopped {
		return
	}
	r.started = true
	if r.mode == ModeQuiet {
		return
	}
	r.start = r.clock.Now()
	r.samples = append(r.samples[:0], sample{r.start, r.tracker.Snapshot().Done()})
	if r.mode == ModeTTY {
		r.render(r.start, false)
	}
	r.stop = make(chan struct{})
	r.done = make(chan struct{})
	ticker := r.clock.NewTicker(r.interval)
	go r.loop(ctx, ticker)
}

func (r *Reporter) loop(ctx context.Context, ticker Ticker) {
	defer close(r.done)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.stop:
			return
		case <-ticker.C():
			r.render(r.clock.Now(), false)
		}
	}
}

// Stop ends rendering, waits for the background goroutine to exit, and
// renders the final state followed by a summary line. In TTY mode the
// status line is completed with a newline first. Stop is idempotent; if
// Start was never called it prints nothing, and a later Start does nothing.
func (r *Reporter) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return
	}
	r.stopped = true
	if !r.started || r.mode == ModeQuiet {
		return
	}
	close(r.stop)
	<-r.done
	r.render(r.clock.Now(), true)
}

// render writes the current state with a single Write call. When final is
// true it also writes the summary.
func (r *Reporter) render(now time.Time, final bool) {
	snap := r.tracker.Snapshot()
	rate, rateOK := r.rate(now, snap.Done())
	b := r.buf[:0]
	switch r.mode {
	case ModeTTY:
		b = append(b, '\r')
		b = appendTTYLine(b, snap, rate, rateOK)
		b = append(b, "\x1b[K"...)
		if final {
			b = append(b, '\n')
		}
	case ModePlain:
		if !final || !r.havePlain || snap != r.lastPlain {
			b = appendPlainLine(b, snap, rate, rateOK)
			b = append(b, '\n')
			r.lastPlain, r.havePlain = snap, true
		}
	}
	if final {
		b = appendSummary(b, snap, now.Sub(r.start))
		b = append(b, '\n')
	}
	_, _ = r.w.Write(b) // best effort, see the package documentation
	r.buf = b
}

// rate records a sample and returns the items/s over the rate window. It
// keeps as base the newest sample that is at least a window old, so the
// rate spans at least the window once enough history exists.
func (r *Reporter) rate(now time.Time, done int64) (float64, bool) {
	r.samples = append(r.samples, sample{now, done})
	cutoff := now.Add(-r.window)
	drop := 0
	for len(r.samples)-drop >= 3 && !r.samples[drop+1].t.After(cutoff) {
		drop++
	}
	if drop > 0 {
		r.samples = append(r.samples[:0], r.samples[drop:]...)
	}
	base := r.samples[0]
	dt := now.Sub(base.t).Seconds()
	if dt <= 0 {
		return 0, false
	}
	return float64(done-base.done) / dt, true
}

// appendTTYLine renders the status line of ModeTTY.
func appendTTYLine(b []byte, s Snapshot, rate float64, rateOK bool) []byte {
	done := s.Done()
	if s.Total > 0 {
		b = appendBar(b, done, s.Total)
		b = append(b, "  "...)
		b = appendGrouped(b, done)
		b = append(b, '/')
		b = appendGrouped(b, s.Total)
		b = append(b, "  "...)
		b = strconv.AppendInt(b, percent(done, s.Total), 10)
		b = append(b, '%')
	} else {
		b = appendGrouped(b, done)
		b = append(b, " done"...)
	}
	b = append(b, "  ok "...)
	b = appendGrouped(b, s.Succeeded)
	b = append(b, "  failed "...)
	b = appendGrouped(b, s.Failed)
	b = append(b, "  in flight "...)
	b = appendGrouped(b, s.InFlight())
	if rateOK {
		b = append(b, "  "...)
		b = appendRate(b, rate, true)
		b = append(b, " items/s"...)
		if eta, ok := eta(s, rate); ok {
			b = append(b, "  ETA "...)
			b = appendETA(b, eta)
		}
	}
	return b
}

// appendPlainLine renders a progress line of ModePlain.
func appendPlainLine(b []byte, s Snapshot, rate float64, rateOK bool) []byte {
	done := s.Done()
	b = append(b, "progress: "...)
	b = strconv.AppendInt(b, done, 10)
	if s.Total > 0 {
		b = append(b, '/')
		b = strconv.AppendInt(b, s.Total, 10)
		b = append(b, " done ("...)
		b = strconv.AppendInt(b, percent(done, s.Total), 10)
		b = append(b, "%)"...)
	} else {
		b = append(b, " done"...)
	}
	b = append(b, ", "...)
	b = strconv.AppendInt(b, s.Failed, 10)
	b = append(b, " failed, "...)
	b = strconv.AppendInt(b, s.InFlight(), 10)
	b = append(b, " in flight"...)
	if rateOK {
		b = append(b, ", "...)
		b = appendRate(b, rate, false)
		b = append(b, " items/s"...)
		if eta, ok := eta(s, rate); ok {
			b = append(b, ", ETA "...)
			b = appendETA(b, eta)
		}
	}
	return b
}

// appendSummary renders the summary printed by Stop.
func appendSummary(b []byte, s Snapshot, elapsed time.Duration) []byte {
	done := s.Done()
	b = append(b, "done: "...)
	b = strconv.AppendInt(b, done, 10)
	if s.Total > 0 && s.Total != done {
		b = append(b, " of "...)
		b = strconv.AppendInt(b, s.Total, 10)
	}
	b = append(b, " items in "...)
	b = appendElapsed(b, elapsed)
	if elapsed > 0 {
		b = append(b, " ("...)
		b = appendRate(b, float64(done)/elapsed.Seconds(), false)
		b = append(b, " items/s)"...)
	}
	b = append(b, ": "...)
	b = strconv.AppendInt(b, s.Succeeded, 10)
	b = append(b, " succeeded, "...)
	b = strconv.AppendInt(b, s.Failed, 10)
	b = append(b, " failed"...)
	return b
}

// appendBar renders "[=====>    ]" for done out of total.
func appendBar(b []byte, done, total int64) []byte {
	b = append(b, '[')
	if done >= total {
		b = append(b, strings.Repeat("=", barWidth)...)
	} else {
		n := int(done * barWidth / total)
		b = append(b, strings.Repeat("=", n)...)
		b = append(b, '>')
		b = append(b, strings.Repeat(" ", barWidth-n-1)...)
	}
	return append(b, ']')
}

// percent returns the completed percentage, rounded down and capped at 100.
func percent(done, total int64) int64 {
	return min(done*100/total, 100)
}

// eta returns the estimated time to finish at the given rate, if the total
// is known, items remain and the rate is positive.
func eta(s Snapshot, rate float64) (time.Duration, bool) {
	remaining := s.Total - s.Done()
	if s.Total <= 0 || remaining <= 0 || rate <= 0 {
		return 0, false
	}
	secs := float64(remaining) / rate
	if secs > float64(math.MaxInt64/int64(time.Second)) {
		return 0, false
	}
	return time.Duration(secs * float64(time.Second)), true
}

// appendGrouped appends n with comma thousands separators.
func appendGrouped(b []byte, n int64) []byte {
	if n < 0 {
		b = append(b, '-')
		n = -n
	}
	digits := strconv.FormatInt(n, 10)
	for i, c := range []byte(digits) {
		if i > 0 && (len(digits)-i)%3 == 0 {
			b = append(b, ',')
		}
		b = append(b, c)
	}
	return b
}

// appendRate appends an items/s rate: one decimal below 10, else a whole
// number, grouped with commas if grouped is true.
func appendRate(b []byte, rate float64, grouped bool) []byte {
	if rate < 9.95 {
		return strconv.AppendFloat(b, rate, 'f', 1, 64)
	}
	n := int64(math.Round(rate))
	if grouped {
		return appendGrouped(b, n)
	}
	return strconv.AppendInt(b, n, 10)
}

// appendETA appends d rounded up to whole seconds: "5s", "1m05s", "2h03m".
func appendETA(b []byte, d time.Duration) []byte {
	secs := int64(math.Ceil(d.Seconds()))
	switch {
	case secs < 60:
		b = strconv.AppendInt(b, secs, 10)
		return append(b, 's')
	case secs < 3600:
		b = strconv.AppendInt(b, secs/60, 10)
		b = append(b, 'm')
		b = appendTwoDigits(b, secs%60)
		return append(b, 's')
	default:
		mins := (secs + 59) / 60
		b = strconv.AppendInt(b, mins/60, 10)
		b = append(b, 'h')
		b = appendTwoDigits(b, mins%60)
		return append(b, 'm')
	}
}

// appendElapsed appends d as "8.1s" below a minute, else rounded to seconds
// like "1m05s" or "1h02m03s".
func appendElapsed(b []byte, d time.Duration) []byte {
	if d < 59950*time.Millisecond {
		b = strconv.AppendFloat(b, max(d.Seconds(), 0), 'f', 1, 64)
		return append(b, 's')
	}
	secs := int64(d.Round(time.Second) / time.Second)
	if secs >= 3600 {
		b = strconv.AppendInt(b, secs/3600, 10)
		b = append(b, 'h')
		b = appendTwoDigits(b, secs/60%60)
	} else {
		b = strconv.AppendInt(b, secs/60, 10)
	}
	b = append(b, 'm')
	b = appendTwoDigits(b, secs%60)
	return append(b, 's')
}

// appendTwoDigits appends 0 <= n < 100 zero-padded to two digits.
func appendTwoDigits(b []byte, n int64) []byte {
	return append(b, byte('0'+n/10), byte('0'+n%10))
}
