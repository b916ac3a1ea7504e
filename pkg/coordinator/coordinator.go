package coordinator

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/metrics"
	"github.com/stepflow-go/stepflow/pkg/natsauth"
	"github.com/stepflow-go/stepflow/pkg/profiling"
	"github.com/stepflow-go/stepflow/pkg/queue"
)

// embeddedConnectTimeout bounds the coordinator's connection to its own
// embedded NATS server, which is already accepting connections.
const embeddedConnectTimeout = 10 * time.Second

// Coordinator is the REST API, run bookkeeping and result aggregation of
// the distributed mode. Create it with New, then Start and Stop it.
type Coordinator struct {
	cfg Config
	log *zap.Logger

	startOnce sync.Once
	stopOnce  sync.Once
	lifeMu    sync.Mutex // serialises start and shutdown
	started   chan struct{}
	stopped   chan struct{}
	startErr  error

	ctx    context.Context // cancelled by Stop (cause ErrStopped)
	cancel context.CancelCauseFunc

	embedded *queue.Embedded
	nc       *nats.Conn
	js       jetstream.JetStream
	runStore *queue.RunStore
	flows    *queue.FlowStore
	blobs    *queue.ObjectBlobStore
	journal  *blobJournal        // the blobs results refer to: durable with them, and served from here
	revoked  *sessionRevocations // the runs page's signed-out sessions
	logins   loginLimiter
	keys     idempotencyKeys

	listener net.Listener
	httpSrv  *http.Server
	natsURL  string
	pprof    *profiling.Server // nil without PprofAddr

	agg        *aggregator
	advisories *queue.AdvisoryWatcher
	apiSubs    []*nats.Subscription
	apiSem     chan struct{}
	apiMu      sync.Mutex
	apiClosed  bool
	apiWG      sync.WaitGroup // API requests in progress
	wg         sync.WaitGroup // HTTP server, aggregator
	pubWG      sync.WaitGroup // run publishers; Add under mu unless pubClosed

	id        string       // this coordinator among those sharing NATS
	lease     *queue.Lease // the leadership lease
	leader    leaderState
	lostLease atomic.Bool
	storage   storageFault // result logs that cannot be written (a full disk)
	// unresponsive moves the connection to another NATS server when the
	// lease cannot be renewed through this one (a node cut off).
	unresponsive *queue.Unresponsive
	// apiUnresponsive does the same when the JetStream API (stream and
	// consumer info, run-record reads) does not answer through this
	// server while the lease's writes do: seen on a cluster after a node
	// was killed, the API timing out on one server for minutes.
	apiUnresponsive *queue.Unresponsive
	// renewFailing: the last renewal got no answer (logged once it
	// succeeds again).
	renewFailing atomic.Bool
	waiting      atomic.Pointer[string] // what Start waits for

	reg        *prometheus.Registry
	metrics    *coordMetrics
	registered []prometheus.Collector // unregistered by shutdown
	finishedMu sync.Mutex
	finished   []runSnapshot // recently finished runs, oldest first

	itemsMu  sync.Mutex
	itemsInc queue.ItemsIncarnation // the items stream the runs were published to
	// itemsLast is the highest last sequence of itemsInc read so far.
	itemsLast uint64
	// itemsBehindChecks counts the checks in a row that found the items
	// stream behind what was read of it before.
	itemsBehindChecks int

	mu        sync.Mutex
	runs      map[string]*runState     // running runs attached to this coordinator
	attaching map[string]chan struct{} // runs being attached
	topLevel  int                      // top-level runs in progress, uploads included
	pubClosed bool                     // shutting down: no new publisher
}

// New returns a coordinator for cfg (defaults applied); it does not start
// it.
func New(cfg Config) (*Coordinator, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	reg := cfg.Metrics
	if reg == nil {
		reg = metrics.NewRegistry()
	}
	return &Coordinator{
		cfg:       cfg,
		reg:       reg,
		metrics:   newCoordMetrics(),
		log:       cfg.Logger.Named("coordinator"),
		started:   make(chan struct{}),
		stopped:   make(chan struct{}),
		ctx:       ctx,
		cancel:    cancel,
		keys:      idempotencyKeys{dir: filepath.Join(cfg.DataDir, "idempotency")},
		apiSem:    make(chan struct{}, 256),
		runs:      map[string]*runState{},
		attaching: map[string]chan struct{}{},
	}, nil
}

// Started is closed once Start has succeeded.
func (c *Coordinator) Started() <-chan struct{} { return c.started }

