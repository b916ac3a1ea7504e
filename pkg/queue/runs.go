package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	stepflowv1 "github.com/stepflow-go/stepflow/proto/stepflowv1"
)

// StatusName returns the upstream ExecutionStatus string of s ("running",
// "completed", "failed", "cancelled", "paused"), or "" for an unset
// status.
func StatusName(s stepflowv1.RunStatus) string {
	switch s {
	case stepflowv1.RunStatus_RUN_STATUS_RUNNING:
		return "running"
	case stepflowv1.RunStatus_RUN_STATUS_COMPLETED:
		return "completed"
	case stepflowv1.RunStatus_RUN_STATUS_FAILED:
		return "failed"
	case stepflowv1.RunStatus_RUN_STATUS_CANCELLED:
		return "cancelled"
	case stepflowv1.RunStatus_RUN_STATUS_PAUSED:
		return "paused"
	}
	return ""
}

// ParseStatus is the inverse of StatusName; ok is false for other strings.
func ParseStatus(name string) (s stepflowv1.RunStatus, ok bool) {
	for _, s := range []stepflowv1.RunStatus{
		stepflowv1.RunStatus_RUN_STATUS_RUNNING, stepflowv1.RunStatus_RUN_STATUS_COMPLETED,
		stepflowv1.RunStatus_RUN_STATUS_FAILED, stepflowv1.RunStatus_RUN_STATUS_CANCELLED,
		stepflowv1.RunStatus_RUN_STATUS_PAUSED,
	} {
		if StatusName(s) == name {
			return s, true
		}
	}
	return stepflowv1.RunStatus_RUN_STATUS_UNSPECIFIED, false
}

// Terminal reports whether s is a final status (completed, failed,
// cancelled).
func Terminal(s stepflowv1.RunStatus) bool {
	return s == stepflowv1.RunStatus_RUN_STATUS_COMPLETED || s == stepflowv1.RunStatus_RUN_STATUS_FAILED ||
		s == stepflowv1.RunStatus_RUN_STATUS_CANCELLED
}

// RunStore reads and writes run records in the STEPFLOW_RUNS bucket. Every
// write returns the record's new revision; Update and Modify are
// compare-and-set on it, so two writers never lose each other's changes.
// It is safe for concurrent use.
//
// A compare-and-set whose answer was lost (a timeout, a stream leader
// that lost its quorum) is recognised when it was written all the same:
// the record read back is the one it wrote (see casBucket.update).
type RunStore struct {
	js jetstream.JetStream
	kv jetstream.KeyValue
	b  *casBucket
}

// OpenRunStore binds the run-record bucket; ErrNotProvisioned when it does
// not exist.
func OpenRunStore(ctx context.Context, js jetstream.JetStream) (*RunStore, error) {
	kv, err := js.KeyValue(ctx, BucketRuns)
	if err != nil {
		return nil, notProvisioned("bucket "+BucketRuns, err)
	}
	return &RunStore{js: js, kv: kv, b: newCASBucket(js, kv, BucketRuns)}, nil
}

// List returns the current record of every run, and the errors of those
// it cannot decode (skipped; the caller logs them). It asks the stream
// which keys exist, then watches the bucket until each of them has been
// delivered: the watcher's end-of-initial-values marker alone can come
// early while another writer updates records (a key updated meanwhile is
// delivered after it), and a record written before the call must be in
// the answer.
func (s *RunStore) List(ctx context.Context) (recs []*stepflowv1.RunRecord, unreadable []error, err error) {
	st, err := s.js.Stream(ctx, "KV_"+BucketRuns)
	if err != nil {
		return nil, nil, notProvisioned("bucket "+BucketRuns, err)
	}
	prefix := "$KV." + BucketRuns + "."
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(prefix+">"))
	if err != nil {
		return nil, nil, fmt.Errorf("queue: list runs: %w", err)
	}
	pending := make(map[string]bool, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		pending[strings.TrimPrefix(subj, prefix)] = true
	}
	if len(pending) == 0 {
		return nil, nil, nil
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := s.kv.WatchAll(wctx)
	if err != nil {
		return nil, nil, fmt.Errorf("queue: list runs: %w", err)
	}
	defer func() { _ = w.Stop() }()
	latest := map[string]jetstream.KeyValueEntry{}
	for len(pending) > 0 {
		select {
		case <-ctx.Done():
			return nil, nil, context.Cause(ctx)
		case e, ok := <-w.Updates():
			if !ok {
				return nil, nil, errors.New("queue: list runs: the watch ended early")
			}
			if e != nil {
				latest[e.Key()] = e
				delete(pending, e.Key())
			}
		}
	}
	recs = make([]*stepflowv1.RunRecord, 0, len(latest))
	for key, e := range latest {
		if op := e.Operation(); op == jetstream.KeyValueDelete || op == jetstream.KeyValuePurge {
			continue
		}
		rec, err := decodeRun(e.Value())
		if err != nil {
			unreadable = append(unreadable, fmt.Errorf("run %s: %w", key, err))
			continue
		}
		recs = append(recs, rec)
	}
	return recs, unreadable, nil
}

