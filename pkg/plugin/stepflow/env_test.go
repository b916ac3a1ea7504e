package stepflow_test

import (
	"os"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/config"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// TestServerEnvironment: a component server process gets the base
// variables of the runtime's environment (config.BaseEnv) and its
// config's env, nothing else: the worker's secrets never reach it.
func TestServerEnvironment(t *testing.T) {
	for _, s := range allSDKs {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			runtimeEnv := map[string]string{
				"PATH": os.Getenv("PATH"), "HOME": "/home/stepflow", "TZ": "Europe/Paris",
				"STEPFLOW_AUTH_TOKEN":    "leaked-token",
				"STEPFLOW_NATS_PASSWORD": "leaked-password",
				"STEPFLOW_TOKEN":         "leaked-cli-token",
				"AWS_SECRET_ACCESS_KEY":  "leaked-key",
			}
			e := newEnv(t, s, envOptions{
				extraEnv:  map[string]string{"GRANTED": "yes", "TZ": "UTC"},
				lookupEnv: func(k string) (string, bool) { v, ok := runtimeEnv[k]; return v, ok },
			})
			out := e.mustCall("/environ", `{}`)
			envV, ok := out.(*value.Object).Get("env")
			require.True(t, ok)
			env := map[string]string{}
			eo := envV.(*value.Object)
			for i := range eo.Len() {
				k, v := eo.At(i)
				env[k] = v.(string)
			}
			require.Equal(t, "yes", env["GRANTED"], "the config's env is passed")
			require.Equal(t, "UTC", env["TZ"], "the config's env overrides a base variable")
			require.Equal(t, runtimeEnv["PATH"], env["PATH"])
			require.Equal(t, "/home/stepflow", env["HOME"])
			for k, v := range env {
				require.NotContains(t, v, "leaked", "%s carries a secret of the runtime", k)
				require.True(t, slices.Contains(config.BaseEnv, k) || k == "GRANTED" || k == "STARTS_FILE",
					"%s=%s reached the server: neither a base variable nor granted by the config", k, v)
			}
		})
	}
}
