package queue

import (
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
)

// DefaultMoveAfter is how long JetStream may go without answering on a
// connection's server before the connection moves to another server of
// the cluster (see Unresponsive).
const DefaultMoveAfter = 10 * time.Second

// Unresponsive moves a connection to another server of its cluster when
// JetStream has not answered on the current one for a while. A node cut
// off from the others (a network partition) keeps its clients' TCP
// connections up while every JetStream request through it times out, and
// nats.go does not move by itself; a client on the majority side goes on.
// With a single server (the embedded one) it never moves. Safe for
// concurrent use; the zero value is not usable (NewUnresponsive).
type Unresponsive struct {
	nc    *nats.Conn
	after time.Duration
	log   *zap.Logger
	now   func() time.Time

	mu    sync.Mutex
	since time.Time // first failure of the current run of failures; zero: none
}

// NewUnresponsive watches nc; after 0 means DefaultMoveAfter.
func NewUnresponsive(nc *nats.Conn, after time.Duration, log *zap.Logger) *Unresponsive {
	if after <= 0 {
		after = DefaultMoveAfter
	}
	if log == nil {
		log = zap.NewNop()
	}
	return &Unresponsive{nc: nc, after: after, log: log, now: time.Now}
}

// Failed records a JetStream request that failed with err; only transient
// errors (Transient) count. It reports whether the connection was told to
// move to another server.
func (u *Unresponsive) Failed(err error) bool {
	if u == nil || !Transient(err) {
		return false
	}
	u.mu.Lock()
	now := u.now()
	if u.since.IsZero() {
		u.since = now
	}
	due := now.Sub(u.since) >= u.after
	if due {
		u.since = time.Time{}
	}
	u.mu.Unlock()
	if !due || !u.nc.IsConnected() || len(u.nc.Servers()) < 2 {
		return false
	}
	from := u.nc.ConnectedUrlRedacted()
	if err := u.nc.ForceReconnect(); err != nil {
		u.log.Warn("cannot move to another NATS server", zap.Error(err))
		return false
	}
	u.log.Warn("JetStream has not answered through this NATS server; moving to another server of the cluster",
		zap.String("server", from), zap.Duration("for", u.after), zap.Error(err))
	return true
}

// OK records a JetStream request that succeeded.
func (u *Unresponsive) OK() {
	if u == nil {
		return
	}
	u.mu.Lock()
	u.since = time.Time{}
	u.mu.Unlock()
}
