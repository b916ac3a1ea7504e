package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stepflow-go/stepflow/pkg/metrics"
	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/value"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// Metrics. The per-run series and the backlog are read from the run
// states at scrape time (runCollector), so that counting costs nothing
// per item; the rest are updated as things happen. docs/operations.md
// documents every name.
const (
	// scrapeTimeout bounds the NATS requests of one scrape (or one
	// GET /api/v1/backlog): a consumer info per running run and one for
	// the result consumer.
	scrapeTimeout = 5 * time.Second
	// maxFinishedRuns bounds the finished runs kept on /metrics.
	maxFinishedRuns = 1000
)

// Result dispositions of stepflow_coordinator_results_total.
const (
	resultStored    = "stored"    // written to its run's result store
	resultDuplicate = "duplicate" // its index already had a result
	resultDropped   = "dropped"   // finished or unknown run, malformed, index out of range
)

// coordMetrics are the coordinator's event-driven metrics.
type coordMetrics struct {
	aggLag       prometheus.Histogram
	results      *prometheus.CounterVec
	exhausted    prometheus.Counter
	republished  prometheus.Counter
	runsFinished *prometheus.CounterVec
}

func newCoordMetrics() *coordMetrics {
	m := &coordMetrics{
		aggLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: metrics.Namespace, Name: "result_aggregation_lag_seconds",
			Help: "Time from a worker finishing an item (ItemResult.finished_at, the worker's clock) to the coordinator " +
				"committing the batch that holds its result (written to the run's result store; the coordinator's clock).",
			Buckets: metrics.DurationBuckets,
		}),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metrics.Namespace, Subsystem: "coordinator", Name: "results_total",
			Help: "Results received from workers, by disposition: stored, duplicate (the index already had one), " +
				"dropped (finished or unknown run, malformed, index out of range).",
		}, []string{"disposition"}),
		exhausted: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metrics.Namespace, Subsystem: "coordinator", Name: "items_exhausted_total",
			Help: "Items failed because they reached their maximum deliveries (max-deliveries advisory).",
		}),
		republished: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metrics.Namespace, Subsystem: "coordinator", Name: "items_republished_total",
			Help: "Times a run's unfinished items were published again from its spool because the items stream lost them " +
				"(the stream created anew, the run's consumer gone, or items neither queued nor in flight).",
		}),
		runsFinished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metrics.Namespace, Subsystem: "coordinator", Name: "runs_finished_total",
			Help: "Runs that finished on this coordinator, by final status.",
		}, []string{"status"}),
	}
	for _, d := range []string{resultStored, resultDuplicate, resultDropped} {
		m.results.WithLabelValues(d)
	}
	for _, st := range []stepflowv1.RunStatus{statusCompleted, statusFailed, statusCancelled} {
		m.runsFinished.WithLabelValues(queue.StatusName(st))
	}
	return m
}

// registerMetrics registers the coordinator's collectors in its
// registry; shutdown unregisters them.
func (c *Coordinator) registerMetrics() error {
	ready := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: metrics.Namespace, Subsystem: "coordinator", Name: "ready",
		Help: "1 while GET /readyz answers 200 (started, not stopping, connected to NATS), else 0.",
	}, func() float64 { return metrics.Bool(c.Ready() == nil) })
	cols := []prometheus.Collector{
		c.metrics.aggLag, c.metrics.results, c.metrics.exhausted, c.metrics.republished, c.metrics.runsFinished,
		metrics.NewNATSCollector("coordinator", func() *nats.Conn { return c.nc }), ready, newRunCollector(c),
	}
	for _, col := range cols {
		if err := c.reg.Register(col); err != nil {
			return fmt.Errorf("coordinator: register metrics (one coordinator per registry): %w", err)
		}
		c.registered = append(c.registered, col)
	}
	return nil
}

// runMeta is what the metrics show of a run besides its counts.
type runMeta struct {
	flowID, flowName, parent string
	created                  time.Time
}

func metaOf(rec *stepflowv1.RunRecord) runMeta {
	m := runMeta{flowID: rec.GetFlowId(), flowName: rec.GetFlowName(), parent: rec.GetParentRunId()}
	if ts := rec.GetCreatedAt(); ts != nil {
		m.created = ts.AsTime()
	}
	return m
}

// runSnapshot is one run as a scrape sees it.
type runSnapshot struct {
	id           string
	meta         runMeta
	status       stepflowv1.RunStatus
	maxConc      int
	counts       itemCounts
	redeliveries uint64
	finished     time.Time // zero while running
}

// finalSnapshot is the run once finished with status and its last counts.
func (s *runState) finalSnapshot(status stepflowv1.RunStatus, succeeded, failed int, at time.Time) runSnapshot {
	n := itemCounts{Total: s.total, Completed: succeeded, Failed: failed}
	if status == statusCancelled {
		n.Cancelled = max(s.total-succeeded-failed, 0)
	}
	return runSnapshot{
		id: s.id, meta: s.meta, status: status, maxConc: int(s.maxConc.Load()), counts: n,
		redeliveries: s.redeliveries.Load(), finished: at,
	}
}

