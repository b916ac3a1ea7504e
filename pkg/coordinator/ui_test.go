package coordinator_test

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/coordinator"
)

// uiClient talks to a coordinator like a browser that does not follow
// redirects, with an optional session cookie.
type uiClient struct {
	t      *testing.T
	base   string
	hc     *http.Client
	cookie *http.Cookie
}

func newUIClient(t *testing.T, c *coordinator.Coordinator) *uiClient {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &uiClient{t: t, base: c.URL(), hc: &http.Client{Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (u *uiClient) do(method, path, body string, header map[string]string) (*http.Response, string) {
	u.t.Helper()
	req, err := http.NewRequestWithContext(testCtx(u.t), method, u.base+path, strings.NewReader(body))
	require.NoError(u.t, err)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	if u.cookie != nil {
		req.AddCookie(u.cookie)
	}
	resp, err := u.hc.Do(req)
	require.NoError(u.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(u.t, err)
	return resp, string(b)
}

func (u *uiClient) login(token string, header map[string]string) *http.Response {
	u.t.Helper()
	h := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
	for k, v := range header {
		h[k] = v
	}
	resp, _ := u.do(http.MethodPost, "/ui/login", url.Values{"token": {token}}.Encode(), h)
	return resp
}

func sessionCookie(resp *http.Response) *http.Cookie {
	for _, c := range resp.Cookies() {
		if c.Name == coordinator.SessionCookie {
			return c
		}
	}
	return nil
}

// TestUIAuth: with a token, the runs page is behind a sign-in form that
// trades the token for an HttpOnly, SameSite=Strict session cookie (not
// the token); the API takes the cookie, but mutations on it need the
// X-Stepflow-UI header; a bearer header is judged on its own.
func TestUIAuth(t *testing.T) {
	t.Parallel()
	const token = "ui-s3cret-token"
	c := startCoordinator(t, func(cfg *coordinator.Config) { cfg.AuthToken = token })
	u := newUIClient(t, c)

	// Signed out: pages redirect to the form, the API answers 401.
	for _, p := range []string{"/ui/", "/ui/app.js", "/ui"} {
		resp, _ := u.do(http.MethodGet, p, "", nil)
		require.Equal(t, http.StatusSeeOther, resp.StatusCode, p)
		require.Equal(t, "/ui/login", resp.Header.Get("Location"), p)
	}
	resp, _ := u.do(http.MethodGet, "/api/v1/cluster", "", nil)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	resp, body := u.do(http.MethodGet, "/ui/login", "", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, body, `<form method="post" action="/ui/login"`)
	require.Equal(t, "no-store", resp.Header.Get("Cache-Control"))
	resp, _ = u.do(http.MethodGet, "/ui/style.css", "", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, resp.Header.Get("Content-Type"), "text/css")

	// A wrong token: the form again, with the error, and no cookie.
	resp, body = u.do(http.MethodPost, "/ui/login", "token=nope", map[string]string{"Content-Type": "application/x-www-form-urlencoded"})
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	require.Contains(t, body, "Wrong token.")
	require.Nil(t, sessionCookie(resp))

	// The right token: a session cookie and the way to the page.
	resp = u.login(token, nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	require.Equal(t, "/ui/", resp.Header.Get("Location"))
	ck := sessionCookie(resp)
	require.NotNil(t, ck)
	require.True(t, ck.HttpOnly)
	require.Equal(t, http.SameSiteStrictMode, ck.SameSite)
	require.False(t, ck.Secure, "plain HTTP")
	require.Equal(t, "/", ck.Path)
	require.Positive(t, ck.MaxAge)
	require.NotContains(t, ck.Value, token)
	behindTLS := sessionCookie(u.login(token, map[string]string{"X-Forwarded-Proto": "https"}))
	require.True(t, behindTLS.Secure, "Secure behind a TLS proxy")

	u.cookie = &http.Cookie{Name: ck.Name, Value: ck.Value}
	resp, body = u.do(http.MethodGet, "/ui/", "", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, body, `<table id="runs">`)
	require.Contains(t, resp.Header.Get("Content-Security-Policy"), "default-src 'self'")
	require.Equal(t, "DENY", resp.Header.Get("X-Frame-Options"))
	resp, body = u.do(http.MethodGet, "/ui/app.js", "", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, body, "EventSource")
	resp, _ = u.do(http.MethodGet, "/ui/login", "", nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode, "signed in already")
	resp, _ = u.do(http.MethodGet, "/api/v1/cluster", "", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)

	// Mutations on the cookie alone are refused; with the header they pass.
	flow := `{"flow":` + echoFlow + `}`
	resp, body = u.do(http.MethodPost, "/api/v1/flows", flow, map[string]string{"Content-Type": "application/json"})
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	require.Contains(t, body, coordinator.UIHeader)
	resp, body = u.do(http.MethodPost, "/api/v1/flows", flow, map[string]string{"Content-Type": "application/json", coordinator.UIHeader: "1"})
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	// The preflight of another origin does not allow the header.
	resp, _ = u.do(http.MethodOptions, "/api/v1/flows", "", map[string]string{"Origin": "https://evil.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": coordinator.UIHeader})
	require.NotContains(t, strings.ToLower(resp.Header.Get("Access-Control-Allow-Headers")), strings.ToLower(coordinator.UIHeader))

	// A bearer header is judged alone: a wrong one fails even with the cookie.
	resp, _ = u.do(http.MethodGet, "/api/v1/runs", "", map[string]string{"Authorization": "Bearer wrong"})
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	// A forged cookie is refused.
	u.cookie = &http.Cookie{Name: coordinator.SessionCookie, Value: "99999999999." + strings.Repeat("A", 43)}
	resp, _ = u.do(http.MethodGet, "/api/v1/runs", "", nil)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)

	// Signing out clears the cookie, and the cookie signed out is
	// refused from then on (one kept by a copy of the browser, say).
	u.cookie = &http.Cookie{Name: ck.Name, Value: ck.Value}
	resp, _ = u.do(http.MethodGet, "/api/v1/runs", "", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp, _ = u.do(http.MethodPost, "/ui/logout", "", nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	cleared := sessionCookie(resp)
	require.NotNil(t, cleared)
	require.Negative(t, cleared.MaxAge)
	resp, _ = u.do(http.MethodGet, "/api/v1/runs", "", nil)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "a signed-out session")
	other := sessionCookie(u.login(token, nil))
	u.cookie = &http.Cookie{Name: other.Name, Value: other.Value}
	resp, _ = u.do(http.MethodGet, "/api/v1/runs", "", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, "another session is not signed out with it")
	u.cookie = nil

	// Wrong tokens: after five, the form answers 429 with Retry-After
	// until the delay has passed, the right token included (the
	// limiter's clock stands still meanwhile).
	frozen := time.Now()
	c.SetLoginClock(func() time.Time { return frozen })
	for range 5 {
		resp, _ = u.do(http.MethodPost, "/ui/login", "token=nope", map[string]string{"Content-Type": "application/x-www-form-urlencoded"})
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	}
	resp, body = u.do(http.MethodPost, "/ui/login", "token=nope", map[string]string{"Content-Type": "application/x-www-form-urlencoded"})
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	require.Equal(t, "2", resp.Header.Get("Retry-After"))
	require.Contains(t, body, "Too many wrong tokens")
	resp = u.login(token, nil)
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)

	// Without a token the page is open and the form steps aside.
	open := newUIClient(t, startCoordinator(t, nil))
	resp, _ = open.do(http.MethodGet, "/ui/", "", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp, _ = open.do(http.MethodGet, "/ui/login", "", nil)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	require.Equal(t, "/ui/", resp.Header.Get("Location"))
}
