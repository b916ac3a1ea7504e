package worker

import (
	"sync"
	"sync/atomic"
)

// slots is a worker's capacity: its configured Concurrency plus one slot
// for every item currently blocked waiting on a child run (Lend). The
// scheduler is the only reader of Capacity and owns the rest of the slot
// state (items in flight, slots reserved by pending pulls); lending comes
// from component callbacks on other goroutines, so it is the one piece
// that is shared, and it is kept this small on purpose.
//
// Why lending prevents deadlock: with C configured slots, b items
// blocked on child runs and capacity C+b, if every item in flight were
// blocked then C+b = b, impossible for C >= 1. So there is always either
// a free slot or an item that is not waiting, and the child runs' items
// (fetched like any other run's) always find a slot on some worker.
type slots struct {
	base    int
	lent    atomic.Int64
	busy    atomic.Int64  // items executing, for metrics (the scheduler keeps its own count)
	changed chan struct{} // 1-buffered: "capacity changed"
}

func newSlots(n int) *slots {
	return &slots{base: n, changed: make(chan struct{}, 1)}
}

// Capacity returns the number of items the worker may run now.
func (s *slots) Capacity() int { return s.base + int(s.lent.Load()) }

// Busy returns the number of items executing.
func (s *slots) Busy() int { return int(s.busy.Load()) }

// Lent returns the number of slots currently lent.
func (s *slots) Lent() int { return int(s.lent.Load()) }

// Lend adds one slot for as long as the caller blocks on a child run and
// returns the function that gives it back. Giving back more than once is
// a no-op, so `defer giveBack()` is always safe.
func (s *slots) Lend() (giveBack func()) {
	s.lent.Add(1)
	s.notify()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.lent.Add(-1)
			s.notify()
		})
	}
}

// Changed is signalled (coalesced) whenever the capacity changes.
func (s *slots) Changed() <-chan struct{} { return s.changed }

func (s *slots) notify() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}
