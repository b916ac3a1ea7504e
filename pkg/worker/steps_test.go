package worker

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// stepsJSON renders every step in flow order, with results while they
// fit the bound and statuses only beyond it.
func TestStepsJSON(t *testing.T) {
	t.Parallel()
	f, err := flow.Parse([]byte(`
steps:
  - { id: b, component: /x/one }
  - { id: a, component: /x/two }
  - { id: c, component: /x/three }
output: { $step: a }
`), "f.yaml")
	require.NoError(t, err)
	run, err := executor.New(executor.Config{}).NewRun("r", f, nil)
	require.NoError(t, err)
	outs := []executor.StepOutcome{
		{Status: executor.StepCompleted, Result: outcome.Success(strings.Repeat("x", 100))},
		{Status: executor.StepFailed, Result: outcome.Failure(outcome.Errorf(7, "no"))},
		{Status: executor.StepBlocked},
	}
	got := string(stepsJSON(run, outs, nil, 1<<10))
	require.Equal(t, `{"b":{"stepId":"b","component":"/x/one","status":"completed","result":{"outcome":"success","result":"`+strings.Repeat("x", 100)+`"}},`+
		`"a":{"stepId":"a","component":"/x/two","status":"failed","result":{"outcome":"failed","error":{"code":7,"message":"no"}}},`+
		`"c":{"stepId":"c","component":"/x/three","status":"blocked"}}`, got)

	got = string(stepsJSON(run, outs, nil, 100))
	require.Equal(t, `{"b":{"stepId":"b","component":"/x/one","status":"completed"},"a":{"stepId":"a","component":"/x/two","status":"failed"},`+
		`"c":{"stepId":"c","component":"/x/three","status":"blocked"}}`, got, "results dropped past the bound")

	got = string(stepsJSON(run, nil, nil, 1<<10))
	require.True(t, value.MustParse(got) != nil)
	require.NotContains(t, got, `"completed"`, "no outcomes: every step blocked")
}

// Step results that repeat a secret variable or a secret input field
// show "[REDACTED]" instead, as the run's details do.
func TestStepsJSONRedactsSecrets(t *testing.T) {
	t.Parallel()
	f, err := flow.Parse([]byte(`
schemas:
  type: object
  properties:
    input:
      type: object
      properties:
        user: { type: string }
        password: { type: string, is_secret: true }
    variables:
      type: object
      properties:
        api_key: { type: string, is_secret: true }
        region: { type: string }
steps:
  - { id: echo, component: /x/echo }
output: { $step: echo }
`), "f.yaml")
	require.NoError(t, err)
	vars := map[string]value.Value{"api_key": "key-0123456789", "region": "eu"}
	run, err := executor.New(executor.Config{}).NewRun("r", f, vars)
	require.NoError(t, err)
	input := value.MustParse(`{"user":"u1","password":"hunter22"}`)
	secrets := secretStrings(run, input)
	require.ElementsMatch(t, []string{"key-0123456789", "hunter22"}, secrets)

	echoed := value.MustParse(`{"user":"u1","password":"hunter22","auth":"Bearer key-0123456789","region":"eu","n":[1,"hunter22"]}`)
	outs := []executor.StepOutcome{{Status: executor.StepCompleted, Result: outcome.Success(echoed)}}
	got := string(stepsJSON(run, outs, secrets, 1<<10))
	require.Equal(t, `{"echo":{"stepId":"echo","component":"/x/echo","status":"completed","result":{"outcome":"success","result":`+
		`{"user":"u1","password":"[REDACTED]","auth":"[REDACTED]","region":"eu","n":[1,"[REDACTED]"]}}}}`, got)
}
