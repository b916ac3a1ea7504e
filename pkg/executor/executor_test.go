package executor

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/value"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// funcComponent adapts a function to Component.
type funcComponent func(ctx context.Context, req *Request) (outcome.Result, error)

func (f funcComponent) Execute(ctx context.Context, req *Request) (outcome.Result, error) {
	return f(ctx, req)
}

// router routes /test/<name> to the named function.
type router map[string]funcComponent

func (r router) Route(path string, _ value.Value) (Component, error) {
	c, ok := r[path]
	if !ok {
		return nil, fmt.Errorf("no route matches component %s", path)
	}
	return c, nil
}

// testBundle holds what a test needs.
type testBundle struct {
	calls  sync.Map // component path -> *atomic.Int32
	delays []time.Duration
	mu     sync.Mutex
	exec   *Executor
}

func (b *testBundle) count(path string) int {
	v, ok := b.calls.Load(path)
	if !ok {
		return 0
	}
	return int(v.(*atomic.Int32).Load())
}

func setup(t *testing.T, r router) *testBundle {
	t.Helper()
	b := &testBundle{}
	counted := router{}
	for path, fn := range r {
		counted[path] = func(ctx context.Context, req *Request) (outcome.Result, error) {
			v, _ := b.calls.LoadOrStore(path, &atomic.Int32{})
			v.(*atomic.Int32).Add(1)
			return fn(ctx, req)
		}
	}
	b.exec = New(Config{Router: counted, Sleep: func(_ context.Context, d time.Duration) error {
		b.mu.Lock()
		b.delays = append(b.delays, d)
		b.mu.Unlock()
		return nil
	}})
	return b
}

func echo(_ context.Context, req *Request) (outcome.Result, error) {
	return outcome.Success(req.Input), nil
}

func fails(_ context.Context, req *Request) (outcome.Result, error) {
	return outcome.Result{}, errors.New("kaboom")
}

func mustFlow(t *testing.T, yaml string) *flow.Flow {
	t.Helper()
	f, err := flow.Parse([]byte(yaml), "test.yaml")
	require.NoError(t, err)
	return f
}

func (b *testBundle) run(t *testing.T, f *flow.Flow, input string) string {
	t.Helper()
	r, err := b.exec.NewRun("run-1", f, nil)
	require.NoError(t, err)
	return value.String(r.Execute(context.Background(), 0, value.MustParse(input)).JSON())
}

func TestChainAndOnlyNeededSteps(t *testing.T) {
	t.Parallel()
	b := setup(t, router{"/t/echo": echo, "/t/unused": echo})
	f := mustFlow(t, `
steps:
  - { id: a, component: /t/echo, input: { v: { $input: x } } }
  - { id: b, component: /t/echo, input: { w: { $step: a, path: v } } }
  - { id: unused, component: /t/unused, input: 1 }
output: { out: { $step: b, path: w } }
`)
	require.Equal(t, `{"outcome":"success","result":{"out":7}}`, b.run(t, f, `{"x":7}`))
	require.Equal(t, 2, b.count("/t/echo"))
	require.Equal(t, 0, b.count("/t/unused"))
}

func TestIndependentStepsRunInParallel(t *testing.T) {
	t.Parallel()
	// Each component waits until the other has started: this only
	// completes if they run at the same time.
	var started sync.WaitGroup
	started.Add(2)
	rendezvous := func(ctx context.Context, req *Request) (outcome.Result, error) {
		started.Done()
		started.Wait()
		return outcome.Success(req.StepID), nil
	}
	b := setup(t, router{"/t/x": rendezvous})
	f := mustFlow(t, `
steps:
  - { id: left, component: /t/x }
  - { id: right, component: /t/x }
output: [{ $step: left }, { $step: right }]
`)
	require.Equal(t, `{"outcome":"success","result":["left","right"]}`, b.run(t, f, `{}`))
}

