package cli

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"
)

// --url may list several coordinators: a request that cannot reach one,
// or that it answers 503, moves the client on to the next.
func TestAPIClientFailsOver(t *testing.T) {
	unavailable := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer unavailable.Close()
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		require.Equal(t, "/api/v1/health", r.URL.Path)
		_, _ = w.Write([]byte(`{"status":"healthy"}`))
	}))
	defer ok.Close()
	gone := httptest.NewServer(http.NotFoundHandler())
	goneURL := gone.URL
	gone.Close()

	c, err := newAPIClient(goneURL+","+unavailable.URL+"/api/v1,"+ok.URL, clientOptions{})
	require.NoError(t, err)
	defer c.close()
	get := func() error {
		req, err := c.request(context.Background(), http.MethodGet, "/health", nil)
		require.NoError(t, err)
		resp, err := c.do(req)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	var te *transportError
	require.ErrorAs(t, get(), &te, "the first is gone")
	var ae *apiError
	require.ErrorAs(t, get(), &ae, "the second answers 503")
	require.Equal(t, http.StatusServiceUnavailable, ae.Status)
	require.NoError(t, get(), "the third answers")
	require.NoError(t, get(), "and keeps answering")
	require.Equal(t, ok.URL+"/api/v1", c.current())

	_, err = newAPIClient("http://a:1,ftp://b", clientOptions{})
	require.ErrorContains(t, err, `--url "ftp://b": want an http:// or https:// URL`)
}
