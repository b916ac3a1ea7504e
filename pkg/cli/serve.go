package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/coordinator"
	"github.com/stepflow-go/stepflow/pkg/gcpace"
	"github.com/stepflow-go/stepflow/pkg/metrics"
	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/worker"
)

// defaultServeDataDir is serve's default --data-dir: next to the project,
// like .git, so that two projects on one machine never share (and lock)
// one JetStream store, and so that nothing that cleans caches deletes the
// results of runs in progress.
const defaultServeDataDir = ".stepflow-data"

// serveStopTimeout bounds the shutdown of serve: the workers' drain and
// the coordinator's stop.
const serveStopTimeout = 60 * time.Second

// defaultServeWorkers is serve's default --workers. One worker with
// worker.DefaultConcurrency slots runs a run's --max-concurrent items at
// once (up to the slots) against one set of component servers; items
// mostly wait on I/O, and slots are cheap. A second worker adds a second
// set of component servers: worth it for CPU-bound Python components
// (one process uses one core), not for waiting ones.
const defaultServeWorkers = 1

type serveCmd struct {
	a                 *app
	coord             coordinator.Config
	workers           int
	workerConcurrency int
	configPath        string
	tokenFile         *string
	natsSync          string
	itemsStorage      string
}

func (a *app) serveCommand() *cobra.Command {
	s := &serveCmd{a: a}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run a coordinator and workers in one process (distributed mode on one machine)",
		Long: `Run the stepflow coordinator (the /api/v1 REST API that 'stepflow submit' and
'stepflow runs' talk to) and --workers in-process workers in one process.

With --nats-url empty, an embedded NATS server stores its state in
--data-dir; other workers ('stepflow worker --nats-url …') may join it.
--data-dir defaults to ./.stepflow-data (env STEPFLOW_DATA_DIR): state that
belongs to the directory serve runs in, kept across restarts (runs in
progress resume), never shared between two projects.

Security (docs/security.md): --auth-token(-file) and --tls-cert/--tls-key
protect the REST API; --nats-server-* make the embedded NATS server require
credentials (the in-process workers use the server's token or user, or the
--nats-* client credentials); --nats-* connect to an external NATS.

The workers start the component servers of --config (default: the
stepflow-config.yml of the current directory, else builtins only). Each
worker has --worker-concurrency slots (default 64): it runs that many items
at once over all runs, and a run has at most its --max-concurrent items in
flight, so one worker runs 'submit --max-concurrent 50' 50 items at a time.
A second worker (--workers 2) adds a second set of component servers, which
helps CPU-bound Python components, not waiting ones.

Besides the API, the HTTP port serves /healthz, /readyz (the workers
included) and /metrics (the coordinator's and the workers' metrics,
behind --auth-token like the API; see docs/operations.md), and /debug/pprof/
(Go profiles, behind the token too; --pprof-addr serves them on a port of
their own without one).

The first line on stdout is {"port":N,"natsUrl":"nats://…"} once
everything listens ("tls":true is added with --tls-cert); logs go to
stderr. SIGINT/SIGTERM drains the workers (in-flight items finish, or go
back to the queue), then stops the coordinator, and exits 0.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return s.run(cmd.Context()) },
	}
	getenv := a.io.Getenv
	port := coordinator.DefaultPort
	if v := getenv("STEPFLOW_PORT"); v != "" {
		if n, err := strconv.Atoi(v); err == nil {
			port = n
		}
	}
	fl := cmd.Flags()
	fl.StringVar(&s.coord.Host, "host", envOr(getenv, "STEPFLOW_HOST", coordinator.DefaultHost), `HTTP listen address: loopback by default; "0.0.0.0" (or "") listens on every interface, for other machines and Kubernetes (env STEPFLOW_HOST)`)
	fl.IntVar(&s.coord.Port, "port", port, "HTTP port, 0 = any free port (env STEPFLOW_PORT)")
	fl.StringVar(&s.coord.NATSURL, "nats-url", getenv(queue.EnvNATSURL), `NATS server URL; "" starts an embedded server (env `+queue.EnvNATSURL+`)`)
	fl.StringVar(&s.coord.NATSHost, "nats-host", getenv("STEPFLOW_NATS_HOST"), `listen address of the embedded NATS server (default 127.0.0.1) (env STEPFLOW_NATS_HOST)`)
	fl.IntVar(&s.coord.NATSPort, "nats-port", coordinator.DefaultNATSPort, "client port of the embedded NATS server, 0 = any free port")
	fl.StringVar(&s.coord.DataDir, "data-dir", envOr(getenv, "STEPFLOW_DATA_DIR", defaultServeDataDir), "directory for results and state, and the embedded NATS store (env STEPFLOW_DATA_DIR)")
	s.tokenFile = coordinator.RegisterSecurityFlags(fl, &s.coord, getenv)
	queue.RegisterConnectFlags(fl, &s.coord.NATSConnect, getenv)
	queue.RegisterEmbeddedFlags(fl, &s.coord.EmbeddedNATS, getenv)
	fl.StringVar(&s.natsSync, "nats-sync", envOr(getenv, "STEPFLOW_NATS_SYNC", "always"), `fsync policy of the embedded NATS server: "always" or an interval such as "2m" (env STEPFLOW_NATS_SYNC); see docs/reliability.md`)
	fl.BoolVar(&s.coord.SyncResults, "sync-results", getenv("STEPFLOW_SYNC_RESULTS") != "false", "fsync the result log before results are acknowledged to workers (survives a power loss) (env STEPFLOW_SYNC_RESULTS)")
	fl.StringVar(&s.itemsStorage, "nats-items-storage", envOr(getenv, "STEPFLOW_NATS_ITEMS_STORAGE", "memory"), `storage of the items stream: "memory" (the spools are the durable copy, and lost items are published again) or "file" (env STEPFLOW_NATS_ITEMS_STORAGE)`)
	// The coordinator's limits and delivery settings, with the same names
	// and environment variables as `coordinator`.
	envI := func(key string, def int) int {
		if n, err := strconv.Atoi(getenv(key)); err == nil {
			return n
		}
		return def
	}
	fl.Int64Var(&s.coord.MaxBodyBytes, "max-body-bytes", int64(envI("STEPFLOW_MAX_BODY_BYTES", coordinator.DefaultMaxBodyBytes)), "largest JSON request body, and largest line (item) of a JSONL upload, in bytes; 413 beyond (env STEPFLOW_MAX_BODY_BYTES)")
	fl.Int64Var(&s.coord.MaxFlowBytes, "max-flow-bytes", int64(envI("STEPFLOW_MAX_FLOW_BYTES", coordinator.DefaultMaxFlowBytes)), "largest flow, as compact JSON, in bytes; 413 beyond (env STEPFLOW_MAX_FLOW_BYTES)")
	fl.IntVar(&s.coord.MaxItemsPerRun, "max-items-per-run", envI("STEPFLOW_MAX_ITEMS_PER_RUN", coordinator.DefaultMaxItemsPerRun), "most items of one run; a larger upload is rejected with 413 and no run (env STEPFLOW_MAX_ITEMS_PER_RUN)")
	fl.IntVar(&s.coord.MaxConcurrentRuns, "max-active-runs", envI("STEPFLOW_MAX_ACTIVE_RUNS", coordinator.DefaultMaxConcurrentRuns), "most top-level runs in progress at once; 429 with Retry-After beyond (env STEPFLOW_MAX_ACTIVE_RUNS)")
	fl.IntVar(&s.coord.MaxRunConcurrency, "max-run-concurrency", envI("STEPFLOW_MAX_RUN_CONCURRENCY", coordinator.DefaultMaxRunConcurrency), "largest maxConcurrency a run may ask for; 400 beyond (env STEPFLOW_MAX_RUN_CONCURRENCY)")
	ackWait := queue.DefaultAckWait
	if d, err := time.ParseDuration(getenv("STEPFLOW_RUN_ACK_WAIT")); err == nil {
		ackWait = d
	}
	fl.DurationVar(&s.coord.RunAckWait, "run-ack-wait", ackWait, "AckWait of run consumers: how long an item whose worker went silent waits before redelivery (env STEPFLOW_RUN_ACK_WAIT)")
	var blobsTTL time.Duration
	if d, err := time.ParseDuration(getenv("STEPFLOW_BLOBS_TTL")); err == nil {
		blobsTTL = d
	}
	fl.DurationVar(&s.coord.Queue.BlobsTTL, "blobs-ttl", blobsTTL, "how long blobs are kept, in the coordinator's blob journal (<data-dir>/blob-journal) and in the blob stream (0 = for ever); blobs are content-addressed, so one that expires is gone for every run that refers to it (env STEPFLOW_BLOBS_TTL)")
	fl.IntVar(&s.coord.RunMaxDeliver, "run-max-deliver", envI("STEPFLOW_RUN_MAX_DELIVER", queue.DefaultMaxDeliver), "deliveries of an item before it fails with \"exceeded its maximum deliveries\" (-1 = unlimited) (env STEPFLOW_RUN_MAX_DELIVER)")
	fl.StringVar(&s.coord.PprofAddr, "pprof-addr", getenv("STEPFLOW_PPROF_ADDR"), `serve Go runtime profiles of the whole process (coordinator and workers; /debug/pprof/, for go tool pprof) WITHOUT authentication on this host:port, e.g. 127.0.0.1:6060; "" = none (the API serves them behind --auth-token either way) (env STEPFLOW_PPROF_ADDR)`)
	fl.IntVar(&s.workers, "workers", defaultServeWorkers, "in-process workers, each with its own component servers (0 = coordinator only)")
	fl.IntVar(&s.workerConcurrency, "worker-concurrency", envI("STEPFLOW_WORKER_CONCURRENCY", worker.DefaultConcurrency), "slots of each worker: items it executes at once, across runs; a run gets at most its --max-concurrent over all workers (env STEPFLOW_WORKER_CONCURRENCY)")
	fl.StringVar(&s.configPath, "config", "", "stepflow-config.yml of the workers' component servers (default: found in the current directory)")
	return cmd
}

func (s *serveCmd) run(ctx context.Context) error {
	if s.workers < 0 {
		return usageErr("--workers must not be negative, got %d", s.workers)
	}
	if s.workerConcurrency < 1 {
		return usageErr("--worker-concurrency must be at least 1, got %d", s.workerConcurrency)
	}
	policy, err := queue.ParseSyncPolicy(s.natsSync)
	if err != nil {
		return usageErr("--nats-sync: %v", err)
	}
	s.coord.NATSSync = policy
	if s.coord.Queue.ItemsFileStorage, err = queue.ParseItemsStorage(s.itemsStorage); err != nil {
		return usageErr("--nats-items-storage: %v", err)
	}
	log := s.a.log
	raiseProcs(log)
	defer gcpace.Start(gcpace.DefaultHeadroom, log)()
	var stepCfg *config.Config
	if s.workers > 0 {
		if stepCfg, err = discoverConfig(s.configPath, ""); err != nil {
			return failure(fmt.Errorf("config: %w", err))
		}
	}
	// One registry for the whole process: the coordinator's /metrics
	// shows the coordinator's metrics and every in-process worker's
	// (labelled worker=<id>); /readyz also waits for the workers.
	reg := metrics.NewRegistry()
	var started atomic.Pointer[[]*worker.Worker]
	cfg := s.coord
	cfg.Logger = log
	cfg.Metrics = reg
	cfg.ReadyCheck = func() error { return workersReady(started.Load(), s.workers) }
	if cfg.AuthToken, err = coordinator.LoadAuthToken(cfg.AuthToken, *s.tokenFile); err != nil {
		return usageErr("%v", err)
	}
	c, err := coordinator.New(cfg)
	if err != nil {
		return usageErr("%v", err)
	}
	if err := c.Start(ctx); err != nil {
		_ = c.Stop(context.Background())
		return failure(fmt.Errorf("start the coordinator: %w", err))
	}
	workers, err := s.startWorkers(ctx, c, stepCfg, reg)
	if err != nil {
		s.shutdown(workers, c)
		return failure(err)
	}
	started.Store(&workers)
	line, _ := json.Marshal(coordinator.Ready{Port: c.Port(), NATSURL: c.NATSURL(), TLS: c.TLS()})
	if _, err := fmt.Fprintf(s.a.io.Stdout, "%s\n", line); err != nil {
		log.Error("cannot write the ready line", zap.Error(err))
	}
	log.Info("serving", zap.String("url", c.URL()), zap.String("nats", c.NATSURL()), zap.Int("workers", len(workers)))
	c = keepCoordinator(ctx, c, cfg, log)
	log.Info("shutting down", zap.NamedError("cause", context.Cause(ctx)))
	if err := s.shutdown(workers, c); err != nil {
		return failure(err)
	}
	return nil
}

// startWorkers starts the in-process workers, each with its own NATS
// connection (in-process to an embedded server, with the coordinator's
// credentials) and component servers.
func (s *serveCmd) startWorkers(ctx context.Context, c *coordinator.Coordinator, stepCfg *config.Config, reg *prometheus.Registry) ([]*worker.Worker, error) {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "serve"
	}
	natsURL, nopts := c.NATSURL(), s.coord.NATSConnect
	if e := c.EmbeddedNATS(); e != nil {
		natsURL = e.InProcessURL()
		nopts = s.coord.EmbeddedNATS.ClientAuth(nopts).WithoutTLS()
		nopts.InProcess = e
	}
	var workers []*worker.Worker
	for i := range s.workers {
		w, err := worker.New(worker.Config{
			NATSURL:        natsURL,
			NATS:           nopts,
			StepflowConfig: stepCfg,
			Concurrency:    s.workerConcurrency,
			WorkerID:       fmt.Sprintf("%s-%d-w%d", host, os.Getpid(), i),
			Version:        Version,
			Logger:         s.a.log,
			Metrics:        reg,
		})
		if err != nil {
			return workers, fmt.Errorf("worker %d: %w", i, err)
		}
		workers = append(workers, w)
		if err := w.Start(ctx); err != nil {
			return workers, fmt.Errorf("start worker %d: %w", i, err)
		}
	}
	return workers, nil
}

// workersReady is serve's part of the coordinator's /readyz: every
// in-process worker ready (nil started: they are still starting).
func workersReady(started *[]*worker.Worker, want int) error {
	if want == 0 {
		return nil
	}
	if started == nil {
		return errors.New("workers starting")
	}
	for _, w := range *started {
		if err := w.Ready(); err != nil {
			return fmt.Errorf("worker %s: %w", w.ID(), err)
		}
	}
	return nil
}

// shutdown drains the workers (in parallel), then stops the coordinator.
func (s *serveCmd) shutdown(workers []*worker.Worker, c *coordinator.Coordinator) error {
	ctx, cancel := context.WithTimeout(context.Background(), serveStopTimeout)
	defer cancel()
	errs := make([]error, len(workers)+1)
	var wg sync.WaitGroup
	for i, w := range workers {
		wg.Go(func() {
			if err := w.Stop(ctx); err != nil {
				errs[i] = fmt.Errorf("stop worker %s: %w", w.ID(), err)
			}
		})
	}
	wg.Wait()
	if err := c.Stop(ctx); err != nil {
		errs[len(workers)] = err
	}
	return errors.Join(errs...)
}

// minServeProcs is the least GOMAXPROCS serve runs with.
const minServeProcs = 4

// raiseProcs runs serve with at least minServeProcs Ps unless GOMAXPROCS
// is set. Its threads spend much of their time blocked in fsync and file
// writes (the coordinator's group commits, the embedded server's stores),
// and a P blocked in a syscall is handed to other goroutines only when the
// runtime notices; with two Ps the other core idles meanwhile. On two
// cores, 4 Ps ran the examples/hello batch 25-40% faster in the same
// series (docs/bench-upstream.md).
func raiseProcs(log *zap.Logger) {
	if os.Getenv("GOMAXPROCS") != "" || runtime.GOMAXPROCS(0) >= minServeProcs {
		return
	}
	prev := runtime.GOMAXPROCS(minServeProcs)
	log.Debug("GOMAXPROCS raised", zap.Int("from", prev), zap.Int("to", minServeProcs))
}
