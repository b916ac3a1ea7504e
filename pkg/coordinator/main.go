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
}

// Main is the coordinator command: it parses args (without the program
// name), starts a Coordinator, writes the Ready line on stdout, logs to
// stderr, and runs until ctx ends (main cancels it on SIGINT/SIGTERM),
// then stops gracefully. It returns the process exit code.
//
// Flags (environment variable defaults in brackets):
//
//	--host        HTTP listen address, "" = every interface [STEPFLOW_HOST]
//	--port        HTTP port, 0 = any free port; default 7840 [STEPFLOW_PORT]
//	--nats-url    NATS server URL; "" starts an embedded server [STEPFLOW_NATS_URL]
//	--nats-port   embedded NATS client port, 0 = any free port; default 4222
//	--data-dir    state directory; default ./stepflow-data [STEPFLOW_DATA_DIR]
//	--auth-token  bearer token required by the REST API [STEPFLOW_AUTH_TOKEN]
//	--nats-sync   embedded NATS fsync: "always" (default) or an interval [STEPFLOW_NATS_SYNC]
//	--sync-results fsync the result store before acking results; default true [STEPFLOW_SYNC_RESULTS]
//	--nats-replicas replicas of every stream and bucket; default 1, 3 on a cluster [STEPFLOW_NATS_REPLICAS]
//	--run-ack-wait AckWait of run consumers; default 30s [STEPFLOW_RUN_ACK_WAIT]
//	--run-max-deliver MaxDeliver of run consumers; default 5 [STEPFLOW_RUN_MAX_DELIVER]
//	--log-level   debug, info, warn or error; default info [STEPFLOW_LOG_LEVEL]
//
// Prefer the environment variable for the token: flags are visible to
// every user of the machine in the process list.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("coordinator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: coordinator [flags]\n\nRuns the stepflow coordinator: the /api/v1 REST API, run bookkeeping and result aggregation.\n\nFlags:")
		fs.PrintDefaults()
	}
	portDefault, err := envInt("STEPFLOW_PORT", DefaultPort)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return ExitUsage
	}
	var cfg Config
	fs.StringVar(&cfg.Host, "host", os.Getenv("STEPFLOW_HOST"), `HTTP listen address ("" = every interface)`)
	fs.IntVar(&cfg.Port, "port", portDefault, "HTTP port (0 = any free port)")
	fs.StringVar(&cfg.NATSURL, "nats-url", os.Getenv("STEPFLOW_NATS_URL"), `NATS server URL ("" = start an embedded NATS server in the data dir)`)
	fs.IntVar(&cfg.NATSPort, "nats-port", DefaultNATSPort, "client port of the embedded NATS server (0 = any free port)")
	fs.StringVar(&cfg.DataDir, "data-dir", envOr("STEPFLOW_DATA_DIR", "stepflow-data"), "directory for results and state (and the embedded NATS store)")
	fs.StringVar(&cfg.AuthToken, "auth-token", os.Getenv("STEPFLOW_AUTH_TOKEN"), "bearer token required by the REST API (prefer STEPFLOW_AUTH_TOKEN)")
	syncFlag := fs.String("nats-sync", envOr("STEPFLOW_NATS_SYNC", "always"), `fsync policy of the embedded NATS server: "always" (every write, before it is acknowledged) or an interval such as "1s" or "2m" (the nats-server default); see docs/reliability.md`)
	syncResults, err := envBool("STEPFLOW_SYNC_RESULTS", true)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return ExitUsage
	}
	fs.BoolVar(&cfg.SyncResults, "sync-results", syncResults, "fsync the result store before results are acknowledged (survives a power loss)")
	replicas, err := envInt("STEPFLOW_NATS_REPLICAS", queue.DefaultReplicas)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return ExitUsage
	}
	fs.IntVar(&cfg.Queue.Replicas, "nats-replicas", replicas, "replicas of every stream and bucket (1 to 5): 3 on a NATS cluster, so that an acknowledged item survives the loss of a server")
	ackWait, err := envDuration("STEPFLOW_RUN_ACK_WAIT", queue.DefaultAckWait)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return ExitUsage
	}
	fs.DurationVar(&cfg.RunAckWait, "run-ack-wait", ackWait, "AckWait of run consumers: how long an item whose worker went silent waits before redelivery (workers heartbeat every third of it)")
	maxDeliver, err := envInt("STEPFLOW_RUN_MAX_DELIVER", queue.DefaultMaxDeliver)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return ExitUsage
	}
	fs.IntVar(&cfg.RunMaxDeliver, "run-max-deliver", maxDeliver, "deliveries of an item before it fails with \"exceeded its maximum deliveries\" (-1 = unlimited)")
	level := fs.String("log-level", envOr("STEPFLOW_LOG_LEVEL", "info"), "log level: debug, info, warn or error")
	format := fs.String("log-format", envOr("STEPFLOW_LOG_FORMAT", "json"), "log format: json or text")
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
	if cfg.NATSSync, err = queue.ParseSyncPolicy(*syncFlag); err != nil {
		fmt.Fprintf(stderr, "coordinator: --nats-sync: %v\n", err)
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
		fmt.Fprintf(stderr, "coordinator: %v\n", err)
		return ExitUsage
	}
	if err := c.Start(ctx); err != nil {
		log.Error("cannot start", zap.Error(err))
		return ExitFailure
	}
	line, _ := json.Marshal(Ready{Port: c.Port(), NATSURL: c.NATSURL()})
	if _, err := fmt.Fprintf(stdout, "%s\n", line); err != nil {
		log.Error("cannot write the ready line", zap.Error(err))
	}
	<-ctx.Done()
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

func envInt(key string, def int) (int, error) {
	v, ok := os.LookupEnv(key)
	if !ok || v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("coordinator: %s=%q is not an integer", key, v)
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