// Stopped is closed once Stop has finished (or Start has failed).
func (c *Coordinator) Stopped() <-chan struct{} { return c.stopped }

// Port returns the HTTP port the coordinator listens on (0 before
// Start).
func (c *Coordinator) Port() int {
	if c.listener == nil {
		return 0
	}
	if a, ok := c.listener.Addr().(*net.TCPAddr); ok {
		return a.Port
	}
	return 0
}

// URL returns the base URL of the REST API, http://127.0.0.1:<port> when
// listening on every interface (https:// with TLS; "" before Start).
func (c *Coordinator) URL() string {
	if c.listener == nil {
		return ""
	}
	host := c.cfg.Host
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	scheme := "http://"
	if c.cfg.TLSCertFile != "" {
		scheme = "https://"
	}
	return scheme + net.JoinHostPort(host, strconv.Itoa(c.Port()))
}

// TLS reports whether the REST API is served over HTTPS.
func (c *Coordinator) TLS() bool { return c.cfg.TLSCertFile != "" }

// EmbeddedNATS returns the embedded NATS server, or nil when the
// coordinator uses an external one (or before Start). `stepflow serve`
// connects its in-process workers to it without TCP.
func (c *Coordinator) EmbeddedNATS() *queue.Embedded { return c.embedded }

// NATSURL returns the URL of the NATS server the coordinator uses: the
// embedded server's (nats://127.0.0.1:<port>) or the configured one with
// credentials removed ("" before Start).
func (c *Coordinator) NATSURL() string { return c.natsURL }

// JetStream returns the coordinator's JetStream handle (nil before
// Start), for in-process workers of `stepflow serve`.
func (c *Coordinator) JetStream() jetstream.JetStream { return c.js }

// Start connects to (or starts) NATS, provisions the JetStream layout,
// resumes the runs left running by a previous coordinator on the same
// DataDir, and serves the REST API and the NATS API. When it returns nil
// the coordinator is listening (Port, NATSURL). Calling it again returns
// the first call's result; after a failed Start, the coordinator is
// stopped.
func (c *Coordinator) Start(ctx context.Context) error {
	c.startOnce.Do(func() {
		select {
		case <-c.stopped:
			c.startErr = ErrStopped
			return
		default:
		}
		// Stop cancels c.ctx first, which also ends a Start waiting for
		// NATS.
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stop := context.AfterFunc(c.ctx, cancel)
		defer stop()
		c.lifeMu.Lock()
		err := c.start(sctx)
		c.lifeMu.Unlock()
		if err != nil {
			c.startErr = err
			c.stopOnce.Do(func() {
				c.shutdown(context.Background())
				close(c.stopped)
			})
			return
		}
		close(c.started)
	})
	return c.startErr
}

