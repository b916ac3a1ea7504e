// Package builtin is the in-process builtin plugin (`type: builtin`): the
// eight components of upstream Stepflow 0.9.0 under their plugin-local
// names /openai, /create_messages, /eval, /map, /iterate, /put_blob,
// /get_blob and /load_file (reached from flows as /builtin/<name> with the
// usual route `/builtin/{*component}`).
//
// Behaviour follows upstream (shared/spec/builtins.md) with two deliberate
// fixes: /openai sends `model` (default gpt-3.5-turbo), `temperature` and
// `max_tokens` when given, and /map honours `max_concurrency`.
//
// Errors are returned as Go errors, which the executor turns into the
// step failure `500 step "<id>" failed`; their text starts with upstream's
// words (`invalid input`, `internal error`, `openai error: …`,
// `unknown component: /x`) and they match the sentinels below with
// errors.Is. Only /iterate returns failed results itself.
package builtin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/plugin/pluginapi"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// Sentinels matched (errors.Is) by the errors of builtin components.
var (
	// ErrInvalidInput: the input does not have the component's shape, or
	// names something that does not exist (a file, a malformed blob id).
	ErrInvalidInput = errors.New("invalid input")
	// ErrInternal: storage failures, unknown blobs, flows that do not
	// parse where they are stored.
	ErrInternal = errors.New("internal error")
	// ErrOpenAI: the OpenAI API call failed.
	ErrOpenAI = errors.New("openai error")
	// ErrMissingAPIKey: /openai has neither `api_key` nor OPENAI_API_KEY.
	ErrMissingAPIKey = errors.New(`missing value ("api_key") or environment variable ("OPENAI_API_KEY")`)
)

// Error is a builtin failure: a kind (one of the sentinels), a detail and
// an optional cause. Its text is `<kind>: <detail>`; the cause is
// reachable with errors.Unwrap, so it shows as the next entry of the step
// error's stack.
type Error struct {
	Kind   error
	Detail string
	Err    error
}

// Error returns `<kind>: <detail>`.
func (e *Error) Error() string {
	if e.Detail == "" {
		return e.Kind.Error()
	}
	return e.Kind.Error() + ": " + e.Detail
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is the error's kind.
func (e *Error) Is(target error) bool { return target == e.Kind }

func invalidInput(format string, args ...any) error {
	return &Error{Kind: ErrInvalidInput, Detail: fmt.Sprintf(format, args...)}
}

func internal(cause error, format string, args ...any) error {
	return &Error{Kind: ErrInternal, Detail: fmt.Sprintf(format, args...), Err: cause}
}

// Names of the builtin components (plugin-local).
const (
	OpenAI         = "/openai"
	CreateMessages = "/create_messages"
	Eval           = "/eval"
	Map            = "/map"
	Iterate        = "/iterate"
	PutBlob        = "/put_blob"
	GetBlob        = "/get_blob"
	LoadFile       = "/load_file"
)

// Plugin is the builtin plugin. It is safe for concurrent use.
type Plugin struct {
	host  pluginapi.Host
	comps map[string]*component
	order []*component
}

var (
	_ pluginapi.Plugin        = (*Plugin)(nil)
	_ executor.NamedComponent = (*component)(nil)
)

// component is one builtin: its metadata and its implementation.
type component struct {
	info pluginapi.ComponentInfo
	run  func(ctx context.Context, req *executor.Request) (outcome.Result, error)
}

// ComponentName returns the plugin-local name (/eval), which names the
// component in step error stacks (executor.NamedComponent).
func (c *component) ComponentName() string { return c.info.Component }

// Execute implements executor.Component.
func (c *component) Execute(ctx context.Context, req *executor.Request) (outcome.Result, error) {
	return c.run(ctx, req)
}

// New returns the builtin plugin. Zero fields of host get defaults: an
// in-memory blob store, a no-op logger, http.DefaultClient, os.LookupEnv
// and the process's working directory.
func New(host pluginapi.Host) *Plugin {
	if host.Blobs == nil {
		host.Blobs = blob.NewMemory()
	}
	if host.Logger == nil {
		host.Logger = zap.NewNop()
	}
	if host.HTTPClient == nil {
		host.HTTPClient = http.DefaultClient
	}
	if host.LookupEnv == nil {
		host.LookupEnv = os.LookupEnv
	}
	if host.WorkingDir == "" {
		host.WorkingDir, _ = os.Getwd()
	}
	p := &Plugin{host: host, comps: map[string]*component{}}
	infos := infos()
	for _, r := range registry {
		run := r.run
		c := &component{info: infos[r.name], run: func(ctx context.Context, req *executor.Request) (outcome.Result, error) {
			return run(p, ctx, req)
		}}
		p.comps[r.name] = c
		p.order = append(p.order, c)
	}
	return p
}

// registry is the list of builtins, by name: New builds the plugin's
// components from it, and Names and Known answer from it.
var registry = []struct {
	name string
	run  func(p *Plugin, ctx context.Context, req *executor.Request) (outcome.Result, error)
}{
	{CreateMessages, (*Plugin).createMessages},
	{Eval, (*Plugin).eval},
	{GetBlob, (*Plugin).getBlob},
	{Iterate, (*Plugin).iterate},
	{LoadFile, (*Plugin).loadFile},
	{Map, (*Plugin).mapFlow},
	{OpenAI, (*Plugin).openAI},
	{PutBlob, (*Plugin).putBlob},
}

// Names returns the plugin-local names of the builtins (/eval, …), sorted.
func Names() []string {
	out := make([]string, len(registry))
	for i, r := range registry {
		out[i] = r.name
	}
	return out
}

// Known reports whether name (plugin-local, /eval) is a builtin.
func Known(name string) bool {
	if rest, cut := strings.CutPrefix(name, "/builtin/"); cut {
		name = "/" + rest // under upstream 0.13's root prefix route (Component)
	}
	for _, r := range registry {
		if r.name == name {
			return true
		}
	}
	return false
}

// Factory is the pluginapi.Factory of `type: builtin`.
func Factory(_ context.Context, _ *config.Plugin, host pluginapi.Host) (pluginapi.Plugin, error) {
	return New(host), nil
}

// Start does nothing: builtins need no preparation.
func (p *Plugin) Start(context.Context) error { return nil }

// Close does nothing.
func (p *Plugin) Close() error { return nil }

// Components lists the eight builtins with their schemas, by name.
func (p *Plugin) Components(context.Context) ([]pluginapi.ComponentInfo, error) {
	out := make([]pluginapi.ComponentInfo, len(p.order))
	for i, c := range p.order {
		out[i] = c.info
	}
	return out, nil
}

// Component returns the builtin with the plugin-local name (/eval). Under
// a prefix route "/" (upstream 0.13's `"/": [{plugin: builtin}]`) flows
// still write /builtin/eval, as upstream 0.13's examples do: the name is
// then /builtin/eval, which means /eval.
func (p *Plugin) Component(name string) (executor.Component, error) {
	c, ok := p.comps[name]
	if rest, cut := strings.CutPrefix(name, "/builtin/"); !ok && cut {
		c, ok = p.comps["/"+rest]
	}
	if !ok {
		return nil, fmt.Errorf("%w: %s", pluginapi.ErrUnknownComponent, name)
	}
	return c, nil
}

// success wraps an output object.
func success(v value.Value) (outcome.Result, error) { return outcome.Success(v), nil }
