package config_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stepflow-go/stepflow/pkg/config"
)

func FuzzParse(f *testing.F) {
	for _, p := range []string{"mock", "http", "mcp", "builtins"} {
		data, err := os.ReadFile(filepath.Join(upstreamTests, p, "stepflow-config.yml"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("plugins: {a: {type: stepflow, command: '${X:-y}', args: [$Y]}}\nroutes: {/a/{*component}: [{plugin: a, conditions: [{path: $.x, value: [1]}]}]}\n"))
	f.Add([]byte(`{"plugins":{},"routes":{}}`))
	lookup := config.WithLookupEnv(func(string) (string, bool) { return "v", true })
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := config.Parse(data, "f.yml", lookup)
		if err == nil {
			_ = c.Validate()
		}
	})
}

func FuzzSubstitute(f *testing.F) {
	for _, s := range []string{"${A:-b}", `\$x`, "$A${B:${C}}", "${", "$"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = config.Substitute(s, func(k string) (string, bool) { return k, len(k)%2 == 0 })
	})
}
