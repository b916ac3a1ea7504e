package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

// runsCmd is `stepflow runs`: the runs of a coordinator.
type runsCmd struct {
	a      *app
	remote remoteFlags
}

func (a *app) runsCommand() *cobra.Command {
	r := &runsCmd{a: a}
	cmd := &cobra.Command{
		Use:   "runs",
		Short: "List, inspect, download, cancel and scale the runs of a coordinator",
		Long: `Manage the runs of a stepflow coordinator (distributed mode, see 'stepflow serve').

  runs list                 the runs, newest first (--status, --parent, --format table|json)
  runs get RUN_ID           a run's details (JSON)
  runs items RUN_ID         a run's results, one FlowResult per line in input order
  runs cancel RUN_ID        stop a run: queued items are dropped, running ones stopped
  runs scale RUN_ID N       change how many of the run's items may run at once

Every subcommand takes --url and --token (env STEPFLOW_URL, STEPFLOW_TOKEN).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	r.remote.register(cmd.PersistentFlags(), a.io.Getenv)
	cmd.AddCommand(r.listCommand(), r.getCommand(), r.itemsCommand(), r.cancelCommand(), r.scaleCommand())
	return cmd
}

// with runs fn with a client and a retrier.
func (r *runsCmd) with(ctx context.Context, fn func(*apiClient, *retrier) error) error {
	c, err := r.remote.client()
	if err != nil {
		return err
	}
	defer c.close()
	return fn(c, &retrier{timeout: r.remote.retryTimeout, stderr: r.a.io.Stderr, log: r.a.log})
}

// printRaw writes a JSON answer and a newline.
func (r *runsCmd) printRaw(raw json.RawMessage) error {
	_, err := fmt.Fprintf(r.a.io.Stdout, "%s\n", raw)
	return err
}

func (r *runsCmd) listCommand() *cobra.Command {
	var status, parent, format string
	var limit int
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List runs, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "table" && format != "json" {
				return usageErr("--format must be table or json, got %q", format)
			}
			if limit < 0 {
				return usageErr("--limit must not be negative")
			}
			ctx := cmd.Context()
			return r.with(ctx, func(c *apiClient, rt *retrier) error {
				type listed struct {
					runs []runSummary
					raw  json.RawMessage
				}
				l, err := retry(ctx, rt, func() (listed, error) {
					runs, raw, err := c.listRuns(ctx, listFilter{Status: status, Parent: parent, Limit: limit})
					return listed{runs, raw}, err
				})
				if err != nil {
					return failure(fmt.Errorf("list runs: %w", err))
				}
				if format == "json" {
					return r.printRaw(l.raw)
				}
				return printRunTable(r.a.io.Stdout, l.runs)
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&status, "status", "", "only runs with this status: running, completed, failed, cancelled or paused")
	fl.StringVar(&parent, "parent", "", "only the child runs of this run")
	fl.IntVar(&limit, "limit", 0, "at most this many runs (default: the coordinator's, 100)")
	fl.StringVar(&format, "format", "table", "table or json (the API's {\"runs\":[RunSummary…]})")
	return cmd
}

// printRunTable writes runs as an aligned table.
func printRunTable(w io.Writer, runs []runSummary) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "RUN ID\tFLOW\tSTATUS\tDONE\tFAILED\tCONCURRENCY\tCREATED")
	for _, s := range runs {
		name := s.FlowName
		if name == "" {
			name = shortID(s.FlowID)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%d\t%d\t%s\n", s.RunID, name, s.Status,
			s.Items.Completed+s.Items.Failed+s.Items.Cancelled, s.Items.Total, s.Items.Failed, s.MaxConcurrency, s.CreatedAt)
	}
	return tw.Flush()
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func (r *runsCmd) getCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "get RUN_ID",
		Short: "Print a run's details as JSON",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			return r.with(ctx, func(c *apiClient, rt *retrier) error {
				raw, err := retry(ctx, rt, func() (json.RawMessage, error) {
					_, raw, err := c.getRun(ctx, args[0])
					return raw, err
				})
				if err != nil {
					return failure(fmt.Errorf("run %s: %w", args[0], err))
				}
				return r.printRaw(raw)
			})
		},
	}
	return cmd
}

func (r *runsCmd) itemsCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "items RUN_ID",
		Short: "Write a run's results as JSON Lines (the items that have one, in input order)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			return r.with(ctx, func(c *apiClient, rt *retrier) error {
				sum, err := retry(ctx, rt, func() (runSummary, error) {
					sum, _, err := c.getRun(ctx, args[0])
					return sum, err
				})
				if err != nil {
					return failure(fmt.Errorf("run %s: %w", args[0], err))
				}
				if !sum.finished() {
					// Results so far; their count is not the item count.
					sum.Items.Total = -1
				}
				return r.writeItems(ctx, c, rt, sum, output)
			})
		},
	}
	cmd.Flags().StringVar(&output, "output", "", "write the results to this file instead of stdout")
	return cmd
}

func (r *runsCmd) writeItems(ctx context.Context, c *apiClient, rt *retrier, sum runSummary, output string) (err error) {
	out := r.a.io.Stdout
	if output != "" {
		fh, err := os.Create(output)
		if err != nil {
			return failure(fmt.Errorf("create output: %w", err))
		}
		defer func() {
			if cerr := fh.Close(); cerr != nil && err == nil {
				err = failure(fmt.Errorf("write results: %w", cerr))
			}
		}()
		out = fh
	}
	bw := bufio.NewWriterSize(out, 256<<10)
	if _, err := download(ctx, c, rt, sum, bw); err != nil {
		return failure(fmt.Errorf("download results of run %s: %w", sum.RunID, err))
	}
	if err := bw.Flush(); err != nil {
		return failure(fmt.Errorf("write results: %w", err))
	}
	return nil
}

func (r *runsCmd) cancelCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cancel RUN_ID",
		Short: "Cancel a run and print its summary",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			return r.with(ctx, func(c *apiClient, rt *retrier) error {
				raw, err := retry(ctx, rt, func() (json.RawMessage, error) { return c.cancelRun(ctx, args[0]) })
				if err != nil {
					return failure(fmt.Errorf("cancel run %s: %w", args[0], err))
				}
				return r.printRaw(raw)
			})
		},
	}
	return cmd
}

func (r *runsCmd) scaleCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "scale RUN_ID N",
		Short: "Set how many of a run's items may execute at once (its maxConcurrency)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := strconv.Atoi(args[1])
			if err != nil || n < 1 {
				return usageErr("scale: N must be an integer of at least 1, got %q", args[1])
			}
			ctx := cmd.Context()
			return r.with(ctx, func(c *apiClient, rt *retrier) error {
				raw, err := retry(ctx, rt, func() (json.RawMessage, error) { return c.scaleRun(ctx, args[0], n) })
				if err != nil {
					return failure(fmt.Errorf("scale run %s: %w", args[0], err))
				}
				return r.printRaw(raw)
			})
		},
	}
	return cmd
}