func TestLazyConditionOnStepSchedulesLaterSteps(t *testing.T) {
	t.Parallel()
	// Upstream 0.9.0 deadlocks here: b and c are only discovered after
	// the condition step has completed.
	b := setup(t, router{"/t/echo": echo, "/t/fail": fails})
	f := mustFlow(t, `
steps:
  - { id: cond, component: /t/echo, input: { $input: flag } }
  - { id: yes, component: /t/echo, input: "took yes" }
  - { id: no, component: /t/fail }
  - { id: first, component: /t/echo, input: null }
  - { id: second, component: /t/echo, input: "second" }
output:
  branch: { $if: { $step: cond }, then: { $step: yes }, else: { $step: no } }
  fallback: { $coalesce: [ { $step: first }, { $step: second } ] }
`)
	require.Equal(t, `{"outcome":"success","result":{"branch":"took yes","fallback":"second"}}`, b.run(t, f, `{"flag":true}`))
	require.Equal(t, 0, b.count("/t/fail"))
}

func TestFailurePropagatesUnchanged(t *testing.T) {
	t.Parallel()
	b := setup(t, router{
		"/t/echo": echo,
		"/t/code8": func(context.Context, *Request) (outcome.Result, error) {
			return outcome.Failure(&outcome.Error{Code: 8, Message: "error"}), nil
		},
		"/t/boom": fails,
	})
	f := mustFlow(t, `
steps:
  - { id: a, component: /t/code8 }
  - { id: b, component: /t/echo, input: { $step: a } }
output: { $step: b }
`)
	require.Equal(t, `{"outcome":"failed","error":{"code":8,"message":"error"}}`, b.run(t, f, `{}`))
	require.Equal(t, 0, b.count("/t/echo"), "a consumer of a failed step is not called")

	f = mustFlow(t, "steps: [{ id: s1, component: /t/boom }]\noutput: { $step: s1 }\n")
	r, err := b.exec.NewRun("r", f, nil)
	require.NoError(t, err)
	res := r.Execute(context.Background(), 0, nil)
	require.Equal(t, int64(500), res.Err.Code)
	require.Equal(t, `step "s1" failed`, res.Err.Message)
	require.Contains(t, value.String(res.Err.Data), "kaboom")
}

func TestOnError(t *testing.T) {
	t.Parallel()
	var attempts atomic.Int32
	flaky := func(_ context.Context, req *Request) (outcome.Result, error) {
		if attempts.Add(1) < 3 {
			return outcome.Result{}, errors.New("transient")
		}
		return outcome.Success(fmt.Sprintf("ok on attempt %d", req.Attempt)), nil
	}
	b := setup(t, router{"/t/fail": fails, "/t/flaky": flaky})
	f := mustFlow(t, `
steps:
  - { id: d0, component: /t/fail, onError: { action: useDefault } }
  - { id: d1, component: /t/fail, onError: { action: useDefault, defaultValue: { output: { $step: x } } } }
  - { id: r, component: /t/flaky, onError: { action: retry, maxAttempts: 4, initialDelayMs: 100, backoffCoefficient: 3 } }
output: { d0: { $step: d0 }, d1: { $step: d1, path: output }, r: { $step: r } }
`)
	require.Equal(t, `{"outcome":"success","result":{"d0":null,"d1":{"$step":"x"},"r":"ok on attempt 3"}}`, b.run(t, f, `{}`))
	require.Len(t, b.delays, 2)
	require.InDelta(t, 100*time.Millisecond, b.delays[0], float64(10*time.Millisecond))
	require.InDelta(t, 300*time.Millisecond, b.delays[1], float64(30*time.Millisecond))
}

func TestRetryGivesUp(t *testing.T) {
	t.Parallel()
	b := setup(t, router{"/t/fail": fails})
	f := mustFlow(t, "steps: [{ id: s, component: /t/fail, onError: { action: retry, maxAttempts: 2 } }]\noutput: { $step: s }\n")
	require.Contains(t, b.run(t, f, `{}`), `"message":"step \"s\" failed"`)
	require.Equal(t, 2, b.count("/t/fail"))
}

