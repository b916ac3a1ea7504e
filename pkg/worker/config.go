package worker

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/plugin"
	"github.com/stepflow-go/stepflow/pkg/queue"
)

// Defaults of Config.
const (
	// DefaultConcurrency is a worker's slots: the items it executes at
	// once. Items mostly wait on I/O (a component server, an HTTP API, a
	// model), and a slot is only a goroutine while its item runs, so the
	// default is sized for that case: enough for a run's concurrency
	// (--max-concurrent, its consumer's MaxAckPending) of 50 on one
	// machine with one worker. Lower it for components that are CPU-bound
	// in the worker's own container (the Kubernetes manifests set 4, with
	// the CPU request to match); what the slots share is the component
	// servers.
	DefaultConcurrency = 64
	// DefaultDrainTimeout is how long Stop lets in-flight items finish
	// before it cancels them and hands them back to JetStream. It matches
	// Kubernetes' default termination grace period, so a pod's items
	// either finish or go back before the kubelet kills the process.
	DefaultDrainTimeout = 30 * time.Second
	// DefaultFetchMaxWait bounds one pull request to a run consumer. A
	// pending pull holds the worker slots it asked for, so it is short:
	// a run whose items are all taken (or at their MaxAckPending) holds a
	// slot for at most this long before the scheduler moves on to the
	// next run.
	DefaultFetchMaxWait = 500 * time.Millisecond
	// DefaultRunsRequestTimeout bounds one request to the coordinator's
	// run API (runs/submit, and each wait-poll of runs/get).
	DefaultRunsRequestTimeout = 30 * time.Second
	// DefaultRetryDelay is the NakWithDelay delay of an item that failed
	// for a reason outside the item (the result could not be published,
	// the flow could not be loaded): long enough not to spin, short
	// enough to be invisible in a batch's duration.
	DefaultRetryDelay = time.Second
	// DefaultStatusInterval is how often a worker puts its status
	// (slots, items, durations) into the worker registry.
	DefaultStatusInterval = 2 * time.Second
	// DefaultHealthHost is the address the health server listens on: this
	// machine only unless told otherwise.
	DefaultHealthHost = "127.0.0.1"
)

// ErrInvalidConfig is wrapped by Config.Validate errors.
var ErrInvalidConfig = errors.New("worker: invalid configuration")

// Config configures a Worker. The zero value plus a NATS URL is usable;
// WithDefaults states every default.
type Config struct {
	// NATSURL is the NATS server(s) to connect to (comma-separated).
	// Required unless NATS.InProcess is set.
	NATSURL string
	// NATS holds authentication, TLS and reconnect options, passed to
	// queue.Connect as they are. Name defaults to "stepflow-worker-<id>"
	// and Logger to Logger.
	NATS queue.ConnectOptions

	// ConfigPath is the stepflow-config.yml naming the component servers
	// (plugins and routes). "" means the default config: builtins only.
	ConfigPath string
	// StepflowConfig, when set, is used instead of loading ConfigPath
	// (for embedders such as `stepflow serve`, which already hold one).
	StepflowConfig *config.Config
	// PluginFactories adds or replaces plugin types
	// (plugin.Options.Factories), for embedders and tests.
	PluginFactories map[config.PluginType]plugin.Factory
	// WorkingDir is the cwd of component server processes and the base of
	// /builtin/load_file; default the config's WorkDir relative to the
	// process's working directory.
	WorkingDir string

	// Concurrency is the number of items this worker executes at once
	// (its slots). Default DefaultConcurrency. A run's own limit
	// (MaxAckPending) applies on top, across all workers: a run gets at
	// most min(its concurrency, the free slots of every worker) items at
	// once.
	Concurrency int
	// DrainTimeout: see DefaultDrainTimeout (the default). Zero means the
	// default; a negative value hands in-flight items back at once.
	DrainTimeout time.Duration
	// FetchMaxWait: see DefaultFetchMaxWait (the default).
	FetchMaxWait time.Duration
	// RunsRequestTimeout: see DefaultRunsRequestTimeout (the default).
	RunsRequestTimeout time.Duration
	// RetryDelay: see DefaultRetryDelay (the default).
	RetryDelay time.Duration
	// BlobCacheBytes bounds the memory of the worker's cache of blobs
	// (as blob.MemSize estimates it), which serves a get_blob of a blob
	// this worker put or read before without going to NATS. Default
	// blob.DefaultCacheBytes (64 MiB); negative: no cache.
	BlobCacheBytes int64

	// HealthPort serves /healthz, /readyz and /metrics over plain HTTP
	// on HealthHost:HealthPort. 0 = no health server; -1 = an ephemeral
	// port (tests; see Worker.HealthAddr).
	HealthPort int
	// HealthHost: see DefaultHealthHost (the default). In a container,
	// set "0.0.0.0" so that the kubelet reaches the probes.
	HealthHost string
	// PprofAddr, when set (host:port, port 0 = any free port), serves the
	// Go runtime profiles (package profiling: /debug/pprof/ for `go tool
	// pprof`) WITHOUT authentication: bind it to a loopback address.
	// Default "": none. See Worker.PprofAddr for the bound address.
	PprofAddr string

	// StatusInterval is how often the worker puts its WorkerStatus into
	// the worker registry (queue.BucketWorkers), which `stepflow top` and
	// the coordinator's GET /api/v1/cluster read. Default
	// DefaultStatusInterval; at most queue.MaxWorkerHeartbeat, so that the
	// registry's TTL never drops a live worker.
	StatusInterval time.Duration
	// Version is the stepflow version the worker reports in its status.
	// Default: the main module's version from the build info.
	Version string

	// WorkerID names this worker in results (ItemResult.worker_id), logs
	// and NATS monitoring. Default "<hostname>-<pid>".
	WorkerID string
	// Logger receives the worker's logs, named "worker". Default: none.
	Logger *zap.Logger

	// Metrics is the registry the worker registers its metrics in, each
	// labelled worker=<WorkerID> (at Start; they are unregistered when
	// it stops), and that the health server serves on /metrics. Default:
	// a registry of its own with the Go runtime and process collectors
	// (metrics.NewRegistry). Embedders running several workers in one
	// process (`stepflow serve`) pass one shared registry.
	Metrics *prometheus.Registry
}

