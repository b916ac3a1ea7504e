package coordinator

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/natsauth"
	"github.com/stepflow-go/stepflow/pkg/queue"
)

// Defaults. DefaultPort and DefaultNATSPort are the defaults of Main's
// flags; in Config, 0 means "pick a free port" (what tests want).
// DefaultHost is the listen address of the commands' REST API: loopback,
// so that a single-machine default is not reachable from the network
// unless asked (--host 0.0.0.0).
const DefaultHost = "127.0.0.1"

const (
	// DefaultPort is the HTTP port of upstream's stepflow-server.
	DefaultPort = 7840
	// DefaultNATSPort is the client port of the embedded NATS server.
	DefaultNATSPort = 4222
	// DefaultMaxBodyBytes bounds a JSON request body and one JSONL line.
	DefaultMaxBodyBytes = 32 << 20
	// DefaultMaxFlowBytes bounds a flow (its compact JSON): hand-written
	// flows are kilobytes; megabytes mean a generated flow gone wrong.
	DefaultMaxFlowBytes = 4 << 20
	// DefaultMaxConcurrentRuns bounds the top-level runs in progress.
	DefaultMaxConcurrentRuns = 64
	// DefaultMaxItemsPerRun bounds a run's items.
	DefaultMaxItemsPerRun = 10_000_000
	// DefaultMaxRunConcurrency bounds the concurrency a request may ask
	// for: the MaxAckPending of the run's consumer.
	DefaultMaxRunConcurrency = 10_000
	// DefaultConcurrencyCap caps a run's default concurrency (the number
	// of its items when the request does not say).
	DefaultConcurrencyCap = 1000
	// DefaultAPIMaxWait bounds how long a "wait": true request of the NATS
	// API is held before it is answered with the current status.
	DefaultAPIMaxWait = 5 * time.Minute
	// DefaultMaxDetailInputsBytes is the largest input kept for RunDetails.
	DefaultMaxDetailInputsBytes = 1 << 20
	// DefaultMetricsRunRetention is how long a finished run keeps its
	// per-run series (stepflow_run_*) on /metrics, so that a scrape
	// after the end still sees its final counts.
	DefaultMetricsRunRetention = 5 * time.Minute
)

