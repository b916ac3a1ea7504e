package coordinator_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/coordinator"
)

// TestSwaggerUI: /swagger-ui and /swagger-ui/ answer, without the token,
// the page that loads the vendored Swagger UI bundle and renders
// /api/v1/openapi.json; the bundle, its stylesheet, the page's script and
// the bundle's license are served from the binary, under a CSP that
// allows nothing from elsewhere.
func TestSwaggerUI(t *testing.T) {
	c := startCoordinator(t, func(cfg *coordinator.Config) { cfg.AuthToken = "swagger-s3cret" })
	ui := newUIClient(t, c) // no token, no cookie

	for _, path := range []string{"/swagger-ui", "/swagger-ui/"} {
		resp, body := ui.do(http.MethodGet, path, "", nil)
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s: %s", path, body)
		assert.Equal(t, "text/html; charset=utf-8", resp.Header.Get("Content-Type"), path)
		assert.Contains(t, body, `<script src="/swagger-ui/swagger-ui-bundle.js"`, path)
		assert.Contains(t, body, `<link rel="stylesheet" href="/swagger-ui/swagger-ui.css">`, path)
		assert.Contains(t, body, `<script src="/swagger-ui/init.js"`, path)
		csp := resp.Header.Get("Content-Security-Policy")
		assert.Contains(t, csp, "default-src 'self'", path)
		assert.NotContains(t, csp, "script-src", path) // scripts: 'self' only
		assert.Equal(t, "DENY", resp.Header.Get("X-Frame-Options"), path)
	}

	assets := map[string]struct{ contentType, contains string }{
		"/swagger-ui/swagger-ui-bundle.js": {"text/javascript; charset=utf-8", "SwaggerUIBundle"},
		"/swagger-ui/swagger-ui.css":       {"text/css; charset=utf-8", ".swagger-ui"},
		"/swagger-ui/init.js":              {"text/javascript; charset=utf-8", `url: "/api/v1/openapi.json"`},
		"/swagger-ui/LICENSE":              {"text/plain; charset=utf-8", "Apache License"},
	}
	for path, want := range assets {
		resp, body := ui.do(http.MethodGet, path, "", nil)
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
		assert.Equal(t, want.contentType, resp.Header.Get("Content-Type"), path)
		assert.Contains(t, body, want.contains, path)
		assert.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"), path)
	}
	resp, body := ui.do(http.MethodGet, "/swagger-ui/missing.js", "", nil)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode, body)

	// Nothing is loaded from elsewhere.
	_, page := ui.do(http.MethodGet, "/swagger-ui/", "", nil)
	_, init := ui.do(http.MethodGet, "/swagger-ui/init.js", "", nil)
	for _, s := range []string{page, init} {
		assert.NotContains(t, s, "https://")
		assert.NotContains(t, s, "http://")
	}
}

// TestSwaggerUIChromium opens Swagger UI in real headless Chromium,
// signed out of a coordinator with a token, and waits for it to render
// every operation of the OpenAPI document (the bundle ran under the
// page's CSP and fetched the document), with no error shown.
func TestSwaggerUIChromium(t *testing.T) {
	c := startCoordinator(t, func(cfg *coordinator.Config) { cfg.AuthToken = "swagger-s3cret" })
	doc, _ := fetchOpenAPI(t, c)
	var ids []string
	for _, ops := range doc.Paths {
		for _, op := range ops {
			ids = append(ids, op.OperationID)
		}
	}

	p := openBrowser(t)
	p.do("open Swagger UI", chromedp.Navigate(c.URL()+"/swagger-ui"))
	p.wait("every operation rendered", fmt.Sprintf(`document.querySelectorAll(".opblock").length === %d`, len(ids)))
	p.wait("the document's title", `(document.querySelector(".info .title") || {textContent: ""}).textContent.includes("stepflow-go coordinator")`)

	rendered, err := chromedp.Run(p.ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll(".opblock")].map(e => e.id)`))
	require.NoError(t, err)
	for _, id := range ids {
		found := false
		for _, r := range rendered {
			found = found || strings.HasSuffix(r, "-"+id)
		}
		assert.True(t, found, "operation %s not rendered (%v)", id, rendered)
	}
	errs, err := chromedp.Run(p.ctx, chromedp.Evaluate[int](`document.querySelectorAll(".errors-wrapper").length`))
	require.NoError(t, err)
	assert.Zero(t, errs, "Swagger UI shows errors")
	p.screenshot("swagger-ui.png")
}
