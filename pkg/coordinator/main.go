package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/logging"
	"github.com/stepflow-go/stepflow/pkg/queue"
)

// Exit codes of Main.
const (
	ExitOK      = 0
	ExitFailure = 1
	ExitUsage   = 2
)

// stopTimeout bounds the graceful shutdown of Main.
const stopTimeout = 30 * time.Second

// Ready is the first line Main writes on stdout once the coordinator
// listens, as one JSON object: {"port":N,"natsUrl":"nats://127.0.0.1:M"}.
// Scripts and tests read it to learn the ports chosen for --port 0 and
// --nats-port 0.
type Ready struct {
	Port    int    `json:"port"`
	NATSURL string `json:"natsUrl"`
	// TLS is true when the REST API is served over HTTPS; omitted
	// otherwise, so the line is unchanged for plain HTTP.
	TLS bool `json:"tls,omitempty"`
}

// Main is the coordinator command: it parses args (without the program
// name), starts a Coordinator, writes the Ready line on stdout, logs to
// stderr, and runs until ctx ends (main cancels it on SIGINT/SIGTERM),
// then stops gracefully. It returns the process exit code.
//
// Flags (environment variable defaults in brackets):
//
//	--host        HTTP listen address; default 127.0.0.1, "0.0.0.0" = every interface [STEPFLOW_HOST]
//	--port        HTTP port, 0 = any free port; default 7840 [STEPFLOW_PORT]
//	--nats-url    NATS server URL; "" starts an embedded server [STEPFLOW_NATS_URL]
//	--nats-port   embedded NATS client port, 0 = any free port; default 4222
//	--data-dir    state directory; default ./stepflow-data [STEPFLOW_DATA_DIR]
//	--nats-replicas replicas of every stream and bucket: 1, or 3 on a
//	              NATS cluster; default 1 [STEPFLOW_NATS_REPLICAS]
//	--auth-token  bearer token required by the REST API [STEPFLOW_AUTH_TOKEN]
//	--id          this coordinator's name among those sharing NATS [STEPFLOW_COORDINATOR_ID]
//	--advertise-url  REST URL other coordinators forward to [STEPFLOW_ADVERTISE_URL]
//	--auth-token-file  file holding that token [STEPFLOW_AUTH_TOKEN_FILE]
//	--tls-cert, --tls-key  serve the REST API over HTTPS [STEPFLOW_TLS_CERT, STEPFLOW_TLS_KEY]
//	--nats-user … --nats-tls-key  NATS client credentials and TLS (queue.RegisterConnectFlags)
//	--nats-server-config … --nats-server-tls-key  make the embedded NATS
//	              server require them (queue.RegisterEmbeddedFlags)
//	--nats-sync   embedded NATS fsync: "always" (default) or an interval [STEPFLOW_NATS_SYNC]
//	--sync-results fsync the result log before answering results; default true [STEPFLOW_SYNC_RESULTS]
//	--nats-items-storage memory (default) or file [STEPFLOW_NATS_ITEMS_STORAGE]
//	--nats-replicas replicas of every stream and bucket; default 1, 3 on a cluster [STEPFLOW_NATS_REPLICAS]
//	--run-ack-wait AckWait of run consumers; default 30s [STEPFLOW_RUN_ACK_WAIT]
//	--run-max-deliver MaxDeliver of run consumers; default 5 [STEPFLOW_RUN_MAX_DELIVER]
//	--log-level   debug, info, warn or error; default info [STEPFLOW_LOG_LEVEL]
//	--pprof-addr  serve Go profiles (/debug/pprof/) unauthenticated on this
//	              host:port; default none [STEPFLOW_PPROF_ADDR]
//
// and the request limits of Config (413, 429 or 400 beyond them):
//
//	--max-body-bytes       a JSON body, one JSONL line [STEPFLOW_MAX_BODY_BYTES]
//	--max-flow-bytes       a flow, as compact JSON [STEPFLOW_MAX_FLOW_BYTES]
//	--max-items-per-run    the items of one run [STEPFLOW_MAX_ITEMS_PER_RUN]
//	--max-active-runs      top-level runs in progress [STEPFLOW_MAX_ACTIVE_RUNS]
//	--max-run-concurrency  the largest maxConcurrency [STEPFLOW_MAX_RUN_CONCURRENCY]
//
// Prefer the environment variable or a file for the token: flags are
// visible to every user of the machine in the process list. Secrets read
// from the environment are never shown as flag defaults in --help.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("coordinator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: coordinator [flags]\n\nRuns the stepflow coordinator: the /api/v1 REST API, run bookkeeping and result aggregation.\n\nFlags:")
		fs.PrintDefaults()
	}
	var envErrs []error
	envNum := func(key string, def int64) int64 {
		n, err := envInt(key, def)
		envErrs = append(envErrs, err)
		return n
	}
	portDefault := int(envNum("STEPFLOW_PORT", DefaultPort))
	var cfg Config
	fs.Int64Var(&cfg.MaxBodyBytes, "max-body-bytes", envNum("STEPFLOW_MAX_BODY_BYTES", DefaultMaxBodyBytes),
		"largest JSON request body, and largest line (item) of a JSONL upload, in bytes; 413 beyond (env STEPFLOW_MAX_BODY_BYTES)")
	fs.Int64Var(&cfg.MaxFlowBytes, "max-flow-bytes", envNum("STEPFLOW_MAX_FLOW_BYTES", DefaultMaxFlowBytes),
		"largest flow, as compact JSON, in bytes; 413 beyond (env STEPFLOW_MAX_FLOW_BYTES)")
	fs.IntVar(&cfg.MaxItemsPerRun, "max-items-per-run", int(envNum("STEPFLOW_MAX_ITEMS_PER_RUN", DefaultMaxItemsPerRun)),
		"most items of one run; a larger upload is rejected with 413 and no run (env STEPFLOW_MAX_ITEMS_PER_RUN)")
	fs.IntVar(&cfg.MaxConcurrentRuns, "max-active-runs", int(envNum("STEPFLOW_MAX_ACTIVE_RUNS", DefaultMaxConcurrentRuns)),
		"most top-level runs in progress at once; 429 with Retry-After beyond (env STEPFLOW_MAX_ACTIVE_RUNS)")
	fs.IntVar(&cfg.MaxRunConcurrency, "max-run-concurrency", int(envNum("STEPFLOW_MAX_RUN_CONCURRENCY", DefaultMaxRunConcurrency)),
		"largest maxConcurrency a run may ask for; 400 beyond (env STEPFLOW_MAX_RUN_CONCURRENCY)")
	replicasDefault := int(envNum("STEPFLOW_NATS_REPLICAS", 0))
	if err := errors.Join(envErrs...); err != nil {
		fmt.Fprintln(stderr, err)
		return ExitUsage
	}
	fs.StringVar(&cfg.Host, "host", envOr("STEPFLOW_HOST", DefaultHost), `HTTP listen address: loopback by default; "0.0.0.0" (or "") listens on every interface, for other machines and Kubernetes (env STEPFLOW_HOST)`)
	fs.IntVar(&cfg.Port, "port", portDefault, "HTTP port (0 = any free port) (env STEPFLOW_PORT)")
	fs.StringVar(&cfg.NATSURL, "nats-url", os.Getenv(queue.EnvNATSURL), `NATS server URL ("" = start an embedded NATS server in the data dir) (env `+queue.EnvNATSURL+`)`)
	fs.StringVar(&cfg.NATSHost, "nats-host", os.Getenv("STEPFLOW_NATS_HOST"), `listen address of the embedded NATS server (default 127.0.0.1; "0.0.0.0" lets workers on other machines join) (env STEPFLOW_NATS_HOST)`)
	fs.IntVar(&cfg.NATSPort, "nats-port", DefaultNATSPort, "client port of the embedded NATS server (0 = any free port)")
	fs.IntVar(&cfg.Queue.Replicas, "nats-replicas", replicasDefault, "replicas of every JetStream stream and bucket (1 on one server, 3 on a cluster, so that an acknowledged item survives the loss of a server; 0 = 1); applied at start, also to existing streams (env STEPFLOW_NATS_REPLICAS)")
	fs.StringVar(&cfg.DataDir, "data-dir", envOr("STEPFLOW_DATA_DIR", "stepflow-data"), "directory for results and state (and the embedded NATS store) (env STEPFLOW_DATA_DIR)")
	fs.StringVar(&cfg.ID, "id", os.Getenv("STEPFLOW_COORDINATOR_ID"), "name of this coordinator among those sharing NATS (default: host name and port) (env STEPFLOW_COORDINATOR_ID)")
	leaseTTL := queue.DefaultLeaseTTL
	if v := os.Getenv("STEPFLOW_LEASE_TTL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			fmt.Fprintf(stderr, "coordinator: STEPFLOW_LEASE_TTL=%q is not a duration\n", v)
			return ExitUsage
		}
		leaseTTL = d
	}
	fs.DurationVar(&cfg.Queue.LeaseTTL, "lease-ttl", leaseTTL, "how long a dead leader's lease lasts before a standby coordinator takes over (env STEPFLOW_LEASE_TTL)")
	fs.StringVar(&cfg.AdvertiseURL, "advertise-url", os.Getenv("STEPFLOW_ADVERTISE_URL"), "REST API URL other coordinators forward requests to while this one leads (default: http://<host>:<port>) (env STEPFLOW_ADVERTISE_URL)")
	tokenFile := RegisterSecurityFlags(fs, &cfg, os.Getenv)
	queue.RegisterConnectFlags(fs, &cfg.NATSConnect, os.Getenv)
	queue.RegisterEmbeddedFlags(fs, &cfg.EmbeddedNATS, os.Getenv)
	syncFlag := fs.String("nats-sync", envOr("STEPFLOW_NATS_SYNC", "always"), `fsync policy of the embedded NATS server: "always" (every write, before it is acknowledged) or an interval such as "1s" or "2m" (the nats-server default); see docs/reliability.md (env STEPFLOW_NATS_SYNC)`)
	syncResults, err := envBool("STEPFLOW_SYNC_RESULTS", true)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return ExitUsage
	}
	fs.BoolVar(&cfg.SyncResults, "sync-results", syncResults, "fsync the result log before results are acknowledged to workers (survives a power loss) (env STEPFLOW_SYNC_RESULTS)")
	itemsStorage := fs.String("nats-items-storage", envOr("STEPFLOW_NATS_ITEMS_STORAGE", "memory"), `storage of the items stream: "memory" (the default: the spools are the durable copy, and lost items are published again) or "file" (env STEPFLOW_NATS_ITEMS_STORAGE)`)
	ackWait, err := envDuration("STEPFLOW_RUN_ACK_WAIT", queue.DefaultAckWait)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return ExitUsage
	}
	fs.DurationVar(&cfg.RunAckWait, "run-ack-wait", ackWait, "AckWait of run consumers: how long an item whose worker went silent waits before redelivery (workers heartbeat every third of it) (env STEPFLOW_RUN_ACK_WAIT)")
	maxDeliver, err := envInt("STEPFLOW_RUN_MAX_DELIVER", int64(queue.DefaultMaxDeliver))
	if err != nil {
		fmt.Fprintln(stderr, err)
		return ExitUsage
	}
	fs.IntVar(&cfg.RunMaxDeliver, "run-max-deliver", int(maxDeliver), "deliveries of an item before it fails with \"exceeded its maximum deliveries\" (-1 = unlimited) (env STEPFLOW_RUN_MAX_DELIVER)")
	fs.StringVar(&cfg.PprofAddr, "pprof-addr", os.Getenv("STEPFLOW_PPROF_ADDR"), `serve Go runtime profiles (/debug/pprof/, for go tool pprof) WITHOUT authentication on this host:port, e.g. 127.0.0.1:6060; "" = none (the API serves them behind --auth-token either way) (env STEPFLOW_PPROF_ADDR)`)
	level := fs.String("log-level", envOr("STEPFLOW_LOG_LEVEL", "info"), "log level: debug, info, warn or error (env STEPFLOW_LOG_LEVEL)")
	format := fs.String("log-format", envOr("STEPFLOW_LOG_FORMAT", "json"), "log format: json or text (env STEPFLOW_LOG_FORMAT)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitOK
		}
		return ExitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "coordinator: unexpected arguments %q\n", fs.Args())
		return ExitUsage
	}
	if cfg.AuthToken, err = LoadAuthToken(cfg.AuthToken, *tokenFile); err != nil {
		fmt.Fprintf(stderr, "coordinator: %v\n", err)
		return ExitUsage
	}
	if cfg.NATSSync, err = queue.ParseSyncPolicy(*syncFlag); err != nil {
		fmt.Fprintf(stderr, "coordinator: --nats-sync: %v\n", err)
		return ExitUsage
	}
	if cfg.Queue.ItemsFileStorage, err = queue.ParseItemsStorage(*itemsStorage); err != nil {
		fmt.Fprintf(stderr, "coordinator: --nats-items-storage: %v\n", err)
		return ExitUsage
	}
	log, err := logging.New(*level, *format, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "coordinator: %v\n", err)
		return ExitUsage
	}
	defer func() { _ = log.Sync() }()
	cfg.Logger = log

	c, err := New(cfg)
	if err != nil {
		fmt.Fprintln(stderr, err) // "coordinator: invalid configuration: …"
		return ExitUsage
	}
	if err := c.Start(ctx); err != nil {
		log.Error("cannot start", zap.Error(err))
		return ExitFailure
	}
	line, _ := json.Marshal(Ready{Port: c.Port(), NATSURL: c.NATSURL(), TLS: c.TLS()})
	if _, err := fmt.Fprintf(stdout, "%s\n", line); err != nil {
		log.Error("cannot write the ready line", zap.Error(err))
	}
	select {
	case <-ctx.Done():
	case <-c.Stopped():
		log.Error("stopped: another coordinator took the leadership lease; restart to stand by")
		return ExitFailure
	}
	log.Info("shutting down", zap.NamedError("cause", context.Cause(ctx)))
	sctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	if err := c.Stop(sctx); err != nil {
		log.Error("shutdown incomplete", zap.Error(err))
		return ExitFailure
	}
	return ExitOK
}

func envOr(key, def string) string {
	if v, ok := os.LookupEnv(key); ok {
		return v
	}
	return def
}

func envInt(key string, def int64) (int64, error) {
	v, ok := os.LookupEnv(key)
	if !ok || v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return def, fmt.Errorf("coordinator: %s=%q is not an integer", key, v)
	}
	return n, nil
}

func envBool(key string, def bool) (bool, error) {
	v, ok := os.LookupEnv(key)
	if !ok || v == "" {
		return def, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("coordinator: %s=%q is not true or false", key, v)
	}
	return b, nil
}

func envDuration(key string, def time.Duration) (time.Duration, error) {
	v, ok := os.LookupEnv(key)
	if !ok || v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("coordinator: %s=%q is not a duration (such as 30s)", key, v)
	}
	return d, nil
}
