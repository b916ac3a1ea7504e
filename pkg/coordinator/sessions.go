package coordinator

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// sessionRevocations remembers the runs page's sessions signed out before
// they expired, in memory and in a file of the data dir ("<id> <expiry
// unix seconds>" per line), so that a signed-out cookie stays refused
// across restarts. Entries go when their session would have expired.
type sessionRevocations struct {
	path string

	mu      sync.Mutex
	revoked map[string]int64 // session id -> expiry (unix seconds)
}

// loadSessionRevocations reads path (a missing file is an empty list).
func loadSessionRevocations(path string, now time.Time) (*sessionRevocations, error) {
	s := &sessionRevocations{path: path, revoked: map[string]int64{}}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("coordinator: signed-out sessions: %w", err)
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		id, exp, ok := strings.Cut(sc.Text(), " ")
		secs, err := strconv.ParseInt(exp, 10, 64)
		if !ok || err != nil || id == "" {
			continue // a torn last line
		}
		if secs > now.Unix() {
			s.revoked[id] = secs
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("coordinator: signed-out sessions: %w", err)
	}
	return s, nil
}

func (s *sessionRevocations) has(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.revoked[id]
	return ok
}

// revoke records a signed-out session and rewrites the file without the
// expired entries (atomically: a temp file renamed over it, fsynced).
func (s *sessionRevocations) revoke(id string, exp int64, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.revoked[id] = exp
	var b strings.Builder
	for k, e := range s.revoked {
		if e <= now.Unix() {
			delete(s.revoked, k)
			continue
		}
		fmt.Fprintf(&b, "%s %d\n", k, e)
	}
	tmp := s.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("coordinator: sign out: %w", err)
	}
	_, err = f.WriteString(b.String())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, s.path)
	}
	if err != nil {
		return fmt.Errorf("coordinator: sign out: %w", err)
	}
	return nil
}

// newSessionID returns a random session id.
func newSessionID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// Sign-in limits: after loginFreeFailures wrong tokens from one client,
// each further attempt waits loginFailureDelay after the last failure;
// a client's failures are forgotten loginForgetAfter after its last one.
const (
	loginFreeFailures = 5
	loginFailureDelay = 2 * time.Second
	loginForgetAfter  = 10 * time.Minute
	// loginClients bounds the clients remembered.
	loginClients = 10000
)

// loginLimiter limits wrong sign-ins per client (its IP address).
type loginLimiter struct {
	mu      sync.Mutex
	clients map[string]*loginClient
	now     func() time.Time // nil: time.Now
}

// clock returns the limiter's time.
func (l *loginLimiter) clock() time.Time {
	l.mu.Lock()
	now := l.now
	l.mu.Unlock()
	if now != nil {
		return now()
	}
	return time.Now()
}

type loginClient struct {
	failures int
	last     time.Time
}

// clientIP is the address the request came from (not a header a client
// can set).
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// wait returns how long the client must wait before its next attempt (0:
// it may try now).
func (l *loginLimiter) wait(ip string, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.clients[ip]
	if c == nil || c.failures < loginFreeFailures {
		return 0
	}
	return max(c.last.Add(loginFailureDelay).Sub(now), 0)
}

// failed records a wrong token from the client.
func (l *loginLimiter) failed(ip string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.clients == nil {
		l.clients = map[string]*loginClient{}
	}
	if len(l.clients) >= loginClients {
		for k, c := range l.clients {
			if now.Sub(c.last) > loginForgetAfter {
				delete(l.clients, k)
			}
		}
	}
	c := l.clients[ip]
	if c == nil || now.Sub(c.last) > loginForgetAfter {
		if c == nil && len(l.clients) >= loginClients {
			return // full of recent failures: let this one go unrecorded
		}
		c = &loginClient{}
		l.clients[ip] = c
	}
	c.failures++
	c.last = now
}

// succeeded forgets the client's failures.
func (l *loginLimiter) succeeded(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.clients, ip)
}
