package stepflow

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/plugin/pluginapi"
	"github.com/stepflow-go/stepflow/pkg/protocol"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// Defaults of Options.
const (
	DefaultGracePeriod      = 5 * time.Second
	DefaultPortTimeout      = 30 * time.Second
	DefaultHandshakeTimeout = 60 * time.Second
	DefaultRestartMinDelay  = 100 * time.Millisecond
	DefaultRestartMaxDelay  = 5 * time.Second
	DefaultHealthyPeriod    = 10 * time.Second
)

// Options tune the plugin; zero fields take the defaults above.
type Options struct {
	// GracePeriod is how long Close waits after SIGTERM before SIGKILL.
	GracePeriod time.Duration
	// PortTimeout bounds the wait for the `{"port": N}` line.
	PortTimeout time.Duration
	// HandshakeTimeout bounds initialize/initialized.
	HandshakeTimeout time.Duration
	// RestartMinDelay and RestartMaxDelay bound the restart back-off,
	// which doubles with each consecutive failure.
	RestartMinDelay, RestartMaxDelay time.Duration
	// HealthyPeriod is how long a server must have run for the back-off
	// to start again from RestartMinDelay.
	HealthyPeriod time.Duration
	// BlobThreshold is the capabilities.blobThreshold offered to
	// stepflow-py 0.10+ servers: output fields whose JSON is larger come
	// back as blob references, which the plugin resolves. 0 (the
	// default) disables it: outputs come back inline.
	BlobThreshold int64
}

func (o Options) withDefaults() Options {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.GracePeriod, DefaultGracePeriod)
	def(&o.PortTimeout, DefaultPortTimeout)
	def(&o.HandshakeTimeout, DefaultHandshakeTimeout)
	def(&o.RestartMinDelay, DefaultRestartMinDelay)
	def(&o.RestartMaxDelay, DefaultRestartMaxDelay)
	def(&o.HealthyPeriod, DefaultHealthyPeriod)
	return o
}

// Factory builds `type: stepflow` plugins with the default Options; it is
// what package plugin registers for config.TypeStepflow.
func Factory(ctx context.Context, cfg *config.Plugin, host pluginapi.Host) (pluginapi.Plugin, error) {
	return New(cfg, host, Options{})
}

// NewFactory returns a Factory that uses opts (tests shorten the grace
// period and back-off with it).
func NewFactory(opts Options) pluginapi.Factory {
	return func(_ context.Context, cfg *config.Plugin, host pluginapi.Host) (pluginapi.Plugin, error) {
		return New(cfg, host, opts)
	}
}

// Plugin is a `type: stepflow` plugin: one component server, started
// once (or connected to once) and shared by every call. It is safe for
// concurrent use.
type Plugin struct {
	name      string
	cfg       *config.StepflowPlugin
	host      pluginapi.Host
	log       *zap.Logger
	opts      Options
	client    *http.Client
	callbacks *Callbacks
	flowIDs   *flowIDCache

	starts atomic.Int64

	// runCtx bounds launches; cancelled by Close.
	runCtx    context.Context
	cancelRun context.CancelFunc
	closing   chan struct{}
	supDone   chan struct{} // closed when the supervisor returned; nil without one

	mu       sync.Mutex
	started  bool
	closed   bool
	cur      *instance     // the current instance; may be dead while restarting
	gen      int           // generation of the last launch
	startErr error         // last failed (re)start while no instance runs
	changed  chan struct{} // closed and replaced on every change of cur/startErr/closed

	closeOnce sync.Once
	closeErr  error
}

var (
	_ pluginapi.Plugin         = (*Plugin)(nil)
	_ pluginapi.HealthReporter = (*Plugin)(nil)
)

