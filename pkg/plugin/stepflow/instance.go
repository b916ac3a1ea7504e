package stepflow

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/plugin/childproc"
	"github.com/stepflow-go/stepflow/pkg/protocol"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// stdoutPipeSize is the stdout pipe size of stdio servers (component
// protocol §2.2.6): stepflow-py <= 0.8 rewrites a whole answer that does
// not fit into the free pipe space.
const stdoutPipeSize = protocol.StdioPipeSize

// runTracker counts the executions in flight per run id.
type runTracker struct {
	mu     sync.Mutex
	counts map[string]int
}

// add records an execution of runID and returns its release.
func (t *runTracker) add(runID string) func() {
	t.mu.Lock()
	t.counts[runID]++
	t.mu.Unlock()
	return func() {
		t.mu.Lock()
		if t.counts[runID]--; t.counts[runID] <= 0 {
			delete(t.counts, runID)
		}
		t.mu.Unlock()
	}
}

// sole returns the run id of the executions in flight when there is
// exactly one, else "".
func (t *runTracker) sole() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.counts) != 1 {
		return ""
	}
	for id := range t.counts {
		return id
	}
	return ""
}

// instance is one connection to a server: a started process with its
// transport (subprocess modes) or a transport to a remote URL.
type instance struct {
	gen     int
	tr      protocol.Transport
	proc    *childproc.Process // nil in remote mode
	done    <-chan struct{}    // the stdio transport's Done; nil for HTTP
	started time.Time

	runs *runTracker // run ids of executions in flight (stdio); nil for HTTP

	// blobRefs: the server answered initialize with supportsBlobRefs
	// (stepflow-py 0.10+), so its outputs may hold {"$blob": id}.
	blobRefs bool

	dead     chan struct{} // closed by kill
	deadOnce sync.Once
	cause    error // why it died; valid once dead is closed

	stopOnce sync.Once
}

func newInstance(gen int, tr protocol.Transport, proc *childproc.Process) *instance {
	return &instance{gen: gen, tr: tr, proc: proc, started: time.Now(), dead: make(chan struct{})}
}

// kill marks the instance dead with cause; the supervisor then stops the
// process and starts a new one. Only the first cause is kept.
func (in *instance) kill(cause error) {
	in.deadOnce.Do(func() {
		in.cause = cause
		close(in.dead)
	})
}

// isDead reports whether kill was called.
func (in *instance) isDead() bool {
	select {
	case <-in.dead:
		return true
	default:
		return false
	}
}

// deathCause returns the cause given to kill, or nil.
func (in *instance) deathCause() error {
	if in.isDead() {
		return in.cause
	}
	return nil
}

// preferExit returns the process's exit as the cause of a failure when
// the process ends within a second (a broken stream or connection
// usually means it is exiting), else err. Once the instance is dead, its
// recorded cause wins.
func (in *instance) preferExit(err error) error {
	if c := in.deathCause(); c != nil {
		return c
	}
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-in.proc.Exited():
		return exitCause(in.proc)
	case <-in.dead:
		return in.cause
	case <-t.C:
		return err
	}
}

// exited returns the process's exit channel (nil in remote mode, which
// never fires in a select).
func (in *instance) exited() <-chan struct{} {
	if in.proc == nil {
		return nil
	}
	return in.proc.Exited()
}

// stop closes the transport and stops the process (SIGTERM with grace,
// then SIGKILL). It is idempotent.
func (in *instance) stop(grace time.Duration) {
	in.stopOnce.Do(func() {
		_ = in.tr.Close()
		if in.proc != nil {
			in.proc.Stop(grace)
		}
		if in.done != nil {
			// The stdio read loop ends once stdout is closed; it also
			// waits for its callback handlers, whose context it cancelled.
			t := time.NewTimer(childproc.DrainWait)
			select {
			case <-in.done:
			case <-t.C:
			}
			t.Stop()
		}
	})
}

// launch starts a new server instance and completes the handshake. On
// failure everything it started is stopped again.
func (p *Plugin) launch(ctx context.Context, gen int) (*instance, error) {
	switch {
	case p.cfg.Remote():
		return p.connectRemote(ctx, gen)
	case p.cfg.Transport == config.TransportStdio:
		return p.launchStdio(ctx, gen)
	default:
		return p.launchHTTP(ctx, gen)
	}
}

