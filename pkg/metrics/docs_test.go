package metrics_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// metricName matches the names of stepflow's metrics and of the
// prometheus-nats-exporter series the dashboard uses.
var metricName = regexp.MustCompile(`\b(?:stepflow|jetstream|gnatsd)_[a-z_]+\b`)

// documented returns the metric names docs/operations.md names in
// backquotes.
func documented(t *testing.T) map[string]bool {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "operations.md"))
	require.NoError(t, err)
	names := map[string]bool{}
	for _, m := range regexp.MustCompile("`((?:stepflow|jetstream|gnatsd)_[a-z_]+)`").FindAllStringSubmatch(string(doc), -1) {
		names[m[1]] = true
	}
	require.NotEmpty(t, names)
	return names
}

// TestDashboard: the Grafana dashboard is valid JSON with unique panel
// ids, and every metric it queries is documented in docs/operations.md
// (histogram series by their family name).
func TestDashboard(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "grafana", "stepflow-dashboard.json"))
	require.NoError(t, err)
	var dash struct {
		UID    string `json:"uid"`
		Panels []struct {
			ID      int    `json:"id"`
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	require.NoError(t, json.Unmarshal(data, &dash))
	require.NotEmpty(t, dash.UID)
	docs := documented(t)
	ids := map[int]bool{}
	exprs := 0
	for _, p := range dash.Panels {
		require.False(t, ids[p.ID], "panel id %d twice", p.ID)
		ids[p.ID] = true
		if p.Type != "row" {
			require.NotEmpty(t, p.Targets, "panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs++
			names := metricName.FindAllString(tg.Expr, -1)
			require.NotEmpty(t, names, "panel %q: %s", p.Title, tg.Expr)
			for _, n := range names {
				family := n
				for _, suffix := range []string{"_bucket", "_count", "_sum"} {
					if f, ok := strings.CutSuffix(n, suffix); ok && docs[f] {
						family = f
					}
				}
				require.True(t, docs[family], "panel %q uses %s, which docs/operations.md does not name", p.Title, n)
			}
		}
	}
	require.Greater(t, exprs, 20)
}
