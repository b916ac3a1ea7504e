package plugin

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/plugin/builtin"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// ErrInvalidRoute is wrapped by NewRouter errors: a malformed pattern,
// two patterns of the same shape, a rule naming an unknown plugin.
var ErrInvalidRoute = errors.New("invalid route")

// RouteError is a component path that cannot be routed: no pattern
// matches, no rule of the matching pattern applies, a condition's path is
// missing from the input, or the component name cannot be resolved. The
// executor reports it as the step failure `error routing component`.
type RouteError struct {
	// Path is the component path of the step (/foo/bar).
	Path string
	// Reason is the whole message, naming Path.
	Reason string
}

// Error returns Reason.
func (e *RouteError) Error() string { return e.Reason }

// segKind orders segments by specificity: static before {name} before
// {*name}.
type segKind int

const (
	segStatic segKind = iota
	segParam
	segCatchAll
)

type segment struct {
	kind segKind
	text string // literal for static segments, parameter name otherwise
}

type route struct {
	cfg  *config.Route
	segs []segment
	// prefix marks a route written without placeholders and without a
	// rule `component` (upstream 0.13's prefix routes, "/python" or "/"):
	// it matches every path below it, as if `/{*component}` ended it.
	prefix bool
}

// Target is where a component path routes to.
type Target struct {
	// Plugin names the plugin.
	Plugin string
	// Component is the plugin-local component name (/eval).
	Component string
	// Pattern is the matching route pattern.
	Pattern string
	// Rule is the rule that applied.
	Rule *config.RouteRule
}

// Router maps component paths (and step inputs) to plugins, following the
// `routes` of a config:
//
//   - patterns have literal segments, `{name}` (one non-empty segment)
//     and `{*name}` (the non-empty rest of the path, last only);
//   - a pattern without placeholders whose rules give no `component`
//     is a prefix route, as in upstream 0.13 ("/python", "/"): it
//     matches every path below it, as if it ended with `/{*component}`
//     (so "/python" and "/python/{*component}" conflict);
//   - when several patterns match, the most specific wins, comparing
//     segments left to right: static over `{name}` over `{*name}`; two
//     patterns of the same shape are a construction error;
//   - the matching pattern's rules are tried in order: all conditions must
//     hold on the step input (a condition path missing from the input is
//     a routing error) and the resolved component must pass
//     componentAllow/componentDeny;
//   - quirk kept from upstream: a pattern with exactly one rule and no
//     conditions uses it directly, without checking allow/deny;
//   - the component handed to the plugin is the rule's `component`
//     template with `{param}` placeholders replaced, else "/" + the value
//     of the `component` placeholder (a routing error when the pattern has
//     none).
//
// A Router is immutable and safe for concurrent use.
type Router struct {
	routes []*route
	// builtins names the plugins of type builtin.
	builtins map[string]bool
	// resolved remembers the targets of paths whose route has one rule
	// and no condition (the common case): they do not depend on the
	// input, and a step resolves its path for every item.
	resolved  sync.Map // path -> Target
	nResolved atomic.Int32
}

// maxResolved bounds the paths Router.resolved remembers.
const maxResolved = 4096

// NewRouter compiles the routes of cfg. Every rule must name a plugin of
// cfg. Errors are *config.Error values placing the problem in the config
// file and wrapping ErrInvalidRoute.
func NewRouter(cfg *config.Config) (*Router, error) {
	r := &Router{builtins: map[string]bool{}}
	for _, cr := range cfg.Routes {
		segs, err := parsePattern(cr.Pattern)
		if err != nil {
			return nil, routeConfigError(cfg, cr.Path, cr.Pos, fmt.Sprintf("invalid route pattern %q: %v", cr.Pattern, err))
		}
		prefix := isPrefixRoute(cr, segs)
		if prefix {
			if cr.Pattern == "/" {
				segs = nil
			}
			segs = append(segs, segment{kind: segCatchAll, text: "component"})
		}
		for _, prev := range r.routes {
			if sameShape(prev.segs, segs) {
				return nil, routeConfigError(cfg, cr.Path, cr.Pos,
					fmt.Sprintf("route pattern %q conflicts with %q (they match the same paths)", cr.Pattern, prev.cfg.Pattern))
			}
		}
		for _, rule := range cr.Rules {
			pc := cfg.Plugin(rule.Plugin)
			if pc == nil {
				return nil, routeConfigError(cfg, value.PathField(rule.Path, "plugin"), rule.Pos,
					fmt.Sprintf("route %q references unknown plugin %q", cr.Pattern, rule.Plugin))
			}
			if pc.Type == config.TypeBuiltin {
				r.builtins[rule.Plugin] = true
			}
		}
		r.routes = append(r.routes, &route{cfg: cr, segs: segs, prefix: prefix})
	}
	return r, nil
}

