package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/progress"
)

// follow waits for a run, showing its progress like `stepflow run`, then
// writes its results: the FlowResult in single mode, JSON Lines otherwise.
func (s *submitCmd) follow(ctx context.Context, c *apiClient, rt *retrier, runID string, single bool) error {
	stderr := s.a.io.Stderr
	tracker := &progress.Tracker{}
	mode := progressMode(s.quiet, s.progressMode, stderr)
	if single {
		mode = progress.ModeQuiet
	}
	rep := progress.NewReporter(stderr, tracker, progress.WithMode(mode))
	rep.Start(ctx)
	final, err := waitRun(ctx, c, rt, runID, &countsMapper{t: tracker})
	rep.Stop()
	if err != nil {
		if ctx.Err() != nil {
			return failure(fmt.Errorf("interrupted; run %s goes on: follow it with `stepflow submit --attach %s`", runID, runID))
		}
		return failure(fmt.Errorf("follow run %s: %w", runID, err))
	}
	s.a.log.Info("run finished", zap.String("run", runID), zap.String("status", final.Status),
		zap.Int("completed", final.Items.Completed), zap.Int("failed", final.Items.Failed))
	if final.Error != "" {
		return failure(fmt.Errorf("run %s failed: %s", runID, final.Error))
	}

	if single {
		var buf bytes.Buffer
		if _, err := download(ctx, c, rt, final, &buf); err != nil {
			return failure(fmt.Errorf("download results of run %s: %w", runID, err))
		}
		if buf.Len() == 0 {
			return failure(fmt.Errorf("run %s (%s) has no result", runID, final.Status))
		}
		res, err := writeSingleResult(s.a.io.Stdout, s.flags.output, buf.Bytes())
		if err != nil {
			return failure(err)
		}
		if res.Failed() {
			return errItemsFailed
		}
		return nil
	}

	if err := s.writeBatch(ctx, c, rt, final); err != nil {
		return failure(err)
	}
	if s.flags.output != "" && !s.quiet {
		fmt.Fprintf(stderr, "Results written to %s\n", s.flags.output)
	}
	switch {
	case final.Status == "cancelled":
		return failure(fmt.Errorf("run %s was cancelled (%d of %d items have a result)", runID,
			final.Items.Completed+final.Items.Failed, final.Items.Total))
	case final.Items.Failed+final.Items.Cancelled > 0:
		return errItemsFailed
	}
	return nil
}

// writeBatch downloads the results to --output or stdout.
func (s *submitCmd) writeBatch(ctx context.Context, c *apiClient, rt *retrier, final runSummary) (err error) {
	out := s.a.io.Stdout
	if s.flags.output != "" {
		fh, err := os.Create(s.flags.output)
		if err != nil {
			return fmt.Errorf("create output: %w", err)
		}
		defer func() {
			if cerr := fh.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("write results: %w", cerr)
			}
		}()
		out = fh
	}
	bw := bufio.NewWriterSize(out, 256<<10)
	if _, err := download(ctx, c, rt, final, bw); err != nil {
		return fmt.Errorf("download results of run %s: %w", final.RunID, err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}

// waitRun follows the run's event stream until its done event, feeding
// the counts to m, reconnecting (from the last event id) while rt allows.
// It returns the final summary.
func waitRun(ctx context.Context, c *apiClient, rt *retrier, runID string, m *countsMapper) (runSummary, error) {
	var lastID string
	var final runSummary
	for {
		done := false
		err := c.events(ctx, runID, lastID, func(ev sseEvent) error {
			rt.ok()
			if ev.ID != "" {
				lastID = ev.ID
			}
			switch ev.Event {
			case "counts", "done":
				var sum runSummary
				if err := json.Unmarshal(ev.Data, &sum); err != nil {
					return fmt.Errorf("malformed %s event: %w", ev.Event, err)
				}
				m.apply(sum.Items)
				if ev.Event == "done" {
					final, done = sum, true
				}
			}
			return nil
		})
		if err == nil && done {
			return final, nil
		}
		if err == nil {
			err = &transportError{op: "follow events", err: errStreamEnded}
		}
		if werr := rt.wait(ctx, err); werr != nil {
			return final, werr
		}
	}
}

// countsMapper turns the coordinator's item statistics (absolute counts)
// into the Tracker's increments.
type countsMapper struct {
	t                   *progress.Tracker
	started, ok, failed int
}

func (m *countsMapper) apply(s itemStats) {
	m.t.SetTotal(int64(s.Total))
	bad := s.Failed + s.Cancelled
	for started := s.Completed + bad + s.Running; m.started < started; m.started++ {
		m.t.Started()
	}
	for ; m.ok < s.Completed; m.ok++ {
		m.t.Finished(true)
	}
	for ; m.failed < bad; m.failed++ {
		m.t.Finished(false)
	}
}

// download copies the run's JSONL results to w, streaming (memory is
// bounded by the longest line). Only complete lines are written, so
// when the connection breaks the download resumes at the first item not
// written: the line count is the item index when every item has a result
// (a completed or failed run). A cancelled run's results have gaps; its
// download restarts only if nothing was written yet. It returns the
// number of lines written.
func download(ctx context.Context, c *apiClient, rt *retrier, final runSummary, w io.Writer) (int, error) {
	resumable := final.Items.Completed+final.Items.Failed == final.Items.Total
	lines := 0
	buf := make([]byte, 64<<10)
	var pending []byte
	attempt := func() error {
		body, err := c.items(ctx, final.RunID, lines)
		if err != nil {
			return err
		}
		defer body.Close()
		pending = pending[:0]
		for {
			n, rerr := body.Read(buf)
			if n > 0 {
				chunk := buf[:n]
				if i := bytes.LastIndexByte(chunk, '\n'); i >= 0 {
					if len(pending) > 0 {
						if _, err := w.Write(pending); err != nil {
							return &writeError{err}
						}
						pending = pending[:0]
					}
					if _, err := w.Write(chunk[:i+1]); err != nil {
						return &writeError{err}
					}
					lines += bytes.Count(chunk[:i+1], []byte{'\n'})
					chunk = chunk[i+1:]
				}
				pending = append(pending, chunk...)
			}
			switch {
			case errors.Is(rerr, io.EOF):
				if len(pending) > 0 {
					return &transportError{op: "download results", err: io.ErrUnexpectedEOF}
				}
				return nil
			case rerr != nil:
				if ctx.Err() != nil {
					return context.Cause(ctx)
				}
				return &transportError{op: "download results", err: rerr}
			}
		}
	}
	for {
		err := attempt()
		if err == nil {
			break
		}
		if !resumable && lines > 0 {
			return lines, fmt.Errorf("%w (the results of a cancelled run cannot be resumed; run `stepflow runs items %s` again)", err, final.RunID)
		}
		if werr := rt.wait(ctx, err); werr != nil {
			return lines, werr
		}
	}
	rt.ok()
	if resumable && lines != final.Items.Total {
		return lines, fmt.Errorf("got %d results of %d items", lines, final.Items.Total)
	}
	return lines, nil
}

// writeError is a failure to write the output: never retried.
type writeError struct{ err error }

func (e *writeError) Error() string { return "write results: " + e.err.Error() }

func (e *writeError) Unwrap() error { return e.err }
