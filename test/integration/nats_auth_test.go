package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
)

// runStepflow runs the stepflow binary from the repository root with env
// added to the test's environment and returns its exit code, stdout and
// stderr.
func runStepflow(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, stepflowBin, args...)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), stdout.String(), stderr.String()
	}
	require.NoError(t, err, stderr.String())
	return 0, stdout.String(), stderr.String()
}

// submitHello submits the hello example (put_blob, get_blob) to the
// coordinator and requires its five results.
func submitHello(t *testing.T, url string, env ...string) {
	t.Helper()
	code, out, stderr := runStepflow(t, env, "submit", "--url", url, "--quiet",
		"--flow", "examples/hello/flow.yaml", "--inputs", "examples/hello/items.jsonl")
	require.Equal(t, 0, code, stderr)
	require.Len(t, lines(out), 5)
	require.Contains(t, lines(out)[0], `"outcome":"success"`)
}

// TestNATSAuthModes: the coordinator's embedded NATS server requires
// each kind of credentials (or TLS), the coordinator logs in to it with
// its own, a worker process with its own, and a batch completes; a
// client without credentials is refused.
func TestNATSAuthModes(t *testing.T) {
	skipShort(t)
	t.Parallel()
	dir := t.TempDir()
	tc := newCerts(t, dir)
	coordKey, workerKey := newNKeyUser(t, dir, "coordinator"), newNKeyUser(t, dir, "worker")
	nkeyConf := filepath.Join(dir, "nkeys.conf")
	require.NoError(t, os.WriteFile(nkeyConf, fmt.Appendf(nil,
		"authorization { users: [ {nkey: %s}, {nkey: %s} ] }\n", coordKey.Public, workerKey.Public), 0o600))
	opConf, creds := operatorSetup(t, dir, "coordinator", "worker")
	mtlsConf := filepath.Join(dir, "mtls.conf")
	require.NoError(t, os.WriteFile(mtlsConf, fmt.Appendf(nil,
		"tls { cert_file: %q, key_file: %q, ca_file: %q, verify: true }\n", tc.ServerCert, tc.ServerKey, tc.CA), 0o600))

	for _, tt := range []struct {
		name                string
		coordEnv, coordArgs []string
		workerEnv, workArgs []string
		tls                 bool // the server requires TLS
		noAuth              bool // the server requires no credentials (TLS only)
	}{{
		name:     "token",
		coordEnv: []string{"STEPFLOW_NATS_SERVER_TOKEN=s3cret-token"},
		// The coordinator logs in with the server's token itself.
		workerEnv: []string{"STEPFLOW_NATS_TOKEN=s3cret-token"},
	}, {
		name:      "user-password",
		coordEnv:  []string{"STEPFLOW_NATS_SERVER_PASSWORD=s3cret-pw"},
		coordArgs: []string{"--nats-server-user", "stepflow"},
		workerEnv: []string{"STEPFLOW_NATS_PASSWORD=s3cret-pw"},
		workArgs:  []string{"--nats-user", "stepflow"},
	}, {
		name:      "nkey",
		coordArgs: []string{"--nats-server-config", nkeyConf, "--nats-nkey", coordKey.SeedFile},
		workArgs:  []string{"--nats-nkey", workerKey.SeedFile},
	}, {
		name:      "creds-operator-mode",
		coordArgs: []string{"--nats-server-config", opConf, "--nats-creds", creds["coordinator"]},
		workerEnv: []string{"STEPFLOW_NATS_CREDS=" + creds["worker"]},
	}, {
		name:      "tls",
		coordEnv:  []string{"STEPFLOW_NATS_SERVER_PASSWORD=s3cret-pw"},
		coordArgs: []string{"--nats-server-tls-cert", tc.ServerCert, "--nats-server-tls-key", tc.ServerKey, "--nats-server-user", "stepflow"},
		workerEnv: []string{"STEPFLOW_NATS_USER=stepflow", "STEPFLOW_NATS_PASSWORD=s3cret-pw"},
		workArgs:  []string{"--nats-tls-ca", tc.CA},
		tls:       true,
	}, {
		name:      "mutual-tls",
		coordArgs: []string{"--nats-server-config", mtlsConf},
		workArgs:  []string{"--nats-tls-ca", tc.CA, "--nats-tls-cert", tc.ClientCert, "--nats-tls-key", tc.ClientKey},
		tls:       true,
		noAuth:    true,
	}} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := startCoordinator(t, tt.coordEnv, append(tt.coordArgs, "--log-level", "warn")...)
			if tt.tls {
				require.True(t, strings.HasPrefix(c.NATSURL, "tls://"), c.NATSURL)
			}
			startWorker(t, tt.workerEnv, append([]string{"--nats-url", c.NATSURL, "--concurrency", "2"}, tt.workArgs...)...)
			submitHello(t, c.URL())

			// Without credentials (or without the client certificate), the
			// server refuses the connection.
			var opts []nats.Option
			if tt.tls && !tt.noAuth {
				opts = append(opts, nats.RootCAs(tc.CA))
			}
			nc, err := nats.Connect(c.NATSURL, append(opts, nats.Timeout(5*time.Second))...)
			if nc != nil {
				nc.Close()
			}
			require.Error(t, err, "a client without credentials must be refused")
			if tt.noAuth {
				// TLS without the client certificate: the handshake fails.
				nc, err = nats.Connect(c.NATSURL, nats.RootCAs(tc.CA), nats.Timeout(5*time.Second))
				if nc != nil {
					nc.Close()
				}
				require.Error(t, err, "mutual TLS needs a client certificate")
			} else {
				require.ErrorIs(t, err, nats.ErrAuthorization)
			}
		})
	}
}

// TestNATSAuthMisconfigured: a coordinator whose embedded server requires
// credentials it was not given fails to start with a clear error, instead
// of waiting forever; the other bad combinations are usage errors.
func TestNATSAuthMisconfigured(t *testing.T) {
	skipShort(t)
	t.Parallel()
	dir := t.TempDir()
	k := newNKeyUser(t, dir, "only")
	conf := filepath.Join(dir, "nkeys.conf")
	require.NoError(t, os.WriteFile(conf, fmt.Appendf(nil, "authorization { users: [ {nkey: %s} ] }\n", k.Public), 0o600))
	for _, tt := range []struct {
		args     []string
		wantCode int
		want     string
	}{
		{[]string{"--nats-server-config", conf}, 1, "requires authentication: give the coordinator its credentials"},
		{[]string{"--nats-server-config", conf, "--nats-server-token", "x"}, 2, "sets authorization itself"},
		{[]string{"--nats-url", "nats://127.0.0.1:1", "--nats-server-user", "u"}, 2, "not started with --nats-url"},
		{[]string{"--nats-server-config", filepath.Join(dir, "missing.conf")}, 1, "missing.conf"},
		{[]string{"--tls-cert", "x.pem"}, 2, "needs both a certificate and a key"},
	} {
		cmd := exec.Command(coordinatorBin, append([]string{"--port", "0", "--nats-port", "0", "--data-dir", t.TempDir(), "--log-format", "text"}, tt.args...)...)
		cmd.Dir = repoRoot
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee, "%v: %s", tt.args, out)
		require.Equal(t, tt.wantCode, ee.ExitCode(), "%v: %s", tt.args, out)
		require.Contains(t, string(out), tt.want, "%v", tt.args)
	}
}
