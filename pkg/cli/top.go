package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// Settings of `stepflow top`.
const (
	// topRateWindow is how far back the live rate of a run looks.
	topRateWindow = 10 * time.Second
	// topStalledAfter: a running run with items in flight and no result
	// for this long is flagged.
	topStalledAfter = time.Minute
	// topRequestTimeout bounds one poll of the coordinator.
	topRequestTimeout = 10 * time.Second
)

// ANSI sequences of the live display.
const (
	ansiAltScreen  = "\x1b[?1049h\x1b[?25l" // alternate screen, cursor hidden
	ansiMainScreen = "\x1b[?25h\x1b[?1049l"
	ansiHomeClear  = "\x1b[H\x1b[2J"
	ansiBold       = "\x1b[1m"
	ansiRed        = "\x1b[31m"
	ansiYellow     = "\x1b[33m"
	ansiReset      = "\x1b[0m"
)

// clusterView is the coordinator's GET /api/v1/cluster answer.
type clusterView struct {
	Time      string           `json:"time"`
	Streams   []topStream      `json:"streams"`
	Consumers []topConsumer    `json:"consumers"`
	Workers   []topWorker      `json:"workers"`
	Runs      []topRun         `json:"runs"`
	Errors    []clusterProblem `json:"errors"`
}

type clusterProblem struct {
	Section string `json:"section"`
	Message string `json:"message"`
}

type topStream struct {
	Name      string `json:"name"`
	Messages  uint64 `json:"messages"`
	Bytes     uint64 `json:"bytes"`
	Consumers int    `json:"consumers"`
	FirstSeq  uint64 `json:"firstSeq"`
	LastSeq   uint64 `json:"lastSeq"`
	OldestAt  string `json:"oldestAt"`
}

type topConsumer struct {
	Name           string `json:"name"`
	RunID          string `json:"runId"`
	NumPending     uint64 `json:"numPending"`
	NumAckPending  int    `json:"numAckPending"`
	NumRedelivered int    `json:"numRedelivered"`
	MaxAckPending  int    `json:"maxAckPending"`
	NumWaiting     int    `json:"numWaiting"`
	LastDelivered  string `json:"lastDelivered"`
}

type topWorker struct {
	ID             string  `json:"id"`
	Host           string  `json:"host"`
	PID            int     `json:"pid"`
	Version        string  `json:"version"`
	LastHeartbeat  string  `json:"lastHeartbeat"`
	HeartbeatAgeMs float64 `json:"heartbeatAgeMs"`
	Stale          bool    `json:"stale"`
	Slow           bool    `json:"slow"`
	Draining       bool    `json:"draining"`
	Slots          struct {
		Total int `json:"total"`
		Busy  int `json:"busy"`
		Lent  int `json:"lent"`
	} `json:"slots"`
	Runs  map[string]int `json:"runs"`
	Items struct {
		Completed uint64 `json:"completed"`
		Failed    uint64 `json:"failed"`
		Returned  uint64 `json:"returned"`
	} `json:"items"`
	Recent struct {
		Items  int     `json:"items"`
		MeanMs float64 `json:"meanMs"`
		P95Ms  float64 `json:"p95Ms"`
	} `json:"recent"`
}

type topRun struct {
	runSummary
	LastResultAt string `json:"lastResultAt"`
}

// done is how many of the run's items have an outcome.
func (r topRun) done() int { return r.Items.Completed + r.Items.Failed + r.Items.Cancelled }

// cluster reads GET /cluster: the decoded view and the raw JSON.
func (c *apiClient) cluster(ctx context.Context) (*clusterView, json.RawMessage, error) {
	var raw json.RawMessage
	if _, err := c.doJSON(ctx, "GET", "/cluster", nil, &raw); err != nil {
		return nil, nil, err
	}
	var v clusterView
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, nil, fmt.Errorf("GET /cluster: unexpected answer: %w", err)
	}
	return &v, raw, nil
}

// topCmd is `stepflow top`.
type topCmd struct {
	a        *app
	remote   remoteFlags
	interval time.Duration
	once     bool
	asJSON   bool
	wide     bool
}