// recordSnapshot is a run created finished (empty, or unable to start).
func recordSnapshot(rec *stepflowv1.RunRecord) runSnapshot {
	it := rec.GetItems()
	finished := time.Now()
	if ts := rec.GetCompletedAt(); ts != nil {
		finished = ts.AsTime()
	}
	return runSnapshot{
		id: rec.GetRunId(), meta: metaOf(rec), status: rec.GetStatus(), maxConc: int(rec.GetMaxConcurrency()),
		counts: itemCounts{
			Total: int(rec.GetItemTotal()), Completed: int(it.GetCompleted()),
			Failed: int(it.GetFailed()), Cancelled: int(it.GetCancelled()),
		},
		finished: finished,
	}
}

// runFinished counts a finished run and keeps its final snapshot for
// Config.MetricsRunRetention.
func (c *Coordinator) runFinished(snap runSnapshot) {
	c.metrics.runsFinished.WithLabelValues(queue.StatusName(snap.status)).Inc()
	c.finishedMu.Lock()
	defer c.finishedMu.Unlock()
	// A run finishes once, but a record write that failed may let it be
	// attached and finished again: one series set per run.
	c.finished = slices.DeleteFunc(c.finished, func(r runSnapshot) bool { return r.id == snap.id })
	c.finished = append(c.finished, snap)
	if len(c.finished) > maxFinishedRuns {
		c.finished = slices.Delete(c.finished, 0, len(c.finished)-maxFinishedRuns)
	}
}

// recentlyFinished returns the runs finished within the retention,
// dropping the older ones.
func (c *Coordinator) recentlyFinished(now time.Time) []runSnapshot {
	c.finishedMu.Lock()
	defer c.finishedMu.Unlock()
	cut := now.Add(-c.cfg.MetricsRunRetention)
	i := 0
	for i < len(c.finished) && c.finished[i].finished.Before(cut) {
		i++
	}
	c.finished = slices.Delete(c.finished, 0, i)
	return slices.Clone(c.finished)
}

// activeRuns returns the running runs attached to this coordinator with
// their live counts: one consumer info request per run (skipped while
// NATS is disconnected; every remaining item then counts as running).
func (c *Coordinator) activeRuns(ctx context.Context) []runSnapshot {
	c.mu.Lock()
	states := make([]*runState, 0, len(c.runs))
	for _, st := range c.runs {
		states = append(states, st)
	}
	c.mu.Unlock()
	slices.SortFunc(states, func(a, b *runState) int { return strings.Compare(a.id, b.id) })
	connected := c.nc.IsConnected()
	out := make([]runSnapshot, 0, len(states))
	for _, st := range states {
		s, f, status, _ := st.snapshot()
		if status != statusRunning {
			continue // finishing: it is about to be in recentlyFinished
		}
		n := itemCounts{Total: st.total, Completed: s, Failed: f}
		if connected && ctx.Err() == nil {
			n = c.liveCounts(ctx, st.id, n)
		} else {
			n.Running = max(n.Total-s-f, 0)
		}
		out = append(out, runSnapshot{
			id: st.id, meta: st.meta, status: status, maxConc: int(st.maxConc.Load()), counts: n,
			redeliveries: st.redeliveries.Load(),
		})
	}
	return out
}

// backlog is what GET /api/v1/backlog answers: over the running runs,
// the items not yet started (queued) and those handed to a worker and
// not finished (in flight).
type backlog struct {
	Queued, InFlight, Runs int
}

func backlogOf(runs []runSnapshot) backlog {
	var b backlog
	for _, r := range runs {
		b.Queued += r.counts.Queued
		b.InFlight += r.counts.Running
		b.Runs++
	}
	return b
}

// handleBacklog answers {"queued":N,"inFlight":M,"backlog":N+M,"runs":K}
// over the running runs: what a KEDA metrics-api scaler reads
// (valueLocation "backlog").
func (c *Coordinator) handleBacklog(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), scrapeTimeout)
	defer cancel()
	b := backlogOf(c.activeRuns(ctx))
	writeJSON(w, http.StatusOK, value.ObjectOf(
		"queued", value.Int(int64(b.Queued)),
		"inFlight", value.Int(int64(b.InFlight)),
		"backlog", value.Int(int64(b.Queued+b.InFlight)),
		"runs", value.Int(int64(b.Runs)),
	))
}

// Readiness errors.
var (
	errNotStarted = errors.New("starting")
	errStopping   = errors.New("stopping")
)

// Ready returns nil while the coordinator serves: started, not stopping,
// connected to NATS, and Config.ReadyCheck passing; otherwise the reason.
func (c *Coordinator) Ready() error {
	select {
	case <-c.started:
	default:
		return errNotStarted
	}
	if c.ctx.Err() != nil {
		return errStopping
	}
	if st := c.nc.Status(); st != nats.CONNECTED {
		return fmt.Errorf("not connected to NATS (%s)", strings.ToLower(st.String()))
	}
	if err := c.storageHealth(); err != nil {
		return err
	}
	if c.cfg.ReadyCheck != nil {
		return c.cfg.ReadyCheck()
	}
	return nil
}

