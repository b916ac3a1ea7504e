// Package metricstest scrapes a /metrics endpoint in tests and reads
// sample values out of it, parsing the Prometheus text format with
// prometheus/common/expfmt as a Prometheus server would.
package metricstest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
)

// Families are the metric families of one scrape, by name.
type Families map[string]*dto.MetricFamily

// Scrape GETs url (with "Authorization: Bearer <token>" when token is
// set), requires a 200 in the text format and parses it.
func Scrape(t testing.TB, url, token string) Families {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	require.True(t, strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain"), resp.Header.Get("Content-Type"))
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	require.NoError(t, err, "%s", body)
	return fams
}

// match reports whether m has every label pair of labels ("name", "value", …).
func match(m *dto.Metric, labels []string) bool {
	have := map[string]string{}
	for _, lp := range m.GetLabel() {
		have[lp.GetName()] = lp.GetValue()
	}
	for i := 0; i+1 < len(labels); i += 2 {
		if have[labels[i]] != labels[i+1] {
			return false
		}
	}
	return true
}

// Find returns the samples of the family name whose labels include the
// given pairs ("name", "value", …).
func (f Families) Find(name string, labels ...string) []*dto.Metric {
	var out []*dto.Metric
	for _, m := range f[name].GetMetric() {
		if match(m, labels) {
			out = append(out, m)
		}
	}
	return out
}

// Value returns the value of the one gauge or counter sample of name
// with the labels; ok is false when there is none. It panics on a
// histogram or summary, or when several samples match.
func (f Families) Value(name string, labels ...string) (v float64, ok bool) {
	ms := f.Find(name, labels...)
	switch len(ms) {
	case 0:
		return 0, false
	case 1:
	default:
		panic(fmt.Sprintf("metricstest: %d samples of %s match %v", len(ms), name, labels))
	}
	switch m := ms[0]; {
	case m.Gauge != nil:
		return m.Gauge.GetValue(), true
	case m.Counter != nil:
		return m.Counter.GetValue(), true
	case m.Untyped != nil:
		return m.Untyped.GetValue(), true
	}
	panic(fmt.Sprintf("metricstest: %s is not a gauge or counter", name))
}

// Sum adds the gauge or counter samples of name with the labels.
func (f Families) Sum(name string, labels ...string) float64 {
	var sum float64
	for _, m := range f.Find(name, labels...) {
		sum += m.GetGauge().GetValue() + m.GetCounter().GetValue() + m.GetUntyped().GetValue()
	}
	return sum
}

// HistogramCount adds the sample counts of the histograms of name with
// the labels.
func (f Families) HistogramCount(name string, labels ...string) uint64 {
	var n uint64
	for _, m := range f.Find(name, labels...) {
		n += m.GetHistogram().GetSampleCount()
	}
	return n
}

// LabelValues returns the values label takes among the samples of name.
func (f Families) LabelValues(name, label string) []string {
	seen := map[string]bool{}
	var out []string
	for _, m := range f[name].GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == label && !seen[lp.GetValue()] {
				seen[lp.GetValue()] = true
				out = append(out, lp.GetValue())
			}
		}
	}
	return out
}
