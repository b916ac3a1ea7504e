package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/stepflow-go/stepflow/pkg/expr"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// Option configures Load, Parse and FromValue.
type Option func(*options)

type options struct {
	lookup LookupFunc
}

// WithLookupEnv sets the function that resolves `${VAR}` references
// (default os.LookupEnv).
func WithLookupEnv(fn LookupFunc) Option {
	return func(o *options) {
		if fn != nil {
			o.lookup = fn
		}
	}
}

func buildOptions(opts []Option) options {
	o := options{lookup: os.LookupEnv}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// Load reads a config file: YAML for .yml/.yaml (and any other
// extension), JSON for .json.
func Load(path string, opts ...Option) (*Config, error) {
	data, err := value.ReadFile(path, MaxConfigBytes, "config")
	if err != nil {
		return nil, err
	}
	return Parse(data, path, opts...)
}

// Parse decodes a config from YAML or JSON text. file names the source in
// errors and sets Config.File and Config.Dir (its absolute directory); it
// may be "".
func Parse(data []byte, file string, opts ...Option) (*Config, error) {
	if len(data) > MaxConfigBytes {
		return nil, &Error{File: file, Err: ErrTooLarge, Msg: fmt.Sprintf("config document is larger than %d bytes", MaxConfigBytes)}
	}
	d := &decoder{Fields: value.Fields{File: file, Kind: ErrInvalidConfig}, opts: buildOptions(opts)}
	var doc yaml.Node
	v, err := d.parseYAML(data, &doc)
	if err != nil {
		if !strings.EqualFold(filepath.Ext(file), ".json") {
			return nil, err
		}
		// The YAML parser does not know every JSON escape: retry as JSON.
		jv, jerr := d.ParseStrictJSON(data)
		if jerr != nil {
			return nil, jerr
		}
		v, d.Source, d.keys = jv, nil, nil
	}
	dir := ""
	if file != "" {
		dir = filepath.Dir(file)
		if abs, err := filepath.Abs(dir); err == nil {
			dir = abs
		}
	}
	c, err := d.config(v)
	if err != nil {
		return nil, err
	}
	c.File, c.Dir, c.Source = file, dir, d.Source
	return c, nil
}

// FromValue decodes a config given as a JSON value, such as the inline
// `test.config` of a flow; dir is its base directory (for inline test
// configs, the flow's directory). Errors name JSON paths. Mock behaviour
// keys are plain strings here (JSON has no complex keys).
func FromValue(v value.Value, dir string, opts ...Option) (*Config, error) {
	d := &decoder{Fields: value.Fields{Kind: ErrInvalidConfig}, opts: buildOptions(opts)}
	c, err := d.config(v)
	if err != nil {
		return nil, err
	}
	c.Dir = dir
	return c, nil
}

// parseYAML parses the document, turning non-string mapping keys into
// their JSON text and recording their values.
func (d *decoder) parseYAML(data []byte, doc *yaml.Node) (value.Value, error) {
	if err := yaml.Unmarshal(data, doc); err != nil {
		ye := value.YAMLSyntaxError(data, err)
		return nil, &Error{File: d.File, Pos: ye.Pos, Msg: ye.Msg, Err: errors.Join(ErrInvalidConfig, err)}
	}
	if doc.Kind == 0 {
		return nil, nil
	}
	k := keyRewriter{keys: map[string]value.Value{}, rewritten: map[*yaml.Node]value.Value{}}
	if err := k.walk(doc, "$", 0); err != nil {
		return nil, d.yamlValueError(err)
	}
	d.keys = k.keys
	d.Source = value.SourceMap{}
	v, err := value.FromYAML(doc, "$", d.Source)
	if err != nil {
		return nil, d.yamlValueError(err)
	}
	return v, nil
}

func (d *decoder) yamlValueError(err error) *Error {
	var ye *value.YAMLError
	if errors.As(err, &ye) {
		return &Error{File: d.File, Pos: ye.Pos, Msg: ye.Msg, Err: errors.Join(ErrInvalidConfig, err)}
	}
	return &Error{File: d.File, Msg: err.Error(), Err: errors.Join(ErrInvalidConfig, err)}
}

// keyRewriter replaces mapping keys that are not scalars (YAML complex
// keys such as `{ input: "a" }`) by their compact JSON text, so that
// value.FromYAML accepts the document, and records the JSON value of each
// key that is not a string (complex keys, and scalars such as `1` or
// `null`) under the JSON path of its entry. Two keys of one mapping with
// the same text (`7` and "7", or plain duplicates) are an error.
type keyRewriter struct {
	keys      map[string]value.Value
	rewritten map[*yaml.Node]value.Value
}

func (k *keyRewriter) walk(n *yaml.Node, path string, depth int) error {
	if depth > value.MaxDepth {
		return &value.YAMLError{Pos: value.Pos{Line: n.Line, Col: n.Column}, Msg: "YAML nested too deeply"}
	}
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) > 0 {
			return k.walk(n.Content[0], path, depth+1)
		}
	case yaml.AliasNode:
		return k.walk(n.Alias, path, depth+1)
	case yaml.SequenceNode:
		for i, c := range n.Content {
			if err := k.walk(c, value.PathIndex(path, i), depth+1); err != nil {
				return err
			}
		}
	case yaml.MappingNode:
		seen := make(map[string]bool, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, vn := n.Content[i], n.Content[i+1]
			if key.Kind == yaml.AliasNode {
				key = key.Alias
			}
			if key.Kind == yaml.ScalarNode && key.Tag == "!!merge" {
				if err := k.walk(vn, path, depth+1); err != nil {
					return err
				}
				continue
			}
			if kv, ok := k.rewritten[key]; ok {
				k.keys[value.PathField(path, key.Value)] = kv
			} else if key.Kind == yaml.ScalarNode {
				kv, err := value.FromYAML(key, "", nil)
				if err != nil {
					return err
				}
				if _, isString := kv.(string); !isString {
					k.keys[value.PathField(path, key.Value)] = kv
				}
			} else {
				kv, err := value.FromYAML(key, "", nil)
				if err != nil {
					return err
				}
				text := value.String(kv)
				nk := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: text, Line: key.Line, Column: key.Column}
				k.rewritten[nk] = kv
				n.Content[i] = nk
				k.keys[value.PathField(path, text)] = kv
			}
			text := n.Content[i].Value
			if seen[text] {
				return &value.YAMLError{Pos: value.Pos{Line: n.Content[i].Line, Col: n.Content[i].Column},
					Msg: fmt.Sprintf("duplicate mapping key %q", text)}
			}
			seen[text] = true
			if err := k.walk(vn, value.PathField(path, text), depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// decoder decodes config documents, placing errors through the source
// map.
type decoder struct {
	value.Fields
	keys map[string]value.Value // JSON values of non-string keys, by entry path
	opts options
}

// optStrings reads an optional array of strings; absent or null gives nil.
func (d *decoder) optStrings(o *value.Object, key, path string) ([]string, bool, *Error) {
	v, ok := o.Get(key)
	if !ok || v == nil {
		return nil, false, nil
	}
	p := value.PathField(path, key)
	arr, ok := v.([]value.Value)
	if !ok {
		return nil, false, d.TypeError(p, "`"+key+"`", "an array of strings", v)
	}
	out := make([]string, len(arr))
	for i, e := range arr {
		s, ok := e.(string)
		if !ok {
			return nil, false, d.TypeError(value.PathIndex(p, i), "`"+key+"` element", "a string", e)
		}
		out[i] = s
	}
	return out, true, nil
}

// optMillis reads an optional non-negative integer of milliseconds.
func (d *decoder) optMillis(o *value.Object, key, path string, def time.Duration) (time.Duration, *Error) {
	v, ok := o.Get(key)
	if !ok || v == nil {
		return def, nil
	}
	p := value.PathField(path, key)
	n, ok := v.(value.Number)
	if !ok || !value.IsInteger(n) {
		return 0, d.TypeError(p, "`"+key+"`", "a non-negative integer (milliseconds)", v)
	}
	ms, err := n.Int64()
	if err != nil || ms < 0 || ms > int64(time.Duration(1<<63-1)/time.Millisecond) {
		return 0, d.Errorf(p, nil, "invalid value for `%s`: %s is not a valid number of milliseconds", key, n)
	}
	return time.Duration(ms) * time.Millisecond, nil
}

func (d *decoder) config(v value.Value) (*Config, error) {
	if v == nil {
		return nil, d.Errorf("$", nil, "empty document: a config must be an object with `plugins` and `routes`")
	}
	o, ok := v.(*value.Object)
	if !ok {
		return nil, d.Errorf("$", nil, "a config must be an object, got %s", value.TypeName(v))
	}
	c := &Config{Raw: v}
	var err *Error
	if c.WorkingDirectory, err = d.OptString(o, "workingDirectory", "$"); err != nil {
		return nil, err
	}
	pv, ok := o.Get("plugins")
	if !ok {
		return nil, d.Errorf("$", nil, "missing field `plugins` in config")
	}
	po, err := d.Object(pv, "$.plugins", "`plugins`")
	if err != nil {
		return nil, err
	}
	for i := range po.Len() {
		name, e := po.At(i)
		p, err := d.plugin(name, e, value.PathField("$.plugins", name))
		if err != nil {
			return nil, err
		}
		c.Plugins = append(c.Plugins, p)
	}
	rv, ok := o.Get("routes")
	if !ok {
		return nil, d.Errorf("$", nil, "missing field `routes` in config (write `routes: {}` for none)")
	}
	ro, err := d.Object(rv, "$.routes", "`routes`")
	if err != nil {
		return nil, err
	}
	for i := range ro.Len() {
		pattern, e := ro.At(i)
		r, err := d.route(pattern, e, value.PathField("$.routes", pattern))
		if err != nil {
			return nil, err
		}
		c.Routes = append(c.Routes, r)
	}
	c.StateStore = StateStore{Type: StateStoreInMemory, MaxConnections: DefaultSQLiteMaxConnections, AutoMigrate: true}
	if sv, ok := o.Get("stateStore"); ok && sv != nil {
		if c.StateStore, err = d.stateStore(sv, "$.stateStore"); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func (d *decoder) plugin(name string, v value.Value, path string) (*Plugin, *Error) {
	o, err := d.Object(v, path, fmt.Sprintf("plugin %q", name))
	if err != nil {
		return nil, err
	}
	typ, err := d.ReqString(o, "type", path, fmt.Sprintf("plugin %q", name))
	if err != nil {
		return nil, err
	}
	p := &Plugin{Name: name, Type: PluginType(typ), Path: path, Pos: d.Pos(path), Raw: o}
	switch p.Type {
	case TypeBuiltin:
	case TypeStepflow:
		p.Stepflow, err = d.stepflowPlugin(name, o, path)
	case TypeMCP:
		p.MCP, err = d.mcpPlugin(name, o, path)
	case TypeMock:
		p.Mock, err = d.mockPlugin(name, o, path)
	case TypeGRPC:
		p.GRPC, err = d.grpcPlugin(name, o, path)
	case TypeNATS:
		p.NATS, err = d.natsPlugin(name, o, path)
	default:
		return nil, d.Errorf(value.PathField(path, "type"), nil,
			"unknown type %q for plugin %q (expected builtin, stepflow, mcp, mock, grpc or nats)", typ, name)
	}
	if err != nil {
		return nil, err
	}
	return p, nil
}

// subst substitutes a string field of a plugin.
func (d *decoder) subst(plugin, s, path string) (string, *Error) {
	out, err := Substitute(s, d.opts.lookup)
	if err != nil {
		e := d.Errorf(path, nil, "plugin %q: %v", plugin, err)
		e.Err = errors.Join(ErrInvalidConfig, err)
		return "", e
	}
	return out, nil
}

// process reads command, args and env of a process-based plugin.
func (d *decoder) process(name string, o *value.Object, path string) (string, []string, []EnvVar, *Error) {
	cmd, err := d.ReqString(o, "command", path, fmt.Sprintf("plugin %q", name))
	if err != nil {
		return "", nil, nil, err
	}
	if cmd, err = d.subst(name, cmd, value.PathField(path, "command")); err != nil {
		return "", nil, nil, err
	}
	if cmd == "" {
		return "", nil, nil, d.Errorf(value.PathField(path, "command"), nil, "plugin %q: `command` is empty", name)
	}
	args, _, err := d.optStrings(o, "args", path)
	if err != nil {
		return "", nil, nil, err
	}
	if args == nil {
		args = []string{}
	}
	for i, a := range args {
		if args[i], err = d.subst(name, a, value.PathIndex(value.PathField(path, "args"), i)); err != nil {
			return "", nil, nil, err
		}
	}
	var env []EnvVar
	if ev, ok := o.Get("env"); ok && ev != nil {
		ep := value.PathField(path, "env")
		eo, err := d.Object(ev, ep, "`env`")
		if err != nil {
			return "", nil, nil, err
		}
		env = make([]EnvVar, 0, eo.Len())
		for i := range eo.Len() {
			k, val := eo.At(i)
			vp := value.PathField(ep, k)
			s, ok := val.(string)
			if !ok {
				return "", nil, nil, d.TypeError(vp, fmt.Sprintf("env variable %q", k), "a string", val)
			}
			if s, err = d.subst(name, s, vp); err != nil {
				return "", nil, nil, err
			}
			env = append(env, EnvVar{Name: k, Value: s})
		}
	}
	return cmd, args, env, nil
}

func (d *decoder) stepflowPlugin(name string, o *value.Object, path string) (*StepflowPlugin, *Error) {
	sp := &StepflowPlugin{Transport: TransportHTTP}
	tr, err := d.OptString(o, "transport", path)
	if err != nil {
		return nil, err
	}
	switch Transport(tr) {
	case "", TransportHTTP:
	case TransportStdio:
		sp.Transport = TransportStdio
	default:
		return nil, d.Errorf(value.PathField(path, "transport"), nil,
			"unknown transport %q for plugin %q (expected http or stdio)", tr, name)
	}
	if sp.Timeout, err = d.optMillis(o, "timeoutMs", path, 0); err != nil {
		return nil, err
	}
	_, hasCmd := o.Get("command")
	urlV, hasURL := o.Get("url")
	switch {
	case hasCmd && hasURL:
		return nil, d.Errorf(path, nil, "plugin %q: give either `command` (subprocess) or `url` (remote server), not both", name)
	case hasURL:
		if sp.Transport == TransportStdio {
			return nil, d.Errorf(value.PathField(path, "url"), nil, "plugin %q: the stdio transport needs `command`, not `url`", name)
		}
		u, ok := urlV.(string)
		if !ok {
			return nil, d.TypeError(value.PathField(path, "url"), "`url`", "a string", urlV)
		}
		if sp.URL, err = d.subst(name, u, value.PathField(path, "url")); err != nil {
			return nil, err
		}
		if sp.URL == "" {
			return nil, d.Errorf(value.PathField(path, "url"), nil, "plugin %q: `url` is empty", name)
		}
		return sp, nil
	case !hasCmd:
		return nil, d.Errorf(path, nil, "plugin %q: a stepflow plugin needs `command` (subprocess) or `url` (remote server)", name)
	}
	if sp.Command, sp.Args, sp.Env, err = d.process(name, o, path); err != nil {
		return nil, err
	}
	sp.HealthCheck = HealthCheck{Path: DefaultHealthCheckPath, Timeout: DefaultHealthCheckTimeout, RetryDelay: DefaultHealthCheckRetryDelay}
	if hv, ok := o.Get("healthCheck"); ok && hv != nil {
		hp := value.PathField(path, "healthCheck")
		ho, err := d.Object(hv, hp, "`healthCheck`")
		if err != nil {
			return nil, err
		}
		if p, err := d.OptString(ho, "path", hp); err != nil {
			return nil, err
		} else if p != "" {
			sp.HealthCheck.Path = p
		}
		if sp.HealthCheck.Timeout, err = d.optMillis(ho, "timeoutMs", hp, DefaultHealthCheckTimeout); err != nil {
			return nil, err
		}
		if sp.HealthCheck.RetryDelay, err = d.optMillis(ho, "retryDelayMs", hp, DefaultHealthCheckRetryDelay); err != nil {
			return nil, err
		}
	}
	return sp, nil
}

// optSeconds reads an optional non-negative integer of seconds; min is
// the smallest value allowed.
func (d *decoder) optSeconds(o *value.Object, key, path string, def time.Duration, min int64) (time.Duration, *Error) {
	v, ok := o.Get(key)
	if !ok || v == nil {
		return def, nil
	}
	p := value.PathField(path, key)
	n, ok := v.(value.Number)
	if !ok || !value.IsInteger(n) {
		return 0, d.TypeError(p, "`"+key+"`", "a non-negative integer (seconds)", v)
	}
	secs, err := n.Int64()
	if err != nil || secs < min || secs > int64(time.Duration(1<<63-1)/time.Second) {
		return 0, d.Errorf(p, nil, "invalid value for `%s`: %s is not a valid number of seconds (at least %d)", key, n, min)
	}
	return time.Duration(secs) * time.Second, nil
}

// optProcess reads command, args and env of a plugin whose command is
// optional (grpc, nats): without `command` there is nothing to launch.
func (d *decoder) optProcess(name string, o *value.Object, path string) (string, []string, []EnvVar, *Error) {
	if cv, ok := o.Get("command"); ok && cv != nil {
		return d.process(name, o, path)
	}
	if _, ok := o.Get("args"); ok {
		if args, _, err := d.optStrings(o, "args", path); err != nil {
			return "", nil, nil, err
		} else if len(args) > 0 {
			return "", nil, nil, d.Errorf(value.PathField(path, "args"), nil, "plugin %q: `args` without `command`", name)
		}
	}
	return "", []string{}, nil, nil
}

func (d *decoder) grpcPlugin(name string, o *value.Object, path string) (*GRPCPlugin, *Error) {
	gp := &GRPCPlugin{}
	var err *Error
	if gp.Command, gp.Args, gp.Env, err = d.optProcess(name, o, path); err != nil {
		return nil, err
	}
	if gp.QueueName, err = d.OptString(o, "queueName", path); err != nil {
		return nil, err
	}
	if gp.QueueName == "" {
		gp.QueueName = name
	}
	if gp.QueueTimeout, err = d.optSeconds(o, "queueTimeoutSecs", path, DefaultQueueTimeout, 1); err != nil {
		return nil, err
	}
	if gp.ExecutionTimeout, err = d.optSeconds(o, "executionTimeoutSecs", path, 0, 0); err != nil {
		return nil, err
	}
	if gp.Timeout, err = d.optMillis(o, "timeoutMs", path, 0); err != nil {
		return nil, err
	}
	return gp, nil
}

func (d *decoder) natsPlugin(name string, o *value.Object, path string) (*NATSPlugin, *Error) {
	np := &NATSPlugin{}
	var err *Error
	key := "url"
	if _, ok := o.Get("url"); !ok {
		if _, ok := o.Get("natsUrl"); ok {
			key = "natsUrl"
		}
	}
	if np.URL, err = d.ReqString(o, key, path, fmt.Sprintf("nats plugin %q", name)); err != nil {
		return nil, err
	}
	if np.URL, err = d.subst(name, np.URL, value.PathField(path, key)); err != nil {
		return nil, err
	}
	if np.URL == "" {
		return nil, d.Errorf(value.PathField(path, key), nil, "plugin %q: `%s` is empty", name, key)
	}
	if np.Stream, err = d.OptString(o, "stream", path); err != nil {
		return nil, err
	}
	if np.Consumer, err = d.OptString(o, "consumer", path); err != nil {
		return nil, err
	}
	if np.Command, np.Args, np.Env, err = d.optProcess(name, o, path); err != nil {
		return nil, err
	}
	if np.QueueTimeout, err = d.optSeconds(o, "queueTimeoutSecs", path, DefaultQueueTimeout, 1); err != nil {
		return nil, err
	}
	if np.ExecutionTimeout, err = d.optSeconds(o, "executionTimeoutSecs", path, 0, 0); err != nil {
		return nil, err
	}
	if err = d.natsEndpoint(name, np, o, path); err != nil {
		return nil, err
	}
	return np, nil
}

// natsEndpoint reads `listen`, `advertise` and `allowFrom`: the TCP
// endpoint of a nats plugin whose workers run elsewhere.
func (d *decoder) natsEndpoint(name string, np *NATSPlugin, o *value.Object, path string) *Error {
	var err *Error
	for _, f := range []struct {
		key string
		dst *string
	}{{"listen", &np.Listen}, {"advertise", &np.Advertise}} {
		if *f.dst, err = d.OptString(o, f.key, path); err != nil {
			return err
		}
		if *f.dst, err = d.subst(name, *f.dst, value.PathField(path, f.key)); err != nil {
			return err
		}
	}
	cidrs, set, err := d.optStrings(o, "allowFrom", path)
	if err != nil {
		return err
	}
	if np.Listen == "" {
		for _, k := range []string{"advertise", "allowFrom"} {
			if _, ok := o.Get(k); ok {
				return d.Errorf(value.PathField(path, k), nil, "plugin %q: `%s` without `listen`", name, k)
			}
		}
		return nil
	}
	lp := value.PathField(path, "listen")
	host, port, perr := net.SplitHostPort(np.Listen)
	if perr != nil {
		return d.Errorf(lp, nil, "plugin %q: `listen` %q is not host:port: %v", name, np.Listen, perr)
	}
	if _, perr := strconv.ParseUint(port, 10, 16); perr != nil {
		return d.Errorf(lp, nil, "plugin %q: `listen` %q: invalid port", name, np.Listen)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		if np.Advertise == "" {
			return d.Errorf(lp, nil, "plugin %q: `listen` %q binds every interface: set `advertise` to the address workers dial (e.g. \"${POD_IP}\")", name, np.Listen)
		}
	}
	if np.Advertise == "" {
		np.Advertise = np.Listen
	}
	if set {
		np.AllowFrom = make([]netip.Prefix, 0, len(cidrs))
		for i, c := range cidrs {
			pfx, perr := netip.ParsePrefix(c)
			if perr != nil {
				if a, aerr := netip.ParseAddr(c); aerr == nil {
					pfx = netip.PrefixFrom(a, a.BitLen())
				} else {
					return d.Errorf(value.PathIndex(value.PathField(path, "allowFrom"), i), nil, "plugin %q: `allowFrom` entry %q is not a CIDR or an address", name, c)
				}
			}
			np.AllowFrom = append(np.AllowFrom, pfx.Masked())
		}
	} else {
		np.AllowFrom = DefaultAllowFrom
	}
	return nil
}

func (d *decoder) mcpPlugin(name string, o *value.Object, path string) (*MCPPlugin, *Error) {
	mp := &MCPPlugin{}
	var err *Error
	if mp.Command, mp.Args, mp.Env, err = d.process(name, o, path); err != nil {
		return nil, err
	}
	if mp.Timeout, err = d.optMillis(o, "timeoutMs", path, 0); err != nil {
		return nil, err
	}
	return mp, nil
}

func (d *decoder) mockPlugin(name string, o *value.Object, path string) (*MockPlugin, *Error) {
	cv, ok := o.Get("components")
	if !ok {
		return nil, d.Errorf(path, nil, "missing field `components` in mock plugin %q", name)
	}
	cp := value.PathField(path, "components")
	co, err := d.Object(cv, cp, "`components`")
	if err != nil {
		return nil, err
	}
	mp := &MockPlugin{}
	for i := range co.Len() {
		cname, e := co.At(i)
		p := value.PathField(cp, cname)
		what := fmt.Sprintf("mock component %q", cname)
		eo, err := d.Object(e, p, what)
		if err != nil {
			return nil, err
		}
		mc := &MockComponent{Name: cname}
		for _, f := range []struct {
			key string
			dst *value.Value
		}{{"input_schema", &mc.InputSchema}, {"output_schema", &mc.OutputSchema}} {
			sv, ok := eo.Get(f.key)
			if !ok {
				return nil, d.Errorf(p, nil, "missing field `%s` in %s", f.key, what)
			}
			if _, err := d.Object(sv, value.PathField(p, f.key), "`"+f.key+"`"); err != nil {
				return nil, err
			}
			*f.dst = sv
		}
		bv, ok := eo.Get("behaviors")
		if !ok {
			return nil, d.Errorf(p, nil, "missing field `behaviors` in %s", what)
		}
		bp := value.PathField(p, "behaviors")
		bo, err := d.Object(bv, bp, "`behaviors`")
		if err != nil {
			return nil, err
		}
		for j := range bo.Len() {
			key, beh := bo.At(j)
			b, err := d.mockBehavior(key, beh, value.PathField(bp, key))
			if err != nil {
				return nil, err
			}
			mc.Behaviors = append(mc.Behaviors, b)
		}
		mp.Components = append(mp.Components, mc)
	}
	return mp, nil
}

func (d *decoder) mockBehavior(key string, v value.Value, path string) (*MockBehavior, *Error) {
	b := &MockBehavior{Input: key, Path: path, Pos: d.Pos(path)}
	if kv, ok := d.keys[path]; ok {
		b.Input = kv
	}
	o, err := d.Object(v, path, "a mock behavior")
	if err != nil {
		return nil, err
	}
	if ev, ok := o.Get("error"); ok {
		if msg, ok := ev.(string); ok {
			b.Error = msg
			return b, nil
		}
	}
	res, perr := outcome.Parse(o)
	if perr != nil {
		return nil, d.Errorf(path, perr, "invalid mock behavior: expected {error: \"message\"} or a flow result ({outcome: success, result: …} or {outcome: failed, error: {code, message}}): %v", perr)
	}
	b.Result = &res
	return b, nil
}

func (d *decoder) route(pattern string, v value.Value, path string) (*Route, *Error) {
	r := &Route{Pattern: pattern, Path: path, Pos: d.Pos(path)}
	arr, ok := v.([]value.Value)
	if !ok {
		return nil, d.TypeError(path, fmt.Sprintf("route %q", pattern), "an array of rules", v)
	}
	for i, e := range arr {
		p := value.PathIndex(path, i)
		what := fmt.Sprintf("rule %d of route %q", i, pattern)
		o, err := d.Object(e, p, what)
		if err != nil {
			return nil, err
		}
		rule := &RouteRule{Path: p, Pos: d.Pos(p)}
		if rule.Plugin, err = d.ReqString(o, "plugin", p, what); err != nil {
			return nil, err
		}
		if rule.Component, err = d.OptString(o, "component", p); err != nil {
			return nil, err
		}
		if rule.ComponentAllow, _, err = d.optStrings(o, "componentAllow", p); err != nil {
			return nil, err
		}
		if rule.ComponentDeny, _, err = d.optStrings(o, "componentDeny", p); err != nil {
			return nil, err
		}
		if rule.Params, err = d.ruleParams(o, p); err != nil {
			return nil, err
		}
		if cv, ok := o.Get("conditions"); ok && cv != nil {
			cp := value.PathField(p, "conditions")
			carr, ok := cv.([]value.Value)
			if !ok {
				return nil, d.TypeError(cp, "`conditions`", "an array", cv)
			}
			for j, ce := range carr {
				ep := value.PathIndex(cp, j)
				co, err := d.Object(ce, ep, "a condition")
				if err != nil {
					return nil, err
				}
				cond := Condition{}
				if cond.Path, err = d.ReqString(co, "path", ep, "condition"); err != nil {
					return nil, err
				}
				jp, perr := expr.ParsePath(cond.Path)
				if perr != nil {
					return nil, d.Errorf(value.PathField(ep, "path"), perr, "invalid condition path: %v", perr)
				}
				cond.JSONPath = jp
				val, ok := co.Get("value")
				if !ok {
					return nil, d.Errorf(ep, nil, "missing field `value` in condition")
				}
				cond.Value = val
				rule.Conditions = append(rule.Conditions, cond)
			}
		}
		r.Rules = append(r.Rules, rule)
	}
	return r, nil
}

// ruleParams reads the transport parameters of a route rule: the string
// entries of `params`, then `queueName` and `stream` written on the rule.
func (d *decoder) ruleParams(o *value.Object, path string) (map[string]string, *Error) {
	var out map[string]string
	set := func(k string, v value.Value, p string) *Error {
		s, ok := v.(string)
		if !ok {
			return d.TypeError(p, fmt.Sprintf("route parameter %q", k), "a string", v)
		}
		if out == nil {
			out = map[string]string{}
		}
		out[k] = s
		return nil
	}
	if pv, ok := o.Get("params"); ok && pv != nil {
		pp := value.PathField(path, "params")
		po, err := d.Object(pv, pp, "`params`")
		if err != nil {
			return nil, err
		}
		for i := range po.Len() {
			k, v := po.At(i)
			if err := set(k, v, value.PathField(pp, k)); err != nil {
				return nil, err
			}
		}
	}
	for _, k := range []string{"queueName", "stream"} {
		if v, ok := o.Get(k); ok && v != nil {
			if err := set(k, v, value.PathField(path, k)); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

func (d *decoder) stateStore(v value.Value, path string) (StateStore, *Error) {
	s := StateStore{Type: StateStoreInMemory, MaxConnections: DefaultSQLiteMaxConnections, AutoMigrate: true}
	o, err := d.Object(v, path, "`stateStore`")
	if err != nil {
		return s, err
	}
	typ, err := d.ReqString(o, "type", path, "`stateStore`")
	if err != nil {
		return s, err
	}
	switch StateStoreType(typ) {
	case StateStoreInMemory:
		return s, nil
	case StateStoreSQLite:
	default:
		return s, d.Errorf(value.PathField(path, "type"), nil, "unknown state store type %q (expected inMemory or sqlite)", typ)
	}
	s.Type = StateStoreSQLite
	if s.DatabaseURL, err = d.ReqString(o, "databaseUrl", path, "sqlite `stateStore`"); err != nil {
		return s, err
	}
	if mv, ok := o.Get("maxConnections"); ok && mv != nil {
		n, ok := mv.(value.Number)
		i, cerr := n.Int64()
		if !ok || !value.IsInteger(n) || cerr != nil || i < 0 || i > 1<<31-1 {
			return s, d.TypeError(value.PathField(path, "maxConnections"), "`maxConnections`", "a non-negative integer", mv)
		}
		s.MaxConnections = int(i)
	}
	if av, ok := o.Get("autoMigrate"); ok && av != nil {
		b, ok := av.(bool)
		if !ok {
			return s, d.TypeError(value.PathField(path, "autoMigrate"), "`autoMigrate`", "a boolean", av)
		}
		s.AutoMigrate = b
	}
	return s, nil
}