// WithDefaults returns a copy of c with every zero field set to its
// default.
func (c Config) WithDefaults() Config {
	c.Concurrency = cmp.Or(c.Concurrency, DefaultConcurrency)
	c.DrainTimeout = cmp.Or(c.DrainTimeout, DefaultDrainTimeout)
	c.FetchMaxWait = cmp.Or(c.FetchMaxWait, DefaultFetchMaxWait)
	c.RunsRequestTimeout = cmp.Or(c.RunsRequestTimeout, DefaultRunsRequestTimeout)
	c.RetryDelay = cmp.Or(c.RetryDelay, DefaultRetryDelay)
	c.BlobCacheBytes = cmp.Or(c.BlobCacheBytes, blob.DefaultCacheBytes)
	c.HealthHost = cmp.Or(c.HealthHost, DefaultHealthHost)
	c.StatusInterval = cmp.Or(c.StatusInterval, DefaultStatusInterval)
	if c.Version == "" {
		c.Version = "unknown"
		if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
			c.Version = bi.Main.Version
		}
	}
	if c.WorkerID == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "worker"
		}
		c.WorkerID = host + "-" + strconv.Itoa(os.Getpid())
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	c.NATS.Name = cmp.Or(c.NATS.Name, "stepflow-worker-"+c.WorkerID)
	c.NATS.InboxPrefix = cmp.Or(c.NATS.InboxPrefix, queue.WorkerInboxPrefix)
	if c.NATS.Logger == nil {
		c.NATS.Logger = c.Logger
	}
	return c
}

// Validate reports settings the worker cannot run with, saying what to
// change. Call it on WithDefaults' result (New does both).
func (c Config) Validate() error {
	switch {
	case c.NATSURL == "" && c.NATS.InProcess == nil:
		return fmt.Errorf("%w: no NATS URL (set --nats-url or STEPFLOW_NATS_URL)", ErrInvalidConfig)
	case c.Concurrency < 1:
		return fmt.Errorf("%w: Concurrency must be at least 1, not %d", ErrInvalidConfig, c.Concurrency)
	case c.FetchMaxWait < 10*time.Millisecond:
		return fmt.Errorf("%w: FetchMaxWait must be at least 10ms, not %s", ErrInvalidConfig, c.FetchMaxWait)
	case c.RunsRequestTimeout < 100*time.Millisecond:
		return fmt.Errorf("%w: RunsRequestTimeout must be at least 100ms, not %s", ErrInvalidConfig, c.RunsRequestTimeout)
	case c.RetryDelay < 0:
		return fmt.Errorf("%w: RetryDelay must not be negative", ErrInvalidConfig)
	case c.HealthPort < -1 || c.HealthPort > 65535:
		return fmt.Errorf("%w: HealthPort must be 0 (none), -1 (ephemeral) or a port up to 65535, not %d", ErrInvalidConfig, c.HealthPort)
	case c.StatusInterval < 10*time.Millisecond || c.StatusInterval > queue.MaxWorkerHeartbeat:
		return fmt.Errorf("%w: StatusInterval must be 10ms to %s (a third of the registry's TTL), not %s", ErrInvalidConfig, queue.MaxWorkerHeartbeat, c.StatusInterval)
	case c.WorkerID == "":
		return fmt.Errorf("%w: empty WorkerID", ErrInvalidConfig)
	case c.StepflowConfig != nil && c.ConfigPath != "":
		return fmt.Errorf("%w: set ConfigPath or StepflowConfig, not both", ErrInvalidConfig)
	}
	return nil
}