func (p *Plugin) newHTTP(baseURL string) *protocol.HTTP {
	return protocol.NewHTTP(baseURL, protocol.HTTPOptions{Client: p.client, Logger: p.log})
}

func (p *Plugin) connectRemote(ctx context.Context, gen int) (*instance, error) {
	tr := p.newHTTP(p.cfg.URL)
	in := newInstance(gen, tr, nil)
	if err := p.handshake(ctx, in); err != nil {
		_ = tr.Close()
		return nil, fmt.Errorf("connect to %s: %w", p.cfg.URL, err)
	}
	p.log.Info("connected to component server", zap.String("url", p.cfg.URL))
	return in, nil
}

func (p *Plugin) launchHTTP(ctx context.Context, gen int) (*instance, error) {
	ports := make(chan int, 1)
	pr, _, err := startProcess(p.cfg, config.ProcessEnv(p.cfg.Env, p.host.LookupEnv), p.host.WorkingDir, false, 0, func(line string) bool {
		port, ok := parsePort(line)
		if ok {
			ports <- port
		}
		return ok
	}, p.log)
	if err != nil {
		return nil, err
	}
	p.starts.Add(1)
	fail := func(err error) (*instance, error) {
		pr.Stop(0)
		if tail := pr.Tail(); len(tail) > 0 {
			p.log.Warn("component server failed to start", zap.Error(err), zap.Strings("stderr_tail", tail))
		}
		return nil, err
	}

	t := time.NewTimer(p.opts.PortTimeout)
	defer t.Stop()
	var port int
	select {
	case port = <-ports:
	case <-pr.Exited():
		return fail(fmt.Errorf("%w before announcing its port", exitCause(pr)))
	case <-t.C:
		return fail(fmt.Errorf(`no {"port": N} line on stdout within %v`, p.opts.PortTimeout))
	case <-ctx.Done():
		return fail(context.Cause(ctx))
	}
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	tr := p.newHTTP(base)
	in := newInstance(gen, tr, pr)
	if err := p.waitHealthy(ctx, in); err != nil {
		_ = tr.Close()
		return fail(err)
	}
	if err := p.handshake(ctx, in); err != nil {
		_ = tr.Close()
		return fail(err)
	}
	p.log.Info("component server started", zap.Int("pid", pr.Pid()), zap.String("url", base), zap.Int("generation", gen))
	return in, nil
}

// parsePort reads a `{"port": N}` announcement.
func parsePort(line string) (int, bool) {
	v, err := value.ParseString(line)
	if err != nil {
		return 0, false
	}
	o, ok := v.(*value.Object)
	if !ok {
		return 0, false
	}
	pv, _ := o.Get("port")
	n, ok := pv.(value.Number)
	if !ok {
		return 0, false
	}
	port, err := n.Int64()
	if err != nil || port <= 0 || port > 65535 {
		return 0, false
	}
	return int(port), true
}

// waitHealthy polls the health path until it answers 2xx.
func (p *Plugin) waitHealthy(ctx context.Context, in *instance) error {
	hc := p.cfg.HealthCheck
	path, timeout, delay := hc.Path, hc.Timeout, hc.RetryDelay
	if path == "" {
		path = config.DefaultHealthCheckPath
	}
	if timeout <= 0 {
		timeout = config.DefaultHealthCheckTimeout
	}
	if delay <= 0 {
		delay = config.DefaultHealthCheckRetryDelay
	}
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tr := in.tr.(*protocol.HTTP)
	tick := time.NewTicker(delay)
	defer tick.Stop()
	var last error
	for {
		actx, acancel := context.WithTimeout(hctx, max(delay, time.Second))
		last = tr.Health(actx, path)
		acancel()
		if last == nil {
			return nil
		}
		select {
		case <-tick.C:
		case <-in.proc.Exited():
			return fmt.Errorf("%w while waiting for %s", exitCause(in.proc), path)
		case <-hctx.Done():
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			return fmt.Errorf("health check %s did not succeed within %v: %w", path, timeout, last)
		}
	}
}

