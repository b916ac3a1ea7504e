package grpcqueue

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/plugin/childproc"
	"github.com/stepflow-go/stepflow/pkg/plugin/pluginapi"
	"github.com/stepflow-go/stepflow/pkg/value"
	tasksv1 "github.com/stepflow-go/stepflow/proto/tasksv1"
)

// Defaults of Options.
const (
	DefaultHeartbeatTimeout = 5 * time.Second
	DefaultConnectTimeout   = 60 * time.Second
	DefaultGracePeriod      = 5 * time.Second
	DefaultRestartMinDelay  = 100 * time.Millisecond
	DefaultRestartMaxDelay  = 5 * time.Second
	DefaultHealthyPeriod    = 10 * time.Second
	// maxMessage bounds gRPC messages both ways (inputs, outputs, blobs).
	maxMessage = 64 << 20
)

// Options tune the plugin; zero fields take the defaults above.
type Options struct {
	// HeartbeatTimeout is the silence after which a claimed task fails
	// (upstream: 5 s; workers heartbeat every second).
	HeartbeatTimeout time.Duration
	// ConnectTimeout bounds Start's wait for the launched worker's first
	// PullTasks; past it Start returns anyway (tasks then wait, within
	// queueTimeoutSecs). A worker that exits before connecting fails
	// Start.
	ConnectTimeout time.Duration
	// GracePeriod is how long Close waits after SIGTERM before SIGKILL.
	GracePeriod time.Duration
	// RestartMinDelay and RestartMaxDelay bound the restart back-off,
	// which doubles with each consecutive exit; HealthyPeriod is how long
	// a worker must have run for it to start again from the minimum.
	RestartMinDelay, RestartMaxDelay, HealthyPeriod time.Duration
}

func (o Options) withDefaults() Options {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.HeartbeatTimeout, DefaultHeartbeatTimeout)
	def(&o.ConnectTimeout, DefaultConnectTimeout)
	def(&o.GracePeriod, DefaultGracePeriod)
	def(&o.RestartMinDelay, DefaultRestartMinDelay)
	def(&o.RestartMaxDelay, DefaultRestartMaxDelay)
	def(&o.HealthyPeriod, DefaultHealthyPeriod)
	return o
}

// Factory builds `type: grpc` plugins with the default Options; package
// plugin registers it for config.TypeGRPC.
func Factory(_ context.Context, cfg *config.Plugin, host pluginapi.Host) (pluginapi.Plugin, error) {
	return New(cfg, host, Options{})
}

// NewFactory returns a Factory that uses opts.
func NewFactory(opts Options) pluginapi.Factory {
	return func(_ context.Context, cfg *config.Plugin, host pluginapi.Host) (pluginapi.Plugin, error) {
		return New(cfg, host, opts)
	}
}

// settings are what the plugin takes from its config entry (grpc or nats).
type settings struct {
	command string
	args    []string
	env     []config.EnvVar
	// queue is the default queue (grpc) or JetStream stream (nats).
	queue string
	// param is the route parameter that names another queue or stream.
	param                                  string
	queueTimeout, execTimeout, callTimeout time.Duration
	// nats is set for nats plugins.
	nats *config.NATSPlugin
}

// Plugin is a `type: grpc` or `type: nats` plugin. It is safe for
// concurrent use.
type Plugin struct {
	name string
	cfg  settings
	host pluginapi.Host
	log  *zap.Logger
	opts Options
	d    *dispatcher
	srv  *grpc.Server
	lis  net.Listener
	addr string
	// remote is set when the services listen on TCP (`listen`).
	remote bool
	// sockDir holds the Unix socket; removed by Close.
	sockDir string
	// nc and js are the NATS connection of a nats plugin.
	nc      *nats.Conn
	js      jetstream.JetStream
	streams sync.Map // JetStream streams made sure of (name -> struct{})

	closing  chan struct{}
	supDone  chan struct{} // closed when the supervisor returned; nil without one
	srvDone  chan struct{} // closed when Serve returned; nil before Start
	starts   int
	startsMu sync.Mutex

	mu       sync.Mutex
	proc     *childproc.Process       // the current worker process; nil between runs
	lastExit error                    // why the last worker process ended
	lists    map[string][]pathMatcher // queue -> its workers' component paths, from ListComponents
	listMu   sync.Mutex               // one ListComponents at a time for resolve
	listGen  atomic.Int64             // counts completed listings

	closeOnce sync.Once
	closeErr  error
}

