package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/profiling"
	"github.com/stepflow-go/stepflow/pkg/queue"
)

// Leadership. Several coordinators may share one NATS deployment and one
// DataDir (a shared volume): all of them serve the REST API, and one, the
// holder of the leadership lease (queue.Lease), runs everything else:
// publishing, result aggregation, the NATS API and the max-deliveries
// advisories. The others are standbys that forward every REST request to
// the leader. When the leader dies, its lease expires after its TTL and a
// standby takes over exactly as a coordinator restarted on the DataDir
// would (resume): every running run is attached, its result store
// repaired, its publisher resumed. Each run's result log is locked
// (flock) while attached, so a leader that stalls past its lease cannot
// write a run a new leader has taken: the new leader waits for the lock.
//
// A leader that finds the lease held by another coordinator (it stalled
// for longer than the TTL) steps down: it stops (Stopped is closed,
// LostLeadership is true), and its command (`stepflow coordinator`,
// `stepflow serve`) starts a new one on the same port at once, which
// stands by and competes for the lease again; the process never exits
// for it. A renewal that NATS does not answer is no loss of the lease:
// the leader keeps leading and renews again until NATS answers, however
// long that takes (a quorum lost).

// leaderState is the coordinator's view of the lease.
type leaderState struct {
	mu      sync.Mutex
	leading bool
	holder  queue.Holder // the leader, when known
	proxy   *httputil.ReverseProxy
}

// LostLeadership reports whether the coordinator stopped because another
// coordinator took its leadership lease.
func (c *Coordinator) LostLeadership() bool { return c.lostLease.Load() }

// holder is this coordinator as a lease holder.
func (c *Coordinator) holder() queue.Holder {
	u := c.cfg.AdvertiseURL
	if u == "" {
		u = c.URL()
	}
	return queue.Holder{ID: c.id, URL: strings.TrimSuffix(u, "/"), Since: time.Now().UTC()}
}

// campaign tries once to take the lease; when it does, it leads.
func (c *Coordinator) campaign(ctx context.Context) (bool, error) {
	h := c.holder()
	won, cur, err := c.lease.Acquire(ctx, h, c.embedded != nil)
	if err != nil {
		return false, err
	}
	if !won {
		c.setFollower(cur)
		return false, nil
	}
	c.log.Info("leading", zap.String("id", c.id))
	if err := c.lead(ctx); err != nil {
		rctx, cancel := cleanupCtx(ctx)
		_ = c.lease.Release(rctx)
		cancel()
		return false, err
	}
	c.leader.mu.Lock()
	c.leader.leading, c.leader.holder, c.leader.proxy = true, h, nil
	c.leader.mu.Unlock()
	return true, nil
}

// lead starts what only the leader runs.
func (c *Coordinator) lead(ctx context.Context) (err error) {
	if err := c.sweepUploads(ctx); err != nil {
		return err
	}
	inc, _, err := queue.EnsureItemsStream(ctx, c.js, c.queueConfig())
	if err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	c.setItemsIncarnation(inc)
	// The journal serves the blobs workers deferred (with the results
	// that refer to them): it is indexed before it is asked.
	n, err := c.journal.buildIndex()
	if err != nil {
		return err
	}
	c.log.Debug("blob journal indexed", zap.Int("blobs", n))
	// Results are taken before the runs are resumed: attaching a run may
	// fail items (recoverExhausted), which goes through the aggregator.
	agg, err := newAggregator(c)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.agg = agg
	c.mu.Unlock()
	c.wg.Go(agg.run)
	defer func() {
		if err != nil { // not leading after all: take no results
			agg.close()
			c.mu.Lock()
			c.agg = nil
			c.mu.Unlock()
		}
	}()
	c.advisories, err = queue.WatchMaxDeliveries(c.ctx, c.js, c.onMaxDeliveries, queue.AdvisoryOptions{Logger: c.cfg.Logger})
	if err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	if err := c.resume(ctx); err != nil {
		return err
	}
	c.wg.Go(c.watchItems)
	return c.serveAPI()
}

// setFollower records the current leader, for forwarding.
func (c *Coordinator) setFollower(h queue.Holder) {
	c.leader.mu.Lock()
	defer c.leader.mu.Unlock()
	if c.leader.proxy != nil && c.leader.holder.URL == h.URL {
		c.leader.holder = h
		return
	}
	c.leader.holder, c.leader.proxy = h, nil
	if h.URL == "" {
		return
	}
	target, err := url.Parse(h.URL)
	if err != nil {
		c.log.Warn("the leader advertises a malformed URL", zap.String("leader", h.ID), zap.String("url", h.URL))
		return
	}
	p := httputil.NewSingleHostReverseProxy(target)
	p.FlushInterval = -1 // event streams
	p.ErrorLog = zap.NewStdLog(c.log.Named("forward"))
	p.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		c.log.Debug("forwarding to the leader failed", zap.String("leader", h.ID), zap.Error(err))
		w.Header().Set("Retry-After", "1")
		writeEnvelope(w, http.StatusServiceUnavailable, fmt.Sprintf("the leader coordinator (%s) cannot be reached; retry", h.ID))
	}
	c.leader.proxy = p
	c.log.Info("standing by", zap.String("leader", h.ID), zap.String("leader_url", h.URL))
}

// leading reports whether this coordinator holds the lease.
func (c *Coordinator) leading() bool {
	c.leader.mu.Lock()
	defer c.leader.mu.Unlock()
	return c.leader.leading
}

// localPaths are answered by every coordinator itself: health checks
// and metrics describe this process; so do the profiles under
// profiling.Prefix; every coordinator serves the same API documentation
// (docsPath) (isLocal).
var localPaths = map[string]bool{"/api/v1/health": true, "/healthz": true, "/readyz": true, "/metrics": true}

