package profiling_test

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/profiling"
)

func get(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, b
}

// RequireProfile checks that b is a pprof profile (gzipped protobuf) with
// some content.
func requireProfile(t *testing.T, b []byte) {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	require.NoError(t, err, "a profile is gzipped")
	raw, err := io.ReadAll(zr)
	require.NoError(t, err)
	require.NotEmpty(t, raw)
}

func TestServer(t *testing.T) {
	s, err := profiling.Start("127.0.0.1:0", "test", nil)
	require.NoError(t, err)
	base := "http://" + s.Addr() + profiling.Prefix

	status, body := get(t, base)
	require.Equal(t, http.StatusOK, status)
	require.Contains(t, string(body), "goroutine")

	status, body = get(t, base+"profile?seconds=1")
	require.Equal(t, http.StatusOK, status, "%s", body)
	requireProfile(t, body)

	status, body = get(t, base+"heap")
	require.Equal(t, http.StatusOK, status)
	requireProfile(t, body)

	status, body = get(t, base+"goroutine?debug=1")
	require.Equal(t, http.StatusOK, status)
	require.Contains(t, string(body), "goroutine profile:")

	status, _ = get(t, base+"cmdline")
	require.Equal(t, http.StatusNotFound, status, "the command line may hold secrets")

	require.NoError(t, s.Close())
	_, err = (&http.Client{}).Get(base)
	require.Error(t, err, "closed")

	_, err = profiling.Start("no-port", "test", nil)
	require.ErrorContains(t, err, "--pprof-addr")
}
