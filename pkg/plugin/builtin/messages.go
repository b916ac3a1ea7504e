package builtin

import (
	"context"

	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// createMessages implements /create_messages: {system_instructions?,
// user_prompt} -> {messages: [system?, user]}.
func (p *Plugin) createMessages(_ context.Context, req *executor.Request) (outcome.Result, error) {
	in, err := decodeInput(req.Input)
	if err != nil {
		return outcome.Result{}, err
	}
	system, hasSystem, err := in.optString("system_instructions")
	if err != nil {
		return outcome.Result{}, err
	}
	prompt, err := in.reqString("user_prompt")
	if err != nil {
		return outcome.Result{}, err
	}
	msgs := make([]value.Value, 0, 2)
	if hasSystem {
		msgs = append(msgs, value.ObjectOf("role", "system", "content", system))
	}
	msgs = append(msgs, value.ObjectOf("role", "user", "content", prompt))
	return success(value.ObjectOf("messages", msgs))
}
