package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/metrics"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// Item outcomes of stepflow_worker_items_total.
const (
	outcomeSucceeded  = "succeeded"   // result published, the flow succeeded
	outcomeFailed     = "failed"      // result published, the flow failed
	outcomeCancelled  = "cancelled"   // its run was cancelled: terminated, no result
	outcomeMalformed  = "malformed"   // undecodable: terminated
	outcomeHandedBack = "handed_back" // worker draining or run paused: nak
	outcomeRetried    = "retried"     // failure outside the flow (publish, NATS, panic): nak with delay
)

// workerMetrics are the worker's event-driven metrics; slots, readiness
// and component-server health are read at scrape time (stateCollector).
type workerMetrics struct {
	items        *prometheus.CounterVec
	itemDuration *prometheus.HistogramVec
	calls        *prometheus.HistogramVec
	byPath       sync.Map // component path -> *callObservers
}

func newWorkerMetrics() *workerMetrics {
	m := &workerMetrics{
		items: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metrics.Namespace, Subsystem: "worker", Name: "items_total",
			Help: "Item deliveries this worker settled, by outcome: succeeded and failed (result published), " +
				"cancelled (run cancelled), malformed, handed_back (draining or run paused), retried (failure outside the flow).",
		}, []string{"outcome"}),
		itemDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metrics.Namespace, Subsystem: "worker", Name: "item_duration_seconds",
			Help:    "Time from taking an item to its result being stored (PubAck), by outcome (succeeded, failed).",
			Buckets: metrics.DurationBuckets,
		}, []string{"outcome"}),
		calls: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metrics.Namespace, Name: "component_call_duration_seconds",
			Help: "Duration of component calls by component path as written in the flow and outcome (ok, or error: " +
				"an error or a failed result). Includes onError retries as separate calls.",
			Buckets: metrics.DurationBuckets,
		}, []string{"component", "outcome"}),
	}
	for _, o := range []string{outcomeSucceeded, outcomeFailed, outcomeCancelled, outcomeMalformed, outcomeHandedBack, outcomeRetried} {
		m.items.WithLabelValues(o)
	}
	return m
}

// countItem counts one settled delivery: err is what settle decided
// from (nil: the result was stored), failed whether that result is a
// failure, d how long the item took.
func (m *workerMetrics) countItem(err error, failed bool, d time.Duration) {
	var o string
	switch {
	case err == nil && failed:
		o = outcomeFailed
	case err == nil:
		o = outcomeSucceeded
	case errors.Is(err, errRunCancelled):
		o = outcomeCancelled
	case errors.Is(err, errMalformed), errors.Is(err, queue.ErrBadMessage):
		o = outcomeMalformed
	case errors.Is(err, errWorkerStopping), errors.Is(err, errRunPaused):
		o = outcomeHandedBack
	default:
		o = outcomeRetried
	}
	m.items.WithLabelValues(o).Inc()
	if err == nil {
		m.itemDuration.WithLabelValues(o).Observe(d.Seconds())
	}
}

// callObservers are the two histogram children of one component path.
type callObservers struct{ ok, err prometheus.Observer }

func (m *workerMetrics) observers(path string) *callObservers {
	if o, ok := m.byPath.Load(path); ok {
		return o.(*callObservers)
	}
	o, _ := m.byPath.LoadOrStore(path, &callObservers{
		ok:  m.calls.WithLabelValues(path, "ok"),
		err: m.calls.WithLabelValues(path, "error"),
	})
	return o.(*callObservers)
}

// timedRouter times the component calls of the executor: it wraps every
// component the plugins route to. It is the worker's seam into the
// executor, which knows nothing of metrics.
type timedRouter struct {
	next executor.Router
	m    *workerMetrics
}

// Route implements executor.Router.
func (r timedRouter) Route(path string, input value.Value) (executor.Component, error) {
	c, err := r.next.Route(path, input)
	if err != nil {
		return nil, err
	}
	return timedComponent{c: c, path: path, obs: r.m.observers(path)}, nil
}

// timedComponent observes each call's duration and outcome.
type timedComponent struct {
	c    executor.Component
	path string
	obs  *callObservers
}

// Execute implements executor.Component.
func (t timedComponent) Execute(ctx context.Context, req *executor.Request) (outcome.Result, error) {
	start := time.Now()
	res, err := t.c.Execute(ctx, req)
	o := t.obs.ok
	if err != nil || res.Failed() {
		o = t.obs.err
	}
	o.Observe(time.Since(start).Seconds())
	return res, err
}

// ComponentName keeps the wrapped component's name in step errors
// (executor.NamedComponent); without one, the executor would use the
// path, which is what this returns then.
func (t timedComponent) ComponentName() string {
	if n, ok := t.c.(executor.NamedComponent); ok {
		return n.ComponentName()
	}
	return t.path
}

// stateCollector reads the worker's slots, readiness and component
// servers at scrape time.
type stateCollector struct {
	w                      *Worker
	slots, lent, ready, up *prometheus.Desc
}

func newStateCollector(w *Worker) *stateCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(metrics.Namespace, "worker", name), help, labels, nil)
	}
	return &stateCollector{
		w: w,
		slots: d("slots", "The worker's item slots: busy (an item executes) and free. They sum to its capacity: "+
			"Concurrency plus the slots lent to items waiting on a child run.", "state"),
		lent:  d("slots_lent", "Slots added for items blocked on a child run (nested runs), included in the capacity."),
		ready: d("ready", "1 while /readyz answers 200 (started, not draining, connected to NATS, watching runs, component servers up), else 0."),
		up: d("component_server_up", "1 while the plugin's component server is up, 0 while it is starting, restarting "+
			"or failed (component-server plugins only).", "plugin"),
	}
}

// Describe implements prometheus.Collector.
func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.slots
	ch <- c.lent
	ch <- c.ready
	ch <- c.up
}

// Collect implements prometheus.Collector.
func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	w := c.w
	capacity, busy := w.slots.Capacity(), w.slots.Busy()
	ch <- prometheus.MustNewConstMetric(c.slots, prometheus.GaugeValue, float64(busy), "busy")
	ch <- prometheus.MustNewConstMetric(c.slots, prometheus.GaugeValue, float64(max(capacity-busy, 0)), "free")
	ch <- prometheus.MustNewConstMetric(c.lent, prometheus.GaugeValue, float64(w.slots.Lent()))
	ch <- prometheus.MustNewConstMetric(c.ready, prometheus.GaugeValue, metrics.Bool(w.Ready() == nil))
	if w.isStarted() {
		for _, h := range w.plugins.Health() {
			ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, metrics.Bool(h.Err == nil), h.Plugin)
		}
	}
}

// registerMetrics registers the worker's collectors, labelled with its
// id, in its registry; cleanup unregisters them.
func (w *Worker) registerMetrics() error {
	reg := prometheus.WrapRegistererWith(prometheus.Labels{"worker": w.cfg.WorkerID}, w.reg)
	conn := func() *nats.Conn {
		if !w.isStarted() {
			return nil
		}
		return w.nc
	}
	cols := []prometheus.Collector{
		w.metrics.items, w.metrics.itemDuration, w.metrics.calls,
		metrics.NewNATSCollector("worker", conn), newStateCollector(w),
	}
	for _, col := range cols {
		if err := reg.Register(col); err != nil {
			return fmt.Errorf("worker: register metrics (worker ids must be unique per registry): %w", err)
		}
		w.registered = append(w.registered, col)
	}
	w.unregister = reg.Unregister
	return nil
}
