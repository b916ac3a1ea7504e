// Package mcp is the `type: mcp` plugin: a Model Context Protocol server
// run as a child process and spoken to over its stdin and stdout, whose
// tools become components.
//
//	plugins:
//	  fs:
//	    type: mcp
//	    command: npx
//	    args: ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"]
//	    env: { K: "${HOME}" }     # added to the base environment (config.BaseEnv)
//	    timeoutMs: 30000         # per tool call; 0 or absent = none
//
// # Process
//
// The server runs `command args…` in the config's working directory with
// the base variables of the runtime's environment (config.BaseEnv: PATH,
// HOME, locale, …) plus the configured env, never the whole environment
// (upstream passes it all; the worker's secrets stay in the worker), in
// its own process group. Its stderr is logged line by line (debug level, info when
// STEPFLOW_COMPONENT_STDERR=verbose). Close closes its stdin, sends
// SIGTERM to the group, SIGKILL after a grace period (2 s), and waits for
// it.
//
// # Protocol
//
// Messages are newline-delimited JSON-RPC 2.0, of any length. The client
// sends `initialize` (protocolVersion 2024-11-05, capabilities {},
// clientInfo {name: "stepflow-go", version: ClientVersion}), accepts
// whatever version the server answers, sends `notifications/initialized`
// and lists the tools with `tools/list` (following nextCursor). Each tool
// T becomes the component /T with the tool's description and inputSchema;
// there is no output schema. Calls are multiplexed by id over the one pipe
// pair. Server notifications are ignored (log messages are logged at debug
// level; `notifications/tools/list_changed` makes the next Components call
// list the tools again). Server requests are answered so that the server
// never waits: `ping` with {}, anything else (roots/list,
// sampling/createMessage, elicitation/create, …) with the JSON-RPC error
// -32601.
//
// # Execution
//
// A step's input is sent as `tools/call {name: T, arguments: <input>}`
// (arguments left out when the input is null). As upstream Stepflow does,
// the component's output is the result's `content` — the array of content
// blocks, e.g. [{"type":"text","text":"Echo: hi"}] — not the text inside
// it and not `structuredContent`; a result without `content` is the output
// as a whole. A result with `isError: true` is the failed result
// `500 "Tool 'T' execution failed"` with the content as its data. A
// JSON-RPC error (*RPCError), a server that exits mid-call
// (ErrServerExited) and a timeout (ErrTimeout) are Go errors, which fail
// the step with `500 step "<id>" failed`.
//
// Component accepts any name /T without consulting the tool list — the
// server decides, since its tools can change at run time — so an unknown
// tool fails as the server reports it (with the everything server: the
// failed result `Tool 'T' execution failed`).
//
// # Restarts
//
// A server that exits fails the calls in flight and is started again,
// with a new handshake, by the next call; consecutive failures (exits,
// timeouts, failed starts) delay the restart with a capped exponential
// backoff (100 ms doubling up to 30 s) that a successful call resets. A
// call that exceeds `timeoutMs` fails and its server is restarted. Calls
// are never retried: tool calls need not be idempotent.
package mcp

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/plugin/pluginapi"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// ProtocolVersion is the MCP version the client asks for in initialize.
const ProtocolVersion = "2024-11-05"

// ClientName is the clientInfo name sent in initialize.
const ClientName = "stepflow-go"

// ClientVersion is the clientInfo version sent in initialize. Set it at
// build time with
// -ldflags "-X github.com/stepflow-go/stepflow/pkg/plugin/mcp.ClientVersion=…".
var ClientVersion = "0.1.0-dev"

// Defaults of Options.
const (
	DefaultHandshakeTimeout = 30 * time.Second
	DefaultKillGrace        = 2 * time.Second
	DefaultBackoffMin       = 100 * time.Millisecond
	DefaultBackoffMax       = 30 * time.Second
)

// maxToolPages bounds tools/list pagination against servers whose
// cursors never end.
const maxToolPages = 1000

// Errors of the plugin, matched with errors.Is.
var (
	// ErrServerExited: the server process exited (or closed its stdout)
	// while calls were in flight. The text gives the exit status and the
	// last lines of its stderr.
	ErrServerExited = errors.New("mcp server exited")
	// ErrTimeout: a call took longer than the plugin's timeoutMs, or the
	// handshake longer than Options.HandshakeTimeout.
	ErrTimeout = errors.New("mcp call timed out")
	// ErrClosed: the plugin is closed.
	ErrClosed = errors.New("mcp plugin closed")
	// ErrProtocol: the server answered something that is not MCP.
	ErrProtocol = errors.New("mcp protocol error")
)