// isPrefixRoute reports whether a route is an upstream 0.13 prefix route:
// no placeholder in its pattern and no rule naming a `component`.
func isPrefixRoute(cr *config.Route, segs []segment) bool {
	for _, s := range segs {
		if s.kind != segStatic {
			return false
		}
	}
	for _, rule := range cr.Rules {
		if rule.Component != "" {
			return false
		}
	}
	return true
}

func routeConfigError(cfg *config.Config, path string, pos value.Pos, msg string) error {
	if cfg.Source != nil {
		if p, ok := cfg.Source.Lookup(path); ok {
			pos = p
		}
	}
	return &config.Error{File: cfg.File, Pos: pos, Path: path, Msg: msg, Err: errors.Join(ErrInvalidRoute, config.ErrInvalidConfig)}
}

// parsePattern splits a pattern into segments.
func parsePattern(p string) ([]segment, error) {
	if !strings.HasPrefix(p, "/") {
		return nil, errors.New("a pattern must start with /")
	}
	parts := strings.Split(p[1:], "/")
	segs := make([]segment, len(parts))
	names := map[string]bool{}
	for i, part := range parts {
		switch {
		case strings.HasPrefix(part, "{") && strings.HasSuffix(part, "}") && len(part) >= 2:
			name := part[1 : len(part)-1]
			kind := segParam
			if rest, ok := strings.CutPrefix(name, "*"); ok {
				kind, name = segCatchAll, rest
				if i != len(parts)-1 {
					return nil, fmt.Errorf("catch-all {*%s} must be the last segment", name)
				}
			}
			if name == "" || strings.ContainsAny(name, "{}*/") {
				return nil, fmt.Errorf("invalid placeholder %q", part)
			}
			if names[name] {
				return nil, fmt.Errorf("placeholder {%s} appears twice", name)
			}
			names[name] = true
			segs[i] = segment{kind: kind, text: name}
		case strings.ContainsAny(part, "{}"):
			return nil, fmt.Errorf("segment %q: a placeholder must be a whole segment ({name} or {*name})", part)
		default:
			segs[i] = segment{kind: segStatic, text: part}
		}
	}
	return segs, nil
}

func sameShape(a, b []segment) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].kind != b[i].kind || (a[i].kind == segStatic && a[i].text != b[i].text) {
			return false
		}
	}
	return true
}

// match matches path against the route, returning the captured
// parameters.
func (rt *route) match(parts []string) (map[string]string, bool) {
	var params map[string]string
	for i, s := range rt.segs {
		if i >= len(parts) {
			// A prefix route matches its own path too, without a
			// component (resolveComponent then says why it fails).
			return nil, rt.prefix && i == len(rt.segs)-1
		}
		switch s.kind {
		case segStatic:
			if parts[i] != s.text {
				return nil, false
			}
		case segParam:
			if parts[i] == "" {
				return nil, false
			}
			if params == nil {
				params = map[string]string{}
			}
			params[s.text] = parts[i]
		case segCatchAll:
			rest := strings.Join(parts[i:], "/")
			if rest == "" {
				return nil, rt.prefix
			}
			if params == nil {
				params = map[string]string{}
			}
			params[s.text] = rest
			return params, true
		}
	}
	return params, len(parts) == len(rt.segs)
}

// moreSpecific reports whether a beats b for a path both match.
func moreSpecific(a, b []segment) bool {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i].kind != b[i].kind {
			return a[i].kind < b[i].kind
		}
	}
	return len(a) > len(b)
}

// find returns the most specific route matching path.
func (r *Router) find(path string) (*route, map[string]string) {
	if !strings.HasPrefix(path, "/") {
		return nil, nil
	}
	parts := strings.Split(path[1:], "/")
	var best *route
	var bestParams map[string]string
	for _, rt := range r.routes {
		params, ok := rt.match(parts)
		if !ok {
			continue
		}
		if best == nil || moreSpecific(rt.segs, best.segs) {
			best, bestParams = rt, params
		}
	}
	return best, bestParams
}

// Match reports whether some pattern matches path, ignoring conditions.
func (r *Router) Match(path string) bool {
	rt, _ := r.find(path)
	return rt != nil
}

// UnknownBuiltin reports whether path surely routes to a builtin that
// does not exist (for static validation), and that builtin's plugin-local
// name (/get_blb): a pattern matches path, and every rule of that pattern
// names a builtin plugin and resolves path to a name that is not a
// builtin (builtin.Known). A rule naming another plugin, or resolving to
// a known builtin, may route the step somewhere that works, so the answer
// is then false; so it is for paths no pattern matches (see Match).
func (r *Router) UnknownBuiltin(path string) (string, bool) {
	rt, params := r.find(path)
	if rt == nil || len(rt.cfg.Rules) == 0 {
		return "", false
	}
	var name string
	for _, rule := range rt.cfg.Rules {
		if !r.builtins[rule.Plugin] {
			return "", false
		}
		comp, err := resolveComponent(rt, rule, params, path)
		if err != nil || builtin.Known(comp) {
			return "", false
		}
		if name == "" {
			name = comp
		}
	}
	return name, true
}

