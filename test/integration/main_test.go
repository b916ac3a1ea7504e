// Package integration runs whole processes: the stepflow binary against
// real component servers (stepflow-py from PyPI, in the virtual
// environments `make venv` creates) and, as the project grows, NATS,
// coordinators and workers.
package integration

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"
)

// repoRoot is the repository root (tests run in test/integration).
var repoRoot = func() string {
	wd, err := os.Getwd()
	if err != nil {
		panic(err)
	}
	return filepath.Clean(filepath.Join(wd, "..", ".."))
}()

// The binaries, built once for the whole package. natsServerBin is
// nats-server itself, built from the module's nats-server/v2 dependency,
// for the chaos tests that kill an external NATS server.
var stepflowBin, coordinatorBin, workerBin, natsServerBin string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		// Every test here starts processes; they skip (skipShort) and
		// need no binaries.
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "stepflow-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	stepflowBin = filepath.Join(dir, "stepflow")
	coordinatorBin = filepath.Join(dir, "coordinator")
	workerBin = filepath.Join(dir, "worker")
	natsServerBin = filepath.Join(dir, "nats-server")
	for bin, pkg := range map[string]string{stepflowBin: "./cmd/stepflow", coordinatorBin: "./cmd/coordinator", workerBin: "./cmd/worker",
		natsServerBin: "github.com/nats-io/nats-server/v2"} {
		build := exec.Command("go", "build", "-o", bin, pkg)
		build.Dir = repoRoot
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build", pkg+":", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// skipShort skips the test under go test -short (make check): every test
// in this package builds on whole processes. make test runs them.
func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("short: multi-process integration test")
	}
}

// requireVenvs fails the test when the SDK virtual environments are
// missing.
func requireVenvs(t *testing.T) {
	t.Helper()
	for _, v := range []string{".venv-sdk-http", ".venv-sdk-http11", ".venv-sdk-stdio"} {
		if _, err := os.Stat(filepath.Join(repoRoot, v, "bin", "python")); err != nil {
			t.Fatalf("%s is missing: run `make venv` first", v)
		}
	}
}
