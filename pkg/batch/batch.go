// Package batch runs a flow over a JSON Lines stream of inputs on this
// machine: the engine behind `stepflow run --inputs`.
//
// Inputs are streamed, never slurped: one goroutine reads lines and hands
// raw bytes to MaxConcurrent workers, which parse, execute and encode each
// item. Results go through a reorder.Writer, so the output lists them in
// input order while memory stays bounded however far a slow item holds
// the others back. At most MaxConcurrent items are in flight at once;
// that is the seed's meaning of --max-concurrent (concurrent items), not
// upstream's concurrent step tasks.
package batch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/jsonl"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/progress"
	"github.com/stepflow-go/stepflow/pkg/reorder"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// InvalidLines says what to do with a malformed input line.
type InvalidLines int

const (
	// StopOnInvalid stops reading at the first malformed line: items
	// already read complete and their results are written, then Run
	// returns the *jsonl.LineError.
	StopOnInvalid InvalidLines = iota
	// FailInvalidItems turns each malformed line into a failed item
	// (code 400) and carries on.
	FailInvalidItems
)

// Options configures Run.
type Options struct {
	// Run is the prepared run every item executes in. Required.
	Run *executor.Run
	// Input is the JSON Lines stream. Required.
	Input io.Reader
	// Name names Input in errors (the file path, or "stdin").
	Name string
	// MaxConcurrent bounds the items in flight. Must be >= 1.
	MaxConcurrent int
	// Output receives one FlowResult JSON per line, in input order.
	Output io.Writer
	// Tracker, when set, is updated as items start and finish.
	Tracker *progress.Tracker
	// InvalidLines chooses how malformed lines are handled.
	InvalidLines InvalidLines
	// SpillDir is where early results spill when they exceed
	// MaxBufferedBytes. Default: os.TempDir().
	SpillDir string
	// MaxBufferedBytes is the in-memory budget for results waiting for
	// their turn. Default: 16 MiB.
	MaxBufferedBytes int
}

// Summary counts the items of a finished batch.
type Summary struct {
	Total     int
	Succeeded int
	Failed    int
}

// ErrConcurrency is returned for a MaxConcurrent below 1.
var ErrConcurrency = errors.New("max concurrent items must be at least 1")

type job struct {
	index int
	line  int
	data  []byte
	bad   *jsonl.LineError
}

// Run executes every item of the input and writes the results in order.
// It returns when all items read have finished and their results are
// written. A context cancelled mid-batch stops reading; items in flight
// fail with the cancellation and are written too, so what was accepted is
// never silently lost.
func Run(ctx context.Context, opts Options) (Summary, error) {
	if opts.MaxConcurrent < 1 {
		return Summary{}, ErrConcurrency
	}
	var ropts []reorder.Option
	if opts.SpillDir != "" {
		ropts = append(ropts, reorder.WithSpillDir(opts.SpillDir))
	}
	if opts.MaxBufferedBytes > 0 {
		ropts = append(ropts, reorder.WithMaxBufferedBytes(opts.MaxBufferedBytes))
	}
	out := reorder.NewWriter(opts.Output, ropts...)

	jobs := make(chan job, opts.MaxConcurrent)
	var (
		mu       sync.Mutex
		sum      Summary
		writeErr error
	)
	var wg sync.WaitGroup
	for range opts.MaxConcurrent {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf []byte
			for j := range jobs {
				if opts.Tracker != nil {
					opts.Tracker.Started()
				}
				res := execute(ctx, opts, j)
				buf = res.AppendJSON(buf[:0])
				err := out.Put(j.index, buf)
				mu.Lock()
				sum.Total++
				if res.Failed() {
					sum.Failed++
				} else {
					sum.Succeeded++
				}
				if err != nil && writeErr == nil {
					writeErr = err
				}
				mu.Unlock()
				if opts.Tracker != nil {
					opts.Tracker.Finished(!res.Failed())
				}
			}
		}()
	}

	readErr := feed(ctx, opts, jobs)
	close(jobs)
	wg.Wait()
	closeErr := out.Close()
	switch {
	case readErr != nil:
		return sum, readErr
	case writeErr != nil:
		return sum, fmt.Errorf("write results: %w", writeErr)
	case closeErr != nil:
		return sum, fmt.Errorf("write results: %w", closeErr)
	}
	return sum, nil
}

// feed reads the input and queues one job per line.
func feed(ctx context.Context, opts Options, jobs chan<- job) error {
	name := opts.Name
	r := jsonl.NewReader(opts.Input, jsonl.WithName(name))
	for {
		it, err := r.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		j := job{index: it.Index, line: it.Line}
		if err != nil {
			var le *jsonl.LineError
			if !errors.As(err, &le) {
				return fmt.Errorf("read %s: %w", name, err)
			}
			if opts.InvalidLines == StopOnInvalid {
				return le
			}
			j.index, j.line, j.bad = le.Index, le.Line, le
		} else {
			j.data = append([]byte(nil), it.Data...)
		}
		select {
		case jobs <- j:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

func execute(ctx context.Context, opts Options, j job) outcome.Result {
	if j.bad != nil {
		return outcome.Failure(&outcome.Error{Code: outcome.CodeInvalidInput, Message: j.bad.Error()})
	}
	in, err := value.Parse(j.data)
	if err != nil {
		// Already validated by the reader; kept for safety.
		return outcome.Failure(outcome.Errorf(outcome.CodeInvalidInput, "%s:%d: invalid JSON: %v", opts.Name, j.line, err))
	}
	return opts.Run.Execute(ctx, j.index, in)
}