// Create stores a new run record; ErrRunExists if the run already has
// another one. A write whose answer does not come is tried again until
// ctx ends, and counts as made when the record read back is rec.
func (s *RunStore) Create(ctx context.Context, rec *stepflowv1.RunRecord) (revision uint64, err error) {
	data, err := encodeRun(rec)
	if err != nil {
		return 0, err
	}
	rev, err := s.b.create(ctx, rec.GetRunId(), data, sameBytes(data))
	if errors.Is(err, ErrRevisionMismatch) {
		return 0, fmt.Errorf("%w: %s", ErrRunExists, rec.GetRunId())
	}
	if err != nil {
		return 0, fmt.Errorf("queue: create run %s: %w", rec.GetRunId(), err)
	}
	return rev, nil
}

// Get returns runID's record and its revision; ErrRunNotFound when there
// is none.
func (s *RunStore) Get(ctx context.Context, runID string) (*stepflowv1.RunRecord, uint64, error) {
	if err := ValidateRunID(runID); err != nil {
		return nil, 0, err
	}
	e, err := s.kv.Get(ctx, runID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, fmt.Errorf("%w: %s", ErrRunNotFound, runID)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("queue: get run %s: %w", runID, err)
	}
	rec, err := decodeRun(e.Value())
	if err != nil {
		return nil, 0, fmt.Errorf("run %s: %w", runID, err)
	}
	return rec, e.Revision(), nil
}

// Put stores rec unconditionally (last writer wins). Prefer Update or
// Modify for records others may write too.
func (s *RunStore) Put(ctx context.Context, rec *stepflowv1.RunRecord) (uint64, error) {
	data, err := encodeRun(rec)
	if err != nil {
		return 0, err
	}
	rev, err := s.kv.Put(ctx, rec.GetRunId(), data)
	if err != nil {
		return 0, fmt.Errorf("queue: put run %s: %w", rec.GetRunId(), err)
	}
	return rev, nil
}

// Update stores rec if the record's latest revision is still revision;
// otherwise it fails with ErrRevisionMismatch (re-read and retry). A
// write whose answer does not come is tried again until ctx ends; one
// that was made although its answer was lost counts as made (the record
// read back is rec). A call that gave up waiting may have written rec:
// the next compare-and-set against revision then fails (re-read).
func (s *RunStore) Update(ctx context.Context, rec *stepflowv1.RunRecord, revision uint64) (uint64, error) {
	data, err := encodeRun(rec)
	if err != nil {
		return 0, err
	}
	rev, err := s.b.update(ctx, rec.GetRunId(), data, revision, false, sameBytes(data))
	if err != nil {
		return 0, fmt.Errorf("queue: update run %s: %w", rec.GetRunId(), err)
	}
	return rev, nil
}

// maxModifyAttempts bounds Modify's compare-and-set retries.
const maxModifyAttempts = 100

// Modify applies fn to runID's latest record and stores the result with
// compare-and-set, re-reading and re-applying fn when another writer got
// there first. fn must not keep the record, and may run several times; an
// error from fn aborts and is returned as is. It returns the stored record
// and its revision. It reads the record through the stream leader, which
// has every acknowledged write (a replica answering a direct get may
// lag), and waits for NATS while it does not answer, until ctx ends.
func (s *RunStore) Modify(ctx context.Context, runID string, fn func(*stepflowv1.RunRecord) error) (*stepflowv1.RunRecord, uint64, error) {
	if err := ValidateRunID(runID); err != nil {
		return nil, 0, err
	}
	for range maxModifyAttempts {
		e, err := s.b.latestRetrying(ctx, runID)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, 0, fmt.Errorf("%w: %s", ErrRunNotFound, runID)
		}
		if err != nil {
			return nil, 0, fmt.Errorf("queue: get run %s: %w", runID, err)
		}
		rec, err := decodeRun(e.value)
		if err != nil {
			return nil, 0, fmt.Errorf("run %s: %w", runID, err)
		}
		rev := e.rev
		if err := fn(rec); err != nil {
			return nil, 0, err
		}
		if rec.GetRunId() != runID {
			return nil, 0, fmt.Errorf("%w: Modify must not change the run id", ErrInvalidConfig)
		}
		newRev, err := s.Update(ctx, rec, rev)
		if errors.Is(err, ErrRevisionMismatch) {
			if err := ctx.Err(); err != nil {
				return nil, 0, context.Cause(ctx)
			}
			continue
		}
		if err != nil {
			return nil, 0, err
		}
		return rec, newRev, nil
	}
	return nil, 0, fmt.Errorf("%w: run %s: gave up after %d attempts", ErrRevisionMismatch, runID, maxModifyAttempts)
}