func (p *Plugin) launchStdio(ctx context.Context, gen int) (*instance, error) {
	pr, ps, err := startProcess(p.cfg, config.ProcessEnv(p.cfg.Env, p.host.LookupEnv), p.host.WorkingDir, true, stdoutPipeSize, nil, p.log)
	if err != nil {
		return nil, err
	}
	p.starts.Add(1)
	// The stdio protocol does not tie a callback to its call: the parent
	// run of nested runs is the callback's observability.run_id, else the
	// run of the executions in flight when they all belong to one run.
	tracker := &runTracker{counts: make(map[string]int)}
	tr := protocol.NewStdio(ps.Stdout, ps.Stdin, protocol.StdioOptions{
		Logger:            p.log,
		MaxWriteLineBytes: protocol.StdioServerMaxLine,
		Handler:           p.callbacks.fallbackHandler(tracker.sole),
	})
	in := newInstance(gen, tr, pr)
	in.done, in.runs = tr.Done(), tracker
	if err := p.handshake(ctx, in); err != nil {
		in.stop(0)
		if tail := pr.Tail(); len(tail) > 0 {
			p.log.Warn("component server failed to start", zap.Error(err), zap.Strings("stderr_tail", tail))
		}
		return nil, err
	}
	p.log.Info("component server started", zap.Int("pid", pr.Pid()), zap.String("transport", "stdio"), zap.Int("generation", gen))
	return in, nil
}

// handshake sends initialize and the initialized notification, bounded
// by HandshakeTimeout and by the process's exit.
func (p *Plugin) handshake(ctx context.Context, in *instance) error {
	hctx, cancel := context.WithTimeoutCause(ctx, p.opts.HandshakeTimeout,
		fmt.Errorf("no answer to initialize within %v", p.opts.HandshakeTimeout))
	defer cancel()
	if in.proc != nil {
		go func() {
			select {
			case <-in.proc.Exited():
				cancel()
			case <-hctx.Done():
			}
		}()
	}
	caps, err := p.capabilities(in)
	if err != nil {
		return err
	}
	res, err := in.tr.Call(hctx, protocol.MethodInitialize, protocol.InitializeParams(caps), nil)
	if err != nil {
		return p.handshakeError(ctx, hctx, in, "initialize", err)
	}
	ir, err := protocol.ParseInitializeResult(res)
	if err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	in.blobRefs = ir.SupportsBlobRefs
	p.log.Debug("component server initialized", zap.Int64("server_protocol_version", ir.ServerProtocolVersion),
		zap.Bool("supports_blob_refs", ir.SupportsBlobRefs), zap.Bool("blob_api", caps.BlobAPIURL != ""))
	if err := in.tr.Notify(hctx, protocol.MethodInitialized, value.NewObject(0)); err != nil {
		return p.handshakeError(ctx, hctx, in, "initialized", err)
	}
	return nil
}

// capabilities returns the capabilities initialize offers the server:
// over HTTP the blob API's URL (stepflow-py 0.10+ reads and writes blobs
// through it; older SDKs ignore it) and the blob threshold. A remote
// server gets them only at a loopback address, since the API listens on
// loopback. Over stdio (stepflow-py <= 0.8, blobs/put callbacks) none.
func (p *Plugin) capabilities(in *instance) (protocol.Capabilities, error) {
	if p.host.BlobAPI == nil || p.cfg.Transport == config.TransportStdio {
		return protocol.Capabilities{}, nil
	}
	if p.cfg.Remote() && !loopbackURL(p.cfg.URL) {
		if in.gen == 1 {
			p.log.Info("remote component server is not on loopback: not offering the blob API (stepflow-py 0.10+ components that use blobs fail)",
				zap.String("url", p.cfg.URL))
		}
		return protocol.Capabilities{}, nil
	}
	u, err := p.host.BlobAPI.URL()
	if err != nil {
		return protocol.Capabilities{}, fmt.Errorf("handshake: %w", err)
	}
	return protocol.Capabilities{BlobAPIURL: u, BlobThreshold: p.opts.BlobThreshold}, nil
}

func (p *Plugin) handshakeError(ctx, hctx context.Context, in *instance, method string, err error) error {
	if in.proc != nil && (errors.Is(err, protocol.ErrTransport) || hctx.Err() != nil) {
		t := time.NewTimer(time.Second)
		defer t.Stop()
		select {
		case <-in.proc.Exited():
			return fmt.Errorf("%s: %w", method, exitCause(in.proc))
		case <-t.C:
		}
	}
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	if hctx.Err() != nil && !errors.Is(err, context.Cause(hctx)) {
		return fmt.Errorf("%s: %w", method, context.Cause(hctx))
	}
	return fmt.Errorf("handshake: %w", err)
}
