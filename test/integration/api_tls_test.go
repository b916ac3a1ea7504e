package integration

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestAPITLSAndToken: a coordinator serving HTTPS with a token read from a
// file. `stepflow submit` and `runs` work with --ca-cert and the token
// (flag, file or STEPFLOW_TOKEN); a wrong or missing token exits 1 with a
// clear error that does not echo it; plain HTTP to the TLS port and
// HTTPS without the CA fail; the health check needs no token.
func TestAPITLSAndToken(t *testing.T) {
	skipShort(t)
	t.Parallel()
	dir := t.TempDir()
	tc := newCerts(t, dir)
	tokenFile := filepath.Join(dir, "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte("  api-s3cret-token\n"), 0o600))

	c := startCoordinator(t, nil, "--tls-cert", tc.ServerCert, "--tls-key", tc.ServerKey, "--auth-token-file", tokenFile, "--log-level", "warn")
	require.True(t, c.TLS, "the ready line says tls")
	require.True(t, strings.HasPrefix(c.URL(), "https://"))
	startWorker(t, nil, "--nats-url", c.NATSURL, "--concurrency", "2")

	hello := []string{"--flow", "examples/hello/flow.yaml", "--inputs", "examples/hello/items.jsonl", "--quiet"}
	// The token as a flag, trimmed from the file's content.
	code, out, stderr := runStepflow(t, nil, append([]string{"submit", "--url", c.URL(), "--ca-cert", tc.CA, "--token", "api-s3cret-token"}, hello...)...)
	require.Equal(t, 0, code, stderr)
	require.Len(t, lines(out), 5)
	// From the environment, and from a file.
	code, out, stderr = runStepflow(t, []string{"STEPFLOW_TOKEN=api-s3cret-token", "STEPFLOW_CA_CERT=" + tc.CA}, "runs", "list", "--url", c.URL(), "--format", "json")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, out, `"status":"completed"`)
	code, _, stderr = runStepflow(t, nil, "runs", "list", "--url", c.URL(), "--ca-cert", tc.CA, "--token-file", tokenFile)
	require.Equal(t, 0, code, stderr)

	// A wrong token: exit 1, a clear message, the token not echoed.
	code, out, stderr = runStepflow(t, nil, append([]string{"submit", "--url", c.URL(), "--ca-cert", tc.CA, "--token", "wrong-guess-123"}, hello...)...)
	require.Equal(t, 1, code)
	require.Empty(t, out)
	require.Contains(t, stderr, "unauthorized: check --token / STEPFLOW_TOKEN")
	require.NotContains(t, stderr, "wrong-guess-123")
	// No token at all.
	code, _, stderr = runStepflow(t, nil, "runs", "list", "--url", c.URL(), "--ca-cert", tc.CA, "--retry-timeout", "0")
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "unauthorized")
	// Both a token and a token file: a usage error.
	code, _, stderr = runStepflow(t, nil, "runs", "list", "--url", c.URL(), "--ca-cert", tc.CA, "--token", "x", "--token-file", tokenFile)
	require.Equal(t, 2, code, stderr)

	// HTTPS without the CA: the certificate is not trusted.
	code, _, stderr = runStepflow(t, nil, "runs", "list", "--url", c.URL(), "--token", "api-s3cret-token", "--retry-timeout", "0")
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "certificate")
	// Plain HTTP to the TLS port is refused.
	code, _, stderr = runStepflow(t, nil, "runs", "list", "--url", fmt.Sprintf("http://127.0.0.1:%d", c.Port), "--token", "api-s3cret-token", "--retry-timeout", "0")
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "HTTP request to an HTTPS server")

	// The health check needs no token; everything else does.
	pool := x509.NewCertPool()
	ca, err := os.ReadFile(tc.CA)
	require.NoError(t, err)
	require.True(t, pool.AppendCertsFromPEM(ca))
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	for path, want := range map[string]int{"/api/v1/health": 200, "/api/v1/runs": 401, "/api/v1/components": 401} {
		resp, err := hc.Get(c.URL() + path)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		require.Equal(t, want, resp.StatusCode, "%s: %s", path, body)
	}
	require.NotContains(t, c.logs.String(), "api-s3cret-token", "the coordinator never logs its token")
}
