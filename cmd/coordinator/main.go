// Command coordinator runs the stepflow coordinator: the /api/v1 REST API,
// run bookkeeping and result aggregation of the distributed mode. It is
// `stepflow coordinator` under a name of its own; see package cli for its
// flags.
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
	code := cli.ExecuteCoordinator(ctx, os.Args[1:], cli.IO{})
	stop()
	os.Exit(code)
}
