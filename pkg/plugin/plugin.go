// Package plugin connects flows to components. It builds the configured
// plugins (builtin, mock, and later component servers) from a
// config.Config, routes each step's component path and input to a plugin
// and a plugin-local component name (see Router), and lists components
// for list-components.
//
// *Plugins implements executor.Router. Plugin types are pluginapi
// Factories; adding one is a file that implements pluginapi.Plugin plus a
// case in defaultFactory (or an entry in Options.Factories).
package plugin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nkeys"
	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/plugin/blobapi"
	"github.com/stepflow-go/stepflow/pkg/plugin/builtin"
	"github.com/stepflow-go/stepflow/pkg/plugin/grpcqueue"
	"github.com/stepflow-go/stepflow/pkg/plugin/mcp"
	"github.com/stepflow-go/stepflow/pkg/plugin/pluginapi"
	"github.com/stepflow-go/stepflow/pkg/plugin/stepflow"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// Names re-exported from pluginapi.
type (
	// Plugin is a configured plugin instance.
	Plugin = pluginapi.Plugin
	// Factory builds a Plugin from its config entry.
	Factory = pluginapi.Factory
	// Host is what plugins get from the runtime.
	Host = pluginapi.Host
	// ComponentInfo describes a component for list-components.
	ComponentInfo = pluginapi.ComponentInfo
	// RouteInfo is a route that reaches a component.
	RouteInfo = pluginapi.RouteInfo
	// Runs is the run machinery component callbacks reach.
	Runs = pluginapi.Runs
)

// ErrUnknownComponent is wrapped by errors for component names a plugin
// does not have.
var ErrUnknownComponent = pluginapi.ErrUnknownComponent

// ErrUnsupportedType is wrapped by New for plugin types that have no
// implementation.
var ErrUnsupportedType = errors.New("plugin type not supported")

// Options configures New. Zero fields get the defaults stated.
type Options struct {
	// Blobs is the shared blob store; default a new blob.NewMemory().
	Blobs blob.Store
	// WorkingDir is the base of /builtin/load_file and the cwd of plugin
	// processes; default cfg.WorkDir("", <process cwd>).
	WorkingDir string
	// Logger; default zap.NewNop(). Each plugin gets
	// Logger.Named("plugin").With(name).
	Logger *zap.Logger
	// HTTPClient for outgoing HTTP; default a client with a 90 s idle
	// timeout and no overall deadline.
	HTTPClient *http.Client
	// LookupEnv reads the environment (OPENAI_API_KEY, OPENAI_API_BASE);
	// default os.LookupEnv.
	LookupEnv func(string) (string, bool)
	// ConfineFiles confines /builtin/load_file to WorkingDir
	// (pluginapi.Host.ConfineFiles).
	ConfineFiles bool
	// NATSInboxPrefix is pluginapi.Host.NATSInboxPrefix.
	NATSInboxPrefix string
	// NATSInboxKey is pluginapi.Host.NATSInboxKey.
	NATSInboxKey nkeys.KeyPair
	// Runs is the run machinery for component callbacks; nil for none.
	Runs Runs
	// Factories adds or replaces plugin types.
	Factories map[config.PluginType]Factory
}

// Plugins is the set of started plugins of a config with their router.
// It is safe for concurrent use.
type Plugins struct {
	router  *Router
	names   []string // config order
	plugins map[string]Plugin
	blobAPI *blobapi.Server // listens once a plugin asks for its URL

	closeOnce sync.Once
	closeErr  error
}

var _ executor.Router = (*Plugins)(nil)

// defaultFactory returns the built-in factory of a plugin type.
func defaultFactory(t config.PluginType) (Factory, bool) {
	switch t {
	case config.TypeBuiltin:
		return builtin.Factory, true
	case config.TypeMock:
		return mockFactory, true
	case config.TypeMCP:
		return mcp.Factory, true
	case config.TypeStepflow:
		return stepflow.Factory, true
	case config.TypeGRPC:
		return grpcqueue.Factory, true
	case config.TypeNATS:
		return grpcqueue.Factory, true
	}
	return nil, false
}

