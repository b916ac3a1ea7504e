package coordinator_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/coordinator"
)

func TestLoadAuthToken(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "token")
	require.NoError(t, os.WriteFile(file, []byte("  s3cret\n"), 0o600))
	empty := filepath.Join(dir, "empty")
	require.NoError(t, os.WriteFile(empty, []byte(" \n"), 0o600))

	tok, err := coordinator.LoadAuthToken("", file)
	require.NoError(t, err)
	require.Equal(t, "s3cret", tok, "read once, trimmed")
	tok, err = coordinator.LoadAuthToken("direct", "")
	require.NoError(t, err)
	require.Equal(t, "direct", tok)

	_, err = coordinator.LoadAuthToken("tok-93x", file)
	require.ErrorIs(t, err, coordinator.ErrInvalidConfig)
	require.NotContains(t, err.Error(), "tok-93x")
	require.NotContains(t, err.Error(), "s3cret")
	_, err = coordinator.LoadAuthToken("", empty)
	require.ErrorContains(t, err, "is empty")
	_, err = coordinator.LoadAuthToken("", filepath.Join(dir, "missing"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

// Main: --auth-token-file with --auth-token, or an empty file, is a usage
// error; a token from the environment never shows in --help.
func TestMainAuthTokenFile(t *testing.T) {
	t.Setenv("STEPFLOW_AUTH_TOKEN", "env-tok-93")
	empty := filepath.Join(t.TempDir(), "empty")
	require.NoError(t, os.WriteFile(empty, nil, 0o600))
	var stdout, stderr bytes.Buffer
	require.Equal(t, coordinator.ExitUsage, coordinator.Main(testCtx(t), []string{"--data-dir", t.TempDir(), "--auth-token-file", empty}, &stdout, &stderr))
	require.Contains(t, stderr.String(), "not both")
	require.NotContains(t, stderr.String(), "env-tok-93")

	t.Setenv("STEPFLOW_AUTH_TOKEN", "")
	stderr.Reset()
	require.Equal(t, coordinator.ExitUsage, coordinator.Main(testCtx(t), []string{"--data-dir", t.TempDir(), "--auth-token-file", empty}, &stdout, &stderr))
	require.Contains(t, stderr.String(), "is empty")

	t.Setenv("STEPFLOW_AUTH_TOKEN", "env-tok-93")
	t.Setenv("STEPFLOW_NATS_PASSWORD", "env-nats-pw-93")
	stderr.Reset()
	require.Equal(t, coordinator.ExitOK, coordinator.Main(testCtx(t), []string{"--help"}, &stdout, &stderr))
	require.Contains(t, stderr.String(), "(env STEPFLOW_AUTH_TOKEN)")
	require.Contains(t, stderr.String(), "-nats-server-config")
	require.NotContains(t, stderr.String(), "env-tok-93")
	require.NotContains(t, stderr.String(), "env-nats-pw-93")
}
