package worker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/metrics"
	"github.com/stepflow-go/stepflow/pkg/plugin"
	"github.com/stepflow-go/stepflow/pkg/profiling"
	"github.com/stepflow-go/stepflow/pkg/queue"
)

// Errors of the lifecycle.
var (
	// ErrStopped is returned by Start on a worker that was stopped: a
	// Worker runs once.
	ErrStopped = errors.New("worker: stopped")
)

// Causes of item context cancellation; they decide how an abandoned item
// is settled (see settle).
var (
	// errRunCancelled: the item's run was cancelled (or finished, or its
	// record deleted) while it ran: Term, no result.
	errRunCancelled = errors.New("run cancelled")
	// errWorkerStopping: the worker's drain timed out (or Stop's caller
	// gave up) while the item ran: Nak, another worker takes it.
	errWorkerStopping = errors.New("worker stopping")
)

// lifecycle states
const (
	stateNew = iota
	stateStarting
	stateRunning
	stateStopped
)

// Worker executes the items of active runs pulled from NATS JetStream.
// Create it with New, run it with Start and end it with Stop; see the
// package documentation for the design.
type Worker struct {
	cfg Config
	log *zap.Logger
	// unresponsive moves the connection to another NATS server when pulls
	// time out through this one (a node cut off from its cluster).
	unresponsive *queue.Unresponsive
	slots        *slots
	stats        *stats
	// epoch ends at each NATS reconnect (see sendResult).
	epoch *connEpoch
	// alone lets one item at a time run again after its component
	// server died under it (runAlone).
	alone chan struct{}

	mu        sync.Mutex
	state     int
	startedCh chan struct{}
	stoppedCh chan struct{}
	stopReq   chan struct{}
	stopOnce  sync.Once
	stopErr   error // written before stoppedCh is closed

	// workCtx is the parent of every item's context; workCancel hands
	// in-flight items back (cause errWorkerStopping).
	workCtx    context.Context
	workCancel context.CancelCauseFunc

	// Set by Start, read-only afterwards.
	nc       *nats.Conn
	js       jetstream.JetStream
	results  *resultSender
	runStore *queue.RunStore
	blobs    *queue.ObjectBlobStore
	// itemBlobs is blobs as items read and write them (their inputs, their
	// components): waiting out NATS trouble rather than failing.
	itemBlobs waitingBlobs
	flows     *flowCache
	plugins   *plugin.Plugins
	exec      *executor.Executor
	sched     *scheduler
	health    *healthServer
	pprof     *profiling.Server // nil without PprofAddr
	announce  *announcer

	watchReady atomic.Bool
	draining   atomic.Bool

	reg        *prometheus.Registry
	metrics    *workerMetrics
	registered []prometheus.Collector // unregistered by cleanup
	unregister func(prometheus.Collector) bool

	// onDrainStart, when set (tests), is called by the scheduler when it
	// has stopped fetching.
	onDrainStart func()
}

// New validates cfg (after WithDefaults) and returns a worker that is not
// started yet.
func New(cfg Config) (*Worker, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	workCtx, workCancel := context.WithCancelCause(context.Background())
	reg := cfg.Metrics
	if reg == nil {
		reg = metrics.NewRegistry()
	}
	return &Worker{
		cfg:        cfg,
		reg:        reg,
		metrics:    newWorkerMetrics(),
		workCtx:    workCtx,
		workCancel: workCancel,
		log:        cfg.Logger.Named("worker").With(zap.String("worker_id", cfg.WorkerID)),
		slots:      newSlots(cfg.Concurrency),
		stats:      newStats(),
		epoch:      newConnEpoch(),
		alone:      make(chan struct{}, 1),
		startedCh:  make(chan struct{}),
		stoppedCh:  make(chan struct{}),
		stopReq:    make(chan struct{}),
	}, nil
}

// ID returns the worker id (Config.WorkerID).
func (w *Worker) ID() string { return w.cfg.WorkerID }

// Started is closed once Start has succeeded.
func (w *Worker) Started() <-chan struct{} { return w.startedCh }

// Stopped is closed once the worker has stopped: after Stop has drained
// it, after a failed Start, or at once when Stop precedes Start.
func (w *Worker) Stopped() <-chan struct{} { return w.stoppedCh }

// PprofAddr returns the address the profile server (Config.PprofAddr)
// listens on, "" when there is none.
func (w *Worker) PprofAddr() string {
	if w.pprof == nil {
		return ""
	}
	return w.pprof.Addr()
}

