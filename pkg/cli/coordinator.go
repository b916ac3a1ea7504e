package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/coordinator"
	"github.com/stepflow-go/stepflow/pkg/gcpace"
	"github.com/stepflow-go/stepflow/pkg/natsauth"
	"github.com/stepflow-go/stepflow/pkg/queue"
)

// stopTimeout bounds the graceful shutdown of `stepflow coordinator`
// (deploy/k8s/check compares it with the pods' grace period).
const stopTimeout = 30 * time.Second

type coordinatorCmd struct {
	a            *app
	cfg          coordinator.Config
	tokenFile    *string
	natsSync     string
	itemsStorage string
	// calloutSeed is --nats-auth-callout-issuer-seed.
	calloutSeed string
	envErr      error
}

// The environment variables of the auth callout flags.
const (
	envCalloutSeed           = "STEPFLOW_NATS_AUTH_CALLOUT_ISSUER_SEED"
	envCalloutAccount        = "STEPFLOW_NATS_AUTH_CALLOUT_ACCOUNT"
	envCalloutWorkerPassword = "STEPFLOW_NATS_AUTH_CALLOUT_WORKER_PASSWORD"
)

// coordinatorCommand is `stepflow coordinator`, also run by bin/coordinator
// (cmd/coordinator) as a command of its own.
func (a *app) coordinatorCommand() *cobra.Command {
	c := &coordinatorCmd{a: a}
	cmd := &cobra.Command{
		Use:   "coordinator",
		Short: "Run the coordinator of the distributed mode: the REST API, run bookkeeping and result aggregation",
		Long: `Run the stepflow coordinator: the /api/v1 REST API that 'stepflow submit'
and 'stepflow runs' talk to, run bookkeeping and result aggregation. Workers
('stepflow worker', bin/worker) connect to the same NATS server.

With --nats-url empty, an embedded NATS server stores its state in
--data-dir; --host 0.0.0.0 and --nats-host 0.0.0.0 serve other machines.
Every flag takes its default from the environment variable it names.
Prefer the environment variable or --auth-token-file for the token: flags
are visible to every user of the machine in the process list; secrets
read from the environment are never shown as defaults in --help.

The first line on stdout is {"port":N,"natsUrl":"nats://…"} once the
coordinator listens ("tls":true is added with --tls-cert); scripts read it
to learn the ports chosen for --port 0 and --nats-port 0. Logs go to
stderr. SIGINT/SIGTERM stops it gracefully and exits 0.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return c.run(cmd.Context(), cmd.OutOrStdout()) },
	}
	env := &envDefaults{lookup: a.io.LookupEnv}
	cfg := &c.cfg
	fl := cmd.Flags()
	fl.StringVar(&cfg.Host, "host", env.lookupStr("STEPFLOW_HOST", coordinator.DefaultHost), `HTTP listen address: loopback by default; "0.0.0.0" (or "") listens on every interface, for other machines and Kubernetes (env STEPFLOW_HOST)`)
	fl.IntVar(&cfg.Port, "port", env.integer("STEPFLOW_PORT", coordinator.DefaultPort), "HTTP port (0 = any free port) (env STEPFLOW_PORT)")
	fl.StringVar(&cfg.NATSURL, "nats-url", a.io.Getenv(queue.EnvNATSURL), `NATS server URL ("" = start an embedded NATS server in the data dir) (env `+queue.EnvNATSURL+`)`)
	fl.StringVar(&cfg.NATSHost, "nats-host", env.str("STEPFLOW_NATS_HOST", ""), `listen address of the embedded NATS server (default 127.0.0.1; "0.0.0.0" lets workers on other machines join) (env STEPFLOW_NATS_HOST)`)
	fl.IntVar(&cfg.NATSPort, "nats-port", coordinator.DefaultNATSPort, "client port of the embedded NATS server (0 = any free port)")
	fl.IntVar(&cfg.Queue.Replicas, "nats-replicas", env.integer("STEPFLOW_NATS_REPLICAS", 0), "replicas of every JetStream stream and bucket (1 on one server, 3 on a cluster, so that an acknowledged item survives the loss of a server; 0 = 1); applied at start, also to existing streams (env STEPFLOW_NATS_REPLICAS)")
	fl.StringVar(&cfg.DataDir, "data-dir", env.lookupStr("STEPFLOW_DATA_DIR", "stepflow-data"), "directory for results and state (and the embedded NATS store) (env STEPFLOW_DATA_DIR)")
	fl.StringVar(&cfg.ID, "id", env.str("STEPFLOW_COORDINATOR_ID", ""), "name of this coordinator among those sharing NATS (default: host name and port) (env STEPFLOW_COORDINATOR_ID)")
	fl.DurationVar(&cfg.Queue.BlobsTTL, "blobs-ttl", env.duration("STEPFLOW_BLOBS_TTL", 0), "how long blobs are kept, in the coordinator's blob journal (<data-dir>/blob-journal) and in the blob stream (0 = for ever); blobs are content-addressed, so one that expires is gone for every run that refers to it (env STEPFLOW_BLOBS_TTL)")
	fl.DurationVar(&cfg.Queue.LeaseTTL, "lease-ttl", env.duration("STEPFLOW_LEASE_TTL", queue.DefaultLeaseTTL), "how long a dead leader's lease lasts before a standby coordinator takes over (env STEPFLOW_LEASE_TTL)")
	fl.StringVar(&cfg.AdvertiseURL, "advertise-url", env.str("STEPFLOW_ADVERTISE_URL", ""), "REST API URL other coordinators forward requests to while this one leads (default: http://<host>:<port>) (env STEPFLOW_ADVERTISE_URL)")
	c.tokenFile = coordinator.RegisterSecurityFlags(fl, cfg, a.io.Getenv)
	queue.RegisterConnectFlags(fl, &cfg.NATSConnect, a.io.Getenv)
	queue.RegisterEmbeddedFlags(fl, &cfg.EmbeddedNATS, a.io.Getenv)
	fl.StringVar(&c.calloutSeed, "nats-auth-callout-issuer-seed", "", "answer the NATS server's auth callout, signing with this account seed (SA...), whose public key is the server's auth_callout issuer: workers log in as user worker with --nats-inbox-key, and none can read another's replies (deploy/k8s/base/nats/auth-callout.conf); prefer the env variable (env "+envCalloutSeed+")")
	c.calloutSeed = a.io.Getenv(envCalloutSeed)
	fl.StringVar(&cfg.AuthCallout.Account, "nats-auth-callout-account", env.str(envCalloutAccount, "STEPFLOW"), "account the auth callout places workers in: the coordinator's own (env "+envCalloutAccount+")")
	fl.StringVar(&cfg.AuthCallout.WorkerPassword, "nats-auth-callout-worker-password", "", "password the auth callout takes from workers; prefer the env variable (env "+envCalloutWorkerPassword+")")
	cfg.AuthCallout.WorkerPassword = a.io.Getenv(envCalloutWorkerPassword)
	fl.StringVar(&c.natsSync, "nats-sync", env.lookupStr("STEPFLOW_NATS_SYNC", "always"), `fsync policy of the embedded NATS server: "always" (every write, before it is acknowledged) or an interval such as "1s" or "2m" (the nats-server default); see docs/reliability.md (env STEPFLOW_NATS_SYNC)`)
	fl.BoolVar(&cfg.SyncResults, "sync-results", env.boolean("STEPFLOW_SYNC_RESULTS", true), "fsync the result log before results are acknowledged to workers (survives a power loss) (env STEPFLOW_SYNC_RESULTS)")
	fl.StringVar(&c.itemsStorage, "nats-items-storage", env.lookupStr("STEPFLOW_NATS_ITEMS_STORAGE", "memory"), `storage of the items stream: "memory" (the default: the spools are the durable copy, and lost items are published again) or "file" (env STEPFLOW_NATS_ITEMS_STORAGE)`)
	fl.DurationVar(&cfg.RunAckWait, "run-ack-wait", env.duration("STEPFLOW_RUN_ACK_WAIT", queue.DefaultAckWait), "AckWait of run consumers: how long an item whose worker went silent waits before redelivery (workers heartbeat every third of it) (env STEPFLOW_RUN_ACK_WAIT)")
	fl.IntVar(&cfg.RunMaxDeliver, "run-max-deliver", env.integer("STEPFLOW_RUN_MAX_DELIVER", queue.DefaultMaxDeliver), "deliveries of an item before it fails with \"exceeded its maximum deliveries\" (-1 = unlimited) (env STEPFLOW_RUN_MAX_DELIVER)")
	fl.StringVar(&cfg.PprofAddr, "pprof-addr", env.str("STEPFLOW_PPROF_ADDR", ""), `serve Go runtime profiles (/debug/pprof/, for go tool pprof) WITHOUT authentication on this host:port, e.g. 127.0.0.1:6060; "" = none (the API serves them behind --auth-token either way) (env STEPFLOW_PPROF_ADDR)`)
	// The request limits of coordinator.Config (413, 429 or 400 beyond).
	fl.Int64Var(&cfg.MaxBodyBytes, "max-body-bytes", env.int64("STEPFLOW_MAX_BODY_BYTES", coordinator.DefaultMaxBodyBytes),
		"largest JSON request body, and largest line (item) of a JSONL upload, in bytes; 413 beyond (env STEPFLOW_MAX_BODY_BYTES)")
	fl.Int64Var(&cfg.MaxFlowBytes, "max-flow-bytes", env.int64("STEPFLOW_MAX_FLOW_BYTES", coordinator.DefaultMaxFlowBytes),
		"largest flow, as compact JSON, in bytes; 413 beyond (env STEPFLOW_MAX_FLOW_BYTES)")
	fl.IntVar(&cfg.MaxItemsPerRun, "max-items-per-run", env.integer("STEPFLOW_MAX_ITEMS_PER_RUN", coordinator.DefaultMaxItemsPerRun),
		"most items of one run; a larger upload is rejected with 413 and no run (env STEPFLOW_MAX_ITEMS_PER_RUN)")
	fl.IntVar(&cfg.MaxConcurrentRuns, "max-active-runs", env.integer("STEPFLOW_MAX_ACTIVE_RUNS", coordinator.DefaultMaxConcurrentRuns),
		"most top-level runs in progress at once; 429 with Retry-After beyond (env STEPFLOW_MAX_ACTIVE_RUNS)")
	fl.IntVar(&cfg.MaxRunConcurrency, "max-run-concurrency", env.integer("STEPFLOW_MAX_RUN_CONCURRENCY", coordinator.DefaultMaxRunConcurrency),
		"largest maxConcurrency a run may ask for; 400 beyond (env STEPFLOW_MAX_RUN_CONCURRENCY)")
	c.envErr = env.err()
	return cmd
}

func (c *coordinatorCmd) run(ctx context.Context, stdout io.Writer) error {
	if c.envErr != nil {
		return c.envErr
	}
	cfg := c.cfg
	var err error
	if cfg.AuthToken, err = coordinator.LoadAuthToken(cfg.AuthToken, *c.tokenFile); err != nil {
		return usageErr("%v", err)
	}
	if cfg.NATSSync, err = queue.ParseSyncPolicy(c.natsSync); err != nil {
		return usageErr("--nats-sync: %v", err)
	}
	if cfg.Queue.ItemsFileStorage, err = queue.ParseItemsStorage(c.itemsStorage); err != nil {
		return usageErr("--nats-items-storage: %v", err)
	}
	if c.calloutSeed != "" {
		if cfg.AuthCallout.Issuer, err = natsauth.ParseIssuer(c.calloutSeed); err != nil {
			return usageErr("--nats-auth-callout-issuer-seed: %v", err)
		}
		if cfg.AuthCallout.WorkerPassword == "" {
			return usageErr("--nats-auth-callout-issuer-seed needs the workers' password (%s)", envCalloutWorkerPassword)
		}
	}
	log := c.a.log
	cfg.Logger = log
	defer gcpace.Start(gcpace.DefaultHeadroom, log)()
	co, err := coordinator.New(cfg)
	if err != nil {
		return usageErr("%v", err) // "coordinator: invalid configuration: …"
	}
	if err := co.Start(ctx); err != nil {
		_ = co.Stop(context.Background())
		return failure(fmt.Errorf("start the coordinator: %w", err))
	}
	line, _ := json.Marshal(coordinator.Ready{Port: co.Port(), NATSURL: co.NATSURL(), TLS: co.TLS()})
	if _, err := fmt.Fprintf(stdout, "%s\n", line); err != nil {
		log.Error("cannot write the ready line", zap.Error(err))
	}
	co = keepCoordinator(ctx, co, cfg, log)
	log.Info("shutting down", zap.NamedError("cause", context.Cause(ctx)))
	sctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	if err := co.Stop(sctx); err != nil {
		return failure(fmt.Errorf("shutdown incomplete: %w", err))
	}
	return nil
}

// keepCoordinator returns once ctx ends, with the coordinator running
// then. A coordinator that stepped down (another took its leadership
// lease) is replaced at once by a new one on the same port, which stands
// by and competes for the lease again: the command never exits for it.
func keepCoordinator(ctx context.Context, co *coordinator.Coordinator, cfg coordinator.Config, log *zap.Logger) *coordinator.Coordinator {
	cfg.Port = co.Port()
	for {
		select {
		case <-ctx.Done():
			return co
		case <-co.Stopped():
		}
		log.Warn("the coordinator stepped down; starting again as a standby", zap.Bool("lost_leadership", co.LostLeadership()), zap.Int("port", cfg.Port))
		for attempt := 0; ; attempt++ {
			next, err := coordinator.New(cfg) // cfg was valid before
			if err == nil {
				if err = next.Start(ctx); err == nil {
					co = next
					break
				}
				_ = next.Stop(context.Background())
			}
			if ctx.Err() != nil {
				return co // stopped; Stop is idempotent
			}
			log.Error("cannot start the coordinator again; retrying", zap.Error(err))
			select {
			case <-ctx.Done():
				return co
			case <-time.After(time.Second):
			}
		}
	}
}
