package plugin

import (
	"context"
	"errors"
	"fmt"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// ErrNoBehavior is matched (errors.Is) by the error of a mock component
// called with an input that has no behaviour.
var ErrNoBehavior = errors.New("no behavior defined")

// NoBehaviorError is a mock component called with an input that has no
// behaviour; its text is upstream's: `No behavior defined for /c on
// {"input":"x"}`.
type NoBehaviorError struct {
	Component string
	Input     value.Value
}

// Error returns upstream's message.
func (e *NoBehaviorError) Error() string {
	return fmt.Sprintf("No behavior defined for %s on %s", e.Component, value.String(e.Input))
}

// Is matches ErrNoBehavior.
func (e *NoBehaviorError) Is(target error) bool { return target == ErrNoBehavior }

// mockPlugin is `type: mock`: components scripted by exact input.
type mockPlugin struct {
	comps map[string]*mockComponent
	order []*mockComponent
}

type mockComponent struct{ cfg *config.MockComponent }

// MockError is the execution error of a mock behaviour `{error: …}`.
type MockError struct {
	Component string
	Message   string
}

// Error returns the behaviour's message.
func (e *MockError) Error() string { return e.Message }

func mockFactory(_ context.Context, pc *config.Plugin, _ Host) (Plugin, error) {
	if pc.Mock == nil {
		return nil, fmt.Errorf("mock plugin %q has no components", pc.Name)
	}
	p := &mockPlugin{comps: make(map[string]*mockComponent, len(pc.Mock.Components))}
	for _, c := range pc.Mock.Components {
		mc := &mockComponent{cfg: c}
		p.comps[c.Name] = mc
		p.order = append(p.order, mc)
	}
	return p, nil
}

func (p *mockPlugin) Start(context.Context) error { return nil }

func (p *mockPlugin) Close() error { return nil }

func (p *mockPlugin) Components(context.Context) ([]ComponentInfo, error) {
	out := make([]ComponentInfo, len(p.order))
	for i, c := range p.order {
		out[i] = ComponentInfo{Component: c.cfg.Name, InputSchema: c.cfg.InputSchema, OutputSchema: c.cfg.OutputSchema}
	}
	return out, nil
}

func (p *mockPlugin) Component(name string) (executor.Component, error) {
	c, ok := p.comps[name]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownComponent, name)
	}
	return c, nil
}

// ComponentName returns the plugin-local name (executor.NamedComponent).
func (c *mockComponent) ComponentName() string { return c.cfg.Name }

// Execute returns the behaviour whose input equals the step input: its
// result (success or failure, as written), or its error.
func (c *mockComponent) Execute(_ context.Context, req *executor.Request) (outcome.Result, error) {
	for _, b := range c.cfg.Behaviors {
		if !value.Equal(b.Input, req.Input) {
			continue
		}
		if b.Result != nil {
			return *b.Result, nil
		}
		return outcome.Result{}, &MockError{Component: c.cfg.Name, Message: b.Error}
	}
	return outcome.Result{}, &NoBehaviorError{Component: c.cfg.Name, Input: req.Input}
}
