package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestSecretsNeverLeak runs a batch whose flow takes a secret variable and
// a secret input field, on a coordinator and a worker with an API token, a
// NATS password and a config secret (a `${VAR}` of the plugin's env),
// both logging at debug level; some items fail in a component that
// received the secrets. No log line, API answer (run, run details, flow,
// items, steps, events, list), CLI output or error message contains any
// of the secret values; the secrets did reach the component, and the
// worker's own secrets did not reach the component server's environment.
func TestSecretsNeverLeak(t *testing.T) {
	skipShort(t)
	t.Parallel()
	requireVenvs(t)
	const (
		apiToken  = "tok-9f3a1c7e5b"
		natsPass  = "nats-pw-4d2e8b1a6c"
		varSecret = "var-secret-7c1d9e3f2a"
		inSecret  = "input-secret-2b8f6a4c9d"
		cfgSecret = "config-secret-5e9a3d7b1f"
	)
	secrets := []string{apiToken, natsPass, varSecret, inSecret, cfgSecret}

	c := startCoordinator(t,
		[]string{"STEPFLOW_AUTH_TOKEN=" + apiToken, "STEPFLOW_NATS_SERVER_USER=stepflow", "STEPFLOW_NATS_SERVER_PASSWORD=" + natsPass},
		"--log-level", "debug")
	workerLogs := startWorker(t,
		[]string{"STEPFLOW_NATS_USER=stepflow", "STEPFLOW_NATS_PASSWORD=" + natsPass, "MY_API_KEY=" + cfgSecret,
			// The worker's environment holds other secrets too; none may
			// reach the component server.
			"STEPFLOW_AUTH_TOKEN=" + apiToken, "STEPFLOW_TOKEN=" + apiToken},
		"--nats-url", c.NATSURL, "--concurrency", "2", "--log-level", "debug",
		"--config", "test/integration/testdata/secret-config.yml")

	dir := t.TempDir()
	var in strings.Builder
	for i := range 6 {
		fmt.Fprintf(&in, `{"user":"u%d","password":%q,"fail":%t}`+"\n", i, inSecret, i%3 == 2)
	}
	inputs := filepath.Join(dir, "inputs.jsonl")
	require.NoError(t, os.WriteFile(inputs, []byte(in.String()), 0o600))

	env := []string{"STEPFLOW_TOKEN=" + apiToken, "STEPFLOW_VAR_API_KEY=" + varSecret}
	code, out, stderr := runStepflow(t, env, "submit", "--url", c.URL(), "--progress", "plain", "--env-variables",
		"--flow", "test/integration/testdata/secret-flow.yaml", "--inputs", inputs)
	require.Equal(t, 3, code, "two items fail: %s", stderr)
	results := lines(out)
	require.Len(t, results, 6)
	require.Contains(t, results[0], fmt.Sprintf(`"api_key_len":%d`, len(varSecret)), "the variable reached the component")
	require.Contains(t, results[0], fmt.Sprintf(`"password_len":%d`, len(inSecret)), "the input reached the component")
	require.Contains(t, results[0], fmt.Sprintf(`"config_key_len":%d`, len(cfgSecret)), "the config's env reached the component")
	require.Contains(t, results[0], `"stepflow_env":[]`, "the worker's STEPFLOW_* variables did not reach the component server")
	require.Contains(t, results[2], "the remote service rejected the credentials")
	texts := map[string]string{"submit stdout": out, "submit stderr": stderr}

	// A run whose secret variable is invalid is refused without quoting it.
	code, out, stderr = runStepflow(t, []string{"STEPFLOW_TOKEN=" + apiToken, "STEPFLOW_VAR_API_KEY=short"}, "submit", "--url", c.URL(), "--env-variables",
		"--flow", "test/integration/testdata/secret-flow.yaml", "--inputs", inputs)
	require.Equal(t, 1, code, stderr)
	require.NotContains(t, stderr, "short")
	texts["invalid variables stderr"] = stderr + out

	// Every API answer about the run.
	code, out, stderr = runStepflow(t, []string{"STEPFLOW_TOKEN=" + apiToken}, "runs", "list", "--url", c.URL(), "--format", "json")
	require.Equal(t, 0, code, stderr)
	texts["runs list"] = out
	var list struct {
		Runs []struct {
			RunID string `json:"runId"`
		} `json:"runs"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &list))
	require.Len(t, list.Runs, 1)
	runID := list.Runs[0].RunID
	get := func(path string) string {
		req, err := http.NewRequest(http.MethodGet, c.URL()+"/api/v1"+path, nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+apiToken)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s: %s", path, body)
		return string(body)
	}
	details := get("/runs/" + runID)
	require.Contains(t, details, `"api_key":"[REDACTED]"`, "the secret variable is redacted")
	require.Contains(t, details, `"region":"eu"`, "other variables are shown")
	require.Contains(t, details, `"password":"[REDACTED]"`, "secret input fields are redacted")
	require.Contains(t, details, `"user":"u0"`)
	texts["GET run"] = details
	for _, p := range []string{"", "/flow", "/items", "/items?format=jsonl", "/steps", "/events"} {
		texts["GET run"+p] = get("/runs/" + runID + p)
	}
	texts["GET runs"] = get("/runs")
	code, out, stderr = runStepflow(t, []string{"STEPFLOW_TOKEN=" + apiToken}, "runs", "get", runID, "--url", c.URL())
	require.Equal(t, 0, code, stderr)
	texts["runs get"] = out + stderr

	// Stop the processes so that their logs are complete, then read them.
	stopProcess(c.cmd)
	texts["coordinator log"] = c.logs.String()
	texts["worker log"] = workerLogs.String()
	require.Contains(t, texts["coordinator log"], "\tDEBUG\t", "the coordinator logged at debug level")
	require.Contains(t, texts["worker log"], "DEBUG", "the worker logged at debug level")
	for name, text := range texts {
		for _, s := range secrets {
			require.NotContains(t, text, s, "%s leaks a secret", name)
		}
	}
}