// New builds the plugin for cfg (which must be a stepflow plugin). It
// starts nothing; Start does.
func New(cfg *config.Plugin, host pluginapi.Host, opts Options) (*Plugin, error) {
	if cfg == nil || cfg.Stepflow == nil {
		return nil, fmt.Errorf("%w: not a stepflow plugin", ErrConfig)
	}
	sc := cfg.Stepflow
	switch {
	case sc.Remote() && sc.Transport == config.TransportStdio:
		return nil, fmt.Errorf("%w: the stdio transport needs a command, not a url", ErrConfig)
	case !sc.Remote() && sc.Command == "":
		return nil, fmt.Errorf("%w: needs a command or a url", ErrConfig)
	}
	if host.Logger == nil {
		host.Logger = zap.NewNop()
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Plugin{
		name:      cfg.Name,
		cfg:       sc,
		host:      host,
		log:       host.Logger,
		opts:      opts.withDefaults(),
		callbacks: NewCallbacks(host.Blobs, host.Runs, host.Logger),
		flowIDs:   newFlowIDCache(host.Runs),
		runCtx:    ctx,
		cancelRun: cancel,
		closing:   make(chan struct{}),
		changed:   make(chan struct{}),
	}
	switch {
	case sc.Remote():
		p.client = remoteClient(host.HTTPClient)
	case sc.Transport != config.TransportStdio:
		p.client = protocol.NewHTTPClient()
	}
	return p, nil
}

// remoteClient derives the client for a remote server from the host's
// (keeping its TLS and proxy settings) with what the protocol needs: no
// per-host connection cap (callback answers must not wait behind open SSE
// streams), a large idle pool, an idle timeout below uvicorn's
// keep-alive, and no overall timeout.
func remoteClient(base *http.Client) *http.Client {
	var tr *http.Transport
	if base != nil {
		if t, ok := base.Transport.(*http.Transport); ok {
			tr = t.Clone()
		}
	}
	if tr == nil {
		return protocol.NewHTTPClient()
	}
	tr.IdleConnTimeout = protocol.IdleConnTimeout
	tr.MaxConnsPerHost = 0
	tr.MaxIdleConnsPerHost = 256
	c := &http.Client{Transport: tr, CheckRedirect: base.CheckRedirect, Jar: base.Jar}
	return c
}

// Name returns the plugin's name.
func (p *Plugin) Name() string { return p.name }

// Starts returns how many server processes the plugin has started
// (0 in remote mode).
func (p *Plugin) Starts() int { return int(p.starts.Load()) }

// Start launches the server (subprocess modes) or connects to it
// (remote mode) and completes the handshake. In subprocess modes it also
// starts the supervisor that restarts the server when it dies.
func (p *Plugin) Start(ctx context.Context) error {
	p.mu.Lock()
	if p.started || p.closed {
		p.mu.Unlock()
		return fmt.Errorf("plugin %q: Start called twice or after Close", p.name)
	}
	p.started = true
	p.gen = 1
	p.mu.Unlock()

	ctx, stop := mergeCancel(ctx, p.runCtx)
	defer stop()
	in, err := p.launch(ctx, 1)
	if err != nil {
		return err
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		in.stop(p.opts.GracePeriod)
		return fmt.Errorf("plugin %q: %w", p.name, ErrClosed)
	}
	p.setCurrentLocked(in, nil)
	if !p.cfg.Remote() {
		p.supDone = make(chan struct{})
		go p.supervise(in)
	}
	p.mu.Unlock()
	return nil
}

// mergeCancel returns ctx that is also cancelled when other ends.
func mergeCancel(ctx, other context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(other, func() { cancel(ErrClosed) })
	return ctx, func() {
		stop()
		cancel(context.Canceled)
	}
}

func (p *Plugin) setCurrentLocked(in *instance, startErr error) {
	if in != nil {
		p.cur = in
	}
	p.startErr = startErr
	close(p.changed)
	p.changed = make(chan struct{})
}

// instance returns the live instance, waiting while the server restarts.
// It fails when the plugin is closed or the last restart failed.
func (p *Plugin) instance(ctx context.Context) (*instance, error) {
	for {
		p.mu.Lock()
		switch {
		case p.closed:
			p.mu.Unlock()
			return nil, fmt.Errorf("plugin %q: %w", p.name, ErrClosed)
		case p.cur != nil && !p.cur.isDead():
			in := p.cur
			p.mu.Unlock()
			return in, nil
		case p.startErr != nil:
			err := p.startErr
			p.mu.Unlock()
			return nil, &ServerError{Plugin: p.name, Cause: fmt.Errorf("restart failed: %w", err), Restarting: true}
		case !p.started:
			p.mu.Unlock()
			return nil, fmt.Errorf("plugin %q: not started", p.name)
		}
		ch := p.changed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

// supervise restarts the server whenever the current instance dies, with
// a capped exponential back-off, until Close.
func (p *Plugin) supervise(in *instance) {
	defer close(p.supDone)
	failures := 0
	for {
		if in != nil {
			var cause error
			select {
			case <-in.dead:
				cause = in.cause
			case <-in.exited():
				cause = exitCause(in.proc)
			case <-in.done:
				cause = in.preferExit(fmt.Errorf("stdio stream failed: %w", stdioErr(in.tr)))
			case <-p.closing:
				return
			}
			in.kill(cause)
			p.log.Warn("component server died; restarting", zap.Error(cause), zap.Int("generation", in.gen),
				zap.Strings("stderr_tail", in.proc.Tail()))
			in.stop(0)
			if time.Since(in.started) >= p.opts.HealthyPeriod {
				failures = 0
			}
		}
		failures++
		delay := p.opts.RestartMinDelay << min(failures-1, 30)
		if delay > p.opts.RestartMaxDelay || delay <= 0 {
			delay = p.opts.RestartMaxDelay
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-p.closing:
			t.Stop()
			return
		}
		p.mu.Lock()
		p.gen++
		gen := p.gen
		p.mu.Unlock()
		next, err := p.launch(p.runCtx, gen)
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			if next != nil {
				next.stop(p.opts.GracePeriod)
			}
			return
		}
		if err != nil {
			p.log.Error("component server restart failed", zap.Error(err), zap.Int("attempt", failures), zap.Duration("delay", delay))
			p.setCurrentLocked(nil, err)
			p.mu.Unlock()
			in = nil
			continue
		}
		p.setCurrentLocked(next, nil)
		p.mu.Unlock()
		in = next
	}
}

func stdioErr(tr protocol.Transport) error {
	if s, ok := tr.(*protocol.Stdio); ok {
		if err := s.Err(); err != nil {
			return err
		}
	}
	return protocol.ErrTransport
}

// failed handles a transport failure of a call on in: in subprocess mode
// the instance is declared dead (the supervisor restarts the server) and
// the cause — preferably the process's exit — is returned.
func (p *Plugin) failed(in *instance, err error) *ServerError {
	if in.proc == nil {
		return &ServerError{Plugin: p.name, Cause: err, Err: err}
	}
	in.kill(in.preferExit(err))
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	return &ServerError{Plugin: p.name, Cause: in.deathCause(), Restarting: !closed, Err: err}
}

// Health implements pluginapi.HealthReporter: nil while the current
// server is running (subprocess modes) or has completed its handshake
// (remote mode, which is not probed further); otherwise why not: not
// started, restarting, the last restart failed, or closed.
func (p *Plugin) Health() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.closed:
		return fmt.Errorf("component server %q: %w", p.name, ErrClosed)
	case p.startErr != nil:
		return &ServerError{Plugin: p.name, Cause: fmt.Errorf("restart failed: %w", p.startErr), Restarting: true}
	case p.cur == nil:
		return fmt.Errorf("component server %q: not started", p.name)
	case p.cur.isDead():
		return &ServerError{Plugin: p.name, Cause: p.cur.deathCause(), Restarting: true}
	}
	select {
	case <-p.cur.exited(): // the supervisor is about to notice
		return &ServerError{Plugin: p.name, Cause: exitCause(p.cur.proc), Restarting: true}
	default:
	}
	return nil
}

