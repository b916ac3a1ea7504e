package coordinator

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

// The API's documentation: the OpenAPI document of the REST API
// (apidocs/openapi.json, upstream Stepflow 0.9.0's document adapted to
// this coordinator, with "x-stepflow-go": true on what upstream does not
// have), served at /api/v1/openapi.json, and Swagger UI rendering it at
// /swagger-ui (swagger-ui-dist, vendored in apidocs/swagger-ui: nothing is
// loaded from elsewhere). openapi.json is edited by hand: a route, status
// or field added to the API goes there too, and the tests
// (openapi_test.go) fail on a route Handler registers that it lacks, an
// operation it lists that is not served, a status a route answers that
// its operation does not list, and a JSON body answered or accepted that
// its schema refuses or that has a field the schema does not list.
//
// Both are served without the token, like upstream: the document holds no
// secrets, and Swagger UI's Authorize button is where a client enters the
// token for "Try it out".

//go:embed apidocs/openapi.json
var openAPIDoc []byte

//go:embed apidocs/swagger-ui
var swaggerUIFS embed.FS

// openAPIPath is where the OpenAPI document is served.
const openAPIPath = "/api/v1/openapi.json"

// swaggerUIPath is where Swagger UI is served (and under swaggerUIPath+"/").
const swaggerUIPath = "/swagger-ui"

// mountAPIDocs adds the document's and Swagger UI's routes to mux.
func mountAPIDocs(mux router) {
	mux.HandleFunc("GET "+openAPIPath, func(w http.ResponseWriter, _ *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Cache-Control", "no-cache")
		_, _ = w.Write(openAPIDoc)
	})
	static, err := fs.Sub(swaggerUIFS, "apidocs/swagger-ui")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := swaggerUIHeaders(http.StripPrefix(swaggerUIPath+"/", http.FileServerFS(static)))
	mux.Handle("GET "+swaggerUIPath+"/", files)
	index := swaggerUIHeaders(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, static, "index.html")
	}))
	mux.Handle("GET "+swaggerUIPath, index)
}

// swaggerUIHeaders sets Swagger UI's security headers: scripts from this
// origin only (its styles are partly inline, its icons data: URLs), no
// framing, no referrer.
func swaggerUIHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		next.ServeHTTP(w, r)
	})
}

// docsPath reports whether a path is the document or Swagger UI: served
// without the token, and by a standby as by the leader.
func docsPath(path string) bool {
	return path == openAPIPath || path == swaggerUIPath || strings.HasPrefix(path, swaggerUIPath+"/")
}
