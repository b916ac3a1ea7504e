package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/queue"
)

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
	keys     idempotencyKeys

	listener net.Listener
	httpSrv  *http.Server
	natsURL  string

	agg        *aggregator
	advisories *queue.AdvisoryWatcher
	apiSubs    []*nats.Subscription
	apiSem     chan struct{}
	apiMu      sync.Mutex
	apiClosed  bool
	apiWG      sync.WaitGroup // API requests in progress
	wg         sync.WaitGroup // HTTP server, aggregator

	mu        sync.Mutex
	runs      map[string]*runState     // running runs attached to this coordinator
	attaching map[string]chan struct{} // runs being attached
	topLevel  int                      // top-level runs in progress, uploads included
}

// New returns a coordinator for cfg (defaults applied); it does not start
// it.
func New(cfg Config) (*Coordinator, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	return &Coordinator{
		cfg:       cfg,
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
// listening on every interface ("" before Start).
func (c *Coordinator) URL() string {
	if c.listener == nil {
		return ""
	}
	host := c.cfg.Host
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, strconv.Itoa(c.Port()))
}

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
	if err := os.MkdirAll(filepath.Join(cfg.DataDir, "runs"), 0o750); err != nil {
		return fmt.Errorf("coordinator: data dir: %w", err)
	}

	url, copts := cfg.NATSURL, cfg.NATSConnect
	if url == "" {
		c.embedded = queue.NewEmbedded(queue.EmbeddedConfig{
			StoreDir: filepath.Join(cfg.DataDir, "nats"),
			Host:     cfg.NATSHost,
			Port:     cfg.NATSPort,
			Sync:     cfg.NATSSync,
			Logger:   cfg.Logger,
		})
		if err := c.embedded.Start(ctx); err != nil {
			return fmt.Errorf("coordinator: %w", err)
		}
		url = c.embedded.ClientURL()
		copts.InProcess = c.embedded
	}
	copts.Name = "stepflow-coordinator"
	copts.Logger = cfg.Logger
	nc, js, err := queue.Connect(ctx, url, copts)
	if err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	c.nc, c.js = nc, js
	c.natsURL = url
	if c.embedded == nil {
		c.natsURL = nc.ConnectedUrlRedacted()
	}

	qcfg := cfg.Queue
	if qcfg.Logger == nil {
		qcfg.Logger = cfg.Logger
	}
	if err := queue.Provision(ctx, js, qcfg); err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	if c.runStore, err = queue.OpenRunStore(ctx, js); err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	if c.flows, err = queue.OpenFlowStore(ctx, js); err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	if c.blobs, err = queue.OpenBlobStore(ctx, js); err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}

	if err := c.sweepUploads(ctx); err != nil {
		return err
	}
	c.advisories, err = queue.WatchMaxDeliveries(c.ctx, js, c.onMaxDeliveries, queue.AdvisoryOptions{Logger: cfg.Logger})
	if err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	if err := c.resume(ctx); err != nil {
		return err
	}
	if c.agg, err = newAggregator(ctx, c); err != nil {
		return err
	}
	c.wg.Go(c.agg.run)
	if err := c.serveAPI(); err != nil {
		return err
	}

	ln, err := net.Listen("tcp", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)))
	if err != nil {
		return fmt.Errorf("coordinator: listen: %w", err)
	}
	c.listener = ln
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
	c.log.Info("coordinator started", zap.String("url", c.URL()), zap.String("nats", c.natsURL),
		zap.String("data_dir", cfg.DataDir))
	return nil
}

// Stop shuts the coordinator down: it stops taking requests, ends long
// polls and event streams, lets the result aggregator finish and ack the
// batch in hand (so that a restart redelivers nothing), closes NATS and
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
	for _, s := range c.apiSubs {
		_ = s.Unsubscribe()
	}
	c.apiMu.Lock()
	c.apiClosed = true
	c.apiMu.Unlock()
	c.apiWG.Wait()
	if c.agg != nil {
		c.agg.stop()
	}
	c.wg.Wait()
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
	if c.nc != nil {
		if err := c.nc.FlushTimeout(time.Second); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			c.log.Debug("NATS flush", zap.Error(err))
		}
		c.nc.Close()
	}
	if c.embedded != nil {
		c.embedded.Shutdown()
	}
	if c.listener != nil {
		c.log.Info("coordinator stopped")
	}
}

// cleanupCtx returns a context for cleanup that must run even when the
// request or the coordinator is being cancelled.
func cleanupCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
}
