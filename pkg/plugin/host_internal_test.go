package plugin

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/config"
)

// With ConfineFiles (workers), the config file is hidden from
// /builtin/load_file; without, nothing is.
func TestHostHidesTheConfigFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "stepflow-config.yml")
	require.NoError(t, os.WriteFile(path, []byte("plugins:\n  builtin: {type: builtin}\nroutes:\n  \"/builtin/{*component}\": [{plugin: builtin}]\n"), 0o600))
	cfg, err := config.Load(path)
	require.NoError(t, err)
	require.Equal(t, path, cfg.File)

	h, err := Options{WorkingDir: dir, ConfineFiles: true}.host(cfg)
	require.NoError(t, err)
	require.Len(t, h.HiddenFiles, 1)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.True(t, os.SameFile(fi, h.HiddenFiles[0]))

	h, err = Options{WorkingDir: dir}.host(cfg)
	require.NoError(t, err)
	require.Empty(t, h.HiddenFiles, "stepflow run reads any path, as upstream")
}
