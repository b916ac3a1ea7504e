// Package config reads stepflow-config.yml, the file that says which
// plugins (component providers) exist and how component paths route to
// them, in the format of upstream Stepflow 0.9.0:
//
//	workingDirectory: .            # optional
//	plugins:                       # required: name -> plugin (order kept)
//	  builtin: { type: builtin }
//	  python:  { type: stepflow, command: uv, args: [run, worker], env: {K: "${K:-x}"} }
//	  remote:  { type: stepflow, url: "http://127.0.0.1:8080" }
//	  legacy:  { type: stepflow, transport: stdio, command: python3, args: [server.py] }
//	  fs:      { type: mcp, command: npx, args: [-y, "@modelcontextprotocol/server-filesystem", /tmp] }
//	  mock:    { type: mock, components: { /c: {input_schema: {}, output_schema: {}, behaviors: {…}} } }
//	  py13:    { type: grpc, command: python3, args: [-m, stepflow_py.worker.main], queueName: python }
//	  jet:     { type: nats, url: "nats://127.0.0.1:4222", stream: TASKS, consumer: workers }
//	  far:     { type: nats, url: "nats://nats:4222", stream: T, listen: "0.0.0.0:7837", advertise: "${POD_IP}" }
//	routes:                        # required (may be {}): pattern -> ordered rules
//	  "/py13":                                               # a prefix route (0.13): /py13/<anything>
//	    - plugin: py13
//	      params: { queueName: gpu }                         # optional transport params
//	  "/python/{*component}":
//	    - plugin: python
//	      conditions: [{path: "$.model", value: "gpt-4"}]   # optional
//	      component: "/{component}"                          # optional template
//	      componentAllow: [/a]                               # optional
//	      componentDeny: [/b]                                # optional
//	stateStore: { type: inMemory } # optional; or {type: sqlite, databaseUrl: …}
//
// Documents are decoded through yaml.v3 nodes so that every error reads
// `file:line:col: message`. Unknown keys are ignored, as upstream does.
//
// Differences from upstream, all deliberate:
//
//   - Default (used when no file is found) routes `/builtin/{*component}`
//     to the builtin plugin, so a new user's first flow runs; upstream's
//     default has no routes and every step fails with "error routing
//     component".
//   - `${VAR}` substitution happens when the file is loaded (upstream does
//     it when the plugin starts), so an unset variable is reported as a
//     config error naming the plugin, the variable and the place. It
//     applies to `command`, `args`, `env` values and `url` of stepflow and
//     mcp plugins (upstream: `args` and `env` only). Besides the syntax of
//     upstream's `subst` crate (`$VAR`, `${VAR}`, `${VAR:default}`, `\`
//     escapes) it understands the shell form `${VAR:-default}` as the
//     shell does (upstream would yield "-default").
//   - A plugin may set `timeoutMs`, a deadline for each component call
//     (stepflow and mcp plugins; 0 or absent means none).
//   - `type: stepflow` accepts `transport: stdio` (the legacy transport of
//     SDKs up to 0.8) beside the default HTTP transport; `args` defaults
//     to [] for stdio and mcp plugins.
//   - A relative `workingDirectory` is taken relative to the config file's
//     directory.
//   - Plugin processes (stepflow and mcp) start with the few variables of
//     BaseEnv (PATH, HOME, locale, TZ, TMPDIR) plus their `env`; upstream
//     passes a stepflow plugin's `env` alone and an mcp plugin the whole
//     environment. So a component server never sees the worker's secrets
//     unless its `env` passes them on (docs/security.md).
//
// Mock plugins key their behaviours by the component input written as a
// YAML complex key (`{ input: "a" }: {…}`); Parse keeps those keys as JSON
// values in [MockBehavior.Input]. In [Plugin.Raw] and [Config.Raw], which
// are JSON, such keys appear as their compact JSON text.
package config