// HealthAddr returns the address the health server listens on ("" when
// there is none), for HealthPort -1.
func (w *Worker) HealthAddr() string {
	if w.health == nil {
		return ""
	}
	return w.health.addr()
}

// Start connects to NATS, opens the run, flow and blob stores, starts the
// plugins (component servers) once for the whole life of the worker, and
// starts pulling items. It waits for NATS and for the coordinator to have
// provisioned the streams and buckets until ctx ends; ctx bounds startup
// only, the worker then runs until Stop. Start on a started worker is a
// no-op; on a stopped one it fails with ErrStopped.
func (w *Worker) Start(ctx context.Context) error {
	w.mu.Lock()
	switch w.state {
	case stateStarting, stateRunning:
		w.mu.Unlock()
		return nil
	case stateStopped:
		w.mu.Unlock()
		return ErrStopped
	}
	w.state = stateStarting
	w.mu.Unlock()

	// A Stop during startup (waiting for NATS, say) aborts it.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	abort := make(chan struct{})
	defer close(abort)
	go func() {
		select {
		case <-w.stopReq:
			cancel()
		case <-abort:
		}
	}()
	if err := w.start(ctx); err != nil {
		_ = w.cleanup()
		w.workCancel(ErrStopped)
		w.mu.Lock()
		w.state = stateStopped
		close(w.stoppedCh)
		w.mu.Unlock()
		return err
	}
	w.mu.Lock()
	w.state = stateRunning
	w.mu.Unlock()
	close(w.startedCh)
	go w.run()
	return nil
}

func (w *Worker) start(ctx context.Context) error {
	if err := w.registerMetrics(); err != nil {
		return err
	}
	if w.cfg.PprofAddr != "" {
		srv, err := profiling.Start(w.cfg.PprofAddr, "worker", w.log)
		if err != nil {
			return err
		}
		w.pprof = srv
	}
	if w.cfg.HealthPort != 0 {
		h, err := startHealth(w.cfg.HealthHost, w.cfg.HealthPort, w.Ready, metrics.Handler(w.reg, w.log), w.log)
		if err != nil {
			return err
		}
		w.health = h
	}
	stepCfg, err := w.loadConfig()
	if err != nil {
		return err
	}
	copts := w.cfg.NATS
	if prev := copts.Reconnected; prev != nil {
		copts.Reconnected = func() { w.epoch.next(); prev() }
	} else {
		copts.Reconnected = w.epoch.next
	}
	nc, js, err := queue.Connect(ctx, w.cfg.NATSURL, copts)
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	w.nc, w.js = nc, js
	w.results = newResultSender(w.workCtx, nc, w.epoch)
	w.unresponsive = queue.NewUnresponsive(nc, 0, w.log)
	if err := w.openStores(ctx); err != nil {
		return err
	}

	wd := w.cfg.WorkingDir
	if wd == "" {
		cwd, err := os.Getwd()
		if err != nil {
			return fmt.Errorf("worker: working directory: %w", err)
		}
		wd = stepCfg.WorkDir("", cwd)
	}
	nested := &natsRuns{nc: nc, blobs: w.blobs, slots: w.slots, timeout: w.cfg.RunsRequestTimeout, log: w.log.Named("runs")}
	plugins, err := plugin.New(ctx, stepCfg, plugin.Options{
		Blobs:      w.itemBlobs,
		Logger:     w.cfg.Logger,
		WorkingDir: wd,
		// Flows come through the API: they read files of the working
		// directory only, never the worker's own (its environment in
		// /proc/self/environ holds its credentials).
		ConfineFiles: true,
		Runs:         nested,
		Factories:    w.cfg.PluginFactories,
		// A `type: nats` plugin logs in as the worker's user.
		NATSInboxPrefix: w.cfg.NATS.InboxPrefix,
		NATSInboxKey:    w.cfg.NATS.InboxKey,
	})
	if err != nil {
		return fmt.Errorf("worker: start plugins: %w", err)
	}
	w.plugins = plugins
	w.exec = executor.New(executor.Config{Router: timedRouter{next: plugins, m: w.metrics}, Logger: w.cfg.Logger.Named("executor")})

	w.sched = newScheduler(w)
	go w.sched.loop()
	w.announce = w.startAnnouncer(ctx)
	w.log.Info("worker started", zap.Int("concurrency", w.cfg.Concurrency), zap.String("nats", nc.ConnectedUrlRedacted()),
		zap.Duration("drain_timeout", w.cfg.DrainTimeout))
	return nil
}

