package plugin_test

import (
	"testing"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/plugin"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// FuzzRouter checks that arbitrary patterns and paths never panic and
// that a resolved route always matches.
func FuzzRouter(f *testing.F) {
	f.Add("/builtin/{*component}", "/builtin/eval")
	f.Add("/{x}/b/{*component}", "/a/b/c/d")
	f.Add("/a/{component}", "/a/")
	f.Add("{", "//")
	f.Fuzz(func(t *testing.T, pattern, path string) {
		cfg := &config.Config{
			Plugins: []*config.Plugin{{Name: "p", Type: config.TypeBuiltin}},
			Routes:  []*config.Route{{Pattern: pattern, Rules: []*config.RouteRule{{Plugin: "p"}}}},
		}
		r, err := plugin.NewRouter(cfg)
		if err != nil {
			return
		}
		tgt, err := r.Resolve(path, value.ObjectOf())
		if err == nil && !r.Match(path) {
			t.Fatalf("resolved %q to %+v without a match", path, tgt)
		}
	})
}
