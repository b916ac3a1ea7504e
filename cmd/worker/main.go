// Command worker is a stepflow-go worker: it pulls batch items from NATS
// JetStream and executes them against local component servers. It is
// `stepflow worker` under a name of its own; see package cli for its
// flags and package worker for the design.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/stepflow-go/stepflow/pkg/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.ExecuteWorker(ctx, os.Args[1:], cli.IO{})
	stop()
	os.Exit(code)
}
