package coordinator

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/queue"
)

// Publish window: how many items of a run may be on the work queue
// (published and without a result) at once. The rest wait in the run's
// spool, so the JetStream server holds a window per run, not a batch.
const (
	// minPublishWindow keeps workers busy between refills: the window is
	// refilled as results are committed, so it must cover several commits.
	minPublishWindow = 4096
	// maxPublishWindow bounds a run with a huge concurrency.
	maxPublishWindow = 1 << 16
	// publishRetryDelay is the first pause after a failed publish; it
	// doubles up to publishRetryMax.
	publishRetryDelay = 100 * time.Millisecond
	publishRetryMax   = 10 * time.Second
)

// publishWindow is the window of a run with concurrency conc: four times
// its concurrency, within [minPublishWindow, maxPublishWindow], or
// Config.PublishWindow when set.
func (c *Coordinator) publishWindow(conc int) int {
	if c.cfg.PublishWindow > 0 {
		return c.cfg.PublishWindow
	}
	return min(max(4*conc, minPublishWindow), maxPublishWindow)
}

// startPublisher starts feeding the run's spool to the work queue from
// index from; resumed says the run was published to before (by a
// coordinator that stopped or died), so items may have results already.
// A stopping coordinator starts nothing: the next one resumes from the
// record's items_published.
func (c *Coordinator) startPublisher(st *runState, from int, resumed bool) {
	if from >= st.total {
		return
	}
	path := filepath.Join(st.dir, spoolFileName)
	if _, err := os.Stat(path); err != nil {
		c.log.Error("the run's item spool is missing; its unpublished items cannot run (cancel the run)",
			zap.String("run", st.id), zap.Int("published", from), zap.Int("items", st.total), zap.Error(err))
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pubClosed {
		return
	}
	st.mu.Lock()
	if st.status != statusRunning {
		st.mu.Unlock()
		return // finished meanwhile (terminate stops the publisher after marking the run)
	}
	ctx, cancel := context.WithCancel(c.ctx)
	done := make(chan struct{})
	st.pubStop, st.pubDone = cancel, done
	st.mu.Unlock()
	c.pubWG.Add(1)
	go func() {
		defer c.pubWG.Done()
		defer close(done)
		defer cancel()
		c.publish(ctx, st, path, from, resumed)
	}()
}

// stopPublisher stops the run's publisher and waits for it.
func (st *runState) stopPublisher() {
	st.mu.Lock()
	stop, done := st.pubStop, st.pubDone
	st.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
}

// publish feeds the spool to the queue, keeping at most a window of the
// run's items on it; it retries failed publishes with backoff until the
// spool is on the queue or ctx ends.
func (c *Coordinator) publish(ctx context.Context, st *runState, path string, from int, resumed bool) {
	log := c.log.With(zap.String("run", st.id))
	delay := publishRetryDelay
	st.resetFrontier(from)
	for from < st.total {
		var spoolErr error
		items := func(yield func(int, []byte) bool) {
			spoolErr = readSpool(path, from, func(index int, data []byte) (bool, error) {
				for {
					skip, publish, wait := st.admit(index, resumed, c.publishWindow)
					switch {
					case skip:
						return true, nil // finished before a restart
					case publish:
						return yield(index, data), nil
					}
					select {
					case <-wait:
					case <-ctx.Done():
						return false, nil
					}
				}
			})
		}
		_, err := queue.PublishItems(ctx, c.js, st.id, items, queue.PublishItemsOptions{
			From: from, Encoded: true, Logger: log,
			Progress: st.setPublished, Generation: st.generation(),
		})
		if spoolErr != nil {
			log.Error("cannot read the run's item spool; its unpublished items cannot run (cancel the run)", zap.Error(spoolErr))
			return
		}
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			st.setPublished(st.total)
			log.Debug("every item is on the queue")
			// The record learns it after a pause, or with the next
			// counters the aggregator writes: a short run finishes
			// first (its end stops this publisher) and needs no write
			// that would compete with its result's fsync. A record that
			// lags only makes a restart publish again what it already
			// had, which the queue's duplicate window and "first result
			// per index wins" absorb.
			t := time.NewTimer(countsEvery)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			c.flushCounts(ctx, st)
			return
		}
		var pe *queue.PublishError
		if errors.As(err, &pe) {
			from = pe.ResumeFrom
		}
		resumed = true
		log.Warn("publishing items failed; retrying", zap.Int("from", from), zap.Duration("in", delay), zap.Error(err))
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		delay = min(2*delay, publishRetryMax)
	}
}
