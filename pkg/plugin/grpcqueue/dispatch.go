package grpcqueue

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	tasksv1 "github.com/stepflow-go/stepflow/proto/tasksv1"
)

// taskState is where a task is in its life.
type taskState int

const (
	// stateQueued: waiting in its queue for a worker stream.
	stateQueued taskState = iota
	// stateSent: sent on a worker's PullTasks stream, not claimed yet.
	stateSent
	// stateClaimed: the worker's first TaskHeartbeat arrived.
	stateClaimed
	// stateDone: finished (completed, failed or abandoned); no longer in
	// the dispatcher's maps.
	stateDone
)

// task is one assignment and its waiting caller.
type task struct {
	id        string
	queueName string
	queue     *queue // set by enqueue
	assign    *tasksv1.TaskAssignment
	component string // for errors: the plugin-local name or "list_components"
	list      bool   // a ListComponentsRequest (never claimed by heartbeat)

	// Guarded by dispatcher.mu.
	state    taskState
	stream   *workerStream // set once sent
	workerID string        // set once claimed
	timers   []*time.Timer // stopped when done
	beat     *time.Timer   // heartbeat watchdog, once claimed

	done chan struct{} // closed once res is set
	res  *tasksv1.CompleteTaskRequest
	err  error
}

// queue is one named task queue (for a nats plugin: one JetStream
// stream).
type queue struct {
	name    string
	pending []*task
	streams map[*workerStream]struct{}
	// jet holds the tasks published to JetStream (nats plugins): they are
	// "sent" as soon as published; workers fetch them by themselves.
	jet *workerStream
	// changed is closed and replaced whenever a stream of this queue may
	// be able to take a task (a task queued, a task claimed or done).
	changed chan struct{}
}

func (q *queue) signal() {
	close(q.changed)
	q.changed = make(chan struct{})
}

// workerStream is one open PullTasks call, or a queue's JetStream
// stream (jet).
type workerStream struct {
	workerID string
	jet      bool
	queue    *queue
	inflight map[string]*task // sent on this stream, not done
}

// unclaimed counts the tasks sent on the stream that the worker has not
// claimed yet.
func (ws *workerStream) unclaimed() int {
	n := 0
	for _, t := range ws.inflight {
		if t.state == stateSent && !t.list {
			n++
		}
	}
	return n
}

// busy reports whether the worker is executing a task of this stream.
func (ws *workerStream) busy() bool {
	for _, t := range ws.inflight {
		if t.state == stateClaimed {
			return true
		}
	}
	return false
}

// finishedCap bounds the memory of finished task ids (for the error of a
// late or second completion).
const finishedCap = 4096

// dispatcher hands tasks to the PullTasks streams of their queue and
// matches heartbeats and completions to them. A stream gets its next task
// only once the worker claimed every task sent to it before (the SDK reads
// one task ahead of its concurrency limit), so tasks wait here, not in a
// busy worker's stream buffer.
type dispatcher struct {
	plugin string
	log    *zap.Logger
	timing timing

	mu       sync.Mutex
	closed   bool
	queues   map[string]*queue
	tasks    map[string]*task
	finished map[string]string // task id -> how it finished
	order    []string          // finished ids, oldest first
	// connected is closed and replaced when a stream connects.
	connected chan struct{}
	// publish, when set (nats plugins), sends a task to its queue's
	// JetStream stream instead of handing it to PullTasks streams.
	publish func(queue string, data []byte) error
}

// timing are the dispatcher's deadlines.
type timing struct {
	queue     time.Duration // queueTimeoutSecs
	heartbeat time.Duration // silence after which a claimed task fails
	execution time.Duration // executionTimeoutSecs; 0 = none
	interval  uint32        // heartbeat_interval_secs sent to workers
}