func (a *app) topCommand() *cobra.Command {
	t := &topCmd{a: a}
	cmd := &cobra.Command{
		Use:   "top",
		Short: "Watch a coordinator's runs, work queue and workers live",
		Long: `Show what a stepflow coordinator's cluster is doing, redrawn every --interval:

  STREAMS    the work queue (STEPFLOW_ITEMS): messages,
             bytes, consumers, age of the oldest message, and whether the
             queue is backing up (items queued while every worker slot is busy)
  RUNS       each run: status, progress, done/total, failed, running, queued,
             redelivered, rate (items/s) and ETA; a run with items in flight
             and no result for a minute is flagged
  CONSUMERS  each run's JetStream consumer: pending, ack pending, redelivered,
             its concurrency (max ack pending), waiting pulls
  WORKERS    each worker: busy/total slots, items done and failed, mean and
             p95 item duration over the last minutes, heartbeat age; STALE when
             it missed two heartbeats, SLOW when its mean is over twice the
             fleet's median

--once prints one snapshot as plain text (no terminal codes; rates are the
runs' items over their elapsed time) and exits; --once --json prints the
coordinator's GET /api/v1/cluster answer. Stop the live view with Ctrl-C.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if t.interval < 100*time.Millisecond {
				return usageErr("--interval must be at least 100ms, got %s", t.interval)
			}
			if t.asJSON && !t.once {
				return usageErr("--json needs --once")
			}
			return t.run(cmd.Context())
		},
	}
	t.remote.register(cmd.Flags(), a.io.Getenv)
	fl := cmd.Flags()
	fl.DurationVar(&t.interval, "interval", time.Second, "how often to refresh")
	fl.BoolVar(&t.once, "once", false, "print one snapshot as plain text and exit")
	fl.BoolVar(&t.asJSON, "json", false, "with --once: print the raw cluster JSON")
	fl.BoolVar(&t.wide, "wide", false, "full run and worker ids (lines get longer than 80 columns)")
	return cmd
}

func (t *topCmd) run(ctx context.Context) error {
	c, err := t.remote.client()
	if err != nil {
		return err
	}
	defer c.close()
	if t.once {
		return t.snapshot(ctx, c)
	}
	return t.live(ctx, c)
}

// snapshot prints one view.
func (t *topCmd) snapshot(ctx context.Context, c *apiClient) error {
	rt := &retrier{timeout: t.remote.retryTimeout, stderr: t.a.io.Stderr, log: t.a.log}
	type answer struct {
		view *clusterView
		raw  json.RawMessage
	}
	ans, err := retry(ctx, rt, func() (answer, error) {
		v, raw, err := c.cluster(ctx)
		return answer{v, raw}, err
	})
	if err != nil {
		return failure(fmt.Errorf("read the cluster view: %w", err))
	}
	if t.asJSON {
		_, err := fmt.Fprintf(t.a.io.Stdout, "%s\n", ans.raw)
		return err
	}
	var buf bytes.Buffer
	renderTop(&buf, ans.view, topOptions{URL: c.current(), Rates: elapsedRates(ans.view), Wide: t.wide})
	_, err = t.a.io.Stdout.Write(buf.Bytes())
	return err
}

// live redraws the view every interval until ctx ends.
func (t *topCmd) live(ctx context.Context, c *apiClient) error {
	out := t.a.io.Stdout
	_, _ = io.WriteString(out, ansiAltScreen)
	defer func() { _, _ = io.WriteString(out, ansiMainScreen) }()
	tick := time.NewTicker(t.interval)
	defer tick.Stop()
	var (
		hist  rateHistory
		last  *clusterView
		buf   bytes.Buffer
		fault string
	)
	for {
		rctx, cancel := context.WithTimeout(ctx, topRequestTimeout)
		view, _, err := c.cluster(rctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			fault = err.Error()
		default:
			fault, last = "", view
			hist.add(view)
		}
		buf.Reset()
		buf.WriteString(ansiHomeClear)
		if last != nil {
			renderTop(&buf, last, topOptions{URL: c.current(), Rates: hist.rates(last), Color: true, Wide: t.wide,
				Fault: fault, Footer: fmt.Sprintf("every %s · Ctrl-C quits", t.interval)})
		} else {
			fmt.Fprintf(&buf, "stepflow top · %s\n\n%s%s%s (retrying every %s)\n", c.current(), ansiRed, fault, ansiReset, t.interval)
		}
		if _, err := out.Write(buf.Bytes()); err != nil {
			return failure(fmt.Errorf("write: %w", err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// rateHistory keeps recent snapshots' done counts to compute live rates.
type rateHistory struct {
	snaps []rateSnap
}

type rateSnap struct {
	at   time.Time
	done map[string]int
}

func (h *rateHistory) add(v *clusterView) {
	at, err := time.Parse(time.RFC3339Nano, v.Time)
	if err != nil {
		return
	}
	s := rateSnap{at: at, done: make(map[string]int, len(v.Runs))}
	for _, r := range v.Runs {
		s.done[r.RunID] = r.done()
	}
	h.snaps = append(h.snaps, s)
	// Keep the newest snapshot older than the window, so that a rate
	// always spans about the window once it is full.
	for len(h.snaps) > 2 && at.Sub(h.snaps[1].at) >= topRateWindow {
		h.snaps = h.snaps[1:]
	}
}

// rates returns items/s per run between the oldest kept snapshot and the
// newest; runs seen only once fall back to their elapsed-time rate.
func (h *rateHistory) rates(v *clusterView) map[string]float64 {
	out := elapsedRates(v)
	if len(h.snaps) < 2 {
		return out
	}
	first, last := h.snaps[0], h.snaps[len(h.snaps)-1]
	dt := last.at.Sub(first.at).Seconds()
	if dt <= 0 {
		return out
	}
	for _, r := range v.Runs {
		before, ok := first.done[r.RunID]
		now, ok2 := last.done[r.RunID]
		if ok && ok2 && r.Status == "running" {
			out[r.RunID] = float64(now-before) / dt
		}
	}
	return out
}

// elapsedRates returns items/s per run over the run's whole life: done
// items over the time since it was created (until it finished).
func elapsedRates(v *clusterView) map[string]float64 {
	now, err := time.Parse(time.RFC3339Nano, v.Time)
	out := map[string]float64{}
	if err != nil {
		return out
	}
	for _, r := range v.Runs {
		created, err := time.Parse(time.RFC3339Nano, r.CreatedAt)
		if err != nil {
			continue
		}
		end := now
		if r.CompletedAt != "" {
			if t, err := time.Parse(time.RFC3339Nano, r.CompletedAt); err == nil {
				end = t
			}
		}
		if d := end.Sub(created).Seconds(); d > 0 {
			out[r.RunID] = float64(r.done()) / d
		}
	}
	return out
}

// topOptions are the inputs of renderTop besides the view.
type topOptions struct {
	URL    string
	Rates  map[string]float64 // items/s by run id
	Color  bool               // ANSI bold and colours (live mode)
	Wide   bool               // full ids
	Fault  string             // the last poll failed: shown above the (older) view
	Footer string
}

// renderTop writes the view as text, at most 80 columns wide unless
// Wide: the same function draws the live frames and --once. It depends
// only on its inputs (times are relative to the view's own clock), so it
// is tested on fixed snapshots.
func renderTop(w *bytes.Buffer, v *clusterView, o topOptions) {
	now, _ := time.Parse(time.RFC3339Nano, v.Time)
	style := func(code, s string) string {
		if !o.Color || s == "" {
			return s
		}
		return code + s + ansiReset
	}
	section := func(name string) { fmt.Fprintf(w, "\n%s\n", style(ansiBold, name)) }
	age := func(ts string) string {
		t, err := time.Parse(time.RFC3339Nano, ts)
		if ts == "" || err != nil {
			return "-"
		}
		return shortDuration(max(now.Sub(t), 0).Truncate(time.Millisecond))
	}
	runID := func(id string) string {
		if o.Wide {
			return id
		}
		return abbreviate(id, 6, 4)
	}

	fmt.Fprintf(w, "stepflow top · %s · %s\n", strings.TrimSuffix(o.URL, "/api/v1"), now.UTC().Format("2006-01-02 15:04:05Z"))
	if o.Fault != "" {
		fmt.Fprintln(w, style(ansiRed, "coordinator unreachable, showing the last view: "+o.Fault))
	}
	for _, p := range v.Errors {
		fmt.Fprintln(w, style(ansiRed, "unavailable: "+p.Section+": "+p.Message))
	}

	// STREAMS and the backlog verdict.
	section("STREAMS")
	st := &textTable{right: []bool{false, true, true, true, true, true}}
	st.row("STREAM", "MESSAGES", "BYTES", "CONSUMERS", "LAST SEQ", "OLDEST")
	for _, s := range v.Streams {
		st.row(s.Name, strconv.FormatUint(s.Messages, 10), humanBytes(s.Bytes), strconv.Itoa(s.Consumers),
			strconv.FormatUint(s.LastSeq, 10), age(s.OldestAt))
	}
	st.write(w)
	var queued uint64
	inflight, free, live := 0, 0, 0
	for _, c := range v.Consumers {
		queued += c.NumPending
		inflight += c.NumAckPending
	}
	for _, wk := range v.Workers {
		if wk.Stale || wk.Draining {
			continue
		}
		live++
		free += max(wk.Slots.Total-wk.Slots.Busy, 0)
	}
	fmt.Fprintf(w, "backlog: %d queued, %d in flight, %d free worker slots\n", queued, inflight, free)
	switch {
	case queued > 0 && live == 0:
		fmt.Fprintln(w, style(ansiRed, "BACKING UP: no live worker takes items"))
	case queued > 0 && free == 0:
		fmt.Fprintln(w, style(ansiYellow, "BACKING UP: every worker slot is busy (add workers)"))
	case queued > 0:
		fmt.Fprintln(w, "queued items wait for their runs' concurrency limits")
	}

	// RUNS, newest first as the coordinator lists them.
	section("RUNS")
	if len(v.Runs) == 0 {
		fmt.Fprintln(w, "no runs")
	} else {
		rt := &textTable{right: []bool{false, false, false, true, true, true, true, true, true, true}}
		rt.row("ID", "STATUS", "PROGRESS", "DONE/TOTAL", "FAIL", "RUN", "QUEUE", "REDL", "RATE/s", "ETA")
		var notes [][2]string
		for _, r := range v.Runs {
			it := r.Items
			rate, hasRate := o.Rates[r.RunID]
			rateText, eta := "-", "-"
			if hasRate {
				rateText = formatRate(rate)
			}
			remaining := it.Total - r.done()
			if r.Status == "running" && hasRate && rate > 0 && remaining > 0 {
				eta = shortDuration(time.Duration(float64(remaining) / rate * float64(time.Second)))
			}
			status := r.Status
			switch status {
			case "failed":
				status = style(ansiRed, status)
			case "cancelled":
				status = style(ansiYellow, status)
			}
			rt.row(runID(r.RunID), status, progressBar(r.done(), it.Total, 10),
				fmt.Sprintf("%d/%d", r.done(), it.Total), strconv.Itoa(it.Failed), strconv.Itoa(it.Running),
				strconv.Itoa(it.Queued), strconv.Itoa(it.Redelivered), rateText, eta)
			if n := stuckNote(r, now); n != "" {
				notes = append(notes, [2]string{runID(r.RunID), style(ansiYellow, n)})
			}
			if r.Error != "" {
				notes = append(notes, [2]string{runID(r.RunID), style(ansiRed, "error: "+r.Error)})
			}
		}
		rt.write(w)
		for _, n := range notes {
			fmt.Fprintf(w, "  %s: %s\n", n[0], n[1])
		}
	}

	// CONSUMERS: one per unfinished run.
	section("CONSUMERS")
	if len(v.Consumers) == 0 {
		fmt.Fprintln(w, "no run consumers (no run in progress)")
	} else {
		ct := &textTable{right: []bool{false, true, true, true, true, true, true}}
		ct.row("RUN", "PENDING", "ACK PENDING", "REDELIVERED", "MAX", "WAITING", "LAST DELIVERY")
		for _, c := range v.Consumers {
			ct.row(runID(c.RunID), strconv.FormatUint(c.NumPending, 10), strconv.Itoa(c.NumAckPending),
				strconv.Itoa(c.NumRedelivered), strconv.Itoa(c.MaxAckPending), strconv.Itoa(c.NumWaiting), age(c.LastDelivered))
		}
		ct.write(w)
	}

	// WORKERS, with STALE and SLOW as the coordinator judged them.
	section("WORKERS")
	if len(v.Workers) == 0 {
		fmt.Fprintln(w, "no worker has announced itself")
	} else {
		wt := &textTable{right: []bool{false, true, true, true, true, true, true, false}}
		wt.row("WORKER", "SLOTS", "DONE", "FAILED", "MEAN", "P95", "BEAT", "")
		for _, wk := range v.Workers {
			id := wk.ID
			if !o.Wide {
				id = abbreviate(id, 12, 7)
			}
			mean, p95 := "-", "-"
			if wk.Recent.Items > 0 {
				mean = shortDuration(msDuration(wk.Recent.MeanMs))
				p95 = shortDuration(msDuration(wk.Recent.P95Ms))
			}
			var flags []string
			if wk.Stale {
				flags = append(flags, style(ansiRed, "STALE"))
			}
			if wk.Slow {
				flags = append(flags, style(ansiYellow, "SLOW"))
			}
			if wk.Draining {
				flags = append(flags, "DRAINING")
			}
			wt.row(id, fmt.Sprintf("%d/%d", wk.Slots.Busy, wk.Slots.Total), strconv.FormatUint(wk.Items.Completed, 10),
				strconv.FormatUint(wk.Items.Failed, 10), mean, p95, shortDuration(msDuration(wk.HeartbeatAgeMs)), strings.Join(flags, " "))
		}
		wt.write(w)
	}
	if o.Footer != "" {
		fmt.Fprintf(w, "\n%s\n", o.Footer)
	}
}

// stuckNote says what holds a running run up, or "".
func stuckNote(r topRun, now time.Time) string {
	if r.Status != "running" {
		return ""
	}
	it := r.Items
	if it.Running == 0 && it.Queued > 0 {
		return fmt.Sprintf("%d queued, none in flight: no worker is taking this run's items", it.Queued)
	}
	if it.Running == 0 {
		return ""
	}
	since := r.LastResultAt
	what := "no result for"
	if since == "" {
		since, what = r.CreatedAt, "no result since it started"
	}
	t, err := time.Parse(time.RFC3339Nano, since)
	if err != nil || now.Sub(t) < topStalledAfter {
		return ""
	}
	if what == "no result for" {
		return fmt.Sprintf("STALLED: no result for %s with %d in flight", shortDuration(now.Sub(t)), it.Running)
	}
	return fmt.Sprintf("STALLED: no result in %s since it started, %d in flight", shortDuration(now.Sub(t)), it.Running)
}

// textTable aligns columns: left, or right where right[i] is set; one
// space between columns (80 columns are tight). Cell widths ignore ANSI
// sequences.
type textTable struct {
	right []bool
	rows  [][]string
}

func (t *textTable) row(cells ...string) { t.rows = append(t.rows, cells) }

func (t *textTable) write(w *bytes.Buffer) {
	var widths []int
	for _, r := range t.rows {
		for i, c := range r {
			if i >= len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], visibleLen(c))
		}
	}
	for _, r := range t.rows {
		var line strings.Builder
		for i, c := range r {
			if i > 0 {
				line.WriteString(" ")
			}
			pad := strings.Repeat(" ", widths[i]-visibleLen(c))
			if i < len(t.right) && t.right[i] {
				line.WriteString(pad + c)
			} else if i == len(r)-1 {
				line.WriteString(c)
			} else {
				line.WriteString(c + pad)
			}
		}
		w.WriteString(strings.TrimRight(line.String(), " "))
		w.WriteByte('\n')
	}
}

// visibleLen counts the runes of s outside ANSI escape sequences.
func visibleLen(s string) int {
	n, esc := 0, false
	for _, r := range s {
		switch {
		case esc:
			if r >= '@' && r <= '~' && r != '[' {
				esc = false
			}
		case r == '\x1b':
			esc = true
		default:
			n++
		}
	}
	return n
}

// progressBar draws done of total in width characters: "#" done, "."
// to go.
func progressBar(done, total, width int) string {
	filled := width
	if total > 0 {
		filled = min(width, done*width/total)
	}
	return strings.Repeat("#", filled) + strings.Repeat(".", width-filled)
}

// abbreviate keeps the head and tail of a long id.
func abbreviate(s string, head, tail int) string {
	r := []rune(s)
	if len(r) <= head+tail+1 {
		return s
	}
	return string(r[:head]) + "…" + string(r[len(r)-tail:])
}

// formatRate writes items/s with two significant digits for slow runs.
func formatRate(r float64) string {
	switch {
	case r >= 100:
		return strconv.FormatFloat(r, 'f', 0, 64)
	case r >= 1:
		return strconv.FormatFloat(r, 'f', 1, 64)
	case r >= 0.1:
		return strconv.FormatFloat(r, 'f', 2, 64)
	case r >= 0.01:
		return strconv.FormatFloat(r, 'f', 3, 64)
	case r > 0:
		return "<0.01"
	}
	return "0"
}

func msDuration(ms float64) time.Duration { return time.Duration(ms * float64(time.Millisecond)) }

// shortDuration writes d in at most 6 characters: 420µs, 850ms, 4.2s,
// 38s, 2m05s, 3h07m, 2d04h.
func shortDuration(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return strconv.FormatInt(d.Microseconds(), 10) + "µs"
	case d < time.Second:
		return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
	case d < 10*time.Second:
		return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + "s"
	case d < time.Minute:
		return strconv.Itoa(int(d.Seconds())) + "s"
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}

// humanBytes writes n with a binary unit.
func humanBytes(n uint64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	f, i := float64(n), 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return strconv.FormatUint(n, 10) + "B"
	}
	return strconv.FormatFloat(f, 'f', 1, 64) + units[i]
}
