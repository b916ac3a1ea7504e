package queue

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// Every NATS name stepflow-go uses. Nothing outside this package spells a
// subject, stream, bucket or consumer name.
const (
	// StreamItems is the work-queue stream holding one message per batch
	// item, on ItemSubject(runID). A message is removed once a worker acks
	// it (after its result is stored), so the stream's size is the backlog.
	StreamItems = "STEPFLOW_ITEMS"
	// ItemSubjectPrefix is the prefix of every item subject.
	ItemSubjectPrefix = "stepflow.items."
	// ItemSubjects is the subject filter of StreamItems.
	ItemSubjects = ItemSubjectPrefix + ">"

	// ResultSubjectPrefix is the prefix of every result subject: workers
	// send each item's result as a core NATS request on
	// ResultSubject(runID), answered by the leading coordinator (no stream
	// captures these subjects).
	ResultSubjectPrefix = "stepflow.results."
	// ResultSubjects is the subscription subject of every run's results.
	ResultSubjects = ResultSubjectPrefix + ">"
	// ResultsQueueGroup is the queue group coordinators subscribe to
	// ResultSubjects in: each result goes to one of them (the leader; a
	// deposed leader that still listens cannot store into runs it lost).
	ResultsQueueGroup = "stepflow-coordinators"
	// LegacyStreamResults is the results stream of releases before
	// 2026-12, deleted by Provision when empty.
	LegacyStreamResults = "STEPFLOW_RESULTS"

	// BucketRuns is the key-value bucket of run records: key = run id,
	// value = a protobuf RunRecord.
	BucketRuns = "STEPFLOW_RUNS"
	// BucketFlows is the key-value bucket of flows by content hash: key =
	// flow id (64 lowercase hex digits), value = the flow's canonical JSON.
	BucketFlows = "STEPFLOW_FLOWS"
	// BucketCoordinators is the key-value bucket of the coordinators'
	// leadership lease (Lease); its max age is the lease TTL.
	BucketCoordinators = "STEPFLOW_COORDINATORS"
	// BucketBlobs is the object store of blobs (blob.Store): object name =
	// blob id, object metadata MetaBlobKind = the blob kind.
	BucketBlobs = "STEPFLOW_BLOBS"
	// BucketWorkers is the key-value bucket of worker heartbeats: key =
	// WorkerKey(worker id), value = a protobuf WorkerStatus. Its MaxAge
	// (WorkerTTL) removes the key of a worker that died without deleting
	// it.
	BucketWorkers = "STEPFLOW_WORKERS"

	// RunConsumerPrefix is the prefix of the durable consumer of each run
	// on StreamItems.
	RunConsumerPrefix = "run-"

	// MaxDeliveriesAdvisoryPrefix is the prefix of the subjects on which
	// the server announces that a consumer of StreamItems gave up on a
	// message after MaxDeliver deliveries; the last token is the consumer.
	MaxDeliveriesAdvisoryPrefix = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + StreamItems + "."
	// MaxDeliveriesAdvisories is the subscription subject of the
	// max-deliveries advisories of every run consumer.
	MaxDeliveriesAdvisories = MaxDeliveriesAdvisoryPrefix + "*"

	// CoordinatorInboxPrefix is the inbox prefix of the coordinators'
	// connections (ConnectOptions.InboxPrefix): no worker or SDK user may
	// subscribe to it, so none reads the coordinator's JetStream answers.
	CoordinatorInboxPrefix = "_INBOX_stepflow_coordinator"
	// WorkerInboxPrefix is the default inbox prefix of the workers'
	// connections: the worker user of auth.conf may subscribe under it
	// only, and the SDK user (whose clients keep nats' "_INBOX") not at
	// all. A worker with a NATS user of its own takes a prefix under it
	// (--nats-inbox-prefix _INBOX_stepflow_worker.w1, say) that only that
	// user may read, and then no other worker reads its replies.
	WorkerInboxPrefix = "_INBOX_stepflow_worker"

	// MetaBlobKind is the object-metadata key holding a blob's kind in
	// BucketBlobs.
	MetaBlobKind = "stepflow-blob-kind"
)