// New builds the router, then creates and starts every plugin of cfg in
// order. If any step fails, the plugins already started are closed and
// the error names the plugin (`plugin "python": …`). A type without an
// implementation fails with ErrUnsupportedType.
func New(ctx context.Context, cfg *config.Config, opts Options) (*Plugins, error) {
	router, err := NewRouter(cfg)
	if err != nil {
		return nil, err
	}
	host, err := opts.host(cfg)
	if err != nil {
		return nil, err
	}
	// Component servers of stepflow-py 0.10+ read and write blobs over
	// HTTP; the API starts when the first of them asks for its URL.
	ps := &Plugins{router: router, plugins: make(map[string]Plugin, len(cfg.Plugins)),
		blobAPI: blobapi.New(host.Blobs, blobapi.Options{Logger: host.Logger.Named("blobapi")})}
	host.BlobAPI = ps.blobAPI
	for _, pc := range cfg.Plugins {
		factory, ok := opts.Factories[pc.Type]
		if !ok {
			factory, ok = defaultFactory(pc.Type)
		}
		if !ok {
			_ = ps.Close()
			return nil, pluginError(cfg, pc, fmt.Errorf("%w: type %s", ErrUnsupportedType, pc.Type))
		}
		h := host
		h.Logger = host.Logger.Named("plugin").With(zap.String("plugin", pc.Name))
		p, err := factory(ctx, pc, h)
		if err != nil {
			_ = ps.Close()
			return nil, pluginError(cfg, pc, err)
		}
		ps.names = append(ps.names, pc.Name)
		ps.plugins[pc.Name] = p
		if err := p.Start(ctx); err != nil {
			_ = ps.Close()
			return nil, pluginError(cfg, pc, fmt.Errorf("start: %w", err))
		}
	}
	return ps, nil
}

// Check checks cfg without starting anything: it compiles the routes
// (NewRouter) and makes sure every plugin's type has an implementation
// (ErrUnsupportedType, in a *PluginError naming the plugin entry). It is
// what `stepflow validate` does by default: a config whose plugins need
// programs this machine lacks (uv, npx) still checks.
func Check(cfg *config.Config) (*Router, error) {
	router, err := NewRouter(cfg)
	if err != nil {
		return nil, err
	}
	for _, pc := range cfg.Plugins {
		if _, ok := defaultFactory(pc.Type); !ok {
			return nil, pluginError(cfg, pc, fmt.Errorf("%w: type %s", ErrUnsupportedType, pc.Type))
		}
	}
	return router, nil
}

// PluginError is a plugin that could not be created or started.
type PluginError struct {
	// Plugin is the plugin's name.
	Plugin string
	// Where is `file:line:col` of the plugin entry, or "" when unknown.
	Where string
	Err   error
}

// Error returns `file:line:col: plugin "name": cause`.
func (e *PluginError) Error() string {
	msg := fmt.Sprintf("plugin %q: %v", e.Plugin, e.Err)
	if e.Where != "" {
		return e.Where + ": " + msg
	}
	return msg
}

// Unwrap returns the cause.
func (e *PluginError) Unwrap() error { return e.Err }

func pluginError(cfg *config.Config, pc *config.Plugin, err error) error {
	where := cfg.File
	if !pc.Pos.IsZero() {
		if where != "" {
			where += ":"
		}
		where += pc.Pos.String()
	}
	return &PluginError{Plugin: pc.Name, Where: where, Err: err}
}

func (o Options) host(cfg *config.Config) (Host, error) {
	h := Host{Blobs: o.Blobs, WorkingDir: o.WorkingDir, Logger: o.Logger, HTTPClient: o.HTTPClient, LookupEnv: o.LookupEnv, Runs: o.Runs, ConfineFiles: o.ConfineFiles, NATSInboxPrefix: o.NATSInboxPrefix, NATSInboxKey: o.NATSInboxKey}
	if o.ConfineFiles && cfg != nil && cfg.File != "" {
		// The config may name credentials (environment values, tokens):
		// flows submitted to a worker must not read it.
		if fi, err := os.Stat(cfg.File); err == nil {
			h.HiddenFiles = append(h.HiddenFiles, fi)
		}
	}
	if h.Blobs == nil {
		h.Blobs = blob.NewMemory()
	}
	if h.Logger == nil {
		h.Logger = zap.NewNop()
	}
	if h.HTTPClient == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.IdleConnTimeout = 90 * time.Second
		h.HTTPClient = &http.Client{Transport: tr}
	}
	if h.LookupEnv == nil {
		h.LookupEnv = os.LookupEnv
	}
	if h.WorkingDir == "" {
		cwd, err := os.Getwd()
		if err != nil {
			return Host{}, fmt.Errorf("working directory: %w", err)
		}
		h.WorkingDir = cfg.WorkDir("", cwd)
	}
	return h, nil
}

// Router returns the router.
func (ps *Plugins) Router() *Router { return ps.router }