// handleHealthz is the liveness probe: 200 while the process serves.
func (c *Coordinator) handleHealthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ok\n"))
}

// handleReadyz is the readiness probe: 200 "ready", or 503 with the
// reason.
func (c *Coordinator) handleReadyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := c.Ready(); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = fmt.Fprintf(w, "not ready: %v\n", err)
		return
	}
	_, _ = w.Write([]byte("ready\n"))
}

// runCollector reads the per-run series, the backlog and the result
// consumer's state at scrape time.
type runCollector struct {
	c *Coordinator

	items, redelivered, redeliveries, maxConc, info, created, finished *prometheus.Desc
	backlog, active, resultsPending, resultsUnacked                    *prometheus.Desc
}

func newRunCollector(c *Coordinator) *runCollector {
	d := func(subsystem, name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(metrics.Namespace, subsystem, name), help, labels, nil)
	}
	return &runCollector{
		c: c,
		items: d("run", "items", "Items of a run by state: queued (not yet handed to a worker), running (handed out, "+
			"no result yet), completed, failed, cancelled. The states sum to the run's item count.", "run", "state"),
		redelivered: d("run", "items_redelivered",
			"Items of a running run in flight on a redelivery (after a crash, a timeout or a nak), not yet acked.", "run"),
		redeliveries: d("run", "redeliveries_total",
			"Extra deliveries (deliveries - 1) of the items whose result this coordinator stored.", "run"),
		maxConc: d("run", "max_concurrency", "The run's concurrency across all workers (its consumer's MaxAckPending).", "run"),
		info: d("run", "info", "Always 1; the run's flow, parent run and status as labels.",
			"run", "flow_id", "flow_name", "parent_run", "status"),
		created:  d("run", "created_timestamp_seconds", "When the run was created, in Unix seconds.", "run"),
		finished: d("run", "finished_timestamp_seconds", "When the run finished, in Unix seconds (finished runs only).", "run"),
		backlog: d("", "backlog_items",
			"Items of running runs not finished: queued plus in flight (GET /api/v1/backlog's backlog)."),
		active: d("coordinator", "runs_active", "Running runs attached to this coordinator."),
		resultsPending: d("", "results_pending_messages",
			"Results received by the leading coordinator and waiting in its subscription for the committer."),
		resultsUnacked: d("", "results_unacked_messages",
			"Results handed to the committer and not yet stored and answered."),
	}
}

// Describe implements prometheus.Collector.
func (rc *runCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{rc.items, rc.redelivered, rc.redeliveries, rc.maxConc, rc.info, rc.created,
		rc.finished, rc.backlog, rc.active, rc.resultsPending, rc.resultsUnacked} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (rc *runCollector) Collect(ch chan<- prometheus.Metric) {
	c := rc.c
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	active := c.activeRuns(ctx)
	b := backlogOf(active)
	ch <- prometheus.MustNewConstMetric(rc.backlog, prometheus.GaugeValue, float64(b.Queued+b.InFlight))
	ch <- prometheus.MustNewConstMetric(rc.active, prometheus.GaugeValue, float64(b.Runs))
	ids := make(map[string]bool, len(active))
	for _, r := range active {
		ids[r.id] = true
		rc.collectRun(ch, r)
	}
	for _, r := range c.recentlyFinished(time.Now()) {
		if !ids[r.id] { // attached again (see runFinished)
			rc.collectRun(ch, r)
		}
	}
	if a := c.aggregator(); a != nil {
		pending, _, _ := a.sub.Pending()
		ch <- prometheus.MustNewConstMetric(rc.resultsPending, prometheus.GaugeValue, float64(max(pending, 0)))
		ch <- prometheus.MustNewConstMetric(rc.resultsUnacked, prometheus.GaugeValue, float64(len(a.in)))
	}
}

func (rc *runCollector) collectRun(ch chan<- prometheus.Metric, r runSnapshot) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	n := r.counts
	for _, s := range []struct {
		state string
		v     int
	}{{"queued", n.Queued}, {"running", n.Running}, {"completed", n.Completed}, {"failed", n.Failed}, {"cancelled", n.Cancelled}} {
		gauge(rc.items, float64(s.v), r.id, s.state)
	}
	gauge(rc.redelivered, float64(n.Redelivered), r.id)
	ch <- prometheus.MustNewConstMetric(rc.redeliveries, prometheus.CounterValue, float64(r.redeliveries), r.id)
	gauge(rc.maxConc, float64(r.maxConc), r.id)
	gauge(rc.info, 1, r.id, r.meta.flowID, r.meta.flowName, r.meta.parent, queue.StatusName(r.status))
	if !r.meta.created.IsZero() {
		gauge(rc.created, float64(r.meta.created.UnixMilli())/1e3, r.id)
	}
	if !r.finished.IsZero() {
		gauge(rc.finished, float64(r.finished.UnixMilli())/1e3, r.id)
	}
}