func TestOnErrorDoesNotApplyToUnresolvedInput(t *testing.T) {
	t.Parallel()
	b := setup(t, router{"/t/echo": echo})
	f := mustFlow(t, "steps: [{ id: s, component: /t/echo, input: { $input: missing }, onError: { action: useDefault, defaultValue: 1 } }]\noutput: { $step: s }\n")
	require.Equal(t, `{"outcome":"failed","error":{"code":1,"message":"Input path $.missing not found"}}`, b.run(t, f, `{}`))
	require.Equal(t, 0, b.count("/t/echo"))
}

func TestRoutingErrorAndPanic(t *testing.T) {
	t.Parallel()
	b := setup(t, router{"/t/panic": func(context.Context, *Request) (outcome.Result, error) { panic("oh no") }})
	f := mustFlow(t, "steps: [{ id: s, component: /nowhere/x }]\noutput: { $step: s }\n")
	out := b.run(t, f, `{}`)
	require.Contains(t, out, `"code":500,"message":"error routing component"`)
	require.Contains(t, out, `no route matches component /nowhere/x`)
	require.Contains(t, out, `step \"s\"`)

	f = mustFlow(t, "steps: [{ id: p, component: /t/panic }]\noutput: { $step: p }\n")
	out = b.run(t, f, `{}`)
	require.Contains(t, out, `"message":"step \"p\" failed"`)
	require.Contains(t, out, `component panicked: oh no`)
}

func TestMustExecute(t *testing.T) {
	t.Parallel()
	b := setup(t, router{"/t/echo": echo, "/t/audit": fails})
	f := mustFlow(t, `
steps:
  - { id: audit, component: /t/audit, mustExecute: true }
output: { $input: x }
`)
	// A failing mustExecute step the output does not use does not fail the item.
	require.Equal(t, `{"outcome":"success","result":1}`, b.run(t, f, `{"x":1}`))
	require.Equal(t, 1, b.count("/t/audit"))
}

func TestInputAndOutputSchemas(t *testing.T) {
	t.Parallel()
	b := setup(t, router{"/t/echo": echo})
	f := mustFlow(t, `
schemas:
  type: object
  properties:
    input: { type: object, properties: { data: { type: object, required: [value] } }, required: [data] }
    output: { type: object, properties: { n: { type: integer } } }
steps: [{ id: s, component: /t/echo, input: { n: { $input: "$.data.value" } } }]
output: { $step: s }
`)
	require.Equal(t, `{"outcome":"success","result":{"n":3}}`, b.run(t, f, `{"data":{"value":3}}`))
	bad := b.run(t, f, `{"data":{}}`)
	require.Contains(t, bad, `"code":400`)
	require.Contains(t, bad, `$.data`)
	require.Contains(t, bad, `value`)
	require.Contains(t, b.run(t, f, `{"data":{"value":"x"}}`), `"code":500`)
}

func TestVariables(t *testing.T) {
	t.Parallel()
	b := setup(t, router{})
	f := mustFlow(t, `
schemas:
  type: object
  properties:
    variables:
      type: object
      properties:
        region: { type: string, default: us }
        retries: { type: integer }
        tier: { type: string }
      required: [tier]
output:
  region: { $variable: region }
  retries: { $variable: retries }
  tier: { $variable: tier, default: free }
`)
	vars, err := f.Variables(map[string]value.Value{"region": "eu", "tier": "gold"})
	require.NoError(t, err)
	r, err := b.exec.NewRun("r", f, vars)
	require.NoError(t, err)
	require.Equal(t, `{"outcome":"success","result":{"region":"eu","retries":0,"tier":"gold"}}`, value.String(r.Execute(context.Background(), 0, nil).JSON()))
}