// RPCError is a JSON-RPC error response from the server.
type RPCError struct {
	Code    int64
	Message string
	Data    value.Value // nil when absent
}

// Error returns `mcp error <code>: <message>`.
func (e *RPCError) Error() string {
	return fmt.Sprintf("mcp error %d: %s", e.Code, e.Message)
}

// Options tunes a Plugin; zero fields get the defaults above.
type Options struct {
	// HandshakeTimeout bounds initialize plus tools/list of each start.
	HandshakeTimeout time.Duration
	// KillGrace is the time between SIGTERM and SIGKILL when stopping.
	KillGrace time.Duration
	// BackoffMin and BackoffMax bound the delay before a restart after
	// consecutive failures (BackoffMin, doubling, capped at BackoffMax).
	BackoffMin time.Duration
	BackoffMax time.Duration
}

func (o Options) withDefaults() Options {
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if o.KillGrace <= 0 {
		o.KillGrace = DefaultKillGrace
	}
	if o.BackoffMin <= 0 {
		o.BackoffMin = DefaultBackoffMin
	}
	if o.BackoffMax <= 0 {
		o.BackoffMax = DefaultBackoffMax
	}
	if o.BackoffMax < o.BackoffMin {
		o.BackoffMax = o.BackoffMin
	}
	return o
}

// Plugin is a running (or restartable) MCP server. It is safe for
// concurrent use.
type Plugin struct {
	name        string
	spec        spec
	timeout     time.Duration
	opts        Options
	log         *zap.Logger
	stderrLevel zapcore.Level

	// ctx is cancelled by Close, to abort starts and backoffs.
	ctx    context.Context
	cancel context.CancelFunc

	// sent is a test hook copied into each session.
	sent func(method string)

	mu          sync.Mutex
	sess        *session // nil when none is running
	starting    *attempt // the start in progress, if any
	closed      bool
	failures    int // consecutive failures, for the backoff
	lastFailure time.Time
	tools       []pluginapi.ComponentInfo
	toolsGen    int // bumped by notifications/tools/list_changed
	toolsSeen   int // toolsGen when tools was listed

	wg sync.WaitGroup // starts and stops in progress
}

// attempt is a start in progress, which concurrent callers wait for.
type attempt struct {
	done chan struct{}
	err  error
	// aborted: the starter's own context ended; waiters try again.
	aborted bool
}

var (
	_ pluginapi.Plugin         = (*Plugin)(nil)
	_ pluginapi.HealthReporter = (*Plugin)(nil)
	_ executor.NamedComponent  = (*tool)(nil)
)

// Factory is the pluginapi.Factory of `type: mcp`.
func Factory(_ context.Context, cfg *config.Plugin, host pluginapi.Host) (pluginapi.Plugin, error) {
	return New(cfg, host, Options{})
}

// New returns the plugin for cfg without starting it. host.Logger should
// be named for the plugin (package plugin does so); zero fields of host
// get defaults (no-op logger, os.LookupEnv, the process's working
// directory).
func New(cfg *config.Plugin, host pluginapi.Host, opts Options) (*Plugin, error) {
	if cfg == nil || cfg.MCP == nil {
		return nil, errors.New("not an mcp plugin configuration")
	}
	mc := cfg.MCP
	if mc.Command == "" {
		return nil, errors.New("`command` is empty")
	}
	log := host.Logger
	if log == nil {
		log = zap.NewNop()
	}
	lookup := host.LookupEnv
	if lookup == nil {
		lookup = os.LookupEnv
	}
	level := zapcore.DebugLevel
	if v, _ := lookup("STEPFLOW_COMPONENT_STDERR"); v == "verbose" {
		level = zapcore.InfoLevel
	}
	env := config.ProcessEnv(mc.Env, lookup) // never the whole environment
	ctx, cancel := context.WithCancel(context.Background())
	return &Plugin{
		name:        cfg.Name,
		spec:        spec{command: mc.Command, args: append([]string(nil), mc.Args...), dir: host.WorkingDir, env: env},
		timeout:     mc.Timeout,
		opts:        opts.withDefaults(),
		log:         log,
		stderrLevel: level,
		ctx:         ctx,
		cancel:      cancel,
	}, nil
}

