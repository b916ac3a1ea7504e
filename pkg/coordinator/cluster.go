package coordinator

import (
	"cmp"
	"net/http"
	"slices"
	"time"

	"github.com/stepflow-go/stepflow/pkg/queue"
	"github.com/stepflow-go/stepflow/pkg/runs"
	"github.com/stepflow-go/stepflow/pkg/value"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// Cluster view settings.
const (
	// defaultClusterRecent is how many finished runs GET /cluster lists
	// besides every unfinished one (?recent= changes it).
	defaultClusterRecent = 10
	// staleHeartbeats is how many heartbeat intervals a worker may miss
	// before the cluster view marks it stale.
	staleHeartbeats = 2
	// slowFactor: a worker whose mean item duration exceeds slowFactor
	// times the fleet's median (and the median by at least slowMargin)
	// is marked slow.
	slowFactor = 2
	// slowMargin keeps sub-millisecond noise from marking workers slow:
	// items of 0.1ms against 0.3ms are not a slow worker.
	slowMargin = 50 * time.Millisecond
)

// handleCluster answers GET /api/v1/cluster: what an operator needs to see
// how far each run has got, what is stuck, which worker is slow and
// whether the stream is backing up, in one request (`stepflow top` and
// the runs page poll it):
//
//	time       the coordinator's clock
//	streams    STEPFLOW_ITEMS: messages, bytes,
//	           consumers, first/last sequence, oldestAt (oldest message)
//	consumers  each run consumer: runId, numPending (queued),
//	           numAckPending (in flight), numRedelivered, maxAckPending,
//	           numWaiting (waiting pulls), lastDelivered
//	workers    the worker registry: slots, busy per run, items done,
//	           recent mean/p95 duration, lastHeartbeat, stale, slow
//	runs       RunSummary of every unfinished run and the ?recent= (10)
//	           newest finished ones, plus lastResultAt for running runs
//
// Sections that cannot be read (NATS trouble) are empty and named in
// "errors"; the answer is still 200 so that a dashboard keeps showing
// the rest.
func (c *Coordinator) handleCluster(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	recent, err := intParam(r.URL.Query().Get("recent"), defaultClusterRecent)
	if err != nil {
		c.writeError(w, r, err)
		return
	}
	now := time.Now()
	errs := []value.Value{}
	fail := func(section string, err error) {
		errs = append(errs, value.ObjectOf("section", section, "message", err.Error()))
	}

	streams := []value.Value{}
	if ss, err := queue.Streams(ctx, c.js); err != nil {
		fail("streams", err)
	} else {
		for _, s := range ss {
			o := value.ObjectOf(
				"name", s.Name,
				"messages", value.Int(int64(s.Messages)),
				"bytes", value.Int(int64(s.Bytes)),
				"consumers", value.Int(int64(s.Consumers)),
				"firstSeq", value.Int(int64(s.FirstSeq)),
				"lastSeq", value.Int(int64(s.LastSeq)),
			)
			o.Set("oldestAt", timestampOrNil(s.FirstTime))
			streams = append(streams, o)
		}
	}

	consumers := []value.Value{}
	byRun := map[string]*queue.ConsumerStats{}
	cs, err := queue.RunConsumers(ctx, c.js)
	if err != nil {
		fail("consumers", err)
	}
	for i := range cs {
		s := &cs[i]
		byRun[s.RunID] = s
		o := value.ObjectOf(
			"name", s.Name,
			"runId", s.RunID,
			"numPending", value.Int(int64(s.NumPending)),
			"numAckPending", value.Int(int64(s.NumAckPending)),
			"numRedelivered", value.Int(int64(s.NumRedelivered)),
			"maxAckPending", value.Int(int64(s.MaxAckPending)),
			"numWaiting", value.Int(int64(s.NumWaiting)),
		)
		o.Set("lastDelivered", timestampOrNil(s.LastDelivered))
		consumers = append(consumers, o)
	}

	workers := []value.Value{}
	if ws, err := queue.ListWorkers(ctx, c.js); err != nil {
		fail("workers", err)
	} else {
		for _, wv := range workerViews(ws, now) {
			workers = append(workers, wv.value())
		}
	}

	runList := []value.Value{}
	if recs, err := c.listRecords(ctx); err != nil {
		fail("runs", err)
	} else {
		sortNewestFirst(recs)
		finished := 0
		for _, rec := range recs {
			if queue.Terminal(rec.GetStatus()) {
				if finished >= recent {
					continue
				}
				finished++
			}
			var s *queue.ConsumerStats
			if rec.GetStatus() == statusRunning {
				s = byRun[rec.GetRunId()]
			}
			o := summary(rec, c.countsWith(rec, s))
			if st := c.active(rec.GetRunId()); st != nil {
				o.Set("lastResultAt", timestampOrNil(st.lastResult()))
			}
			runList = append(runList, o)
		}
	}

	out := value.ObjectOf(
		"time", runs.Timestamp(now),
		"streams", streams,
		"consumers", consumers,
		"workers", workers,
		"runs", runList,
	)
	if len(errs) > 0 {
		out.Set("errors", errs)
	}
	writeJSON(w, http.StatusOK, out)
}

func timestampOrNil(t time.Time) value.Value {
	if t.IsZero() {
		return nil
	}
	return runs.Timestamp(t)
}

// workerView is one worker of the cluster view.
type workerView struct {
	st    *stepflowv1.WorkerStatus
	last  time.Time
	age   time.Duration
	stale bool
	slow  bool
}

// workerViews judges the registry's workers: stale when the last
// heartbeat is older than staleHeartbeats intervals; slow when the mean
// item duration of its recent window exceeds slowFactor times the fleet
// median (the lower median of the fresh workers that finished items
// recently, so that with two workers the slower one can stand out) by
// at least slowMargin.
func workerViews(ws []queue.WorkerEntry, now time.Time) []workerView {
	out := make([]workerView, len(ws))
	var means []time.Duration
	for i, e := range ws {
		last := e.Received
		if last.IsZero() {
			last = e.Status.GetHeartbeatAt().AsTime()
		}
		every := cmp.Or(e.Status.GetHeartbeatInterval().AsDuration(), 5*time.Second)
		age := max(now.Sub(last), 0)
		out[i] = workerView{st: e.Status, last: last, age: age, stale: age > staleHeartbeats*every}
		if !out[i].stale && e.Status.GetWindowItems() > 0 {
			means = append(means, e.Status.GetMeanDuration().AsDuration())
		}
	}
	if len(means) < 2 {
		return out
	}
	slices.Sort(means)
	median := means[(len(means)-1)/2]
	for i := range out {
		st := out[i].st
		mean := st.GetMeanDuration().AsDuration()
		out[i].slow = !out[i].stale && st.GetWindowItems() > 0 && mean > slowFactor*median && mean-median >= slowMargin
	}
	return out
}

func ms(d time.Duration) value.Number { return value.Float(float64(d.Microseconds()) / 1000) }

func (wv workerView) value() *value.Object {
	st := wv.st
	busy := value.NewObject(len(st.GetRunBusy()))
	ids := make([]string, 0, len(st.GetRunBusy()))
	for id := range st.GetRunBusy() {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		busy.Set(id, value.Int(int64(st.GetRunBusy()[id])))
	}
	o := value.ObjectOf(
		"id", st.GetWorkerId(),
		"host", st.GetHost(),
		"pid", value.Int(int64(st.GetPid())),
		"version", st.GetVersion(),
	)
	if st.GetStartedAt() != nil {
		o.Set("startedAt", runs.Timestamp(st.GetStartedAt().AsTime()))
	} else {
		o.Set("startedAt", nil)
	}
	o.Set("lastHeartbeat", runs.Timestamp(wv.last))
	o.Set("heartbeatAgeMs", ms(wv.age))
	o.Set("heartbeatIntervalMs", ms(st.GetHeartbeatInterval().AsDuration()))
	o.Set("stale", wv.stale)
	o.Set("slow", wv.slow)
	o.Set("draining", st.GetDraining())
	o.Set("slots", value.ObjectOf(
		"total", value.Int(int64(st.GetSlotsTotal())),
		"busy", value.Int(int64(st.GetSlotsBusy())),
		"lent", value.Int(int64(st.GetSlotsLent())),
	))
	o.Set("runs", busy)
	o.Set("items", value.ObjectOf(
		"completed", value.Int(int64(st.GetItemsCompleted())),
		"failed", value.Int(int64(st.GetItemsFailed())),
		"returned", value.Int(int64(st.GetItemsReturned())),
	))
	o.Set("recent", value.ObjectOf(
		"items", value.Int(int64(st.GetWindowItems())),
		"windowSeconds", value.Int(int64(st.GetWindow().AsDuration()/time.Second)),
		"meanMs", ms(st.GetMeanDuration().AsDuration()),
		"p95Ms", ms(st.GetP95Duration().AsDuration()),
	))
	return o
}
