package builtin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// OpenAI defaults.
const (
	DefaultOpenAIModel = "gpt-3.5-turbo"
	DefaultOpenAIBase  = "https://api.openai.com/v1"
)

// maxOpenAIResponse bounds the response body read from the API.
const maxOpenAIResponse = 32 << 20

// openAI implements /openai: one chat completion.
//
// Upstream hard-wires the model and drops max_tokens and temperature;
// here `model` (default gpt-3.5-turbo), `temperature` and `max_tokens` are
// sent when given.
func (p *Plugin) openAI(ctx context.Context, req *executor.Request) (outcome.Result, error) {
	in, err := decodeInput(req.Input)
	if err != nil {
		return outcome.Result{}, err
	}
	msgs, err := chatMessages(in)
	if err != nil {
		return outcome.Result{}, err
	}
	maxTokens, hasMax, err := in.optUint("max_tokens", 65535, true)
	if err != nil {
		return outcome.Result{}, err
	}
	temperature, hasTemp, err := in.optNumber("temperature")
	if err != nil {
		return outcome.Result{}, err
	}
	apiKey, hasKey, err := in.optString("api_key")
	if err != nil {
		return outcome.Result{}, err
	}
	model, hasModel, err := in.optString("model")
	if err != nil {
		return outcome.Result{}, err
	}
	if !hasModel {
		model = DefaultOpenAIModel
	}
	if !hasKey {
		if apiKey, hasKey = p.host.LookupEnv("OPENAI_API_KEY"); !hasKey {
			return outcome.Result{}, ErrMissingAPIKey
		}
	}
	base, ok := p.host.LookupEnv("OPENAI_API_BASE")
	if !ok {
		base = DefaultOpenAIBase
	}

	body := value.NewObject(4)
	body.Set("model", model)
	wire := make([]value.Value, len(msgs))
	for i, m := range msgs {
		var content value.Value = m.content
		if m.content == "" {
			content = nil // as openai-api-rs sends it
		}
		wire[i] = value.ObjectOf("role", m.role, "content", content)
	}
	body.Set("messages", wire)
	if hasTemp {
		body.Set("temperature", temperature)
	}
	if hasMax {
		body.Set("max_tokens", value.Int(int64(maxTokens)))
	}

	text, err := p.chatCompletion(ctx, completionsURL(base), apiKey, value.Marshal(body))
	if err != nil {
		return outcome.Result{}, err
	}
	return success(value.ObjectOf("response", text))
}

type chatMessage struct{ role, content string }

// chatMessages reads the `messages` field: role system, user or assistant
// (lower-case only) and string content.
func chatMessages(in input) ([]chatMessage, error) {
	v, err := in.reqAny("messages")
	if err != nil {
		return nil, err
	}
	arr, ok := v.([]value.Value)
	if !ok {
		return nil, invalidInput("`messages`: expected an array, got %s", describe(v))
	}
	out := make([]chatMessage, len(arr))
	for i, e := range arr {
		mi, err := decodeInput(e)
		if err != nil {
			return nil, invalidInput("`messages[%d]`: expected an object, got %s", i, describe(e))
		}
		role, err := mi.reqString("role")
		if err != nil {
			return nil, invalidInput("`messages[%d]`: %s", i, strings.TrimPrefix(err.Error(), ErrInvalidInput.Error()+": "))
		}
		switch role {
		case "system", "user", "assistant":
		default:
			return nil, invalidInput("`messages[%d].role`: expected system, user or assistant, got %q", i, role)
		}
		content, err := mi.reqString("content")
		if err != nil {
			return nil, invalidInput("`messages[%d]`: %s", i, strings.TrimPrefix(err.Error(), ErrInvalidInput.Error()+": "))
		}
		out[i] = chatMessage{role: role, content: content}
	}
	return out, nil
}

// completionsURL appends /chat/completions to the base URL's path,
// keeping a query string.
func completionsURL(base string) string {
	query := ""
	if i := strings.IndexByte(base, '?'); i >= 0 {
		base, query = base[:i], base[i:]
	}
	return strings.TrimRight(base, "/") + "/chat/completions" + query
}

func openAIError(detail string, cause error) error {
	return &Error{Kind: ErrOpenAI, Detail: detail, Err: cause}
}

// chatCompletion posts the request and returns the first choice's text.
func (p *Plugin) chatCompletion(ctx context.Context, url, apiKey string, body []byte) (string, error) {
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return "", openAIError("generating completion", err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Authorization", "Bearer "+apiKey)
	p.host.Logger.Debug("openai chat completion", zap.String("url", url), zap.Int("bytes", len(body)))
	resp, err := p.host.HTTPClient.Do(hreq)
	if err != nil {
		return "", openAIError("generating completion", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxOpenAIResponse))
	if err != nil {
		return "", openAIError("generating completion", fmt.Errorf("read response: %w", err))
	}
	if resp.StatusCode/100 != 2 {
		return "", openAIError("generating completion", fmt.Errorf("HTTP %d: %s", resp.StatusCode, excerpt(data)))
	}
	v, err := value.Parse(data)
	if err != nil {
		return "", openAIError("generating completion", fmt.Errorf("parse response: %w", err))
	}
	obj, ok := v.(*value.Object)
	if !ok {
		return "", openAIError("generating completion", errors.New("parse response: not an object"))
	}
	cv, ok := obj.Get("choices")
	choices, isArr := cv.([]value.Value)
	if !ok || !isArr {
		return "", openAIError("generating completion", errors.New("parse response: no `choices` array"))
	}
	if len(choices) == 0 {
		return "", openAIError("missing completion", nil)
	}
	var content value.Value
	if c, ok := choices[0].(*value.Object); ok {
		if m, ok := c.Get("message"); ok {
			if mo, ok := m.(*value.Object); ok {
				content, _ = mo.Get("content")
			}
		}
	}
	switch t := content.(type) {
	case nil:
		return "", nil
	case string:
		return t, nil
	default:
		return "", openAIError("generating completion", fmt.Errorf("parse response: message content is %s", value.TypeName(content)))
	}
}

// excerpt shortens a response body for an error message.
func excerpt(b []byte) string {
	const max = 512
	s := strings.TrimSpace(string(b))
	if len(s) > max {
		s = s[:max] + "…"
	}
	return s
}