// Config configures a Coordinator. The zero value plus a DataDir is a
// working single-machine coordinator on free ports.
type Config struct {
	// Host is the HTTP listen address. "" listens on every interface;
	// the commands (`coordinator`, `stepflow serve`) default to
	// DefaultHost, loopback, and Kubernetes sets 0.0.0.0.
	Host string
	// Port is the HTTP port; 0 picks a free one (see Coordinator.Port).
	// Main's --port defaults to DefaultPort (7840).
	Port int

	// NATSURL is the NATS server (or comma-separated cluster) to use. ""
	// starts an embedded NATS server with JetStream storing in
	// DataDir/nats, listening on NATSHost:NATSPort.
	NATSURL string
	// NATSConnect holds authentication and TLS settings for NATSURL (its
	// Name and Logger are set by the coordinator).
	NATSConnect queue.ConnectOptions
	// AuthCallout, when its Issuer is set, has the coordinator answer the
	// NATS server's auth callout (package natsauth): workers log in with
	// the shared worker password and an inbox key each, and none can read
	// another's replies. Its Logger defaults to Logger.
	AuthCallout natsauth.Config
	// NATSHost is the embedded server's listen address. Default
	// "127.0.0.1": workers on other machines need an external NATS.
	NATSHost string
	// NATSPort is the embedded server's client port; 0 picks a free one.
	// Main's --nats-port defaults to DefaultNATSPort (4222).
	NATSPort int
	// EmbeddedNATS holds the embedded server's authorization and TLS
	// settings (ConfigFile, Token, User/Password, NKeys, TLS files); its
	// StoreDir, Host, Port and Logger are set from the fields above. The
	// coordinator connects to its embedded server in-process, with
	// NATSConnect's credentials, else with the server's Token or
	// User/Password (EmbeddedConfig.ClientAuth). Only without NATSURL.
	EmbeddedNATS queue.EmbeddedConfig
	// NATSSync is the embedded server's fsync policy. The zero value is
	// the nats-server default (a background fsync every 2 minutes: an
	// acknowledged item or result survives kill -9, not a power loss);
	// Main's --nats-sync defaults to queue.SyncAlways. Ignored with
	// NATSURL: an external server has its own `sync_interval`.
	NATSSync queue.SyncPolicy
	// Queue configures the JetStream layout provisioned at start
	// (replicas, limits); the zero value is the single-server default.
	Queue queue.Config

	// DataDir holds the coordinator's state (required): the result store
	// of every run, idempotency keys, upload markers and, with an
	// embedded NATS server, its JetStream store. A coordinator restarted
	// on the same DataDir (and NATS) resumes where it stopped.
	DataDir string

	// AuthToken, when set, is required as "Authorization: Bearer <token>"
	// on every API call and /metrics, but not on the health checks
	// (GET /api/v1/health, /healthz, /readyz). Compared in constant time.
	// See LoadAuthToken for reading it from a file.
	AuthToken string
	// TLSCertFile and TLSKeyFile, when set, serve the REST API over HTTPS
	// with this certificate (PEM; the certificate file may hold the
	// chain). Both or neither.
	TLSCertFile, TLSKeyFile string

	// Logger receives the coordinator's logs, named "coordinator".
	// Default: none.
	Logger *zap.Logger

	// Metrics is the registry the coordinator registers its metrics in
	// (at Start; they are unregistered at Stop) and serves on /metrics.
	// Default: a registry of its own with the Go runtime and process
	// collectors (metrics.NewRegistry). An embedder that shares one
	// registry between components (`stepflow serve`) passes it here.
	Metrics *prometheus.Registry
	// MetricsRunRetention is how long a finished run keeps its per-run
	// series on /metrics. Default DefaultMetricsRunRetention; the 1000
	// most recently finished runs are kept at most.
	MetricsRunRetention time.Duration
	// ReadyCheck, when set, is one more condition of GET /readyz (nil =
	// ready): `stepflow serve` reports its in-process workers there.
	ReadyCheck func() error
	// PprofAddr, when set (host:port, port 0 = any free port), serves the
	// Go runtime profiles (package profiling: /debug/pprof/ for `go tool
	// pprof`) on a listener of its own, WITHOUT authentication: bind it
	// to a loopback address. Default "": none. The API server serves
	// the same profiles at /debug/pprof/ behind AuthToken either way.
	// In `stepflow serve` it profiles the whole process, the in-process
	// workers included.
	PprofAddr string

	// MaxBodyBytes bounds a JSON request body, and one line (one item)
	// of a JSONL upload (413 beyond). A JSONL upload as a whole is
	// bounded by MaxItemsPerRun instead. Default DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// MaxFlowBytes bounds a flow, as compact JSON: the flow of
	// POST /flows, or a blob a run is submitted with (413 beyond).
	// Default DefaultMaxFlowBytes.
	MaxFlowBytes int64
	// MaxConcurrentRuns bounds the top-level runs in progress at once
	// (429 with Retry-After beyond). Child runs submitted by components
	// do not count: refusing them could deadlock the parents waiting on
	// them. Default DefaultMaxConcurrentRuns.
	MaxConcurrentRuns int
	// MaxItemsPerRun bounds a run's items (413 beyond). Default
	// DefaultMaxItemsPerRun.
	MaxItemsPerRun int
	// ID names this coordinator among those sharing a NATS deployment
	// (the leadership lease holder). Default: the host name and the HTTP
	// port, or the pid when the port is 0.
	ID string
	// AdvertiseURL is the REST API base URL other coordinators forward
	// requests to while this one leads, e.g. http://10.0.0.7:7840 (a pod
	// IP). Default URL().
	AdvertiseURL string
	// PublishWindow bounds the items of a run on the work queue at once
	// (published, without a result); the rest wait in the run's spool in
	// DataDir. Default 0: four times the run's concurrency, at least 4096
	// and at most 65536.
	PublishWindow int
	// ConcurrencyCap caps the default concurrency of a run (its item
	// count) when the request sets none. Default DefaultConcurrencyCap.
	ConcurrencyCap int
	// MaxRunConcurrency is the largest maxConcurrency a request may set
	// (400 beyond). Default DefaultMaxRunConcurrency.
	MaxRunConcurrency int
	// MaxDetailInputsBytes is the largest total input size kept for
	// GET /runs/{id} (RunDetails.inputs); larger runs omit their inputs
	// there. Default DefaultMaxDetailInputsBytes; -1 keeps none.
	MaxDetailInputsBytes int64

	// RunAckWait is the AckWait of run consumers (0 = queue.DefaultAckWait).
	RunAckWait time.Duration
	// RunMaxDeliver is the MaxDeliver of run consumers (0 =
	// queue.DefaultMaxDeliver): after that many deliveries an item fails
	// with "exceeded its maximum deliveries".
	RunMaxDeliver int
	// SyncResults fsyncs the result store before results are answered
	// (one fsync per run per group commit). Off, an answered result is in
	// the OS page cache, which survives kill -9 of the coordinator but not
	// a power loss.
	SyncResults bool
	// APIMaxWait bounds how long the NATS API holds a "wait": true
	// request before replying with the current status; the requester
	// then asks again. Default DefaultAPIMaxWait.
	APIMaxWait time.Duration
}

