package worker

import (
	"context"
	"os"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/stepflow-go/stepflow/pkg/queue"
	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// announcer puts the worker's status into the worker registry every
// StatusInterval, from Start until the worker has drained, and deletes it
// on a clean stop: what `stepflow top` and the coordinator's cluster view
// show of the worker.
type announcer struct {
	w       *Worker
	log     *zap.Logger
	host    string
	started time.Time
	reg     *queue.WorkerRegistry // bound lazily: a registry missing at start may appear later
	cat     *catalogue

	ctx  context.Context // ends at close: a put in progress gives up
	stop context.CancelFunc
	done chan struct{}
}

func (w *Worker) startAnnouncer(ctx context.Context) *announcer {
	host, err := os.Hostname()
	if err != nil {
		host = ""
	}
	a := &announcer{w: w, log: w.log.Named("registry"), host: host, started: time.Now(), done: make(chan struct{})}
	a.cat = newCatalogue(w.plugins, a.log, queue.MaxComponentsBytes)
	a.ctx, a.stop = context.WithCancel(context.Background())
	a.listComponents()
	a.announce(ctx) // at once, so that the worker is visible as soon as it runs
	go a.loop()
	return a
}

func (a *announcer) loop() {
	defer close(a.done)
	t := time.NewTicker(a.w.cfg.StatusInterval)
	defer t.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-t.C:
			a.listComponents()
			ctx, cancel := context.WithTimeout(a.ctx, a.w.cfg.StatusInterval)
			a.announce(ctx)
			cancel()
		}
	}
}

// listComponents lists the plugins' components when due (see catalogue).
func (a *announcer) listComponents() {
	ctx, cancel := context.WithTimeout(a.ctx, componentsTimeout)
	defer cancel()
	a.cat.refresh(ctx, time.Now())
}

// announce puts one status; a failure is logged and retried at the next
// tick (the registry is for monitoring: it never stops the worker).
func (a *announcer) announce(ctx context.Context) {
	if a.reg == nil {
		reg, err := queue.OpenWorkerRegistry(ctx, a.w.js)
		if err != nil {
			a.log.Debug("worker registry not available; retrying", zap.Error(err))
			return
		}
		a.reg = reg
	}
	if err := a.reg.Put(ctx, a.status(time.Now())); err != nil {
		a.log.Debug("heartbeat to the worker registry failed", zap.Error(err))
	}
}

// status is the worker's WorkerStatus now.
func (a *announcer) status(now time.Time) *stepflowv1.WorkerStatus {
	w := a.w
	s := w.stats.snapshot(now)
	st := &stepflowv1.WorkerStatus{
		WorkerId:          w.cfg.WorkerID,
		Host:              a.host,
		Pid:               int32(os.Getpid()),
		Version:           w.cfg.Version,
		StartedAt:         timestamppb.New(a.started),
		HeartbeatAt:       timestamppb.New(now),
		HeartbeatInterval: durationpb.New(w.cfg.StatusInterval),
		SlotsTotal:        uint32(w.slots.Capacity()),
		SlotsBusy:         uint32(s.busyTotal),
		SlotsLent:         uint32(w.slots.Lent()),
		ItemsCompleted:    s.completed,
		ItemsFailed:       s.failed,
		ItemsReturned:     s.returned,
		WindowItems:       uint32(s.windowItems),
		Window:            durationpb.New(statsWindow),
		Draining:          w.draining.Load(),
	}
	a.cat.fill(st)
	if len(s.busy) > 0 {
		st.RunBusy = make(map[string]uint32, len(s.busy))
		for run, n := range s.busy {
			st.RunBusy[run] = uint32(n)
		}
	}
	if s.windowItems > 0 {
		st.MeanDuration = durationpb.New(s.mean)
		st.P95Duration = durationpb.New(s.p95)
	}
	return st
}

// close stops the heartbeats and removes the worker from the registry.
// When NATS is away, the key expires after queue.WorkerTTL instead; the
// worker still stops cleanly, without waiting for it.
func (a *announcer) close() {
	a.stop()
	<-a.done
	if a.reg == nil || !a.w.nc.IsConnected() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := a.reg.Delete(ctx, a.w.cfg.WorkerID); err != nil {
		a.log.Warn("cannot remove the worker from the registry; it expires on its own", zap.Error(err),
			zap.Duration("ttl", queue.WorkerTTL))
	}
}