// Route implements executor.Router: it resolves the step's component path
// and input to a plugin and returns the plugin's component. Routing
// failures are *RouteError. A name the plugin does not know yields a
// component whose execution fails with `unknown component: <path>`
// (naming the plugin and its local name when they differ), so the step
// fails as upstream's does (500 `step "<id>" failed`).
func (ps *Plugins) Route(path string, input value.Value) (executor.Component, error) {
	t, err := ps.router.Resolve(path, input)
	if err != nil {
		return nil, err
	}
	p, ok := ps.plugins[t.Plugin]
	if !ok {
		return nil, &RouteError{Path: path, Reason: fmt.Sprintf("cannot route component %s: plugin %q is not running", path, t.Plugin)}
	}
	var c executor.Component
	if pc, ok := p.(pluginapi.ParamsComponenter); ok && t.Rule != nil && t.Rule.Params != nil {
		c, err = pc.ComponentWithParams(t.Component, t.Rule.Params)
	} else {
		c, err = p.Component(t.Component)
	}
	if errors.Is(err, ErrUnknownComponent) {
		// Name the step's path: the plugin-local name alone (/get_blb)
		// hides which route and plugin the step reached.
		if t.Component != path {
			err = fmt.Errorf("%w: %s (plugin %q has no component %s)", ErrUnknownComponent, path, t.Plugin, t.Component)
		}
		return failing{name: t.Component, err: err}, nil
	}
	if err != nil {
		return nil, &RouteError{Path: path, Reason: fmt.Sprintf("cannot route component %s to plugin %q: %v", path, t.Plugin, err)}
	}
	return c, nil
}

// failing is a component that fails with err when executed.
type failing struct {
	name string
	err  error
}

// ComponentName returns the plugin-local name (executor.NamedComponent).
func (f failing) ComponentName() string { return f.name }

// Execute returns the error.
func (f failing) Execute(context.Context, *executor.Request) (outcome.Result, error) {
	return outcome.Result{}, f.err
}

// Routable reports whether some route pattern matches path, ignoring
// conditions (for static validation).
func (ps *Plugins) Routable(path string) bool { return ps.router.Match(path) }

// Plugin returns the running plugin with the name, or nil.
func (ps *Plugins) Plugin(name string) Plugin { return ps.plugins[name] }

// ListComponents lists the components of every plugin with the routes
// that reach them, sorted by component name (then plugin order).
// Components no route reaches have no Routes.
func (ps *Plugins) ListComponents(ctx context.Context) ([]ComponentInfo, error) {
	var out []ComponentInfo
	for _, name := range ps.names {
		infos, err := ps.ListPlugin(ctx, name)
		if err != nil {
			return nil, err
		}
		out = append(out, infos...)
	}
	slices.SortStableFunc(out, func(a, b ComponentInfo) int { return strings.Compare(a.Component, b.Component) })
	return out, nil
}

// Names returns the plugins' names in config order.
func (ps *Plugins) Names() []string { return slices.Clone(ps.names) }

// ListPlugin lists the components of one plugin, in the plugin's order,
// with Plugin and Routes filled in, so that a caller can keep the lists
// of the plugins that answered when another one does not.
func (ps *Plugins) ListPlugin(ctx context.Context, name string) ([]ComponentInfo, error) {
	p, ok := ps.plugins[name]
	if !ok {
		return nil, fmt.Errorf("plugin %q: not configured", name)
	}
	infos, err := p.Components(ctx)
	if err != nil {
		return nil, fmt.Errorf("plugin %q: list components: %w", name, err)
	}
	for i := range infos {
		infos[i].Plugin = name
		infos[i].Routes = ps.router.RoutesFor(name, infos[i].Component)
	}
	return infos, nil
}

// HealthReporter is implemented by plugins that can be down.
type HealthReporter = pluginapi.HealthReporter

// PluginHealth is the health of one plugin.
type PluginHealth struct {
	// Plugin is the plugin's name.
	Plugin string
	// Err is nil while the plugin is up, otherwise why it is not.
	Err error
}

// Health returns the health of every plugin that reports one (a
// HealthReporter: the component-server plugins), in config order.
// In-process plugins (builtin, mock) are always up and not listed. It
// does no I/O.
func (ps *Plugins) Health() []PluginHealth {
	var out []PluginHealth
	for _, name := range ps.names {
		if hr, ok := ps.plugins[name].(HealthReporter); ok {
			out = append(out, PluginHealth{Plugin: name, Err: hr.Health()})
		}
	}
	return out
}

// Close closes every plugin, in reverse order, then the blob API, and
// returns their errors joined. It is idempotent.
func (ps *Plugins) Close() error {
	ps.closeOnce.Do(func() {
		var errs []error
		for i := len(ps.names) - 1; i >= 0; i-- {
			name := ps.names[i]
			if err := ps.plugins[name].Close(); err != nil {
				errs = append(errs, fmt.Errorf("plugin %q: close: %w", name, err))
			}
		}
		if err := ps.closeBlobAPI(); err != nil {
			errs = append(errs, err)
		}
		ps.closeErr = errors.Join(errs...)
	})
	return ps.closeErr
}

func (ps *Plugins) closeBlobAPI() error {
	if ps.blobAPI == nil {
		return nil
	}
	return ps.blobAPI.Close()
}
