package config

import (
	"fmt"

	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// Diagnostic codes and kinds of config checks (upstream numbering: 1xxx
// warnings, 2xxx errors; see flow.LevelOf).
const (
	CodeNoPluginsConfigured      = 1200
	CodeNoRoutingRulesConfigured = 1201
	CodeUnusedPlugin             = 1202
	CodeInvalidRouteReference    = 2200

	KindNoPluginsConfigured      = "noPluginsConfigured"
	KindNoRoutingRulesConfigured = "noRoutingRulesConfigured"
	KindUnusedPlugin             = "unusedPlugin"
	KindInvalidRouteReference    = "invalidRouteReference"
)

// Validate checks the config's consistency as upstream's CLI does: no
// plugins (1200), no routes (1201), a plugin no route uses (1202), a
// route naming an unknown plugin (2200, an error). The diagnostics have
// the shape of flow diagnostics, with paths and positions in the config
// (print them with the config's File). The plugin router refuses unknown
// plugins as well.
func (c *Config) Validate() flow.Diagnostics {
	var out flow.Diagnostics
	add := func(kind string, code int, path string, data *value.Object, format string, args ...any) {
		d := flow.Diagnostic{Kind: kind, Code: code, Level: flow.LevelOf(code), Message: fmt.Sprintf(format, args...), Path: path, Data: data}
		if c.Source != nil {
			d.Pos, _ = c.Source.Lookup(path)
		}
		out = append(out, d)
	}
	if len(c.Plugins) == 0 {
		add(KindNoPluginsConfigured, CodeNoPluginsConfigured, "$.plugins", nil, "No plugins configured")
	}
	if len(c.Routes) == 0 {
		add(KindNoRoutingRulesConfigured, CodeNoRoutingRulesConfigured, "$.routes", nil, "No routing rules configured")
	}
	used := map[string]bool{}
	for _, r := range c.Routes {
		for i, rule := range r.Rules {
			used[rule.Plugin] = true
			if c.Plugin(rule.Plugin) == nil {
				add(KindInvalidRouteReference, CodeInvalidRouteReference, value.PathField(rule.Path, "plugin"),
					value.ObjectOf("route_path", r.Pattern, "rule_index", value.Int(int64(i)), "plugin", rule.Plugin),
					"Route '%s' references unknown plugin '%s'", r.Pattern, rule.Plugin)
			}
		}
	}
	for _, p := range c.Plugins {
		if !used[p.Name] {
			add(KindUnusedPlugin, CodeUnusedPlugin, p.Path, value.ObjectOf("plugin", p.Name),
				"Plugin '%s' is not used by any route", p.Name)
		}
	}
	return out
}