import (
	"net/netip"
	"path/filepath"
	"time"

	"github.com/stepflow-go/stepflow/pkg/expr"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// Config is a decoded stepflow-config.yml.
type Config struct {
	// File is the file the config was read from; "" for Default and
	// FromValue.
	File string
	// Dir is the config's base directory: the absolute directory of File,
	// the dir given to FromValue, or "" for Default.
	Dir string
	// WorkingDirectory is the `workingDirectory` field as written; "" when
	// absent. Use WorkDir for the effective directory.
	WorkingDirectory string
	// Plugins in the order written.
	Plugins []*Plugin
	// Routes in the order written.
	Routes []*Route
	// StateStore is the `stateStore` section; {Type: inMemory} by default.
	StateStore StateStore
	// Source maps JSON paths of the document to positions in File; nil when
	// unknown.
	Source value.SourceMap
	// Raw is the whole document as JSON (mock complex keys as JSON text).
	Raw value.Value
}

// PluginType is the `type` of a plugin.
type PluginType string

// Plugin types.
const (
	// TypeBuiltin is the in-process builtin components (/eval, /map, …).
	TypeBuiltin PluginType = "builtin"
	// TypeStepflow is a component server speaking the Stepflow protocol.
	TypeStepflow PluginType = "stepflow"
	// TypeMCP is a Model Context Protocol server over stdio.
	TypeMCP PluginType = "mcp"
	// TypeMock is scripted components for tests.
	TypeMock PluginType = "mock"
	// TypeGRPC is upstream 0.13's pull transport: workers (stepflow-py
	// 0.13) pull tasks of a named queue over gRPC from the runtime.
	TypeGRPC PluginType = "grpc"
	// TypeNATS is upstream 0.13's NATS JetStream transport: the runtime
	// publishes tasks to a stream that workers consume.
	TypeNATS PluginType = "nats"
)

// Plugin is one entry of `plugins`. Exactly one of Stepflow, MCP and Mock
// is set for those types; a builtin plugin has none.
type Plugin struct {
	// Name is the key under `plugins`.
	Name string
	// Type is the plugin type.
	Type PluginType
	// Path is the JSON path of the entry (`$.plugins.python`).
	Path string
	// Pos is where the entry is written; zero when unknown.
	Pos value.Pos
	// Raw is the entry as written, before substitution, for transports
	// that read further keys.
	Raw *value.Object

	Stepflow *StepflowPlugin
	MCP      *MCPPlugin
	Mock     *MockPlugin
	GRPC     *GRPCPlugin
	NATS     *NATSPlugin
}

// DefaultQueueTimeout is how long a task of a grpc or nats plugin may
// wait for a worker to claim it (`queueTimeoutSecs`, upstream's default).
const DefaultQueueTimeout = 30 * time.Second

// GRPCPlugin is a `type: grpc` plugin (upstream 0.13): the runtime serves
// TasksService, OrchestratorService and BlobService on loopback and
// workers pull the tasks of QueueName. Command, Args and Env values are
// already substituted.
type GRPCPlugin struct {
	// Command launches the worker; "" when workers are started apart and
	// connect by themselves.
	Command string
	// Args are the command's arguments; never nil.
	Args []string
	// Env is added to the worker's environment, after the BaseEnv
	// variables and before the STEPFLOW_* variables of the transport.
	Env []EnvVar
	// QueueName is the queue the worker pulls (`queueName`); the plugin's
	// name when absent. A route rule's `params.queueName` overrides it.
	QueueName string
	// QueueTimeout bounds the wait of a task for a worker's claim
	// (`queueTimeoutSecs`, default 30 s).
	QueueTimeout time.Duration
	// ExecutionTimeout bounds a task from its claim to its completion
	// (`executionTimeoutSecs`); 0 means none.
	ExecutionTimeout time.Duration
	// Timeout bounds each component call as a whole (`timeoutMs`, as for
	// stepflow plugins); 0 means none.
	Timeout time.Duration
}

// NATSPlugin is a `type: nats` plugin (upstream 0.13): tasks travel on a
// JetStream stream that workers consume; they report back over the
// plugin's gRPC services.
type NATSPlugin struct {
	// URL of the NATS server (`url`; `natsUrl` is accepted too).
	URL string
	// Stream is the default JetStream stream; a route rule's `stream`
	// (or `params.stream`) overrides it.
	Stream string
	// Consumer is the durable consumer name.
	Consumer string
	// Command, Args and Env launch a worker, as for grpc plugins.
	Command string
	Args    []string
	Env     []EnvVar
	// QueueTimeout and ExecutionTimeout as for grpc plugins.
	QueueTimeout     time.Duration
	ExecutionTimeout time.Duration
	// Listen, when set (`listen`, host:port), serves the plugin's gRPC
	// services (completions, heartbeats, nested runs, blobs) on TCP there
	// instead of on a private Unix socket, for NATS workers that run on
	// other machines or pods. Writing it is the opt-in: the unmodified SDK
	// dials without credentials, so peers are limited by AllowFrom.
	Listen string
	// Advertise is the address each task's orchestrator_service_url names
	// (`advertise`, host or host:port; `${POD_IP}` substitution applies):
	// the bound port is added when it has none. Required when Listen binds
	// every interface (0.0.0.0, ::); Listen itself otherwise.
	Advertise string
	// AllowFrom are the networks whose peers may connect to Listen
	// (`allowFrom`, CIDRs); DefaultAllowFrom when absent.
	AllowFrom []netip.Prefix
}

// DefaultAllowFrom are the peers a nats plugin's TCP endpoint accepts
// unless `allowFrom` says otherwise: loopback and the private ranges pod
// and cluster networks use (RFC 1918, shared address space RFC 6598,
// IPv6 unique local).
var DefaultAllowFrom = []netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("fc00::/7"),
}