// Start launches the server, does the handshake and lists its tools.
func (p *Plugin) Start(ctx context.Context) error {
	_, err := p.acquire(ctx)
	return err
}

// Close stops the server (SIGTERM to its process group, SIGKILL after the
// grace period) and waits for it. Calls in flight fail with ErrClosed. It
// is idempotent and safe after a failed Start.
func (p *Plugin) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	s := p.sess
	p.sess = nil
	p.mu.Unlock()
	p.cancel()
	if s != nil {
		s.stop(ErrClosed, p.opts.KillGrace)
	}
	p.wg.Wait()
	return nil
}

// Health implements pluginapi.HealthReporter: nil while a server runs;
// otherwise why not. A server that died is started again by the next
// call (after the back-off), not before: until then it is down.
func (p *Plugin) Health() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.closed:
		return fmt.Errorf("mcp server %q: %w", p.name, ErrClosed)
	case p.sess != nil && !p.sess.dead():
		return nil
	case p.sess != nil:
		return fmt.Errorf("mcp server %q exited (%v); it is restarted by the next call", p.name, p.sess.failure())
	case p.starting != nil:
		return fmt.Errorf("mcp server %q: starting", p.name)
	case p.failures > 0:
		return fmt.Errorf("mcp server %q: down after %d consecutive failures; the next call starts it again", p.name, p.failures)
	}
	return fmt.Errorf("mcp server %q: not started", p.name)
}

// Components lists the server's tools as components /T. The list is the
// one of the last start, listed again after the server announced a change
// (notifications/tools/list_changed).
func (p *Plugin) Components(ctx context.Context) ([]pluginapi.ComponentInfo, error) {
	p.mu.Lock()
	tools, stale := p.tools, p.toolsGen != p.toolsSeen
	p.mu.Unlock()
	if stale {
		s, err := p.acquire(ctx)
		if err != nil {
			return nil, err
		}
		p.mu.Lock()
		gen := p.toolsGen
		p.mu.Unlock()
		fresh, err := p.listTools(ctx, s)
		if err != nil {
			return nil, err
		}
		p.mu.Lock()
		if p.sess == s {
			p.tools, p.toolsSeen = fresh, gen
		}
		p.mu.Unlock()
		tools = fresh
	}
	return append([]pluginapi.ComponentInfo(nil), tools...), nil
}

// Component returns the component that calls the tool T for the name /T.
func (p *Plugin) Component(name string) (executor.Component, error) {
	t, ok := strings.CutPrefix(name, "/")
	if !ok || t == "" {
		return nil, fmt.Errorf("%w: %s", pluginapi.ErrUnknownComponent, name)
	}
	return &tool{p: p, component: name, name: t}, nil
}

// tool is the component of one MCP tool.
type tool struct {
	p         *Plugin
	component string // /T
	name      string // T
}

// ComponentName returns /T (executor.NamedComponent).
func (t *tool) ComponentName() string { return t.component }

// Execute calls the tool with the step's input as its arguments.
func (t *tool) Execute(ctx context.Context, req *executor.Request) (outcome.Result, error) {
	var input value.Value
	if req != nil {
		input = req.Input
	}
	res, err := t.p.callTool(ctx, t.name, input)
	if err != nil {
		return outcome.Result{}, fmt.Errorf("mcp tool %q: %w", t.name, err)
	}
	ro, ok := res.(*value.Object)
	if !ok {
		return outcome.Result{}, fmt.Errorf("mcp tool %q: %w: tools/call result is %s, not an object", t.name, ErrProtocol, value.TypeName(res))
	}
	content, ok := ro.Get("content")
	if !ok {
		content = ro
	}
	if isErr, _ := ro.Get("isError"); isErr == true {
		return outcome.Failure(&outcome.Error{
			Code:    outcome.CodeComponent,
			Message: fmt.Sprintf("Tool '%s' execution failed", t.name),
			Data:    content,
		}), nil
	}
	return outcome.Success(content), nil
}

