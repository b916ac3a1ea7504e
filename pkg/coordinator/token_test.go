package coordinator_test

import (
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
