package worker

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/logging"
	"github.com/stepflow-go/stepflow/pkg/queue"
)

// Exit codes of Main.
const (
	// ExitOK: stopped on request after draining.
	ExitOK = 0
	// ExitFailure: the worker could not start or did not stop cleanly.
	ExitFailure = 1
	// ExitUsage: bad flags.
	ExitUsage = 2
)

// stopGrace is how long Main's Stop may take beyond the drain timeout
// (closing plugins and the connection).
const stopGrace = 15 * time.Second

// Main is the worker command: it parses args (flags, with environment
// variables as defaults), runs a worker until ctx ends (main cancels it
// on SIGINT/SIGTERM), drains it, and returns the exit code. --help
// writes to stdout; logs and errors go to stderr.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	usageOut := stderr
	for _, a := range args {
		if a == "-h" || a == "-help" || a == "--help" {
			usageOut = stdout
		}
	}
	var (
		cfg       Config
		logLevel  string
		logFormat string
	)
	fs.StringVar(&cfg.NATSURL, "nats-url", env(queue.EnvNATSURL, "nats://127.0.0.1:4222"), "NATS server URL(s), comma-separated (env "+queue.EnvNATSURL+")")
	queue.RegisterConnectFlags(fs, &cfg.NATS, os.Getenv)
	fs.StringVar(&cfg.ConfigPath, "config", env("STEPFLOW_CONFIG", ""), "stepflow-config.yml naming the component servers; default: builtins only (env STEPFLOW_CONFIG)")
	fs.IntVar(&cfg.Concurrency, "concurrency", envInt("STEPFLOW_WORKER_CONCURRENCY", DefaultConcurrency), "slots: items executed at once, across runs; a run gets at most its own --max-concurrent over all workers (env STEPFLOW_WORKER_CONCURRENCY)")
	fs.Int64Var(&cfg.BlobCacheBytes, "blob-cache-bytes", envInt64("STEPFLOW_BLOB_CACHE_BYTES", blob.DefaultCacheBytes), "memory for blobs this worker put or read, kept for get_blob; 0 or less = none (env STEPFLOW_BLOB_CACHE_BYTES)")
	fs.IntVar(&cfg.HealthPort, "health-port", envInt("STEPFLOW_HEALTH_PORT", 0), "serve /healthz, /readyz and /metrics on this port; 0 = none (env STEPFLOW_HEALTH_PORT)")
	fs.StringVar(&cfg.HealthHost, "health-host", env("STEPFLOW_HEALTH_HOST", DefaultHealthHost), "address of the health server (env STEPFLOW_HEALTH_HOST)")
	fs.StringVar(&cfg.PprofAddr, "pprof-addr", env("STEPFLOW_PPROF_ADDR", ""), `serve Go runtime profiles (/debug/pprof/, for go tool pprof) WITHOUT authentication on this host:port, e.g. 127.0.0.1:6061; "" = none (env STEPFLOW_PPROF_ADDR)`)
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", envDuration("STEPFLOW_DRAIN_TIMEOUT", DefaultDrainTimeout), "on SIGTERM, how long in-flight items may finish before they are handed back (env STEPFLOW_DRAIN_TIMEOUT)")
	fs.StringVar(&cfg.WorkerID, "worker-id", env("STEPFLOW_WORKER_ID", ""), "worker id in results and logs; default <hostname>-<pid> (env STEPFLOW_WORKER_ID)")
	fs.StringVar(&logLevel, "log-level", env("STEPFLOW_LOG_LEVEL", "info"), "log level: debug, info, warn, error (env STEPFLOW_LOG_LEVEL)")
	fs.StringVar(&logFormat, "log-format", env("STEPFLOW_LOG_FORMAT", "text"), "log format: text or json (env STEPFLOW_LOG_FORMAT)")
	fs.Usage = func() {
		fmt.Fprintln(usageOut, "Usage: worker [flags]\n\nPulls batch items from NATS JetStream and executes them against the configured component servers.\n\nFlags:")
		fs.SetOutput(usageOut)
		fs.PrintDefaults()
		fs.SetOutput(stderr)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitOK
		}
		return ExitUsage
	}
	if cfg.BlobCacheBytes == 0 {
		cfg.BlobCacheBytes = -1 // Config's zero is the default
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "Error: unexpected arguments: %v\n", fs.Args())
		return ExitUsage
	}
	log, err := logging.New(logLevel, logFormat, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "Error: %v\n", err)
		return ExitUsage
	}
	defer func() { _ = log.Sync() }()
	cfg.Logger = log

	w, err := New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "Error: %v\n", err)
		return ExitUsage
	}
	if err := w.Start(ctx); err != nil {
		if ctx.Err() != nil {
			return ExitOK // asked to stop while starting
		}
		log.Error("worker failed to start", zap.Error(err))
		return ExitFailure
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), max(w.cfg.DrainTimeout, 0)+stopGrace)
	defer cancel()
	if err := w.Stop(sctx); err != nil {
		log.Error("worker did not stop cleanly", zap.Error(err))
		return ExitFailure
	}
	return ExitOK
}

func env(key, def string) string {
	if v, ok := os.LookupEnv(key); ok && v != "" {
		return v
	}
	return def
}

func envInt(key string, def int) int {
	if v, err := strconv.Atoi(env(key, "")); err == nil {
		return v
	}
	return def
}

func envInt64(key string, def int64) int64 {
	if v, err := strconv.ParseInt(env(key, ""), 10, 64); err == nil {
		return v
	}
	return def
}

func envDuration(key string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(env(key, "")); err == nil {
		return v
	}
	return def
}