func newDispatcher(plugin string, t timing, log *zap.Logger) *dispatcher {
	return &dispatcher{
		plugin: plugin, log: log, timing: t,
		queues: map[string]*queue{}, tasks: map[string]*task{}, finished: map[string]string{},
		connected: make(chan struct{}),
	}
}

func (d *dispatcher) queueLocked(name string) *queue {
	q, ok := d.queues[name]
	if !ok {
		q = &queue{name: name, streams: map[*workerStream]struct{}{}, changed: make(chan struct{})}
		d.queues[name] = q
	}
	return q
}

// workers returns how many streams are connected to the queue.
func (d *dispatcher) workers(queue string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if q, ok := d.queues[queue]; ok {
		return len(q.streams)
	}
	return 0
}

// connectedChan returns a channel closed at the next stream connection.
func (d *dispatcher) connectedChan() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.connected
}

// newTask builds a task for queue; orchestratorURL and root go into its
// TaskContext.
func (d *dispatcher) newTask(queueName, component string, assign *tasksv1.TaskAssignment) *task {
	id := uuid.NewString()
	assign.TaskId = id
	assign.HeartbeatIntervalSecs = d.timing.interval
	_, list := assign.Task.(*tasksv1.TaskAssignment_ListComponents)
	return &task{id: id, queueName: queueName, assign: assign, component: component, list: list, done: make(chan struct{})}
}

// enqueue adds t to its queue (or publishes it) and arms its queue
// timeout. A failed publication fails t (wait returns the error).
func (d *dispatcher) enqueue(t *task) error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return ErrClosed
	}
	q := d.queueLocked(t.queueName)
	t.queue = q
	d.tasks[t.id] = t
	d.armQueueTimeoutLocked(t, d.timing.queue)
	if d.publish == nil {
		q.pending = append(q.pending, t)
		q.signal()
		d.mu.Unlock()
		return nil
	}
	if q.jet == nil {
		q.jet = &workerStream{workerID: "jetstream " + q.name, jet: true, queue: q, inflight: map[string]*task{}}
	}
	t.state, t.stream = stateSent, q.jet
	q.jet.inflight[t.id] = t
	d.mu.Unlock()
	data, err := proto.Marshal(t.assign)
	if err == nil {
		err = d.publish(t.queueName, data)
	}
	if err != nil {
		d.abandon(t, fmt.Errorf("publish to stream %q: %w", t.queueName, err))
	}
	return nil
}

func (d *dispatcher) armQueueTimeoutLocked(t *task, after time.Duration) {
	t.timers = append(t.timers, time.AfterFunc(after, func() { d.queueTimeout(t) }))
}

// queueTimeout fails a task no worker claimed in time. A task still
// waiting because every worker of its queue is busy waits on: the
// timeout is for tasks nobody takes, not for a full queue.
func (d *dispatcher) queueTimeout(t *task) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch t.state {
	case stateQueued:
		for ws := range t.queue.streams {
			if ws.busy() {
				d.armQueueTimeoutLocked(t, d.timing.queue)
				return
			}
		}
		what := "no worker is connected to the queue"
		if n := len(t.queue.streams); n > 0 {
			what = fmt.Sprintf("%d connected worker(s) took no task", n)
		}
		d.finishLocked(t, nil, fmt.Errorf("%w (queueTimeoutSecs %v: %s)", ErrQueueTimeout, d.timing.queue, what))
	case stateSent:
		others := false
		for _, o := range t.stream.inflight {
			if o != t && o.state == stateClaimed {
				others = true
			}
		}
		if others {
			d.armQueueTimeoutLocked(t, d.timing.queue)
			return
		}
		if t.stream.jet {
			d.finishLocked(t, nil, fmt.Errorf("%w (queueTimeoutSecs %v: no worker took the task from JetStream stream %q)",
				ErrQueueTimeout, d.timing.queue, t.queueName))
			return
		}
		d.finishLocked(t, nil, fmt.Errorf("%w (queueTimeoutSecs %v: worker %q received the task but never sent TaskHeartbeat)",
			ErrQueueTimeout, d.timing.queue, t.stream.workerID))
	}
}

