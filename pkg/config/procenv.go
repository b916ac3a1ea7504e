package config

// BaseEnv names the variables of the runtime's environment that every
// plugin process (stepflow and mcp) starts with, when the runtime has
// them: what a program needs to find executables, its home directory,
// its locale, time zone and temporary directory. Nothing else of the
// worker's environment is passed on, so that its secrets
// (STEPFLOW_AUTH_TOKEN, STEPFLOW_NATS_PASSWORD, cloud credentials, …)
// never reach a component server. A plugin's `env` map adds to (and
// overrides) these; it may pass any other variable on explicitly with
// `${VAR}` substitution, e.g. `env: {OPENAI_API_KEY: "${OPENAI_API_KEY}"}`.
var BaseEnv = []string{"PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"}

// ProcessEnv returns the environment of a plugin process, as KEY=VALUE
// pairs: the BaseEnv variables that lookup finds, then env in the order
// written (an env entry replaces a base variable of the same name). The
// result is never nil, so that exec.Cmd does not fall back to inheriting
// the whole environment.
func ProcessEnv(env []EnvVar, lookup LookupFunc) []string {
	out := make([]string, 0, len(BaseEnv)+len(env))
	set := make(map[string]bool, len(env))
	for _, e := range env {
		set[e.Name] = true
	}
	for _, k := range BaseEnv {
		if set[k] || lookup == nil {
			continue
		}
		if v, ok := lookup(k); ok {
			out = append(out, k+"="+v)
		}
	}
	for _, e := range env {
		out = append(out, e.Name+"="+e.Value)
	}
	return out
}