// loadConfig returns the stepflow config: the given one, the file, or the
// default.
func (w *Worker) loadConfig() (*config.Config, error) {
	switch {
	case w.cfg.StepflowConfig != nil:
		return w.cfg.StepflowConfig, nil
	case w.cfg.ConfigPath != "":
		c, err := config.Load(w.cfg.ConfigPath)
		if err != nil {
			return nil, fmt.Errorf("worker: %w", err)
		}
		return c, nil
	}
	return config.Default(), nil
}

// provisionRetry is the pause between attempts to open the stores while
// the coordinator has not provisioned them yet.
const provisionRetry = 500 * time.Millisecond

// openStores binds the run, flow and blob stores, waiting (until ctx
// ends) while they are not provisioned (workers never create them) and
// while JetStream does not answer (a NATS node restarting, a cluster
// forming or without quorum): a worker started then waits rather than
// exits.
func (w *Worker) openStores(ctx context.Context) error {
	logged := false
	for {
		err := w.tryOpenStores(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || (!errors.Is(err, queue.ErrNotProvisioned) && !queue.Transient(err)) {
			return fmt.Errorf("worker: %w", err)
		}
		if !logged {
			what := "waiting for the coordinator to provision the JetStream layout"
			if !errors.Is(err, queue.ErrNotProvisioned) {
				what = "waiting for NATS JetStream to answer; retrying"
			}
			w.log.Info(what, zap.Error(err))
			logged = true
		}
		t := time.NewTimer(provisionRetry)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("worker: %w: %w", context.Cause(ctx), err)
		}
	}
}

func (w *Worker) tryOpenStores(ctx context.Context) error {
	rs, err := queue.OpenRunStore(ctx, w.js)
	if err != nil {
		return err
	}
	fs, err := queue.OpenFlowStore(ctx, w.js)
	if err != nil {
		return err
	}
	opts := []queue.BlobStoreOption{
		queue.WithBlobCache(blob.NewCache(w.cfg.BlobCacheBytes)),
		// Blobs put here travel with the results (or nested runs) that
		// refer to them to the coordinator's journal (ItemResult.blobs).
		queue.WithPutTracking(0),
	}
	if !servesRemoteSDKWorkers(w.cfg.StepflowConfig) {
		// Small ones go nowhere else (the coordinator serves them). Not
		// when SDK workers on other machines use this worker's blob
		// service: they reach the workers behind one address, so a blob
		// one of them holds must be readable through any other.
		opts = append(opts, queue.WithDeferredPuts(w.nc))
	}
	bs, err := queue.OpenBlobStore(ctx, w.js, opts...)
	if err != nil {
		return err
	}
	w.runStore, w.flows, w.blobs = rs, newFlowCache(fs), bs
	w.itemBlobs = waitingBlobs{store: bs, log: w.log.Named("blobs")}
	return nil
}

// servesRemoteSDKWorkers reports a `type: nats` plugin with `listen`:
// SDK workers on other machines call this worker's blob service.
func servesRemoteSDKWorkers(cfg *config.Config) bool {
	if cfg == nil {
		return false
	}
	for _, p := range cfg.Plugins {
		if p.Type == config.TypeNATS && p.NATS != nil && p.NATS.Listen != "" {
			return true
		}
	}
	return false
}

// waitScheduler waits for the scheduler to end, logging what it still
// waits for every 10 s.
func (w *Worker) waitScheduler() {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-w.sched.done:
			return
		case <-t.C:
			st := w.sched.lastState()
			w.log.Warn("still stopping: the scheduler waits for items and pulls to end",
				zap.Bool("stopping", st.Stopping), zap.Int("in_flight", st.InFlight), zap.Int("pulls", st.Pulls), zap.Int("reserved", st.Reserved))
		}
	}
}