var (
	_ pluginapi.Plugin         = (*Plugin)(nil)
	_ pluginapi.HealthReporter = (*Plugin)(nil)
)

// New builds the plugin; Start launches it.
func New(cfg *config.Plugin, host pluginapi.Host, opts Options) (*Plugin, error) {
	var st settings
	switch {
	case cfg != nil && cfg.GRPC != nil:
		g := cfg.GRPC
		st = settings{command: g.Command, args: g.Args, env: g.Env, queue: g.QueueName, param: "queueName",
			queueTimeout: g.QueueTimeout, execTimeout: g.ExecutionTimeout, callTimeout: g.Timeout}
	case cfg != nil && cfg.NATS != nil:
		n := cfg.NATS
		st = settings{command: n.Command, args: n.Args, env: n.Env, queue: n.Stream, param: "stream",
			queueTimeout: n.QueueTimeout, execTimeout: n.ExecutionTimeout, nats: n}
	default:
		return nil, fmt.Errorf("%w: not a grpc or nats plugin", ErrConfig)
	}
	if host.Logger == nil {
		host.Logger = zap.NewNop()
	}
	if host.Blobs == nil {
		return nil, fmt.Errorf("%w: the host has no blob store", ErrConfig)
	}
	opts = opts.withDefaults()
	d := newDispatcher(cfg.Name, timing{
		queue:     st.queueTimeout,
		heartbeat: opts.HeartbeatTimeout,
		execution: st.execTimeout,
		interval:  heartbeatInterval(opts.HeartbeatTimeout),
	}, host.Logger)
	if d.timing.queue <= 0 {
		d.timing.queue = config.DefaultQueueTimeout
	}
	return &Plugin{name: cfg.Name, cfg: st, host: host, log: host.Logger, opts: opts, d: d, closing: make(chan struct{})}, nil
}

// heartbeatInterval is the interval asked of workers: a fifth of the
// timeout, at least one second (the field counts whole seconds).
func heartbeatInterval(timeout time.Duration) uint32 {
	s := uint32(timeout / 5 / time.Second)
	if s < 1 {
		s = 1
	}
	return s
}

// Addr returns the address of the plugin's gRPC services ("" before
// Start): `unix:<path>`, or for a nats plugin with `listen` the advertised
// host:port. It is what STEPFLOW_TASKS_URL and STEPFLOW_BLOB_URL tell
// launched workers and what each task's orchestrator_service_url names.
func (p *Plugin) Addr() string { return p.addr }

