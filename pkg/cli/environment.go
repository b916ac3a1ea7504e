package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/flow"
	"github.com/stepflow-go/stepflow/pkg/plugin"
	"github.com/stepflow-go/stepflow/pkg/runs"
)

// environment is everything a flow runs against: the config, the started
// plugins, the blob store and an executor.
type environment struct {
	cfg     *config.Config
	plugins *plugin.Plugins
	blobs   blob.Store
	runs    *runs.Local
	exec    *executor.Executor
	closers []func() error
}

// discoverConfig finds and loads the config for a flow in flowDir; the
// default config when there is none.
func discoverConfig(explicit, flowDir string) (*config.Config, error) {
	cwd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	path, err := config.Discover(explicit, flowDir, cwd)
	if err != nil {
		return nil, err
	}
	if path == "" {
		return config.Default(), nil
	}
	return config.Load(path)
}

// loadEnvironment discovers the config of f and starts its plugins.
func (a *app) loadEnvironment(ctx context.Context, configPath string, f *flow.Flow, spillDir string) (*environment, error) {
	flowDir := ""
	if f.File != "" {
		flowDir = filepath.Dir(f.File)
	}
	cfg, err := discoverConfig(configPath, flowDir)
	if err != nil {
		return nil, err
	}
	return a.newEnvironment(ctx, cfg, flowDir, spillDir)
}

// newEnvironment starts the plugins of cfg. Blobs live in a store that
// spills to disk past blobMemoryBudget, so that a million-item batch of put_blob
// steps keeps its memory bounded.
func (a *app) newEnvironment(ctx context.Context, cfg *config.Config, flowDir, spillDir string) (*environment, error) {
	env := &environment{cfg: cfg}
	if spillDir == "" {
		spillDir = os.TempDir()
	}
	store, err := blob.NewSpill(spillDir, blobMemoryBudget)
	if err != nil {
		return nil, fmt.Errorf("blob store: %w", err)
	}
	env.blobs = store
	env.closers = append(env.closers, store.Close)
	// Nested runs that components submit (runs/submit) run here, on
	// their own goroutines: the plugins need the run machinery for their
	// callbacks and the run machinery needs the executor, which needs the
	// plugins, so it is wired last.
	env.runs = runs.NewLocal(store, a.log.Named("runs"))
	cwd, _ := os.Getwd()
	plugins, err := plugin.New(ctx, cfg, plugin.Options{
		Logger:     a.log,
		Blobs:      store,
		WorkingDir: cfg.WorkDir(flowDir, cwd),
		LookupEnv:  a.io.LookupEnv,
		Runs:       env.runs,
	})
	if err != nil {
		env.close()
		return nil, fmt.Errorf("configuration error: %w", err)
	}
	env.plugins = plugins
	env.closers = append(env.closers, plugins.Close, env.runs.Close)
	env.exec = executor.New(executor.Config{Router: plugins, Logger: a.log.Named("executor")})
	env.runs.SetExecutor(env.exec)
	return env, nil
}

// storeFlow keeps f in the blob store under its id, as upstream does for
// the flow of every run, so that components can submit nested runs of it.
func (e *environment) storeFlow(ctx context.Context, f *flow.Flow) error {
	if _, err := e.blobs.Put(ctx, blob.KindFlow, f.Value()); err != nil {
		return fmt.Errorf("store flow: %w", err)
	}
	return nil
}

// validate checks the flow, the config and the routing of every step.
func (e *environment) validate(f *flow.Flow) flow.Diagnostics {
	return validateStatic(f, e.cfg, e.plugins.Router())
}

func (e *environment) close() {
	var errs []error
	for i := len(e.closers) - 1; i >= 0; i-- {
		errs = append(errs, e.closers[i]())
	}
	_ = errors.Join(errs...)
}

// blobMemoryBudget is how much of the blob store stays in memory (by the
// store's estimate) before blobs spill to a temporary file.
const blobMemoryBudget = 8 << 20
