// Package metrics holds the Prometheus pieces the coordinator and the
// workers share: the per-process registry (never the global default
// one), the /metrics handler, and the collector of a NATS connection's
// state. The metrics themselves belong to the packages that produce them
// (pkg/coordinator, pkg/worker); docs/operations.md lists every name.
//
// A registry is created once per process (NewRegistry, which adds the Go
// runtime and process collectors) and injected into the coordinator and
// the workers through their Config. `stepflow serve` shares one registry
// between its coordinator and its in-process workers: worker metrics
// carry a `worker` label, so they never collide.
package metrics

import (
	"net/http"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// Namespace prefixes every stepflow metric name.
const Namespace = "stepflow"

// NewRegistry returns a registry holding the Go runtime (go_*) and
// process (process_*) collectors: what one process registers once.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// Handler serves the registry in the Prometheus text format (or
// OpenMetrics / protobuf when the scraper asks for them). A collector
// that fails is logged and left out of the scrape; the rest is served.
func Handler(g prometheus.Gatherer, log *zap.Logger) http.Handler {
	if log == nil {
		log = zap.NewNop()
	}
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:      zapPrintln{log.Named("metrics")},
		ErrorHandling: promhttp.ContinueOnError,
	})
}

// zapPrintln adapts a zap logger to promhttp.Logger.
type zapPrintln struct{ log *zap.Logger }

func (z zapPrintln) Println(v ...any) { z.log.Sugar().Warn(v...) }

// natsCollector reports a NATS connection's state at scrape time.
type natsCollector struct {
	conn       func() *nats.Conn
	connected  *prometheus.Desc
	reconnects *prometheus.Desc
}

// NewNATSCollector returns a collector of the state of the connection
// conn returns (nil: not connected yet), read at scrape time (nothing is
// updated on connection events):
//
//	stepflow_<subsystem>_nats_connected        gauge, 1 while connected, else 0
//	stepflow_<subsystem>_nats_reconnects_total counter, reconnections since start
func NewNATSCollector(subsystem string, conn func() *nats.Conn) prometheus.Collector {
	return &natsCollector{
		conn: conn,
		connected: prometheus.NewDesc(prometheus.BuildFQName(Namespace, subsystem, "nats_connected"),
			"1 while the NATS connection is connected, 0 while it is disconnected, reconnecting or closed.", nil, nil),
		reconnects: prometheus.NewDesc(prometheus.BuildFQName(Namespace, subsystem, "nats_reconnects_total"),
			"Reconnections of the NATS connection since the process connected.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *natsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.connected
	ch <- c.reconnects
}

// Collect implements prometheus.Collector.
func (c *natsCollector) Collect(ch chan<- prometheus.Metric) {
	var connected bool
	var reconnects uint64
	if nc := c.conn(); nc != nil {
		connected, reconnects = nc.IsConnected(), nc.Stats().Reconnects
	}
	ch <- prometheus.MustNewConstMetric(c.connected, prometheus.GaugeValue, Bool(connected))
	ch <- prometheus.MustNewConstMetric(c.reconnects, prometheus.CounterValue, float64(reconnects))
}

// Bool is 1 for true and 0 for false, the value of a boolean gauge.
func Bool(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// DurationBuckets are the histogram buckets, in seconds, of durations
// from a millisecond to ten minutes: component calls, items, and the
// aggregation lag.
var DurationBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}