// ItemSubject returns the subject of runID's items: stepflow.items.<runID>.
func ItemSubject(runID string) string { return ItemSubjectPrefix + runID }

// ResultSubject returns the subject of runID's results, the reply subject
// carried by its items: stepflow.results.<runID>.
func ResultSubject(runID string) string { return ResultSubjectPrefix + runID }

// RunConsumer returns the name of runID's durable consumer on StreamItems:
// run-<runID>.
func RunConsumer(runID string) string { return RunConsumerPrefix + runID }

// MsgID returns the Nats-Msg-Id of item index of runID, used for both the
// item and its result: <runID>.<index>. A publish retried with the same id
// inside the stream's duplicate window is acknowledged as a duplicate and
// not stored again.
func MsgID(runID string, index int) string { return runID + "." + strconv.Itoa(index) }

// WorkerKey returns the key of workerID in BucketWorkers: the id itself
// when every character is one a KV key allows without ambiguity
// ([A-Za-z0-9_=-]), otherwise the id with each other character replaced
// by '_' and a short hash of the id appended, so two ids never share a
// key. The WorkerStatus stored under the key carries the exact id.
func WorkerKey(workerID string) string {
	clean := true
	for i := range len(workerID) {
		if !keyChar(workerID[i]) {
			clean = false
			break
		}
	}
	if clean && workerID != "" {
		return workerID
	}
	b := []byte(workerID)
	for i, c := range b {
		if !keyChar(c) {
			b[i] = '_'
		}
	}
	sum := sha256.Sum256([]byte(workerID))
	return string(b) + "-" + hex.EncodeToString(sum[:4])
}

func keyChar(c byte) bool {
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '='
}

// RepublishMsgID returns the Nats-Msg-Id of item index of runID published
// for the generation-th time after a loss: MsgID for generation 0,
// <runID>.<index>/<generation> after.
func RepublishMsgID(runID string, index, generation int) string {
	if generation <= 0 {
		return MsgID(runID, index)
	}
	return MsgID(runID, index) + "/" + strconv.Itoa(generation)
}

// ParseMsgID splits a MsgID into its run id and index.
func ParseMsgID(id string) (runID string, index int, err error) {
	i := strings.LastIndexByte(id, '.')
	if i <= 0 {
		return "", 0, fmt.Errorf("queue: malformed message id %q", id)
	}
	n, err := strconv.Atoi(id[i+1:])
	if err != nil || n < 0 {
		return "", 0, fmt.Errorf("queue: malformed message id %q", id)
	}
	return id[:i], n, nil
}

// RunIDFromConsumer returns the run id of a run consumer name and whether
// the name is one.
func RunIDFromConsumer(name string) (string, bool) {
	id, ok := strings.CutPrefix(name, RunConsumerPrefix)
	return id, ok && id != ""
}

// maxRunIDLen bounds run ids: they appear in subjects, consumer names (at
// most 255 characters in JetStream, minus the prefix) and KV keys.
const maxRunIDLen = 200

// ValidInboxPrefix reports whether p can be a connection's inbox prefix:
// one or more subject tokens of letters, digits, '_' and '-', separated
// by dots.
func ValidInboxPrefix(p string) bool {
	if p == "" {
		return false
	}
	for tok := range strings.SplitSeq(p, ".") {
		if tok == "" {
			return false
		}
		for i := range len(tok) {
			if c := tok[i]; !keyChar(c) || c == '=' || c == '/' {
				return false
			}
		}
	}
	return true
}

// ValidateRunID returns an error wrapping ErrInvalidRunID unless id can be
// used as a subject token, a consumer name and a KV key: 1 to 200
// characters from [A-Za-z0-9_-] (UUIDs qualify). Dots, wildcards,
// whitespace and path separators would break one of the three.
func ValidateRunID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty", ErrInvalidRunID)
	}
	if len(id) > maxRunIDLen {
		return fmt.Errorf("%w: longer than %d characters", ErrInvalidRunID, maxRunIDLen)
	}
	for i := range len(id) {
		c := id[i]
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '-' && c != '_' {
			return fmt.Errorf("%w: %q contains %q (allowed: letters, digits, '-', '_')", ErrInvalidRunID, id, c)
		}
	}
	return nil
}
