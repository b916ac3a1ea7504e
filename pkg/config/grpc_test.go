package config_test

import (
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/config"
)

// Upstream 0.13's example configs (examples/*/stepflow-config.yml of
// stepflow 0.13.0, Apache-2.0) load as written: `type: grpc` plugins and
// prefix routes without `{*component}`.
func TestLoadUpstream013Examples(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("testdata/upstream013/*/stepflow-config.yml")
	require.NoError(t, err)
	require.Len(t, files, 3)
	for _, f := range files {
		c, err := config.Load(f, env())
		require.NoError(t, err, f)
		require.Empty(t, c.Validate(), f)
		var grpc *config.Plugin
		for _, p := range c.Plugins {
			if p.Type == config.TypeGRPC {
				grpc = p
			}
		}
		require.NotNil(t, grpc, f)
		require.Equal(t, "uv", grpc.GRPC.Command, f)
		require.Equal(t, "--project", grpc.GRPC.Args[0], f)
		require.Equal(t, config.DefaultQueueTimeout, grpc.GRPC.QueueTimeout, f)
		require.NotEmpty(t, grpc.GRPC.QueueName, f)
	}
}

func TestGRPCAndNATSPlugins(t *testing.T) {
	t.Parallel()
	c, err := config.Parse([]byte(`
plugins:
  py:
    type: grpc
    command: python3
    args: [-m, stepflow_py.worker.main]
    env: {K: "${K:-d}"}
    queueTimeoutSecs: 5
    executionTimeoutSecs: 60
    timeoutMs: 2500
  ext: { type: grpc }
  jet:
    type: nats
    url: "nats://${HOST}:4222"
    stream: PYTHON_TASKS
    consumer: python-workers
  jet2: { type: nats, natsUrl: "nats://x:4222" }
routes:
  "/py":
    - plugin: py
      params: { queueName: gpu }
  "/ext/{*component}":
    - plugin: ext
  "/jet/foo":
    - plugin: jet
      stream: FOO_TASKS
  "/jet":
    - plugin: jet
  "/":
    - plugin: jet2
`), "cfg.yml", env("HOST", "127.0.0.1"))
	require.NoError(t, err)
	py := c.Plugin("py").GRPC
	require.Equal(t, &config.GRPCPlugin{
		Command: "python3", Args: []string{"-m", "stepflow_py.worker.main"},
		Env: []config.EnvVar{{Name: "K", Value: "d"}}, QueueName: "py",
		QueueTimeout: 5 * time.Second, ExecutionTimeout: time.Minute, Timeout: 2500 * time.Millisecond,
	}, py)
	ext := c.Plugin("ext").GRPC
	require.Equal(t, "", ext.Command)
	require.Equal(t, "ext", ext.QueueName)
	jet := c.Plugin("jet").NATS
	require.Equal(t, "nats://127.0.0.1:4222", jet.URL)
	require.Equal(t, "PYTHON_TASKS", jet.Stream)
	require.Equal(t, "python-workers", jet.Consumer)
	require.Equal(t, "nats://x:4222", c.Plugin("jet2").NATS.URL)
	require.Empty(t, jet.Listen, "the Unix socket unless `listen` is written")
	require.Nil(t, jet.AllowFrom)
	require.Equal(t, map[string]string{"queueName": "gpu"}, c.Routes[0].Rules[0].Params)
	require.Nil(t, c.Routes[1].Rules[0].Params)
	require.Equal(t, map[string]string{"stream": "FOO_TASKS"}, c.Routes[2].Rules[0].Params)
}

// `listen` serves a nats plugin's gRPC services on TCP for workers
// elsewhere; `advertise` (the pod IP by substitution) is what tasks name.
func TestNATSPluginListen(t *testing.T) {
	t.Parallel()
	c, err := config.Parse([]byte(`
plugins:
  all:
    type: nats
    url: "nats://nats:4222"
    listen: "0.0.0.0:7837"
    advertise: "${POD_IP}"
  one:
    type: nats
    url: "nats://nats:4222"
    listen: "127.0.0.1:0"
    allowFrom: [10.1.0.0/16, 192.168.1.7]
routes: {}
`), "cfg.yml", env("POD_IP", "10.1.2.3"))
	require.NoError(t, err)
	all := c.Plugin("all").NATS
	require.Equal(t, "0.0.0.0:7837", all.Listen)
	require.Equal(t, "10.1.2.3", all.Advertise)
	require.Equal(t, config.DefaultAllowFrom, all.AllowFrom)
	one := c.Plugin("one").NATS
	require.Equal(t, "127.0.0.1:0", one.Advertise, "listen is advertised when it names one interface")
	require.Equal(t, []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("192.168.1.7/32")}, one.AllowFrom)
}

func TestGRPCAndNATSPluginErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ doc, want string }{
		{"plugins: {p: {type: grpc, queueTimeoutSecs: 0}}\nroutes: {}", "cfg.yml:1:45: invalid value for `queueTimeoutSecs`: 0 is not a valid number of seconds (at least 1)"},
		{"plugins: {p: {type: grpc, args: [x]}}\nroutes: {}", "cfg.yml:1:33: plugin \"p\": `args` without `command`"},
		{"plugins: {p: {type: grpc, queueName: 7}}\nroutes: {}", "cfg.yml:1:38: invalid type for `queueName`"},
		{"plugins: {p: {type: nats}}\nroutes: {}", "cfg.yml:1:14: missing field `url` in nats plugin \"p\""},
		{"plugins: {p: {type: grpc}}\nroutes: {/p: [{plugin: p, params: {queueName: 1}}]}", "cfg.yml:2:47: invalid type for route parameter \"queueName\""},
		{"plugins: {p: {type: nats, url: u, advertise: h}}\nroutes: {}", "plugin \"p\": `advertise` without `listen`"},
		{"plugins: {p: {type: nats, url: u, listen: \"0.0.0.0:7837\"}}\nroutes: {}", "binds every interface: set `advertise`"},
		{"plugins: {p: {type: nats, url: u, listen: \"h\"}}\nroutes: {}", "`listen` \"h\" is not host:port"},
		{"plugins: {p: {type: nats, url: u, listen: \"h:99999\"}}\nroutes: {}", "invalid port"},
		{"plugins: {p: {type: nats, url: u, listen: \"h:1\", allowFrom: [x]}}\nroutes: {}", "`allowFrom` entry \"x\" is not a CIDR"},
		{"plugins: {p: {type: kafka}}\nroutes: {}", "cfg.yml:1:21: unknown type \"kafka\" for plugin \"p\" (expected builtin, stepflow, mcp, mock, grpc or nats)"},
	} {
		_, err := config.Parse([]byte(tc.doc), "cfg.yml", env())
		require.Error(t, err, tc.doc)
		require.Contains(t, err.Error(), tc.want, tc.doc)
		require.ErrorIs(t, err, config.ErrInvalidConfig, tc.doc)
	}
}