// Transport selects how a stepflow plugin talks to its server.
type Transport string

// Transports of stepflow plugins.
const (
	// TransportHTTP is JSON-RPC over HTTP (SDK 0.9): subprocess mode when
	// Command is set, remote mode when URL is set. The default.
	TransportHTTP Transport = "http"
	// TransportStdio is newline-delimited JSON-RPC over the child's stdin
	// and stdout (SDKs up to 0.8); needs Command.
	TransportStdio Transport = "stdio"
)

// StepflowPlugin is a `type: stepflow` plugin. Command, Args, Env values
// and URL are already substituted.
type StepflowPlugin struct {
	// Transport is TransportHTTP unless `transport: stdio` is written.
	Transport Transport
	// Command starts the server (subprocess mode); "" in remote mode.
	Command string
	// Args are the command's arguments; never nil when Command is set.
	Args []string
	// Env is added to the child's environment, in the order written. The
	// child inherits only the BaseEnv variables of the runtime's
	// environment (see ProcessEnv); upstream passes Env alone.
	Env []EnvVar
	// HealthCheck configures health polling of an HTTP subprocess, with
	// defaults filled in.
	HealthCheck HealthCheck
	// URL is the server's address in remote mode; "" otherwise.
	URL string
	// Timeout bounds each component call (`timeoutMs`); 0 means none.
	Timeout time.Duration
}

// Remote reports whether the plugin connects to a running server.
func (p *StepflowPlugin) Remote() bool { return p.URL != "" }

// Health check defaults.
const (
	DefaultHealthCheckPath       = "/health"
	DefaultHealthCheckTimeout    = 60 * time.Second
	DefaultHealthCheckRetryDelay = 100 * time.Millisecond
)

// HealthCheck is the `healthCheck` of an HTTP subprocess plugin.
type HealthCheck struct {
	// Path is polled with GET until it answers 2xx (default /health).
	Path string
	// Timeout is the total time allowed (default 60 s).
	Timeout time.Duration
	// RetryDelay is the pause between attempts (default 100 ms).
	RetryDelay time.Duration
}

// EnvVar is one environment variable of a plugin process.
type EnvVar struct {
	Name  string
	Value string
}

// MCPPlugin is a `type: mcp` plugin. Command, Args and Env values are
// already substituted.
type MCPPlugin struct {
	// Command starts the MCP server.
	Command string
	// Args are its arguments; never nil.
	Args []string
	// Env is added to the child's environment, in the order written. The
	// child inherits only the BaseEnv variables of the runtime's
	// environment (see ProcessEnv); upstream passes the whole environment.
	Env []EnvVar
	// Timeout bounds each tool call (`timeoutMs`); 0 means none.
	Timeout time.Duration
}

// MockPlugin is a `type: mock` plugin.
type MockPlugin struct {
	// Components in the order written.
	Components []*MockComponent
}

// MockComponent is one scripted component of a mock plugin.
type MockComponent struct {
	// Name is the plugin-local component name (`/one_output`).
	Name string
	// InputSchema and OutputSchema are reported by list-components.
	InputSchema  value.Value
	OutputSchema value.Value
	// Behaviors in the order written.
	Behaviors []*MockBehavior
}

// MockBehavior is what a mock component does for one exact input.
type MockBehavior struct {
	// Input is the component input this behaviour answers (compared with
	// value.Equal).
	Input value.Value
	// Result is the FlowResult to return (success, or a failure with its
	// own code and message); nil for an error behaviour.
	Result *outcome.Result
	// Error is the message of an execution error (`{error: …}`), used
	// when Result is nil.
	Error string
	// Path and Pos locate the behaviour in the config.
	Path string
	Pos  value.Pos
}