// Delete removes runID's record. Deleting a missing record is not an
// error.
func (s *RunStore) Delete(ctx context.Context, runID string) error {
	if err := ValidateRunID(runID); err != nil {
		return err
	}
	if err := s.kv.Delete(ctx, runID); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("queue: delete run %s: %w", runID, err)
	}
	return nil
}

// RunEvent is one change seen by a RunWatcher.
type RunEvent struct {
	// RunID is the run that changed; "" for the Ready marker.
	RunID string
	// Record is the new record; nil when the run was deleted or when
	// Err is set.
	Record *stepflowv1.RunRecord
	// Revision is the KV revision of the change.
	Revision uint64
	// Deleted reports that the record was deleted or purged.
	Deleted bool
	// Ready marks the end of the initial records: every event after it is
	// a live change. Only this field is set on the marker.
	Ready bool
	// Err is set when a stored value did not decode (wraps ErrBadMessage).
	Err error
}

// WatchOptions configures RunStore.Watch.
type WatchOptions struct {
	// RunID watches a single run; "" watches every run.
	RunID string
	// UpdatesOnly skips the current records: only changes after the call
	// are delivered (the Ready marker comes first).
	UpdatesOnly bool
}

// RunWatcher delivers run record changes on Events until Stop or the
// watch's context ends; then the channel is closed.
type RunWatcher struct {
	w      jetstream.KeyWatcher
	events chan RunEvent
	stop   chan struct{}
	once   sync.Once
	done   chan struct{}
}

// Watch delivers the current record of every run (or of opts.RunID), then
// a Ready marker, then every change as it happens. Workers watch to learn
// which runs are active or cancelled. Stop the watcher (or cancel ctx)
// when done.
func (s *RunStore) Watch(ctx context.Context, opts WatchOptions) (*RunWatcher, error) {
	keys := ">"
	if opts.RunID != "" {
		if err := ValidateRunID(opts.RunID); err != nil {
			return nil, err
		}
		keys = opts.RunID
	}
	var wo []jetstream.WatchOpt
	if opts.UpdatesOnly {
		wo = append(wo, jetstream.UpdatesOnly())
	}
	w, err := s.kv.Watch(ctx, keys, wo...)
	if err != nil {
		return nil, fmt.Errorf("queue: watch runs: %w", err)
	}
	rw := &RunWatcher{w: w, events: make(chan RunEvent, 64), stop: make(chan struct{}), done: make(chan struct{})}
	go rw.loop(ctx, opts.UpdatesOnly)
	return rw, nil
}

func (rw *RunWatcher) loop(ctx context.Context, updatesOnly bool) {
	defer close(rw.done)
	defer close(rw.events)
	if updatesOnly {
		// JetStream sends no end-of-initial-values marker to an
		// updates-only watcher; send ours so both modes look alike.
		rw.events <- RunEvent{Ready: true}
	}
	updates := rw.w.Updates()
	for {
		var ev RunEvent
		select {
		case e, ok := <-updates:
			if !ok {
				return
			}
			ev = runEvent(e)
		case <-ctx.Done():
			return
		case <-rw.stop:
			return
		}
		select {
		case rw.events <- ev:
		case <-ctx.Done():
			return
		case <-rw.stop:
			return
		}
	}
}

func runEvent(e jetstream.KeyValueEntry) RunEvent {
	if e == nil {
		return RunEvent{Ready: true}
	}
	ev := RunEvent{RunID: e.Key(), Revision: e.Revision()}
	if op := e.Operation(); op == jetstream.KeyValueDelete || op == jetstream.KeyValuePurge {
		ev.Deleted = true
		return ev
	}
	rec, err := decodeRun(e.Value())
	if err != nil {
		ev.Err = fmt.Errorf("run %s: %w", e.Key(), err)
		return ev
	}
	ev.Record = rec
	return ev
}

// Events returns the channel of changes; it is closed when the watcher
// stops.
func (rw *RunWatcher) Events() <-chan RunEvent { return rw.events }

// Stop ends the watch and waits for its goroutine. It is idempotent.
func (rw *RunWatcher) Stop() error {
	var err error
	rw.once.Do(func() {
		close(rw.stop)
		err = rw.w.Stop()
	})
	<-rw.done
	if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("queue: stop run watcher: %w", err)
	}
	return nil
}

func encodeRun(rec *stepflowv1.RunRecord) ([]byte, error) {
	if err := ValidateRunID(rec.GetRunId()); err != nil {
		return nil, err
	}
	data, err := proto.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("queue: encode run %s: %w", rec.GetRunId(), err)
	}
	return data, nil
}

func decodeRun(data []byte) (*stepflowv1.RunRecord, error) {
	rec := &stepflowv1.RunRecord{}
	if err := proto.Unmarshal(data, rec); err != nil {
		return nil, fmt.Errorf("%w: run record: %w", ErrBadMessage, err)
	}
	return rec, nil
}
