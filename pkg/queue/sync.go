package queue

import (
	"fmt"
	"strings"
	"time"
)

// SyncPolicy is when a JetStream file store fsyncs: nats-server's
// `jetstream { sync_interval: ... }`. The zero value is the server's
// default, a background fsync every 2 minutes.
//
// Writes between two fsyncs sit in the OS page cache: they survive kill -9
// of the NATS process, but not a power loss or kernel crash of its
// machine. Jepsen's analysis of NATS 2.12.1 (2025) lost acknowledged
// writes that way, even in replicated clusters (a single node's OS crash
// combined with a partition or pause was enough). Always fsyncs every
// write before it is acknowledged.
type SyncPolicy struct {
	// Always fsyncs after every write, before the server acknowledges it.
	Always bool
	// Interval is the background fsync period when Always is false; 0 =
	// the server default (2 minutes).
	Interval time.Duration
}

// SyncAlways is the policy that fsyncs every write before acknowledging
// it: nats-server's `sync_interval: always`.
var SyncAlways = SyncPolicy{Always: true}

// ParseSyncPolicy reads a policy as nats-server's sync_interval takes it:
// "always", or a Go duration ("2m", "1s"); "" and "default" are the
// server default.
func ParseSyncPolicy(s string) (SyncPolicy, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "default":
		return SyncPolicy{}, nil
	case "always":
		return SyncAlways, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return SyncPolicy{}, fmt.Errorf("%w: sync policy %q: want \"always\" or a positive duration such as \"1s\" or \"2m\"", ErrInvalidConfig, s)
	}
	return SyncPolicy{Interval: d}, nil
}

// String returns "always", the interval, or "default".
func (p SyncPolicy) String() string {
	switch {
	case p.Always:
		return "always"
	case p.Interval > 0:
		return p.Interval.String()
	}
	return "default"
}