func (c *Coordinator) start(ctx context.Context) error {
	cfg := c.cfg
	journal, err := openBlobJournal(filepath.Join(cfg.DataDir, "blob-journal"), c.queueConfig().BlobsTTL)
	if err != nil {
		return err
	}
	c.journal = journal
	if c.revoked, err = loadSessionRevocations(filepath.Join(cfg.DataDir, "ui-signed-out"), time.Now()); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(cfg.DataDir, "runs"), 0o750); err != nil {
		return fmt.Errorf("coordinator: data dir: %w", err)
	}
	if cfg.PprofAddr != "" {
		// First, so that a slow start can be profiled too.
		srv, err := profiling.Start(cfg.PprofAddr, "coordinator", c.log)
		if err != nil {
			return err
		}
		c.pprof = srv
	}

	var tlsCfg *tls.Config
	if cfg.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return fmt.Errorf("coordinator: TLS certificate: %w", err)
		}
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}

	// The REST API listens first: while NATS is awaited, the probes
	// answer (/readyz: not ready, and why) and the rest is 503.
	ln, err := net.Listen("tcp", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)))
	if err != nil {
		return fmt.Errorf("coordinator: listen: %w", err)
	}
	c.listener = ln
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
	}
	c.id = cmp.Or(cfg.ID, defaultID(cfg.Port))
	c.setWaiting("connecting to NATS")
	c.httpSrv = &http.Server{
		Handler:           c.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return c.ctx },
		ErrorLog:          zap.NewStdLog(c.log.Named("http")),
	}
	c.wg.Go(func() {
		if err := c.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			c.log.Error("HTTP server stopped", zap.Error(err))
		}
	})

	url, copts := cfg.NATSURL, cfg.NATSConnect
	connectCtx := ctx
	if url == "" {
		ec := cfg.EmbeddedNATS
		ec.StoreDir = filepath.Join(cfg.DataDir, "nats")
		ec.Host, ec.Port, ec.Logger = cfg.NATSHost, cfg.NATSPort, cfg.Logger
		ec.Sync = cfg.NATSSync
		c.embedded = queue.NewEmbedded(ec)
		if err := c.embedded.Start(ctx); err != nil {
			return fmt.Errorf("coordinator: %w", err)
		}
		url = c.embedded.InProcessURL()
		copts = ec.ClientAuth(copts).WithoutTLS()
		copts.InProcess = c.embedded
		// The server is up: a connection that fails now is refused
		// (wrong or missing credentials), and retrying cannot help.
		var cancel context.CancelFunc
		connectCtx, cancel = context.WithTimeout(ctx, embeddedConnectTimeout)
		defer cancel()
	}
	copts.Name = "stepflow-coordinator"
	copts.InboxPrefix = cmp.Or(copts.InboxPrefix, queue.CoordinatorInboxPrefix)
	copts.Logger = cfg.Logger
	nc, js, err := queue.Connect(connectCtx, url, copts)
	if err != nil {
		if c.embedded != nil && c.embedded.Secured() && !copts.HasAuth() {
			return fmt.Errorf("coordinator: the embedded NATS server requires authentication: give the coordinator its credentials (--nats-user/--nats-password, --nats-token, --nats-nkey or --nats-creds): %w", err)
		}
		return fmt.Errorf("coordinator: %w", err)
	}
	c.nc, c.js = nc, js
	if ac := cfg.AuthCallout; ac.Issuer != nil {
		// Before provisioning, which waits for a forming cluster: workers
		// log in meanwhile. Every coordinator answers, standbys too.
		ac.Logger = cmp.Or(ac.Logger, cfg.Logger)
		if _, err := natsauth.Start(nc, ac); err != nil {
			return fmt.Errorf("coordinator: %w", err)
		}
		c.log.Info("answering the NATS auth callout", zap.String("account", ac.Account))
	}
	c.unresponsive = queue.NewUnresponsive(nc, 0, c.log)
	c.apiUnresponsive = queue.NewUnresponsive(nc, 0, c.log)
	if c.embedded != nil {
		c.natsURL = c.embedded.ClientURL()
	} else {
		c.natsURL = nc.ConnectedUrlRedacted()
	}

	if err := c.provision(ctx); err != nil {
		return err
	}
	c.setWaiting("")
	if err := c.registerMetrics(); err != nil {
		return err
	}

	if _, err := c.campaign(ctx); err != nil {
		if !queue.Transient(err) {
			return err
		}
		// NATS stopped answering in the middle: stand by for now; the
		// lease loop campaigns again.
		c.log.Warn("cannot take the lead yet (NATS does not answer); retrying", zap.Error(err))
	}
	c.wg.Go(func() { c.keepLease(c.ctx) })
	c.log.Info("coordinator started", zap.String("id", c.id), zap.Bool("leader", c.leading()), zap.String("url", c.URL()),
		zap.String("nats", c.natsURL), zap.String("data_dir", cfg.DataDir))
	return nil
}

// provision provisions the JetStream layout and opens its stores. While
// JetStream cannot answer (a cluster still forming, a quorum lost), it
// tries again, logging why, until ctx ends.
func (c *Coordinator) provision(ctx context.Context) error {
	qcfg := c.cfg.Queue
	if qcfg.Logger == nil {
		qcfg.Logger = c.cfg.Logger
	}
	start := time.Now()
	for attempt := 0; ; attempt++ {
		err := c.provisionOnce(ctx, qcfg)
		if err == nil {
			if attempt > 0 {
				c.log.Info("NATS JetStream is available; streams and buckets provisioned", zap.Duration("waited", time.Since(start).Round(time.Millisecond)))
			}
			return nil
		}
		if ctx.Err() != nil || !queue.Transient(err) {
			return fmt.Errorf("coordinator: %w", err)
		}
		wait := min(250*time.Millisecond<<min(attempt, 4), 4*time.Second)
		c.setWaiting(fmt.Sprintf("waiting for NATS JetStream: %v", err))
		c.log.Warn("waiting for NATS JetStream (a cluster forming or without quorum); retrying",
			zap.Int("attempt", attempt+1), zap.Duration("in", wait), zap.Error(err))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("coordinator: gave up waiting for NATS JetStream: %w (last: %w)", context.Cause(ctx), err)
		case <-t.C:
		}
	}
}