// Route is one entry of `routes`: a path pattern and its rules.
type Route struct {
	// Pattern is the path pattern (`/python/{*component}`).
	Pattern string
	// Rules in the order written; tried in order.
	Rules []*RouteRule
	// Path and Pos locate the entry.
	Path string
	Pos  value.Pos
}

// RouteRule sends matching components to a plugin.
type RouteRule struct {
	// Plugin names the target plugin.
	Plugin string
	// Conditions must all hold on the step's input for the rule to apply.
	Conditions []Condition
	// Component is the plugin-local component name template, with
	// `{param}` placeholders; "" when absent (then "/" + the value captured
	// by the `component` placeholder is used).
	Component string
	// ComponentAllow, when not nil, lists the only plugin-local component
	// names the rule accepts.
	ComponentAllow []string
	// ComponentDeny, when not nil, lists names the rule refuses.
	ComponentDeny []string
	// Params are the rule's transport parameters (upstream 0.13): the
	// entries of `params` (`queueName` of a grpc plugin, `stream` of a
	// nats plugin), and `queueName`/`stream` written on the rule itself;
	// nil when none.
	Params map[string]string
	// Path and Pos locate the rule.
	Path string
	Pos  value.Pos
}

// Condition is an equality test on the step's resolved input.
type Condition struct {
	// Path is the JSON path as written (`$.model`).
	Path string
	// JSONPath is Path parsed.
	JSONPath expr.Path
	// Value is the value the input must equal at Path.
	Value value.Value
}

// StateStoreType is the `type` of the state store.
type StateStoreType string

// State store types.
const (
	StateStoreInMemory StateStoreType = "inMemory"
	StateStoreSQLite   StateStoreType = "sqlite"
)

// State store defaults.
const (
	DefaultSQLiteMaxConnections = 10
)

// StateStore is the `stateStore` section. It is parsed and kept; this
// implementation keeps run state in memory whatever it says.
type StateStore struct {
	// Type is inMemory (the default) or sqlite.
	Type StateStoreType
	// DatabaseURL is required for sqlite.
	DatabaseURL string
	// MaxConnections defaults to 10.
	MaxConnections int
	// AutoMigrate defaults to true.
	AutoMigrate bool
}

// Plugin returns the plugin with the name, or nil.
func (c *Config) Plugin(name string) *Plugin {
	for _, p := range c.Plugins {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// WorkDir returns the effective working directory (cwd of plugin
// processes, base of /builtin/load_file): `workingDirectory` if set
// (relative to the config's directory), else the config's directory, else
// flowDir, else cwd.
func (c *Config) WorkDir(flowDir, cwd string) string {
	base := c.Dir
	if base == "" {
		base = flowDir
	}
	if base == "" {
		base = cwd
	}
	wd := c.WorkingDirectory
	if wd == "" {
		return base
	}
	if filepath.IsAbs(wd) || base == "" {
		return filepath.Clean(wd)
	}
	return filepath.Join(base, wd)
}

// DefaultRoutePattern is the route of the default config.
const DefaultRoutePattern = "/builtin/{*component}"

// Default returns the config used when no file is found: one builtin
// plugin named "builtin", routed from /builtin/{*component}, and an
// in-memory state store. Upstream's default has no route; ours lets a new
// user's first flow run.
func Default() *Config {
	raw := value.ObjectOf(
		"plugins", value.ObjectOf("builtin", value.ObjectOf("type", "builtin")),
		"routes", value.ObjectOf(DefaultRoutePattern, []value.Value{value.ObjectOf("plugin", "builtin")}),
	)
	plugins, _ := raw.Get("plugins")
	praw, _ := plugins.(*value.Object).Get("builtin")
	return &Config{
		Plugins: []*Plugin{{
			Name: "builtin",
			Type: TypeBuiltin,
			Path: "$.plugins.builtin",
			Raw:  praw.(*value.Object),
		}},
		Routes: []*Route{{
			Pattern: DefaultRoutePattern,
			Rules:   []*RouteRule{{Plugin: "builtin", Path: value.PathIndex(value.PathField("$.routes", DefaultRoutePattern), 0)}},
			Path:    value.PathField("$.routes", DefaultRoutePattern),
		}},
		StateStore: StateStore{Type: StateStoreInMemory, MaxConnections: DefaultSQLiteMaxConnections, AutoMigrate: true},
		Raw:        raw,
	}
}
