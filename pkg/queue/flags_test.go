package queue_test

import (
	"bytes"
	"flag"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/queue"
)

// TestRegisterConnectFlags: the same names and environment variables on a
// standard-library and a pflag flag set; values come from the environment
// unless a flag is given, and secrets from the environment are never
// printed as defaults.
func TestRegisterConnectFlags(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		queue.EnvNATSUser: "worker", queue.EnvNATSPassword: "pw-from-env", queue.EnvNATSToken: "tok-from-env",
		queue.EnvNATSCreds: "w.creds", queue.EnvNATSTLSCA: "ca.pem", queue.EnvNATSServerPassword: "srv-pw-from-env",
	}
	getenv := func(k string) string { return env[k] }

	var o queue.ConnectOptions
	var ec queue.EmbeddedConfig
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	queue.RegisterConnectFlags(fs, &o, getenv)
	queue.RegisterEmbeddedFlags(fs, &ec, getenv)
	require.NoError(t, fs.Parse([]string{"--nats-token", "tok-from-flag", "--nats-server-user", "stepflow"}))
	require.Equal(t, queue.ConnectOptions{User: "worker", Password: "pw-from-env", Token: "tok-from-flag", CredsFile: "w.creds", TLSCAFile: "ca.pem"}, o)
	require.Equal(t, "stepflow", ec.User)
	require.Equal(t, "srv-pw-from-env", ec.Password)
	var help bytes.Buffer
	fs.SetOutput(&help)
	fs.PrintDefaults()

	var po queue.ConnectOptions
	pfs := pflag.NewFlagSet("y", pflag.ContinueOnError)
	queue.RegisterConnectFlags(pfs, &po, getenv)
	queue.RegisterEmbeddedFlags(pfs, &queue.EmbeddedConfig{}, getenv)
	require.NoError(t, pfs.Parse(nil))
	require.Equal(t, "pw-from-env", po.Password)
	help.WriteString(pfs.FlagUsages())

	for _, name := range []string{"nats-user", "nats-password", "nats-token", "nats-nkey", "nats-creds", "nats-tls-ca", "nats-tls-cert", "nats-tls-key",
		"nats-server-config", "nats-server-token", "nats-server-user", "nats-server-password", "nats-server-tls-cert", "nats-server-tls-key"} {
		require.NotNil(t, fs.Lookup(name), name)
		require.NotNil(t, pfs.Lookup(name), name)
		require.Equal(t, fs.Lookup(name).Usage, pfs.Lookup(name).Usage)
		require.Contains(t, fs.Lookup(name).Usage, "(env STEPFLOW_NATS_", name)
	}
	for _, secret := range []string{"pw-from-env", "tok-from-env", "srv-pw-from-env"} {
		require.NotContains(t, help.String(), secret)
	}
	require.True(t, strings.Contains(help.String(), `default "worker"`), "non-secret defaults are shown:\n%s", help.String())
}

func TestRedactURL(t *testing.T) {
	t.Parallel()
	require.Equal(t, "nats://u:xxxxx@h:4222,nats://xxxxx@g:4222,nats://plain:4222",
		queue.RedactURL("nats://u:secret@h:4222, nats://tok@g:4222,nats://plain:4222"))
	require.NotContains(t, queue.RedactURL("nats://u:p%zz@h"), "p%zz")
}