// Start serves TasksService, OrchestratorService and BlobService (on a
// Unix socket in a private directory, or on TCP at a nats plugin's
// `listen`) and launches the worker (when `command` is set), waiting
// until it pulls tasks (see Options.ConnectTimeout).
func (p *Plugin) Start(ctx context.Context) error {
	if err := p.listen(); err != nil {
		return err
	}
	lis := p.lis
	p.srv = grpc.NewServer(grpc.MaxRecvMsgSize(maxMessage), grpc.MaxSendMsgSize(maxMessage))
	(&service{d: p.d, addr: p.addr, remote: p.remote, blobs: p.host.Blobs, runs: p.host.Runs, log: p.log}).register(p.srv)
	p.srvDone = make(chan struct{})
	go func() {
		defer close(p.srvDone)
		if err := p.srv.Serve(lis); err != nil {
			p.log.Error("gRPC server stopped", zap.Error(err))
		}
	}()
	p.log.Info("serving the worker protocol", zap.String("addr", p.addr), zap.String("queue", p.cfg.queue), zap.Bool("tcp", p.remote))
	if p.cfg.nats != nil {
		if err := p.startNATS(ctx); err != nil {
			return err
		}
	}
	if p.cfg.command == "" {
		return nil
	}
	connected := p.d.connectedChan()
	if p.cfg.nats != nil {
		connected = p.consumerReady()
		if p.cfg.queue == "" { // streams come from the routes: nothing to watch
			ready := make(chan struct{})
			close(ready)
			connected = ready
		}
	}
	wp, err := p.launch()
	if err != nil {
		return err
	}
	p.supDone = make(chan struct{})
	go p.supervise(wp)
	t := time.NewTimer(p.opts.ConnectTimeout)
	defer t.Stop()
	select {
	case <-connected:
		return nil
	case <-wp.Exited():
		return fmt.Errorf("worker exited before pulling tasks: %w", exitError(wp))
	case <-t.C:
		p.log.Warn("the worker has not pulled tasks yet; tasks wait for it", zap.Duration("waited", p.opts.ConnectTimeout))
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// listen opens the plugin's listener: TCP at a nats plugin's `listen`
// (peers limited to `allowFrom`), else a Unix socket in a directory only
// this user can enter, so no other local user can pull tasks (and read
// their inputs) or submit runs.
func (p *Plugin) listen() error {
	if n := p.cfg.nats; n != nil && n.Listen != "" {
		lis, err := net.Listen("tcp", n.Listen)
		if err != nil {
			return fmt.Errorf("plugin %q: listen on %s: %w", p.name, n.Listen, err)
		}
		adv, err := advertised(n.Advertise, lis.Addr())
		if err != nil {
			_ = lis.Close()
			return fmt.Errorf("plugin %q: %w", p.name, err)
		}
		allow := n.AllowFrom
		if allow == nil {
			allow = config.DefaultAllowFrom
		}
		p.lis = &allowListener{Listener: lis, allow: allow, plugin: p.name, log: p.log}
		p.addr, p.remote = adv, true
		return nil
	}
	dir, err := os.MkdirTemp("", "stepflow-grpc-")
	if err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	p.sockDir = dir
	sock := filepath.Join(dir, "tasks.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", sock, err)
	}
	p.lis, p.addr = lis, "unix:"+sock
	return nil
}

// launchedMaxConcurrent is the STEPFLOW_MAX_CONCURRENT a launched worker
// gets unless the plugin's env sets one. The SDK's default, 4, can
// deadlock nested runs: parents that wait on their child runs hold every
// place, and the children's tasks are never claimed. How many calls run
// at once is this process's business (its slots, --max-concurrent); the
// worker only needs room for all of them.
const launchedMaxConcurrent = 1024

// env is the worker's environment: the base variables, the plugin's
// `env`, then what the SDK's transport reads.
func (p *Plugin) env() []string {
	env := config.ProcessEnv(p.cfg.env, p.host.LookupEnv)
	if !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "STEPFLOW_MAX_CONCURRENT=") }) {
		env = append(env, "STEPFLOW_MAX_CONCURRENT="+strconv.Itoa(launchedMaxConcurrent))
	}
	if n := p.cfg.nats; n != nil {
		env = append(env,
			"STEPFLOW_TRANSPORT=nats",
			"STEPFLOW_NATS_URL="+n.URL,
			"STEPFLOW_NATS_STREAM="+p.cfg.queue,
			"STEPFLOW_NATS_CONSUMER="+p.consumer(),
			"STEPFLOW_TASKS_URL="+p.addr,
			"STEPFLOW_BLOB_URL="+p.addr,
		)
		return env
	}
	return append(env,
		"STEPFLOW_TRANSPORT=grpc",
		"STEPFLOW_TASKS_URL="+p.addr,
		"STEPFLOW_QUEUE_NAME="+p.cfg.queue,
		"STEPFLOW_BLOB_URL="+p.addr,
	)
}