func TestSubflows(t *testing.T) {
	t.Parallel()
	inner := mustFlow(t, "output: { doubled: [ { $input: $ }, { $input: $ } ] }\n")
	b := setup(t, router{
		"/t/map": func(ctx context.Context, req *Request) (outcome.Result, error) {
			items := req.Input.([]value.Value)
			res, err := req.Subflows.RunSubflow(ctx, inner, items, 2)
			if err != nil {
				return outcome.Result{}, err
			}
			out := make([]value.Value, len(res))
			for i, r := range res {
				out[i] = r.JSON()
			}
			return outcome.Success(out), nil
		},
	})
	f := mustFlow(t, "steps: [{ id: m, component: /t/map, input: { $input: items } }]\noutput: { $step: m }\n")
	require.Equal(t, `{"outcome":"success","result":[{"outcome":"success","result":{"doubled":[1,1]}},{"outcome":"success","result":{"doubled":["a","a"]}},{"outcome":"success","result":{"doubled":[null,null]}}]}`,
		b.run(t, f, `{"items":[1,"a",null]}`))
}

func TestCycleIsADeadlockNotAHang(t *testing.T) {
	t.Parallel()
	b := setup(t, router{"/t/echo": echo})
	// Validation rejects forward references; build the cycle a -> b -> a
	// by hand.
	f := mustFlow(t, `
steps:
  - { id: a, component: /t/echo, input: 1 }
  - { id: b, component: /t/echo, input: { $step: a } }
output: { $step: b }
`)
	f.Steps[0].Input = mustFlow(t, "output: { $step: b }\n").Output
	require.Contains(t, b.run(t, f, `{}`), ErrDeadlock.Error())
}

func TestCancelledItem(t *testing.T) {
	t.Parallel()
	started := make(chan struct{})
	b := setup(t, router{"/t/block": func(ctx context.Context, _ *Request) (outcome.Result, error) {
		close(started)
		<-ctx.Done()
		return outcome.Result{}, ctx.Err()
	}})
	f := mustFlow(t, "steps: [{ id: s, component: /t/block }]\noutput: { $step: s }\n")
	r, err := b.exec.NewRun("r", f, nil)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-started; cancel() }()
	res := r.Execute(ctx, 0, nil)
	require.True(t, res.Failed())
}

func BenchmarkExecuteItem(b *testing.B) {
	exec := New(Config{Router: router{"/t/echo": echo}})
	f, err := flow.Parse([]byte(`
steps:
  - { id: a, component: /t/echo, input: { v: { $input: x } } }
  - { id: b, component: /t/echo, input: { w: { $step: a, path: v } } }
  - { id: c, component: /t/echo, input: { messages: [ { role: user, content: { $step: b, path: w } } ] } }
output: { out: { $step: c, path: "$.messages[0].content" } }
`), "bench.yaml")
	if err != nil {
		b.Fatal(err)
	}
	r, err := exec.NewRun("bench", f, nil)
	if err != nil {
		b.Fatal(err)
	}
	in := value.MustParse(`{"x":"hello"}`)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if res := r.Execute(ctx, 0, in); res.Failed() {
			b.Fatal(res.Err)
		}
	}
}

func TestExecuteAllBoundsConcurrencyAndKeepsOrder(t *testing.T) {
	t.Parallel()
	var inFlight, peak atomic.Int32
	b := setup(t, router{"/t/c": func(_ context.Context, req *Request) (outcome.Result, error) {
		cur := inFlight.Add(1)
		defer inFlight.Add(-1)
		for p := peak.Load(); cur > p && !peak.CompareAndSwap(p, cur); p = peak.Load() {
		}
		return outcome.Success(req.Input), nil
	}})
	f := mustFlow(t, "steps: [{ id: s, component: /t/c, input: { $input: $ } }]\noutput: { $step: s }\n")
	r, err := b.exec.NewRun("r", f, nil)
	require.NoError(t, err)
	inputs := make([]value.Value, 100)
	for i := range inputs {
		inputs[i] = value.Int(int64(i))
	}
	var calls atomic.Int32
	res := r.ExecuteAll(context.Background(), inputs, 3, func(int, outcome.Result) { calls.Add(1) })
	for i, x := range res {
		require.Equal(t, value.Int(int64(i)), x.Value)
	}
	require.LessOrEqual(t, peak.Load(), int32(3))
	require.Equal(t, int32(100), calls.Load())

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	res = r.ExecuteAll(ctx, inputs, 3, nil)
	require.Len(t, res, 100)
}

