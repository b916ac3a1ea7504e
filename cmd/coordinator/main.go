// Command coordinator runs the stepflow coordinator: the /api/v1 REST API,
// run bookkeeping and result aggregation of the distributed mode. See
// package coordinator for its flags and design.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/stepflow-go/stepflow/pkg/coordinator"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := coordinator.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