// isLocal reports whether a path is answered by this coordinator even
// while it stands by.
func isLocal(path string) bool {
	return localPaths[path] || strings.HasPrefix(path, profiling.Prefix) || docsPath(path)
}

// forward serves the REST API as the leader, or forwards requests to it.
// Health checks are always answered here.
func (c *Coordinator) forward(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.leader.mu.Lock()
		leading, proxy, h := c.leader.leading, c.leader.proxy, c.leader.holder
		c.leader.mu.Unlock()
		if leading || isLocal(r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		if proxy == nil {
			w.Header().Set("Retry-After", "1")
			if waiting := c.waitingFor(); waiting != "" {
				writeEnvelope(w, http.StatusServiceUnavailable, "the coordinator is starting ("+waiting+"); retry")
				return
			}
			writeEnvelope(w, http.StatusServiceUnavailable, "no coordinator leads at the moment (a standby takes over within the lease TTL); retry")
			return
		}
		w.Header().Set("Stepflow-Forwarded-To", h.ID)
		proxy.ServeHTTP(w, r)
	})
}

// keepLease renews the lease while leading, and campaigns for it while
// standing by, until ctx ends.
func (c *Coordinator) keepLease(ctx context.Context) {
	ttl := c.lease.TTL()
	tick := time.NewTicker(max(ttl/4, 100*time.Millisecond))
	defer tick.Stop()
	changes, err := c.lease.Changes(ctx)
	if err != nil {
		c.log.Warn("cannot watch the lease; polling it", zap.Error(err))
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case _, ok := <-changes:
			if !ok {
				changes = nil
			}
			if c.leading() {
				continue // our own renewals, mostly: the ticker renews
			}
		}
		if c.leading() {
			if !c.renew(ctx) {
				return
			}
			continue
		}
		h, held, err := c.lease.Holder(ctx)
		switch {
		case err != nil:
			c.log.Debug("reading the lease", zap.Error(err))
		case held && h.ID != c.id:
			c.setFollower(h)
		default:
			c.lifeMu.Lock() // lead() sets what shutdown releases
			if ctx.Err() == nil {
				if _, err := c.campaign(ctx); err != nil && ctx.Err() == nil {
					c.log.Error("cannot take over as leader", zap.Error(err))
				}
			}
			c.lifeMu.Unlock()
		}
	}
}

// renew extends the lease; it returns false after stopping the
// coordinator because another one took the lease. A renewal that NATS
// does not answer (a quorum lost, a server restarting) is no loss: the
// lease is renewed again at the next tick, and a renewal whose answer
// was lost but which was written is recognised as ours (queue.Lease).
func (c *Coordinator) renew(ctx context.Context) bool {
	h := c.holder()
	c.leader.mu.Lock()
	h.Since = c.leader.holder.Since
	c.leader.mu.Unlock()
	// Bounded, so that an outage of any length is logged at every tick.
	rctx, cancel := context.WithTimeout(ctx, max(c.lease.TTL()/2, time.Second))
	defer cancel()
	err := c.lease.Renew(rctx, h)
	if err == nil {
		c.unresponsive.OK()
	}
	if err == nil || ctx.Err() != nil {
		if err == nil && c.renewFailing.Swap(false) {
			c.log.Info("renewed the leadership lease again")
		}
		return true
	}
	if !errors.Is(err, queue.ErrLeaseLost) {
		c.renewFailing.Store(true)
		c.log.Warn("cannot renew the leadership lease (NATS does not answer); retrying", zap.Error(err))
		c.unresponsive.Failed(err)
		return true
	}
	// Expired (NATS was away longer than the TTL, say): nobody else led
	// meanwhile if nobody holds it now, and the run locks keep anybody who
	// did from our runs' stores, so take it again.
	actx, acancel := context.WithTimeout(ctx, max(c.lease.TTL()/2, time.Second))
	defer acancel()
	won, cur, aerr := c.lease.Acquire(actx, h, c.embedded != nil)
	switch {
	case aerr == nil && won:
		c.renewFailing.Store(false)
		c.log.Warn("the leadership lease had expired; took it again", zap.Error(err))
		return true
	case aerr != nil:
		// Who holds it is unknown: the next tick tries again (the lease
		// is no longer held as far as Renew knows, so it acquires).
		c.renewFailing.Store(true)
		c.unresponsive.Failed(aerr)
		c.log.Warn("cannot renew the leadership lease, nor read who holds it (NATS does not answer); retrying",
			zap.Error(err), zap.NamedError("acquire", aerr))
		return true
	}
	if cur.ID == c.id {
		// Our own id: a write of ours whose answer was lost moved the
		// lease on while we took it again (seen in a partition). Nobody
		// else leads; the next tick takes it again from its revision.
		c.renewFailing.Store(true)
		c.log.Warn("the leadership lease moved under a write of ours whose answer was lost; taking it again", zap.Error(err))
		return true
	}
	c.log.Error("another coordinator took the leadership lease; stepping down to stand by", zap.String("leader", cur.ID), zap.Error(err))
	c.leader.mu.Lock()
	c.leader.leading = false
	c.leader.mu.Unlock()
	c.lostLease.Store(true)
	go func() { _ = c.Stop(context.WithoutCancel(ctx)) }()
	return false
}

// defaultID is a coordinator id unique on this host: the host name, and
// the HTTP port when fixed (the pid otherwise).
func defaultID(port int) string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "coordinator"
	}
	if port > 0 {
		return fmt.Sprintf("%s:%d", host, port)
	}
	return fmt.Sprintf("%s-%d", host, os.Getpid())
}