// run waits for Stop and shuts the worker down: stop fetching at once,
// let in-flight items finish for DrainTimeout, then cancel and hand back
// what still runs, and finally close the plugins and the connection.
func (w *Worker) run() {
	<-w.stopReq
	w.draining.Store(true)
	w.log.Info("stopping: no new items; draining in-flight items", zap.Duration("drain_timeout", w.cfg.DrainTimeout))
	t := time.NewTimer(max(w.cfg.DrainTimeout, 0))
	select {
	case <-w.sched.done:
		t.Stop()
	case <-t.C:
		w.log.Warn("drain timeout: cancelling in-flight items and handing them back")
		w.workCancel(errWorkerStopping)
		w.waitScheduler()
	}
	w.workCancel(errWorkerStopping)
	if w.results != nil {
		w.results.wait()
	}
	err := w.cleanup()
	w.log.Info("worker stopped")
	w.mu.Lock()
	w.state = stateStopped
	w.stopErr = err
	close(w.stoppedCh)
	w.mu.Unlock()
}

// cleanup closes what start opened, in reverse order: the worker leaves
// the registry first; NATS last but one, so that the naks and acks of
// drained items are flushed first.
func (w *Worker) cleanup() error {
	var errs []error
	if w.announce != nil {
		w.announce.close()
	}
	if w.plugins != nil {
		if err := w.plugins.Close(); err != nil {
			errs = append(errs, fmt.Errorf("worker: close plugins: %w", err))
		}
	}
	if w.blobs != nil && w.nc != nil {
		// Blobs no result took to the coordinator's journal are written
		// to the blob stream, in case their ids left by another way.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := w.blobs.FlushDeferred(ctx); err != nil {
			w.log.Warn("cannot store the blobs no result referred to", zap.Int("blobs", w.blobs.DeferredBlobs()), zap.Error(err))
		}
		cancel()
	}
	if w.nc != nil {
		// Not while disconnected: nothing would reach a server, and the
		// flush would only wait out its timeout.
		if !w.nc.IsConnected() {
			w.log.Warn("stopping while disconnected from NATS: acks and naks not sent yet are lost (their items are redelivered)")
		} else if err := w.nc.FlushTimeout(5 * time.Second); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			w.log.Warn("flush before close", zap.Error(err))
		}
		w.nc.Close()
	}
	if w.health != nil {
		if err := w.health.close(); err != nil {
			errs = append(errs, err)
		}
	}
	if w.pprof != nil {
		if err := w.pprof.Close(); err != nil {
			w.log.Debug("pprof server", zap.Error(err))
		}
	}
	for _, col := range w.registered {
		w.unregister(col)
	}
	return errors.Join(errs...)
}

// Stop stops fetching at once, lets in-flight items finish for
// DrainTimeout, hands back (Nak) what still runs after that, then closes
// the plugins and the NATS connection. It is idempotent, safe before
// Start (the worker then never starts), and safe to call concurrently.
// If ctx ends first, in-flight items are cancelled and handed back at
// once, and Stop returns ctx's error while the shutdown completes in the
// background (see Stopped).
func (w *Worker) Stop(ctx context.Context) error {
	w.mu.Lock()
	if w.state == stateNew {
		w.state = stateStopped
		close(w.stoppedCh)
	}
	w.mu.Unlock()
	w.stopOnce.Do(func() { close(w.stopReq) })
	select {
	case <-w.stoppedCh:
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.stopErr
	case <-ctx.Done():
		w.workCancel(errWorkerStopping)
		return ctx.Err()
	}
}

// Readiness errors.
var (
	errNotStarted = errors.New("starting")
	errDraining   = errors.New("draining")
	errNoWatch    = errors.New("not watching run records yet")
)

// isStarted reports whether Start has succeeded (the fields it sets may
// be read).
func (w *Worker) isStarted() bool {
	select {
	case <-w.startedCh:
		return true
	default:
		return false
	}
}

// Ready returns nil while the worker takes items: started, not draining,
// connected to NATS, watching run records, and every component server
// up (plugin.Plugins.Health); otherwise the reason. /readyz answers 200
// or 503 with it.
func (w *Worker) Ready() error {
	if !w.isStarted() {
		return errNotStarted
	}
	if w.draining.Load() {
		return errDraining
	}
	if st := w.nc.Status(); st != nats.CONNECTED {
		return fmt.Errorf("not connected to NATS (%s)", strings.ToLower(st.String()))
	}
	if !w.watchReady.Load() {
		return errNoWatch
	}
	var errs []error
	for _, h := range w.plugins.Health() {
		if h.Err != nil {
			errs = append(errs, h.Err)
		}
	}
	return errors.Join(errs...)
}

// ready reports whether Ready is nil.
func (w *Worker) ready() bool { return w.Ready() == nil }
