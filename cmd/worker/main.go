// Command worker is a stepflow-go worker: it pulls batch items from NATS
// JetStream and executes them against local component servers. See
// package worker for the design and the flags.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/stepflow-go/stepflow/pkg/worker"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := worker.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