func (p *Plugin) launch() (*childproc.Process, error) {
	wp, err := startWorker(p.cfg.command, p.cfg.args, p.env(), p.host.WorkingDir, p.log)
	if err != nil {
		return nil, err
	}
	p.startsMu.Lock()
	p.starts++
	p.startsMu.Unlock()
	p.mu.Lock()
	p.proc = wp
	p.mu.Unlock()
	p.log.Info("worker started", zap.Int("pid", wp.Pid()))
	return wp, nil
}

// Starts returns how many worker processes were launched.
func (p *Plugin) Starts() int {
	p.startsMu.Lock()
	defer p.startsMu.Unlock()
	return p.starts
}

// supervise restarts the worker when it exits, with a capped back-off.
// Its in-flight tasks fail as its streams end (ErrWorkerGone).
func (p *Plugin) supervise(wp *childproc.Process) {
	defer close(p.supDone)
	delay := p.opts.RestartMinDelay
	for {
		started := time.Now()
		select {
		case <-p.closing:
			wp.Stop(p.opts.GracePeriod)
			return
		case <-wp.Exited():
		}
		exit := exitError(wp)
		p.mu.Lock()
		p.proc, p.lastExit = nil, exit
		p.mu.Unlock()
		if time.Since(started) >= p.opts.HealthyPeriod {
			delay = p.opts.RestartMinDelay
		}
		p.log.Warn("worker exited; restarting", zap.Error(exit), zap.Duration("after", delay))
		for {
			t := time.NewTimer(delay)
			select {
			case <-p.closing:
				t.Stop()
				return
			case <-t.C:
			}
			delay = min(2*delay, p.opts.RestartMaxDelay)
			next, err := p.launch()
			if err == nil {
				wp = next
				break
			}
			p.mu.Lock()
			p.lastExit = fmt.Errorf("restart failed: %w", err)
			p.mu.Unlock()
			p.log.Error("worker restart failed", zap.Error(err), zap.Duration("retry_after", delay))
		}
	}
}

