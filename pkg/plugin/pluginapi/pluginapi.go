// Package pluginapi is the contract between package plugin, which routes
// component paths to plugins, and the plugin implementations (builtin,
// mock, and the component-server transports). It is a leaf so that
// implementations in subpackages of plugin can satisfy it without an
// import cycle; package plugin re-exports its names.
//
// Adding a plugin type means writing a Factory that builds a Plugin from
// its config.Plugin entry and registering it for its config.PluginType.
package pluginapi

import (
	"context"
	"errors"
	"net/http"
	"os"

	"github.com/nats-io/nkeys"
	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/runs"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// Plugin is one configured plugin instance: a provider of components
// addressed by plugin-local names such as /eval.
type Plugin interface {
	// Start prepares the plugin (launches and initialises a server
	// process, connects, …). It is called once, before any other method.
	Start(ctx context.Context) error
	// Components lists the plugin's components. Plugin and Routes of the
	// returned infos are left empty; the caller fills them.
	Components(ctx context.Context) ([]ComponentInfo, error)
	// Component returns the component with the plugin-local name. An
	// unknown name is an error wrapping ErrUnknownComponent.
	Component(name string) (executor.Component, error)
	// Close releases the plugin's resources; it is safe to call after a
	// failed Start.
	Close() error
}

// ParamsComponenter is implemented by plugins whose components depend on
// the transport parameters of the route rule that reached them
// (config.RouteRule.Params: a grpc plugin's `queueName`). The router
// calls ComponentWithParams instead of Component when the rule has
// params.
type ParamsComponenter interface {
	ComponentWithParams(name string, params map[string]string) (executor.Component, error)
}

// HealthReporter is implemented by plugins that depend on something that
// can be down: a component server process or a remote server. Health
// returns nil while it is up, otherwise why not (restarting, the last
// restart failed, closed). It reads state only, never does I/O, and does
// not block: readiness probes and metric scrapes call it. Plugins that
// run in-process (builtin, mock) do not implement it; they are always up.
type HealthReporter interface {
	Health() error
}

// Factory builds a plugin from its configuration. It must not start it.
type Factory func(ctx context.Context, cfg *config.Plugin, host Host) (Plugin, error)

// Host is what the runtime lends plugins. All fields are set (with
// defaults) by package plugin before a Factory is called.
type Host struct {
	// Blobs is the blob store shared by builtins and protocol callbacks.
	Blobs blob.Store
	// WorkingDir is the config's working directory: the base of
	// /builtin/load_file paths and the cwd of plugin processes.
	WorkingDir string
	// ConfineFiles confines /builtin/load_file to WorkingDir: no absolute
	// paths, no "..", no symlinks leading out. Workers set it, because
	// they run flows submitted through the API, which must not read the
	// worker's files (its /proc/self/environ holds its credentials).
	ConfineFiles bool
	// HiddenFiles are files /builtin/load_file never reads when
	// ConfineFiles is set, wherever they are reached from (compared with
	// os.SameFile): the worker's stepflow-config.yml, which the working
	// directory holds by default.
	HiddenFiles []os.FileInfo
	// Logger is named for the plugin.
	Logger *zap.Logger
	// HTTPClient is used for outgoing HTTP (OpenAI, remote servers).
	HTTPClient *http.Client
	// LookupEnv reads the runtime's environment (OPENAI_API_KEY, …).
	LookupEnv func(name string) (string, bool)
	// Runs starts and inspects runs for components (runs/submit,
	// runs/get and the legacy flows/* callbacks); nil when the host
	// offers none, and then those callbacks fail.
	Runs Runs
	// BlobAPI is the blob HTTP API over Blobs that component servers of
	// stepflow-py 0.10+ use (capabilities.blobApiUrl); nil when the host
	// offers none.
	BlobAPI BlobAPI
	// NATSInboxPrefix is the inbox prefix of the host's own NATS
	// connection (the worker's --nats-inbox-prefix), for plugins that
	// connect to NATS as the same user; empty: the plugin's default.
	NATSInboxPrefix string
	// NATSInboxKey is the host's inbox key (queue.ConnectOptions.InboxKey),
	// nil when it has none: a plugin connecting as the same user signs in
	// with it too, and takes replies under NATSInboxPrefix.<its public key>.
	NATSInboxKey nkeys.KeyPair
}

// BlobAPI serves the host's blob store over HTTP on loopback.
type BlobAPI interface {
	// URL returns the API's base URL, starting it on the first call.
	URL() (string, error)
}

// Runs is the run machinery component callbacks reach.
type Runs interface {
	Submit(ctx context.Context, req runs.Request) (runs.Status, error)
	Get(ctx context.Context, runID string, opts runs.GetOptions) (runs.Status, error)
}

// ErrUnknownComponent is wrapped by Plugin.Component for names the plugin
// does not have.
var ErrUnknownComponent = errors.New("unknown component")

// ComponentInfo describes a component, in the JSON shape of upstream's
// list-components (see Value).
type ComponentInfo struct {
	// Component is the plugin-local name (/eval).
	Component string
	// Description is "" when the plugin gives none.
	Description string
	// InputSchema and OutputSchema are JSON Schemas; nil when unknown.
	InputSchema  value.Value
	OutputSchema value.Value
	// Plugin names the plugin that provides the component.
	Plugin string
	// Routes lists the routes that reach the component.
	Routes []RouteInfo
}

// RouteInfo is a route that reaches a component.
type RouteInfo struct {
	// PathPattern is the route's pattern (/builtin/{*component}).
	PathPattern string
	// ResolvedPath is the component path a flow would use (/builtin/eval).
	ResolvedPath string
	// Conditions of the rule; IsConditional tells whether there are any.
	Conditions    []config.Condition
	IsConditional bool
}

// Value returns the JSON form:
//
//	{"component":"/eval","description":"…","input_schema":{…},"output_schema":{…},
//	 "plugin":"builtin","routes":[{"pathPattern":"/builtin/{*component}",
//	 "resolvedPath":"/builtin/eval","conditions":[],"isConditional":false}]}
//
// description and the schemas are left out when absent.
func (c ComponentInfo) Value() value.Value {
	o := value.NewObject(6)
	o.Set("component", c.Component)
	if c.Description != "" {
		o.Set("description", c.Description)
	}
	if c.InputSchema != nil {
		o.Set("input_schema", c.InputSchema)
	}
	if c.OutputSchema != nil {
		o.Set("output_schema", c.OutputSchema)
	}
	o.Set("plugin", c.Plugin)
	routes := make([]value.Value, len(c.Routes))
	for i, r := range c.Routes {
		routes[i] = r.Value()
	}
	o.Set("routes", routes)
	return o
}

// Value returns the JSON form of the route.
func (r RouteInfo) Value() value.Value {
	conds := make([]value.Value, len(r.Conditions))
	for i, c := range r.Conditions {
		conds[i] = value.ObjectOf("path", c.Path, "value", c.Value)
	}
	return value.ObjectOf(
		"pathPattern", r.PathPattern,
		"resolvedPath", r.ResolvedPath,
		"conditions", conds,
		"isConditional", r.IsConditional,
	)
}
