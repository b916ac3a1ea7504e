package worker

import (
	"strings"

	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// minSecretInString is the shortest secret that is also looked for
// inside longer strings (shorter ones only replace an equal string, so
// that a two-letter secret does not redact every word that contains it).
const minSecretInString = 6

// secretStrings returns the string values of the run's secret variables
// and of the item's secret input fields (`is_secret` in the flow's
// schemas): a step result that repeats one must not reveal it through
// GET /runs/{id}/steps, which the run's details redact.
func secretStrings(run *executor.Run, input value.Value) []string {
	var out []string
	if len(run.Variables) > 0 {
		red := run.Flow.RedactVariables(run.Variables)
		for k, v := range run.Variables {
			out = redactedLeaves(v, red[k], out)
		}
	}
	return redactedLeaves(input, run.Flow.RedactInput(input), out)
}

// redactedLeaves appends the strings of orig that red replaced by
// flow.Redacted.
func redactedLeaves(orig, red value.Value, out []string) []string {
	if s, ok := red.(string); ok && s == flow.Redacted {
		if so, ok := orig.(string); ok && so == flow.Redacted {
			return out
		}
		return stringLeaves(orig, out)
	}
	switch o := orig.(type) {
	case *value.Object:
		ro, ok := red.(*value.Object)
		if !ok {
			return out
		}
		for i := range o.Len() {
			k, v := o.At(i)
			if rv, ok := ro.Get(k); ok {
				out = redactedLeaves(v, rv, out)
			}
		}
	case []value.Value:
		ra, ok := red.([]value.Value)
		if !ok || len(ra) != len(o) {
			return out
		}
		for i := range o {
			out = redactedLeaves(o[i], ra[i], out)
		}
	}
	return out
}

// stringLeaves appends every non-empty string (and number, as text) in v.
func stringLeaves(v value.Value, out []string) []string {
	switch x := v.(type) {
	case string:
		if x != "" {
			out = append(out, x)
		}
	case value.Number:
		out = append(out, string(x))
	case *value.Object:
		for i := range x.Len() {
			_, e := x.At(i)
			out = stringLeaves(e, out)
		}
	case []value.Value:
		for _, e := range x {
			out = stringLeaves(e, out)
		}
	}
	return out
}

// redactSecrets returns v with every string that is a secret, or
// contains one of at least minSecretInString bytes, replaced by
// flow.Redacted (and numbers equal to one). v is not modified.
func redactSecrets(v value.Value, secrets []string) value.Value {
	if len(secrets) == 0 {
		return v
	}
	switch x := v.(type) {
	case string:
		for _, s := range secrets {
			if x == s || (len(s) >= minSecretInString && strings.Contains(x, s)) {
				return flow.Redacted
			}
		}
	case value.Number:
		for _, s := range secrets {
			if string(x) == s {
				return flow.Redacted
			}
		}
	case *value.Object:
		o := value.NewObject(x.Len())
		for i := range x.Len() {
			k, e := x.At(i)
			o.Set(k, redactSecrets(e, secrets))
		}
		return o
	case []value.Value:
		a := make([]value.Value, len(x))
		for i, e := range x {
			a[i] = redactSecrets(e, secrets)
		}
		return a
	}
	return v
}
