package coordinator

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"html/template"
	"io/fs"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

// The runs page: static HTML, CSS and vanilla JS embedded in the binary
// (no build step, nothing loaded from elsewhere), served at /ui/ behind
// the API's authentication.
//
// Browsers cannot put an Authorization header on an EventSource, so with
// an AuthToken the page signs in through /ui/login: the token posted
// there is compared in constant time and exchanged for a session cookie
// (HttpOnly, SameSite=Strict, Secure over TLS) holding an expiry, a random
// session id and an HMAC of both keyed by the token, never the token
// itself. Signing out records the id (sessionRevocations), so the cookie
// is refused from then on; after five wrong tokens a client waits two
// seconds between attempts (loginLimiter). The API accepts
// that cookie like the bearer token; a mutating request authenticated by
// the cookie must also carry the header X-Stepflow-UI: 1, which a form on
// another site cannot send (and a cross-origin script cannot either: the
// header is not allowed by CORS preflights), so the cookie alone never
// changes anything. Changing the token signs every session out.

//go:embed ui
var uiFS embed.FS

// UI settings.
const (
	// SessionCookie is the name of the runs page's session cookie.
	SessionCookie = "stepflow_session"
	// UIHeader must be "1" on mutating requests authenticated by the
	// session cookie (CSRF protection).
	UIHeader = "X-Stepflow-UI"
	// sessionTTL is how long a sign-in lasts.
	sessionTTL = 12 * time.Hour
	// maxLoginBody bounds the login form.
	maxLoginBody = 4 << 10
)

var loginPage = template.Must(template.ParseFS(uiFS, "ui/login.html"))

// mountUI adds the runs page's routes to mux.
func (c *Coordinator) mountUI(mux router) {
	static, err := fs.Sub(uiFS, "ui/static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.StripPrefix("/ui/", http.FileServerFS(static))
	mux.Handle("GET /ui/", uiHeaders(files))
	mux.HandleFunc("GET /ui", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ui/", http.StatusMovedPermanently)
	})
	mux.HandleFunc("GET /ui/login", c.handleLoginForm)
	mux.HandleFunc("POST /ui/login", c.handleLogin)
	mux.HandleFunc("POST /ui/logout", c.handleLogout)
}

// uiHeaders sets the page's security headers: everything from this
// origin only, no framing, no referrer.
func uiHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		next.ServeHTTP(w, r)
	})
}

// uiPublic reports whether a request may pass without credentials: the
// sign-in form, its stylesheet and signing out.
func uiPublic(r *http.Request) bool {
	switch r.URL.Path {
	case "/ui/login", "/ui/logout", "/ui/style.css":
		return true
	}
	return false
}

// sessionValue returns the cookie value of a session id expiring at exp:
// "<exp unix seconds>.<id>.<base64url HMAC-SHA256(token, purpose|exp|id)>".
func sessionValue(token, id string, exp time.Time) string {
	e := strconv.FormatInt(exp.Unix(), 10)
	return e + "." + id + "." + sessionMAC(token, e, id)
}

func sessionMAC(token, exp, id string) string {
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte("stepflow-ui-session|" + exp + "|" + id))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// session parses a session cookie value issued for the current token and
// unexpired at now: its id and expiry.
func (c *Coordinator) session(value string, now time.Time) (id string, exp int64, ok bool) {
	e, rest, ok1 := strings.Cut(value, ".")
	id, mac, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || id == "" {
		return "", 0, false
	}
	secs, err := strconv.ParseInt(e, 10, 64)
	if err != nil || !now.Before(time.Unix(secs, 0)) {
		return "", 0, false
	}
	if !hmac.Equal([]byte(mac), []byte(sessionMAC(c.cfg.AuthToken, e, id))) {
		return "", 0, false
	}
	return id, secs, true
}

// validSession reports whether r carries an unexpired session cookie
// issued for the current token and not signed out.
func (c *Coordinator) validSession(r *http.Request, now time.Time) bool {
	ck, err := r.Cookie(SessionCookie)
	if err != nil {
		return false
	}
	id, _, ok := c.session(ck.Value, now)
	return ok && (c.revoked == nil || !c.revoked.has(id))
}

// safeMethod reports whether a method changes nothing.
func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// secureRequest reports whether the client reached us over TLS (directly
// or through a proxy that says so).
func secureRequest(r *http.Request) bool {
	return r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

func (c *Coordinator) setSession(w http.ResponseWriter, r *http.Request, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{
		Name:     SessionCookie,
		Value:    value,
		Path:     "/",
		MaxAge:   maxAge,
		HttpOnly: true,
		Secure:   secureRequest(r),
		SameSite: http.SameSiteStrictMode,
	})
}

func (c *Coordinator) handleLoginForm(w http.ResponseWriter, r *http.Request) {
	if c.cfg.AuthToken == "" || c.validSession(r, time.Now()) {
		http.Redirect(w, r, "/ui/", http.StatusSeeOther)
		return
	}
	c.renderLogin(w, http.StatusOK, "")
}

func (c *Coordinator) renderLogin(w http.ResponseWriter, status int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
	h.Set("X-Frame-Options", "DENY")
	w.WriteHeader(status)
	if err := loginPage.Execute(w, struct{ Error string }{msg}); err != nil {
		c.log.Debug("render login page", zap.Error(err))
	}
}

// handleLogin exchanges the token for a session cookie.
func (c *Coordinator) handleLogin(w http.ResponseWriter, r *http.Request) {
	if c.cfg.AuthToken == "" {
		http.Redirect(w, r, "/ui/", http.StatusSeeOther)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxLoginBody)
	if err := r.ParseForm(); err != nil {
		c.renderLogin(w, http.StatusBadRequest, "The form could not be read.")
		return
	}
	ip, now := clientIP(r), c.logins.clock()
	if wait := c.logins.wait(ip, now); wait > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((wait+time.Second-1)/time.Second)))
		c.renderLogin(w, http.StatusTooManyRequests, "Too many wrong tokens: wait a moment and try again.")
		return
	}
	token := strings.TrimSpace(r.PostForm.Get("token"))
	if subtle.ConstantTimeCompare([]byte(token), []byte(c.cfg.AuthToken)) != 1 {
		c.logins.failed(ip, now)
		c.log.Warn("runs page: sign-in with a wrong token", zap.String("remote", r.RemoteAddr))
		c.renderLogin(w, http.StatusUnauthorized, "Wrong token.")
		return
	}
	c.logins.succeeded(ip)
	c.setSession(w, r, sessionValue(c.cfg.AuthToken, newSessionID(), time.Now().Add(sessionTTL)), int(sessionTTL/time.Second))
	http.Redirect(w, r, "/ui/", http.StatusSeeOther)
}

// handleLogout signs the session out (for good: its cookie is refused
// from now on, on this coordinator, restarts included) and clears the
// cookie.
func (c *Coordinator) handleLogout(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	if ck, err := r.Cookie(SessionCookie); err == nil && c.revoked != nil {
		if id, exp, ok := c.session(ck.Value, now); ok {
			if err := c.revoked.revoke(id, exp, now); err != nil {
				c.log.Error("cannot record a sign-out", zap.Error(err))
				c.renderLogin(w, http.StatusInternalServerError, "The sign-out could not be recorded; the session is still valid.")
				return
			}
		}
	}
	c.setSession(w, r, "", -1)
	http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
}