func (c *Coordinator) provisionOnce(ctx context.Context, qcfg queue.Config) (err error) {
	if err := queue.Provision(ctx, c.js, qcfg); err != nil {
		return err
	}
	if c.runStore, err = queue.OpenRunStore(ctx, c.js); err != nil {
		return err
	}
	if c.flows, err = queue.OpenFlowStore(ctx, c.js); err != nil {
		return err
	}
	if c.blobs, err = queue.OpenBlobStore(ctx, c.js); err != nil {
		return err
	}
	c.lease, err = queue.OpenLease(ctx, c.js)
	return err
}

// setWaiting records what the start waits for ("" once it waits no
// more), for /readyz and the 503s of the API meanwhile.
func (c *Coordinator) setWaiting(what string) {
	c.waiting.Store(&what)
}

// waitingFor returns what the start waits for, or "".
func (c *Coordinator) waitingFor() string {
	if p := c.waiting.Load(); p != nil {
		return *p
	}
	return ""
}

// Stop shuts the coordinator down: it stops taking requests, ends long
// polls and event streams, lets the result aggregator commit and answer
// the results in hand (workers send the others again to the next leader), closes NATS and
// the embedded server. Runs keep running on the workers; a coordinator
// started on the same DataDir picks them up. Stop is idempotent, may be
// called before Start, and returns ctx's error if ctx ends first (the
// shutdown then continues in the background).
func (c *Coordinator) Stop(ctx context.Context) error {
	c.stopOnce.Do(func() {
		go func() {
			c.shutdown(context.WithoutCancel(ctx))
			close(c.stopped)
		}()
	})
	select {
	case <-c.stopped:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("coordinator: stop: %w", context.Cause(ctx))
	}
}

// shutdown releases everything start acquired, in reverse order.
func (c *Coordinator) shutdown(ctx context.Context) {
	c.cancel(ErrStopped)
	c.lifeMu.Lock()
	defer c.lifeMu.Unlock()
	if c.httpSrv != nil {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := c.httpSrv.Shutdown(sctx); err != nil {
			c.log.Warn("HTTP shutdown", zap.Error(err))
			_ = c.httpSrv.Close()
		}
		cancel()
	} else if c.listener != nil {
		_ = c.listener.Close()
	}
	for _, col := range c.registered {
		c.reg.Unregister(col)
	}
	for _, s := range c.apiSubs {
		_ = s.Unsubscribe()
	}
	c.apiMu.Lock()
	c.apiClosed = true
	c.apiMu.Unlock()
	c.apiWG.Wait()
	if a := c.aggregator(); a != nil {
		a.close()
	}
	c.wg.Wait()
	c.mu.Lock()
	c.pubClosed = true // no publisher starts after this
	c.mu.Unlock()
	c.pubWG.Wait()
	if c.advisories != nil {
		c.advisories.Stop()
	}
	c.mu.Lock()
	states := make([]*runState, 0, len(c.runs))
	for _, st := range c.runs {
		states = append(states, st)
	}
	c.runs = map[string]*runState{}
	c.mu.Unlock()
	for _, st := range states {
		st.detach()
	}
	if c.lease != nil && c.leading() && !c.lostLease.Load() {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := c.lease.Release(rctx); err != nil {
			c.log.Warn("cannot release the leadership lease; a standby takes over when it expires", zap.Error(err))
		}
		cancel()
	}
	if c.nc != nil {
		if err := c.nc.FlushTimeout(time.Second); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			c.log.Debug("NATS flush", zap.Error(err))
		}
		c.nc.Close()
	}
	if c.embedded != nil {
		c.embedded.Shutdown()
	}
	if c.journal != nil {
		if err := c.journal.close(); err != nil {
			c.log.Warn("closing the blob journal", zap.Error(err))
		}
	}
	if c.pprof != nil {
		if err := c.pprof.Close(); err != nil {
			c.log.Debug("pprof server", zap.Error(err))
		}
	}
	if c.listener != nil {
		c.log.Info("coordinator stopped")
	}
}

// PprofAddr returns the address of the --pprof-addr listener ("" without
// one), for PprofAddr with port 0.
func (c *Coordinator) PprofAddr() string {
	if c.pprof == nil {
		return ""
	}
	return c.pprof.Addr()
}

// cleanupCtx returns a context for cleanup that must run even when the
// request or the coordinator is being cancelled.
func cleanupCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
}
