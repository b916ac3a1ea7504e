// Command stepflow runs Stepflow workflows over batches of inputs. See
// package cli for the commands.
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
	code := cli.Execute(ctx, os.Args[1:], cli.IO{})
	stop()
	os.Exit(code)
}
