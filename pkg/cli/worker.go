package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/gcpace"
	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/worker"
)

// stopGrace is how long the worker's Stop may take beyond the drain
// timeout (closing plugins and the connection); deploy/k8s/check
// compares it with the pods' grace period.
const stopGrace = 15 * time.Second

type workerCmd struct {
	a        *app
	cfg      worker.Config
	inboxKey bool
	envErr   error
}

// workerCommand is `stepflow worker`, also run by bin/worker (cmd/worker)
// as a command of its own.
func (a *app) workerCommand() *cobra.Command {
	w := &workerCmd{a: a}
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run a worker of the distributed mode: pull batch items from NATS and execute them",
		Long: `Run a stepflow worker: it pulls batch items from NATS JetStream and executes
them against the component servers of --config, for the runs that a
coordinator ('stepflow coordinator', bin/coordinator, or 'stepflow serve')
created. Every flag takes its default from the environment variable it
names.

Logs go to stderr. SIGINT/SIGTERM stops pulling at once, lets in-flight
items finish for --drain-timeout, hands back the rest, and exits 0.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return w.run(cmd.Context()) },
	}
	env := &envDefaults{lookup: a.io.LookupEnv}
	cfg := &w.cfg
	fl := cmd.Flags()
	fl.StringVar(&cfg.NATSURL, "nats-url", env.str(queue.EnvNATSURL, "nats://127.0.0.1:4222"), "NATS server URL(s), comma-separated (env "+queue.EnvNATSURL+")")
	queue.RegisterConnectFlags(fl, &cfg.NATS, a.io.Getenv)
	fl.BoolVar(&w.inboxKey, "nats-inbox-key", env.boolean(queue.EnvNATSInboxKey, false), "sign in to NATS with a user nkey made at start, next to --nats-user and its password, and take replies under <inbox prefix>.<its public key> only: the coordinator's NATS auth callout (deploy/k8s/base/nats/auth-callout.conf) lets no other worker read them (env "+queue.EnvNATSInboxKey+")")
	fl.StringVar(&cfg.ConfigPath, "config", env.str("STEPFLOW_CONFIG", ""), "stepflow-config.yml naming the component servers; default: builtins only (env STEPFLOW_CONFIG)")
	fl.IntVar(&cfg.Concurrency, "concurrency", env.integer("STEPFLOW_WORKER_CONCURRENCY", worker.DefaultConcurrency), "slots: items executed at once, across runs; a run gets at most its own --max-concurrent over all workers (env STEPFLOW_WORKER_CONCURRENCY)")
	fl.Int64Var(&cfg.BlobCacheBytes, "blob-cache-bytes", env.int64("STEPFLOW_BLOB_CACHE_BYTES", blob.DefaultCacheBytes), "memory for blobs this worker put or read, kept for get_blob; 0 or less = none (env STEPFLOW_BLOB_CACHE_BYTES)")
	fl.IntVar(&cfg.HealthPort, "health-port", env.integer("STEPFLOW_HEALTH_PORT", 0), "serve /healthz, /readyz and /metrics on this port; 0 = none (env STEPFLOW_HEALTH_PORT)")
	fl.StringVar(&cfg.HealthHost, "health-host", env.str("STEPFLOW_HEALTH_HOST", worker.DefaultHealthHost), "address of the health server (env STEPFLOW_HEALTH_HOST)")
	fl.StringVar(&cfg.PprofAddr, "pprof-addr", env.str("STEPFLOW_PPROF_ADDR", ""), `serve Go runtime profiles (/debug/pprof/, for go tool pprof) WITHOUT authentication on this host:port, e.g. 127.0.0.1:6061; "" = none (env STEPFLOW_PPROF_ADDR)`)
	fl.DurationVar(&cfg.DrainTimeout, "drain-timeout", env.duration("STEPFLOW_DRAIN_TIMEOUT", worker.DefaultDrainTimeout), "on SIGTERM, how long in-flight items may finish before they are handed back (env STEPFLOW_DRAIN_TIMEOUT)")
	fl.StringVar(&cfg.WorkerID, "worker-id", env.str("STEPFLOW_WORKER_ID", ""), "worker id in results and logs; default <hostname>-<pid> (env STEPFLOW_WORKER_ID)")
	w.envErr = env.err()
	return cmd
}

func (w *workerCmd) run(ctx context.Context) error {
	if w.envErr != nil {
		return w.envErr
	}
	cfg := w.cfg
	if cfg.BlobCacheBytes == 0 {
		cfg.BlobCacheBytes = -1 // Config's zero is the default
	}
	if w.inboxKey {
		kp, err := queue.NewInboxKey()
		if err != nil {
			return failure(err)
		}
		cfg.NATS.InboxKey = kp
	}
	cfg.Version = Version
	cfg.Logger = w.a.log
	defer gcpace.Start(gcpace.DefaultHeadroom, w.a.log)()
	wk, err := worker.New(cfg)
	if err != nil {
		return usageErr("%v", err)
	}
	if err := wk.Start(ctx); err != nil {
		if ctx.Err() != nil {
			return nil // asked to stop while starting
		}
		return failure(fmt.Errorf("worker failed to start: %w", err))
	}
	<-ctx.Done()
	drain := cfg.DrainTimeout
	if drain == 0 {
		drain = worker.DefaultDrainTimeout
	}
	sctx, cancel := context.WithTimeout(context.Background(), max(drain, 0)+stopGrace)
	defer cancel()
	if err := wk.Stop(sctx); err != nil {
		return failure(fmt.Errorf("worker did not stop cleanly: %w", err))
	}
	return nil
}
