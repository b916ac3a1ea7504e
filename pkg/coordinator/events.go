package coordinator

import (
	"bufio"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/runs"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// countsInterval is the shortest gap between two counts events of one
// stream: results may be committed every few milliseconds.
const countsInterval = 100 * time.Millisecond

// handleEvents streams a run's progress as server-sent events:
//
//	event: counts   data: RunSummary (status and item statistics), on every change
//	event: item     data: {"itemIndex","status","outcome","completedAt"}, one per item
//	                result in completion order; id = position in the run's result log
//	event: done     data: the final RunSummary; then the stream ends
//
// Item events are read from the run's result store, not from a buffer in
// memory, so a slow client misses nothing and costs nothing; a client that
// reconnects with Last-Event-ID continues after the last item it saw.
func (c *Coordinator) handleEvents(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	runID := r.PathValue("runId")
	st, rec, err := c.ensureAttached(ctx, runID)
	if err != nil {
		c.writeError(w, r, err)
		return
	}
	if rec == nil {
		if rec, err = c.getRecord(ctx, runID); err != nil {
			c.writeError(w, r, err)
			return
		}
	}
	var from int64
	if s := r.Header.Get("Last-Event-ID"); s != "" {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil && n >= 0 {
			from = n
		}
	}
	committed := int64(-1)
	if st != nil {
		_, _, _, committed = st.snapshot()
	}
	rd, err := openResultReader(c.runDir(runID), committed)
	if err != nil {
		c.writeError(w, r, err)
		return
	}
	defer rd.close()

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	bw := bufio.NewWriterSize(w, 16<<10)
	send := func(event, id string, data []byte) {
		if id != "" {
			_, _ = bw.WriteString("id: " + id + "\n")
		}
		_, _ = bw.WriteString("event: " + event + "\ndata: ")
		_, _ = bw.Write(data)
		_, _ = bw.WriteString("\n\n")
	}
	flush := func() bool {
		if err := bw.Flush(); err != nil {
			return false
		}
		return rc.Flush() == nil
	}

	var lastCounts []byte
	var lastSent time.Time
	var buf []byte
	for {
		var changes, done <-chan struct{}
		finished := st == nil
		if st != nil {
			changes, done = st.changes(), st.done
			_, _, status, committed := st.snapshot()
			rd.setLimit(committed)
			finished = status != statusRunning
		}
		next, err := rd.scan(from, func(res *resultRecord, next int64) error {
			buf = appendItemEvent(buf[:0], res)
			send("item", strconv.FormatInt(next, 10), buf)
			return nil
		})
		from = next
		if err != nil {
			c.log.Warn("event stream: reading results", zap.String("run", runID), zap.Error(err))
		}
		if finished {
			if st != nil {
				// The run's status changes before its record is
				// written: wait for the record (done), to report it.
				select {
				case <-done:
				case <-ctx.Done():
					return
				}
			}
			if final := st.finalRecord(); final != nil {
				rec = final
			} else if final, err := c.getRecord(ctx, runID); err == nil {
				rec = final
			}
			data := value.Marshal(summary(rec, c.countsOf(ctx, rec)))
			if string(data) != string(lastCounts) {
				send("counts", "", data)
			}
			send("done", "", data)
			flush()
			return
		}
		if wait := countsInterval - time.Since(lastSent); wait > 0 && lastCounts != nil {
			// Rate-limit counts; items were sent already.
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-done:
			case <-ctx.Done():
				t.Stop()
				return
			}
			t.Stop()
		}
		// The counters of the run's state, not of the record read when
		// the stream opened (nor of a lookup of the state, which the run
		// leaves when it finishes).
		n := itemCounts{Total: int(rec.GetItemTotal())}
		n.Completed, n.Failed, _, _ = st.snapshot()
		if data := value.Marshal(summary(rec, c.liveCounts(ctx, runID, n))); string(data) != string(lastCounts) {
			send("counts", "", data)
			lastCounts, lastSent = data, time.Now()
		}
		if !flush() {
			return
		}
		select {
		case <-changes:
		case <-done:
		case <-ctx.Done():
			return
		}
	}
}

// appendItemEvent appends the data of an item event.
func appendItemEvent(buf []byte, res *resultRecord) []byte {
	buf = append(buf, `{"itemIndex":`...)
	buf = strconv.AppendInt(buf, int64(res.Index), 10)
	buf = append(buf, `,"status":`...)
	buf = value.AppendString(buf, itemStatus(res))
	buf = append(buf, `,"outcome":`...)
	if res.Failed {
		buf = append(buf, `"failed"`...)
	} else {
		buf = append(buf, `"success"`...)
	}
	buf = append(buf, `,"completedAt":`...)
	buf = value.AppendString(buf, runs.Timestamp(res.CompletedAt))
	return append(buf, '}')
}