// Components lists the server's components (components/list). Pattern
// components are not listed by the SDK.
func (p *Plugin) Components(ctx context.Context) ([]pluginapi.ComponentInfo, error) {
	in, err := p.instance(ctx)
	if err != nil {
		return nil, err
	}
	res, err := in.tr.Call(ctx, protocol.MethodComponentsList, value.NewObject(0), p.callbacks.Handler(""))
	if err != nil {
		if errors.Is(err, protocol.ErrTransport) && ctx.Err() == nil {
			return nil, p.failed(in, err)
		}
		return nil, fmt.Errorf("components/list: %w", err)
	}
	list, err := protocol.ParseListResult(res)
	if err != nil {
		return nil, err
	}
	out := make([]pluginapi.ComponentInfo, len(list))
	for i, ci := range list {
		out[i] = pluginapi.ComponentInfo{Component: ci.Component, Description: ci.Description, InputSchema: ci.InputSchema, OutputSchema: ci.OutputSchema}
	}
	return out, nil
}

func getString(o *value.Object, key string) (string, bool) {
	v, _ := o.Get(key)
	s, ok := v.(string)
	return s, ok
}

// Close stops the server: SIGTERM to its process group, the grace
// period, then SIGKILL; it waits for the process, the output drains and
// the supervisor. Calls in flight fail. It is idempotent.
func (p *Plugin) Close() error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		close(p.changed)
		p.changed = make(chan struct{})
		p.mu.Unlock()
		close(p.closing)
		p.cancelRun()
		if p.supDone != nil {
			<-p.supDone
		}
		p.mu.Lock()
		in := p.cur
		p.mu.Unlock()
		if in != nil {
			in.kill(ErrClosed)
			in.stop(p.opts.GracePeriod)
		}
		if p.client != nil {
			p.client.CloseIdleConnections()
		}
	})
	return p.closeErr
}