func TestUnavailableComponentKeepsCause(t *testing.T) {
	t.Parallel()
	down := fmt.Errorf("server crashed: %w", ErrUnavailable)
	b := setup(t, router{
		"/t/down": func(context.Context, *Request) (outcome.Result, error) { return outcome.Result{}, down },
		"/t/fail": fails,
		"/t/echo": echo,
	})
	r, err := b.exec.NewRun("run-1", mustFlow(t, `
steps:
  - { id: d, component: /t/down }
  - { id: e, component: /t/echo, input: { $step: d } }
output: { $step: e }
`), nil)
	require.NoError(t, err)
	res := r.Execute(context.Background(), 0, value.MustParse(`{}`))
	// The failure reaches the output through the dependent step, with its
	// cause for callers to branch on, and the usual JSON.
	require.ErrorIs(t, res.Err, ErrUnavailable)
	require.Same(t, down, res.Err.Cause)
	require.Contains(t, value.String(res.JSON()), `"message":"step \"d\" failed"`)
	require.Contains(t, value.String(res.JSON()), "server crashed: component unavailable")

	r, err = b.exec.NewRun("run-2", mustFlow(t, "steps: [{ id: f, component: /t/fail }]\noutput: { $step: f }\n"), nil)
	require.NoError(t, err)
	res = r.Execute(context.Background(), 0, value.MustParse(`{}`))
	require.True(t, res.Failed())
	require.NotErrorIs(t, res.Err, ErrUnavailable)
	require.Nil(t, res.Err.Cause, "a component's own failure has no cause to branch on")
}

func TestExecuteStepsReportsEachStep(t *testing.T) {
	t.Parallel()
	b := setup(t, router{"/t/echo": echo, "/t/boom": fails})
	f := mustFlow(t, `
steps:
  - { id: a, component: /t/echo, input: { v: { $input: x } } }
  - { id: b, component: /t/echo, input: { w: { $step: a, path: v } } }
  - { id: unused, component: /t/echo, input: 1 }
  - { id: soft, component: /t/boom, onError: { action: useDefault, defaultValue: 0 } }
output: { out: { $step: b, path: w }, soft: { $step: soft } }
`)
	r, err := b.exec.NewRun("run-1", f, nil)
	require.NoError(t, err)
	res, steps := r.ExecuteSteps(context.Background(), 0, value.MustParse(`{"x":7}`))
	require.False(t, res.Failed())
	require.Len(t, steps, 4)
	require.Equal(t, StepCompleted, steps[0].Status)
	require.Equal(t, `{"outcome":"success","result":{"v":7}}`, value.String(steps[0].Result.JSON()))
	require.Equal(t, StepCompleted, steps[1].Status)
	require.Equal(t, `{"outcome":"success","result":{"w":7}}`, value.String(steps[1].Result.JSON()))
	require.Equal(t, StepBlocked, steps[2].Status, "a step that is not needed never starts")
	require.Equal(t, "blocked", steps[2].Status.String())
	require.Equal(t, StepCompleted, steps[3].Status, "useDefault turns the failure into a result")

	f = mustFlow(t, `
steps:
  - { id: a, component: /t/boom }
  - { id: b, component: /t/echo, input: { $step: a } }
output: { $step: b }
`)
	r, err = b.exec.NewRun("run-2", f, nil)
	require.NoError(t, err)
	res, steps = r.ExecuteSteps(context.Background(), 0, nil)
	require.True(t, res.Failed())
	require.Equal(t, []StepStatus{StepFailed, StepFailed}, []StepStatus{steps[0].Status, steps[1].Status})
	require.Equal(t, `step "a" failed`, steps[0].Result.Err.Message)
}