// Resolve routes a step's component path and resolved input. Errors are
// *RouteError.
func (r *Router) Resolve(path string, input value.Value) (Target, error) {
	if t, ok := r.resolved.Load(path); ok {
		return t.(Target), nil
	}
	rt, params := r.find(path)
	if rt == nil {
		return Target{}, &RouteError{Path: path, Reason: fmt.Sprintf("no route matches component %s (%s)", path, r.describe())}
	}
	rules := rt.cfg.Rules
	if len(rules) == 1 && len(rules[0].Conditions) == 0 {
		comp, err := resolveComponent(rt, rules[0], params, path)
		if err != nil {
			return Target{}, err
		}
		t := Target{Plugin: rules[0].Plugin, Component: comp, Pattern: rt.cfg.Pattern, Rule: rules[0]}
		if r.nResolved.Load() < maxResolved {
			if _, loaded := r.resolved.LoadOrStore(path, t); !loaded {
				r.nResolved.Add(1)
			}
		}
		return t, nil
	}
rules:
	for _, rule := range rules {
		for _, c := range rule.Conditions {
			got, ok := c.JSONPath.Lookup(input)
			if !ok {
				return Target{}, &RouteError{Path: path, Reason: fmt.Sprintf(
					"cannot route component %s: condition path %s of route %s is not in the step input", path, c.Path, rt.cfg.Pattern)}
			}
			if !value.Equal(got, c.Value) {
				continue rules
			}
		}
		comp, err := resolveComponent(rt, rule, params, path)
		if err != nil {
			return Target{}, err
		}
		if !allowed(rule, comp) {
			continue
		}
		return Target{Plugin: rule.Plugin, Component: comp, Pattern: rt.cfg.Pattern, Rule: rule}, nil
	}
	return Target{}, &RouteError{Path: path, Reason: fmt.Sprintf(
		"no rule of route %s applies to component %s (%d rules: conditions or componentAllow/componentDeny exclude it)", rt.cfg.Pattern, path, len(rules))}
}

func (r *Router) describe() string {
	if len(r.routes) == 0 {
		return "no routes configured"
	}
	pats := make([]string, len(r.routes))
	for i, rt := range r.routes {
		pats[i] = rt.cfg.Pattern
	}
	return "routes: " + strings.Join(pats, ", ")
}

func resolveComponent(rt *route, rule *config.RouteRule, params map[string]string, path string) (string, error) {
	if rule.Component != "" {
		out := rule.Component
		for _, s := range rt.segs {
			if s.kind != segStatic {
				out = strings.ReplaceAll(out, "{"+s.text+"}", params[s.text])
			}
		}
		return out, nil
	}
	c, ok := params["component"]
	if !ok && rt.prefix {
		return "", &RouteError{Path: path, Reason: fmt.Sprintf(
			"cannot route component %s: route %s is a prefix route and the path names no component below it (%s/<component>)",
			path, rt.cfg.Pattern, strings.TrimSuffix(rt.cfg.Pattern, "/"))}
	}
	if !ok {
		return "", &RouteError{Path: path, Reason: fmt.Sprintf(
			"cannot route component %s: route %s has no {component} placeholder and its rule for plugin %q gives no `component`",
			path, rt.cfg.Pattern, rule.Plugin)}
	}
	return "/" + c, nil
}

func allowed(rule *config.RouteRule, component string) bool {
	for _, d := range rule.ComponentDeny {
		if d == component {
			return false
		}
	}
	if rule.ComponentAllow == nil {
		return true
	}
	for _, a := range rule.ComponentAllow {
		if a == component {
			return true
		}
	}
	return false
}

// RoutesFor lists the routes through which a flow reaches the plugin's
// component, as upstream's list-components computes them: for each rule
// naming the plugin whose pattern has a {component} or {*component}
// placeholder and whose allow/deny lists accept the component, the
// pattern with the placeholder replaced.
func (r *Router) RoutesFor(plugin, component string) []RouteInfo {
	var out []RouteInfo
	for _, rt := range r.routes {
		pat := rt.cfg.Pattern
		for _, rule := range rt.cfg.Rules {
			if rule.Plugin != plugin {
				continue
			}
			var resolved string
			switch {
			case rt.prefix:
				resolved = strings.TrimSuffix(pat, "/") + component
			case strings.Contains(pat, "{component}"):
				resolved = strings.ReplaceAll(strings.ReplaceAll(pat, "{component}", component), "//", "/")
			case strings.Contains(pat, "{*component}"):
				resolved = strings.ReplaceAll(pat, "{*component}", strings.TrimPrefix(component, "/"))
			default:
				continue
			}
			if !allowed(rule, component) {
				continue
			}
			out = append(out, RouteInfo{
				PathPattern:   pat,
				ResolvedPath:  resolved,
				Conditions:    append([]config.Condition{}, rule.Conditions...),
				IsConditional: len(rule.Conditions) > 0,
			})
		}
	}
	return out
}
