package coordinator

import (
	"fmt"
	"os"
	"strings"

	"github.com/stepflow-go/stepflow/pkg/queue"
)

// LoadAuthToken returns the REST API's bearer token from either token
// (--auth-token, STEPFLOW_AUTH_TOKEN) or the file at path
// (--auth-token-file, STEPFLOW_AUTH_TOKEN_FILE, e.g. a mounted Kubernetes
// secret), read once and trimmed of surrounding whitespace. Both set, or
// an empty file, is an error: a coordinator meant to be protected must
// not start open. Errors never include the token.
func LoadAuthToken(token, path string) (string, error) {
	if path == "" {
		return token, nil
	}
	if token != "" {
		return "", fmt.Errorf("%w: give the API token either directly (--auth-token, STEPFLOW_AUTH_TOKEN) or as a file (--auth-token-file), not both", ErrInvalidConfig)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%w: auth token file: %w", ErrInvalidConfig, err)
	}
	t := strings.TrimSpace(string(data))
	if t == "" {
		return "", fmt.Errorf("%w: auth token file %s is empty", ErrInvalidConfig, path)
	}
	return t, nil
}

// Environment variables of the REST API security flags.
const (
	EnvAuthToken     = "STEPFLOW_AUTH_TOKEN"
	EnvAuthTokenFile = "STEPFLOW_AUTH_TOKEN_FILE"
	EnvTLSCert       = "STEPFLOW_TLS_CERT"
	EnvTLSKey        = "STEPFLOW_TLS_KEY"
)

// RegisterSecurityFlags registers the REST API's security flags on fs,
// with the environment variables above (read through getenv) as
// defaults: --auth-token into cfg.AuthToken, --tls-cert and --tls-key
// into cfg.TLSCertFile and TLSKeyFile, and --auth-token-file, whose value
// it returns for LoadAuthToken after parsing. The coordinator command and
// `stepflow serve` share it. The token read from the environment is not
// shown as the flag's default in --help.
func RegisterSecurityFlags(fs queue.FlagSet, cfg *Config, getenv func(string) string) *string {
	fs.StringVar(&cfg.AuthToken, "auth-token", "", "bearer token required by the REST API; prefer the env variable or --auth-token-file (env "+EnvAuthToken+")")
	cfg.AuthToken = getenv(EnvAuthToken)
	var file string
	fs.StringVar(&file, "auth-token-file", getenv(EnvAuthTokenFile), "file holding the REST API's bearer token, read once at start (env "+EnvAuthTokenFile+")")
	fs.StringVar(&cfg.TLSCertFile, "tls-cert", getenv(EnvTLSCert), "serve the REST API over HTTPS with this certificate (PEM) (env "+EnvTLSCert+")")
	fs.StringVar(&cfg.TLSKeyFile, "tls-key", getenv(EnvTLSKey), "private key of --tls-cert (PEM) (env "+EnvTLSKey+")")
	return &file
}
