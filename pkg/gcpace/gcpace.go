// Package gcpace gives the garbage collector of a long-running process a
// floor of heap headroom.
//
// Go's default pacing (GOGC=100) lets the heap grow to twice what is live
// before the next collection. A coordinator or worker keeps little live
// (tens of MB: windows of items, not batches) but allocates a few KB per
// item, so with the default it collects dozens of times a second under
// load, and marking costs 10-25% of its CPU. Pacing by a floor instead
// (the next collection when the heap has grown by max(live, headroom))
// cuts that to a few percent for a bounded amount of memory: a process
// with 20 MB live peaks near 20 MB + headroom, and one with more live than
// headroom is paced exactly as by default.
//
// Nothing is changed when the user set GOGC or GOMEMLIMIT: they are in
// charge then.
package gcpace

import (
	"math"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"

	"go.uber.org/zap"
)

// DefaultHeadroom is the headroom serve, the coordinator and the worker
// run with: on this project's 2-core VM, a one-step batch through `stepflow
// serve` spent 10-25% less CPU per item with it than with GOGC=100, and the
// process peaked about 50 MB higher.
const DefaultHeadroom = 64 << 20

// How often the pacer looks for a finished collection, and the range of
// GOGC it sets.
const (
	pollEvery  = 50 * time.Millisecond
	minPercent = 100
	maxPercent = 2000
)

// Start paces collections with at least headroom bytes of heap growth
// between them, until stop is called. The GC percent is process-wide, so
// is the pacer: while several callers (serve's coordinator and workers,
// tests) hold one, the first one's headroom applies, and the last stop
// ends it (waiting for it) and restores the GC percent it found. Start
// does nothing, and stop is a no-op, when GOGC or GOMEMLIMIT is set in
// the environment or headroom is 0.
func Start(headroom uint64, log *zap.Logger) (stop func()) {
	if headroom == 0 || os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		return func() {}
	}
	mu.Lock()
	defer mu.Unlock()
	if users == 0 {
		if log == nil {
			log = zap.NewNop()
		}
		p := &pacer{headroom: headroom, log: log, quit: make(chan struct{}), done: make(chan struct{}), percent: minPercent, adjusted: onAdjust}
		p.prev = debug.SetGCPercent(minPercent)
		p.samples = []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}, {Name: "/gc/heap/live:bytes"}}
		go p.loop()
		current = p
	}
	users++
	var once sync.Once
	return func() { once.Do(release) }
}

var (
	mu      sync.Mutex
	users   int    // holders of the pacer
	current *pacer // nil when users == 0
	// onAdjust (tests) receives each percent the next pacer sets.
	onAdjust chan<- int
)

func release() {
	mu.Lock()
	defer mu.Unlock()
	users--
	if users > 0 {
		return
	}
	p := current
	current = nil
	close(p.quit)
	<-p.done
	debug.SetGCPercent(p.prev)
}

type pacer struct {
	headroom uint64
	log      *zap.Logger
	quit     chan struct{}
	done     chan struct{}
	prev     int // the GC percent before Start
	percent  int // the GC percent set now
	cycles   uint64
	samples  []metrics.Sample
	// adjusted is onAdjust when the pacer started.
	adjusted chan<- int
}

func (p *pacer) loop() {
	defer close(p.done)
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		select {
		case <-p.quit:
			return
		case <-t.C:
		}
		p.adjust()
	}
}

// adjust sets the GC percent after each collection from the heap it found
// live, when it moved by more than an eighth.
func (p *pacer) adjust() {
	metrics.Read(p.samples)
	if p.samples[0].Value.Kind() != metrics.KindUint64 || p.samples[1].Value.Kind() != metrics.KindUint64 {
		return // not supported by this runtime
	}
	cycles := p.samples[0].Value.Uint64()
	if cycles == p.cycles {
		return
	}
	p.cycles = cycles
	want := Percent(p.samples[1].Value.Uint64(), p.headroom)
	if diff := want - p.percent; diff > p.percent/8 || -diff > p.percent/8 {
		debug.SetGCPercent(want)
		p.log.Debug("GC percent set", zap.Int("percent", want), zap.Int("from", p.percent))
		p.percent = want
		if p.adjusted != nil {
			select {
			case p.adjusted <- want:
			default:
			}
		}
	}
}

// Percent is the GC percent that lets a heap with live bytes live grow by
// at least headroom bytes, within [100, 2000].
func Percent(live, headroom uint64) int {
	if live == 0 {
		return maxPercent
	}
	pct := math.Ceil(float64(headroom) * 100 / float64(live))
	return int(min(max(pct, minPercent), maxPercent))
}