// connect registers a PullTasks stream.
func (d *dispatcher) connect(queueName, workerID string) (*workerStream, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	q := d.queueLocked(queueName)
	ws := &workerStream{workerID: workerID, queue: q, inflight: map[string]*task{}}
	q.streams[ws] = struct{}{}
	close(d.connected)
	d.connected = make(chan struct{})
	return ws, nil
}

// disconnect unregisters a stream; its unfinished tasks fail with
// ErrWorkerGone (cause says why the stream ended).
func (d *dispatcher) disconnect(ws *workerStream, cause error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(ws.queue.streams, ws)
	for _, t := range ws.inflight {
		d.finishLocked(t, nil, fmt.Errorf("%w: worker %q disconnected: %v", ErrWorkerGone, ws.workerID, cause))
	}
}

// next blocks until the stream may take a task and one is queued, and
// marks it sent.
func (d *dispatcher) next(ctx context.Context, ws *workerStream) (*task, error) {
	for {
		d.mu.Lock()
		if d.closed {
			d.mu.Unlock()
			return nil, ErrClosed
		}
		q := ws.queue
		if len(q.pending) > 0 && ws.unclaimed() == 0 {
			t := q.pending[0]
			q.pending[0] = nil
			q.pending = q.pending[1:]
			t.state, t.stream = stateSent, ws
			ws.inflight[t.id] = t
			d.mu.Unlock()
			return t, nil
		}
		ch := q.changed
		d.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-ch:
		}
	}
}

// finishLocked ends t with a completion or an error, once.
func (d *dispatcher) finishLocked(t *task, res *tasksv1.CompleteTaskRequest, err error) {
	if t.state == stateDone {
		return
	}
	prev := t.state
	t.state = stateDone
	for _, tm := range t.timers {
		tm.Stop()
	}
	if t.beat != nil {
		t.beat.Stop()
	}
	delete(d.tasks, t.id)
	if prev == stateQueued {
		for i, p := range t.queue.pending {
			if p == t {
				t.queue.pending = append(t.queue.pending[:i], t.queue.pending[i+1:]...)
				break
			}
		}
	}
	if t.stream != nil {
		delete(t.stream.inflight, t.id)
	}
	how := "completed"
	if err != nil {
		how = "failed: " + err.Error()
	}
	d.finished[t.id] = how
	d.order = append(d.order, t.id)
	if len(d.order) > finishedCap {
		delete(d.finished, d.order[0])
		d.order = d.order[1:]
	}
	t.res, t.err = res, err
	close(t.done)
	t.queue.signal()
}

// abandon ends a task whose caller stopped waiting.
func (d *dispatcher) abandon(t *task, cause error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.finishLocked(t, nil, cause)
}

// statusError is a refusal of a worker's call, with the gRPC code to
// answer.
type statusError struct {
	notFound bool // codes.NotFound, else codes.FailedPrecondition
	msg      string
}

func (e *statusError) Error() string { return e.msg }

// unknownLocked explains a task id that is not in flight.
func (d *dispatcher) unknownLocked(id, what string) *statusError {
	if how, ok := d.finished[id]; ok {
		return &statusError{notFound: true, msg: fmt.Sprintf("plugin %q: %s for task %s, which already finished (%s); ignored", d.plugin, what, id, how)}
	}
	return &statusError{notFound: true, msg: fmt.Sprintf("plugin %q: %s for task %s, which this runtime never assigned; ignored", d.plugin, what, id)}
}