// callTool runs tools/call on the current server, starting it if needed,
// and restarts the server after a timeout or when it died.
func (p *Plugin) callTool(ctx context.Context, name string, input value.Value) (value.Value, error) {
	s, err := p.acquire(ctx)
	if err != nil {
		return nil, err
	}
	params := value.NewObject(2)
	params.Set("name", name)
	if input != nil {
		params.Set("arguments", input)
	}
	callCtx := ctx
	var timeoutErr error
	if p.timeout > 0 {
		timeoutErr = fmt.Errorf("%w after %s", ErrTimeout, p.timeout)
		var cancel context.CancelFunc
		callCtx, cancel = context.WithTimeoutCause(ctx, p.timeout, timeoutErr)
		defer cancel()
	}
	res, err := s.call(callCtx, "tools/call", params)
	var rpcErr *RPCError
	switch {
	case err == nil || errors.As(err, &rpcErr):
		p.succeeded()
	case timeoutErr != nil && ctx.Err() == nil && errors.Is(err, timeoutErr):
		p.log.Warn("mcp tool call timed out; restarting the server", zap.String("tool", name), zap.Duration("timeout", p.timeout))
		p.retire(s, err)
	case ctx.Err() != nil:
		// The caller gave up; the server is fine.
	default:
		p.retire(s, err)
	}
	return res, err
}

// succeeded resets the backoff.
func (p *Plugin) succeeded() {
	p.mu.Lock()
	p.failures = 0
	p.mu.Unlock()
}

// retire stops s in the background if it is the current session, and
// counts a failure.
func (p *Plugin) retire(s *session, reason error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.retireLocked(s, reason)
}

func (p *Plugin) retireLocked(s *session, reason error) {
	if p.sess != s {
		return // already retired
	}
	p.sess = nil
	p.failures++
	p.lastFailure = time.Now()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		s.stop(reason, p.opts.KillGrace)
	}()
}

// backoffLocked returns how long to wait before the next start.
func (p *Plugin) backoffLocked() time.Duration {
	if p.failures == 0 {
		return 0
	}
	d := p.opts.BackoffMin
	for i := 1; i < p.failures && d < p.opts.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, p.opts.BackoffMax)
	return max(0, d-time.Since(p.lastFailure))
}

// acquire returns the running session, starting one (after the backoff)
// when there is none or it died. Concurrent callers share one start.
func (p *Plugin) acquire(ctx context.Context) (*session, error) {
	for {
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrClosed
		}
		if s := p.sess; s != nil {
			if !s.dead() {
				p.mu.Unlock()
				return s, nil
			}
			p.retireLocked(s, s.failure())
		}
		if st := p.starting; st != nil {
			p.mu.Unlock()
			select {
			case <-st.done:
				if st.err != nil && !st.aborted {
					return nil, st.err
				}
				continue
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
		}
		st := &attempt{done: make(chan struct{})}
		p.starting = st
		delay := p.backoffLocked()
		p.wg.Add(1)
		p.mu.Unlock()

		s, tools, err := p.launch(ctx, delay)

		p.mu.Lock()
		p.starting = nil
		switch {
		case err == nil && p.closed:
			err = ErrClosed
		case err == nil:
			p.sess = s
			p.tools, p.toolsSeen = tools, p.toolsGen
		case ctx.Err() != nil && p.ctx.Err() == nil:
			st.aborted = true
		default:
			p.failures++
			p.lastFailure = time.Now()
		}
		st.err = err
		close(st.done)
		p.mu.Unlock()
		if err != nil && s != nil {
			s.stop(err, p.opts.KillGrace)
		}
		p.wg.Done()
		if err != nil {
			return nil, err
		}
		return s, nil
	}
}