// WithDefaults returns a copy of c with zero fields set to their
// defaults.
func (c Config) WithDefaults() Config {
	if c.NATSHost == "" {
		c.NATSHost = "127.0.0.1"
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.MaxFlowBytes == 0 {
		c.MaxFlowBytes = DefaultMaxFlowBytes
	}
	if c.MaxRunConcurrency == 0 {
		c.MaxRunConcurrency = DefaultMaxRunConcurrency
	}
	if c.MaxConcurrentRuns == 0 {
		c.MaxConcurrentRuns = DefaultMaxConcurrentRuns
	}
	if c.MaxItemsPerRun == 0 {
		c.MaxItemsPerRun = DefaultMaxItemsPerRun
	}
	if c.ConcurrencyCap == 0 {
		c.ConcurrencyCap = DefaultConcurrencyCap
	}
	if c.MaxDetailInputsBytes == 0 {
		c.MaxDetailInputsBytes = DefaultMaxDetailInputsBytes
	}
	if c.APIMaxWait == 0 {
		c.APIMaxWait = DefaultAPIMaxWait
	}
	if c.MetricsRunRetention == 0 {
		c.MetricsRunRetention = DefaultMetricsRunRetention
	}
	return c
}

// Validate reports settings that cannot work, saying what to change.
func (c Config) Validate() error {
	switch {
	case c.DataDir == "":
		return fmt.Errorf("%w: DataDir is required (the coordinator keeps results and state there)", ErrInvalidConfig)
	case c.Port < 0 || c.Port > 65535:
		return fmt.Errorf("%w: Port must be 0 (any free port) to 65535, not %d", ErrInvalidConfig, c.Port)
	case c.NATSPort < 0 || c.NATSPort > 65535:
		return fmt.Errorf("%w: NATSPort must be 0 (any free port) to 65535, not %d", ErrInvalidConfig, c.NATSPort)
	case c.MaxBodyBytes < 1:
		return fmt.Errorf("%w: MaxBodyBytes (--max-body-bytes) must be positive", ErrInvalidConfig)
	case c.MaxFlowBytes < 1:
		return fmt.Errorf("%w: MaxFlowBytes (--max-flow-bytes) must be positive", ErrInvalidConfig)
	case c.MaxRunConcurrency < 1:
		return fmt.Errorf("%w: MaxRunConcurrency (--max-run-concurrency) must be at least 1", ErrInvalidConfig)
	case c.MaxConcurrentRuns < 1:
		return fmt.Errorf("%w: MaxConcurrentRuns (--max-active-runs) must be at least 1", ErrInvalidConfig)
	case c.MaxItemsPerRun < 1:
		return fmt.Errorf("%w: MaxItemsPerRun (--max-items-per-run) must be at least 1", ErrInvalidConfig)
	case c.ConcurrencyCap < 1:
		return fmt.Errorf("%w: ConcurrencyCap must be at least 1", ErrInvalidConfig)
	case c.MaxDetailInputsBytes < -1:
		return fmt.Errorf("%w: MaxDetailInputsBytes must be -1 (none) or more", ErrInvalidConfig)
	case c.RunAckWait != 0 && c.RunAckWait < time.Second:
		return fmt.Errorf("%w: RunAckWait must be at least 1s", ErrInvalidConfig)
	case c.RunMaxDeliver < -1:
		return fmt.Errorf("%w: RunMaxDeliver must be -1 (unlimited), 0 (default) or more", ErrInvalidConfig)
	case c.APIMaxWait < 0:
		return fmt.Errorf("%w: APIMaxWait must not be negative", ErrInvalidConfig)
	case c.MetricsRunRetention < 0:
		return fmt.Errorf("%w: MetricsRunRetention must not be negative", ErrInvalidConfig)
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return fmt.Errorf("%w: HTTPS needs both a certificate and a key (--tls-cert and --tls-key)", ErrInvalidConfig)
	}
	if c.NATSURL != "" && (c.EmbeddedNATS.Secured() || c.EmbeddedNATS.TLSCertFile != "" || c.EmbeddedNATS.TLSKeyFile != "") {
		return fmt.Errorf("%w: the --nats-server-* settings configure the embedded NATS server, which is not started with --nats-url", ErrInvalidConfig)
	}
	if c.NATSURL == "" {
		if err := c.EmbeddedNATS.Validate(); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
	}
	if c.NATSURL == "" && c.NATSConnect.InProcess != nil {
		return fmt.Errorf("%w: NATSConnect.InProcess needs NATSURL (an embedded server is started otherwise)", ErrInvalidConfig)
	}
	return c.Queue.WithDefaults().Validate()
}

// runConsumerConfig is the consumer config of a run with concurrency n.
func (c Config) runConsumerConfig(n int) queue.RunConsumerConfig {
	return queue.RunConsumerConfig{MaxAckPending: n, AckWait: c.RunAckWait, MaxDeliver: c.RunMaxDeliver}.WithDefaults()
}