// runInFlight reports whether a claimed task of the run is in flight:
// nested runs over TCP are accepted only from inside such a task.
func (d *dispatcher) runInFlight(runID string) bool {
	if runID == "" {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, t := range d.tasks {
		if t.state == stateClaimed && t.assign.GetContext().GetRootRunId() == runID {
			return true
		}
	}
	return false
}

// heartbeat claims (first call) or keeps alive a task.
func (d *dispatcher) heartbeat(id, workerID string) (*tasksv1.TaskHeartbeatResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	t, ok := d.tasks[id]
	if !ok {
		return nil, d.unknownLocked(id, "TaskHeartbeat")
	}
	switch t.state {
	case stateQueued:
		return nil, &statusError{msg: fmt.Sprintf("plugin %q: TaskHeartbeat for task %s, which was not sent to any worker yet", d.plugin, id)}
	case stateSent:
		t.state, t.workerID = stateClaimed, workerID
		t.beat = time.AfterFunc(d.timing.heartbeat, func() { d.heartbeatLost(t) })
		if d.timing.execution > 0 {
			t.timers = append(t.timers, time.AfterFunc(d.timing.execution, func() {
				d.mu.Lock()
				defer d.mu.Unlock()
				d.finishLocked(t, nil, fmt.Errorf("%w (%v)", ErrExecutionTimeout, d.timing.execution))
			}))
		}
		t.queue.signal()
	case stateClaimed:
		if workerID != t.workerID {
			d.log.Warn("heartbeat from a second worker for a claimed task",
				zap.String("task", id), zap.String("owner", t.workerID), zap.String("worker", workerID))
			return &tasksv1.TaskHeartbeatResponse{ShouldAbort: true, Status: tasksv1.TaskStatus_TASK_STATUS_ALREADY_CLAIMED}, nil
		}
		t.beat.Reset(d.timing.heartbeat)
	}
	return &tasksv1.TaskHeartbeatResponse{Status: tasksv1.TaskStatus_TASK_STATUS_IN_PROGRESS}, nil
}

func (d *dispatcher) heartbeatLost(t *task) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if t.state != stateClaimed {
		return
	}
	d.finishLocked(t, nil, fmt.Errorf("%w (no TaskHeartbeat from worker %q for %v)", ErrHeartbeatTimeout, t.workerID, d.timing.heartbeat))
}

// complete delivers a worker's result.
func (d *dispatcher) complete(req *tasksv1.CompleteTaskRequest) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	id := req.GetTaskId()
	t, ok := d.tasks[id]
	if !ok {
		return d.unknownLocked(id, "CompleteTask")
	}
	if t.state == stateQueued {
		return &statusError{msg: fmt.Sprintf("plugin %q: CompleteTask for task %s, which was not sent to any worker yet; ignored", d.plugin, id)}
	}
	_, isList := req.Result.(*tasksv1.CompleteTaskRequest_ListComponents)
	if t.list != isList || req.Result == nil {
		err := fmt.Errorf("%w: CompleteTask for task %s carries %s", ErrProtocol, id, resultKind(req))
		d.finishLocked(t, nil, err)
		return &statusError{msg: fmt.Sprintf("plugin %q: %v", d.plugin, err)}
	}
	d.finishLocked(t, req, nil)
	return nil
}

func resultKind(req *tasksv1.CompleteTaskRequest) string {
	switch req.Result.(type) {
	case *tasksv1.CompleteTaskRequest_Response:
		return "a component response"
	case *tasksv1.CompleteTaskRequest_Error:
		return "an error"
	case *tasksv1.CompleteTaskRequest_ListComponents:
		return "a component list"
	}
	return "no result"
}

// close fails every task and ends every stream.
func (d *dispatcher) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	d.closed = true
	for _, t := range d.tasks {
		d.finishLocked(t, nil, ErrClosed)
	}
	for _, q := range d.queues {
		q.signal()
	}
}

// wait waits for t; when ctx ends first, t is abandoned.
func (d *dispatcher) wait(ctx context.Context, t *task) (*tasksv1.CompleteTaskRequest, error) {
	select {
	case <-t.done:
	case <-ctx.Done():
		d.abandon(t, context.Cause(ctx))
		<-t.done
	}
	return t.res, t.err
}