// launch waits delay, then starts a server and does the handshake. On
// error the returned session, if any, still has to be stopped.
func (p *Plugin) launch(ctx context.Context, delay time.Duration) (*session, []pluginapi.ComponentInfo, error) {
	if delay > 0 {
		p.log.Info("restarting the mcp server after a backoff", zap.Duration("delay", delay))
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, nil, context.Cause(ctx)
		case <-p.ctx.Done():
			t.Stop()
			return nil, nil, ErrClosed
		}
	}
	s, err := spawn(p.spec, p.log, p.stderrLevel)
	if err != nil {
		return nil, nil, err
	}
	s.sent = p.sent
	s.onNotify = p.onNotify
	s.run()

	hctx, cancel := context.WithTimeoutCause(ctx, p.opts.HandshakeTimeout,
		fmt.Errorf("%w: no answer to the handshake within %s", ErrTimeout, p.opts.HandshakeTimeout))
	defer cancel()
	stopOnClose := context.AfterFunc(p.ctx, func() { s.fail(ErrClosed) })
	defer stopOnClose()

	if err := p.handshake(hctx, s); err != nil {
		return s, nil, err
	}
	var tools []pluginapi.ComponentInfo
	if s.hasTools {
		if tools, err = p.listTools(hctx, s); err != nil {
			return s, nil, err
		}
	}
	p.log.Info("mcp server started",
		zap.Int("pid", s.pid),
		zap.String("server", s.serverName),
		zap.String("server_version", s.serverVersion),
		zap.String("protocol_version", s.protocolVersion),
		zap.Int("tools", len(tools)))
	return s, tools, nil
}

// onNotify handles the server notifications the plugin cares about.
func (p *Plugin) onNotify(method string, _ value.Value) {
	if method == "notifications/tools/list_changed" {
		p.mu.Lock()
		p.toolsGen++
		p.mu.Unlock()
	}
}

// handshake sends initialize and notifications/initialized.
func (p *Plugin) handshake(ctx context.Context, s *session) error {
	params := value.ObjectOf(
		"protocolVersion", ProtocolVersion,
		"capabilities", value.NewObject(0),
		"clientInfo", value.ObjectOf("name", ClientName, "version", ClientVersion),
	)
	res, err := s.call(ctx, "initialize", params)
	if err != nil {
		return fmt.Errorf("initialize: %w", err)
	}
	ro, ok := res.(*value.Object)
	if !ok {
		return fmt.Errorf("initialize: %w: result is %s, not an object", ErrProtocol, value.TypeName(res))
	}
	s.protocolVersion = str(ro, "protocolVersion")
	if si, ok := ro.Get("serverInfo"); ok {
		if so, ok := si.(*value.Object); ok {
			s.serverName, s.serverVersion = str(so, "name"), str(so, "version")
		}
	}
	if cv, ok := ro.Get("capabilities"); ok {
		if co, ok := cv.(*value.Object); ok {
			s.hasTools = co.Has("tools")
		}
	}
	s.notify("notifications/initialized", nil)
	return nil
}

// listTools runs tools/list, following nextCursor, and converts the tools.
func (p *Plugin) listTools(ctx context.Context, s *session) ([]pluginapi.ComponentInfo, error) {
	var out []pluginapi.ComponentInfo
	cursor := ""
	for page := 0; ; page++ {
		if page == maxToolPages {
			return nil, fmt.Errorf("tools/list: %w: more than %d pages", ErrProtocol, maxToolPages)
		}
		var params value.Value
		if cursor != "" {
			params = value.ObjectOf("cursor", cursor)
		}
		res, err := s.call(ctx, "tools/list", params)
		if err != nil {
			return nil, fmt.Errorf("tools/list: %w", err)
		}
		ro, ok := res.(*value.Object)
		if !ok {
			return nil, fmt.Errorf("tools/list: %w: result is %s, not an object", ErrProtocol, value.TypeName(res))
		}
		tv, _ := ro.Get("tools")
		tools, ok := tv.([]value.Value)
		if !ok && tv != nil {
			return nil, fmt.Errorf("tools/list: %w: tools is %s, not an array", ErrProtocol, value.TypeName(tv))
		}
		for _, t := range tools {
			to, ok := t.(*value.Object)
			name := ""
			if ok {
				name = str(to, "name")
			}
			if name == "" {
				p.log.Warn("ignoring a tool without a name", zap.String("tool", clip(value.String(t))))
				continue
			}
			info := pluginapi.ComponentInfo{Component: "/" + name, Description: str(to, "description")}
			if sch, ok := to.Get("inputSchema"); ok {
				info.InputSchema = sch
			}
			out = append(out, info)
		}
		next := str(ro, "nextCursor")
		if next == "" {
			return out, nil
		}
		if next == cursor {
			return nil, fmt.Errorf("tools/list: %w: nextCursor %q repeats", ErrProtocol, next)
		}
		cursor = next
	}
}

func str(o *value.Object, key string) string {
	v, _ := o.Get(key)
	s, _ := v.(string)
	return s
}