// Health is nil while a worker pulls the plugin's queue (grpc), or while
// the NATS connection is up and the launched worker runs (nats).
func (p *Plugin) Health() error {
	if p.cfg.nats != nil {
		return p.natsHealth()
	}
	if p.d.workers(p.cfg.queue) > 0 {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lastExit != nil {
		return fmt.Errorf("no worker pulls queue %q: %w", p.cfg.queue, p.lastExit)
	}
	return fmt.Errorf("no worker pulls queue %q", p.cfg.queue)
}

// Close stops the worker, fails every waiting task and stops the server.
func (p *Plugin) Close() error {
	p.closeOnce.Do(func() {
		// Ending the PullTasks streams first lets the SDK worker leave by
		// itself: it checks its SIGTERM flag only between tasks, but it
		// exits when the server goes away.
		p.d.close()
		close(p.closing)
		if p.supDone != nil {
			<-p.supDone
		}
		if p.srv != nil {
			stopped := make(chan struct{})
			go func() { p.srv.GracefulStop(); close(stopped) }()
			t := time.NewTimer(p.opts.GracePeriod)
			select {
			case <-stopped:
			case <-t.C:
				p.srv.Stop()
				<-stopped
			}
			t.Stop()
			<-p.srvDone
		}
		if p.nc != nil {
			p.nc.Close()
		}
		if p.sockDir != "" {
			if err := os.RemoveAll(p.sockDir); err != nil {
				p.closeErr = fmt.Errorf("remove the socket directory: %w", err)
			}
		}
	})
	return p.closeErr
}

// Components asks a worker of the queue for its components (a
// ListComponentsRequest task).
func (p *Plugin) Components(ctx context.Context) ([]pluginapi.ComponentInfo, error) {
	list, err := p.listComponents(ctx, p.cfg.queue)
	if err != nil {
		return nil, err
	}
	out := make([]pluginapi.ComponentInfo, 0, len(list))
	for _, c := range list {
		ci := pluginapi.ComponentInfo{Component: componentPath(c), Description: c.GetDescription()}
		if s := c.GetInputSchema(); s != "" {
			if v, err := value.Parse([]byte(s)); err == nil {
				ci.InputSchema = v
			}
		}
		if s := c.GetOutputSchema(); s != "" {
			if v, err := value.Parse([]byte(s)); err == nil {
				ci.OutputSchema = v
			}
		}
		out = append(out, ci)
	}
	return out, nil
}

// componentPath is the path a component is registered at, with a leading
// "/" ("/{component_id}" when the worker gives none).
func componentPath(c *tasksv1.ComponentInfo) string {
	path := c.GetPath()
	if path == "" {
		path = c.GetComponentId()
	}
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	return path
}

func (p *Plugin) listComponents(ctx context.Context, queue string) ([]*tasksv1.ComponentInfo, error) {
	t := p.d.newTask(queue, "list_components", &tasksv1.TaskAssignment{
		Task:    &tasksv1.TaskAssignment_ListComponents{ListComponents: &tasksv1.ListComponentsRequest{}},
		Context: &tasksv1.TaskContext{OrchestratorServiceUrl: p.addr},
	})
	if err := p.d.enqueue(t); err != nil {
		return nil, p.taskError(t, err)
	}
	res, err := p.d.wait(ctx, t)
	if err != nil {
		return nil, p.taskError(t, err)
	}
	list := res.GetListComponents().GetComponents()
	matchers := make([]pathMatcher, 0, len(list))
	for _, c := range list {
		if m, ok := newPathMatcher(componentPath(c), c.GetComponentId()); ok {
			matchers = append(matchers, m)
		}
	}
	p.mu.Lock()
	if p.lists == nil {
		p.lists = map[string][]pathMatcher{}
	}
	p.lists[queue] = matchers
	p.mu.Unlock()
	p.listGen.Add(1)
	return list, nil
}

func (p *Plugin) taskError(t *task, err error) error {
	return &TaskError{Plugin: p.name, Queue: t.queueName, TaskID: t.id, Component: t.component, Cause: err}
}

// Component returns the component at the plugin-local path (/echo).
func (p *Plugin) Component(name string) (executor.Component, error) {
	return &component{p: p, name: name, queue: p.cfg.queue}, nil
}

// ComponentWithParams returns the component on the queue a route rule's
// `params.queueName` names (pluginapi.ParamsComponenter).
func (p *Plugin) ComponentWithParams(name string, params map[string]string) (executor.Component, error) {
	q := p.cfg.queue
	if v := params[p.cfg.param]; v != "" {
		q = v
	}
	return &component{p: p, name: name, queue: q}, nil
}

// resolve maps a plugin-local path to the worker's component id and path
// parameters, through the worker's component list (fetched once, and
// again when a path matches nothing). id is "" when no component matches.
func (p *Plugin) resolve(ctx context.Context, queue, name string) (string, map[string]string, error) {
	lookup := func() (string, map[string]string, bool, bool) {
		p.mu.Lock()
		defer p.mu.Unlock()
		ms, known := p.lists[queue]
		id, params, ok := matchPath(ms, name)
		return id, params, ok, known
	}
	if id, params, ok, _ := lookup(); ok {
		return id, params, nil
	}
	// One listing at a time: the calls of a batch's first items share it.
	gen := p.listGen.Load()
	p.listMu.Lock()
	defer p.listMu.Unlock()
	if id, params, ok, known := lookup(); ok {
		return id, params, nil
	} else if known && p.listGen.Load() != gen {
		return "", nil, nil // listed meanwhile, and still no match
	}
	if _, err := p.listComponents(ctx, queue); err != nil {
		return "", nil, err
	}
	id, params, _, _ := lookup()
	return id, params, nil
}

// component is one component of the plugin on one queue.
type component struct {
	p     *Plugin
	name  string
	queue string
}

var _ executor.NamedComponent = (*component)(nil)

// ComponentName returns the plugin-local name.
func (c *component) ComponentName() string { return c.name }

// Execute hands the call to a worker of the queue and waits for its
// CompleteTask. A TaskError of the worker is a failed result (the step's
// onError applies); no answer (timeouts, a worker that went away) is a
// *TaskError.
func (c *component) Execute(ctx context.Context, req *executor.Request) (outcome.Result, error) {
	p := c.p
	if p.cfg.callTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, p.cfg.callTimeout, fmt.Errorf("%w (%v)", ErrCallTimeout, p.cfg.callTimeout))
		defer cancel()
	}
	id, params, err := p.resolve(ctx, c.queue, c.name)
	if err != nil {
		return outcome.Result{}, fmt.Errorf("component %s: list the worker's components: %w", c.name, err)
	}
	if id == "" {
		return outcome.Failure(&outcome.Error{Code: codeFailed, Message: fmt.Sprintf("component %s not found on the workers of plugin %q", c.name, p.name),
			Data: value.ObjectOf("step_id", req.StepID, "component", c.name, "error_code", "TASK_ERROR_CODE_COMPONENT_NOT_FOUND")}), nil
	}
	input, err := toProto(req.Input)
	if err != nil {
		return outcome.Result{}, fmt.Errorf("component %s: input: %w", c.name, err)
	}
	attempt := req.Attempt
	if attempt < 1 {
		attempt = 1
	}
	obs := &tasksv1.ObservabilityContext{}
	if req.RunID != "" {
		obs.RunId = &req.RunID
	}
	if req.StepID != "" {
		obs.StepId = &req.StepID
	}
	t := p.d.newTask(c.queue, c.name, &tasksv1.TaskAssignment{
		Task: &tasksv1.TaskAssignment_Execute{Execute: &tasksv1.ComponentExecuteRequest{
			ComponentId: id, Input: input, Attempt: uint32(attempt), Observability: obs, PathParams: params,
		}},
		Context: &tasksv1.TaskContext{OrchestratorServiceUrl: p.addr, RootRunId: req.RunID},
	})
	if err := p.d.enqueue(t); err != nil {
		return outcome.Result{}, p.taskError(t, err)
	}
	res, err := p.d.wait(ctx, t)
	if err != nil {
		return outcome.Result{}, p.taskError(t, err)
	}
	switch r := res.Result.(type) {
	case *tasksv1.CompleteTaskRequest_Response:
		out, err := fromProto(r.Response.GetOutput())
		if err != nil {
			return outcome.Result{}, p.taskError(t, fmt.Errorf("%w: output: %v", ErrProtocol, err))
		}
		return outcome.Success(out), nil
	case *tasksv1.CompleteTaskRequest_Error:
		data := value.ObjectOf("step_id", req.StepID, "component", c.name, "task_id", t.id, "error_code", r.Error.GetCode().String())
		if r.Error.Data != nil {
			if dv, err := fromStruct(r.Error.Data, 0); err == nil {
				data.Set("data", dv)
			}
		}
		return outcome.Failure(&outcome.Error{Code: codeFailed, Message: r.Error.GetMessage(), Data: data}), nil
	}
	return outcome.Result{}, p.taskError(t, fmt.Errorf("%w: CompleteTask carries %s", ErrProtocol, resultKind(res)))
}

// codeFailed is the FlowError code of a component's TaskError (the
// protocol's codes are enum names; they travel in data.error_code).
const codeFailed = 500
