// Package profiling serves the Go runtime's profiles (net/http/pprof) of
// a stepflow process: CPU (/debug/pprof/profile?seconds=N), heap,
// allocs, goroutines, threads, block and mutex profiles and execution
// traces (/debug/pprof/trace?seconds=N), for `go tool pprof` and `go tool
// trace`.
//
// The coordinator mounts Register on its API server, behind its bearer
// token. Start serves the same routes on a listener of their own, without
// authentication, for --pprof-addr (coordinator, worker and stepflow
// serve): bind it to a loopback address (127.0.0.1:6060) or a port only
// operators reach.
//
// /debug/pprof/cmdline is left out on purpose: a process's command line
// may hold secrets (a --nats-password, an --auth-token given as a flag).
package profiling

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"go.uber.org/zap"
)

// Prefix is the path every profile is served under.
const Prefix = "/debug/pprof/"

// Register adds the profile routes to mux: the index at Prefix (which
// also serves every named profile, /debug/pprof/heap and so on), the CPU
// profile, the execution trace and symbol lookup. mux is usually an
// *http.ServeMux.
func Register(mux interface {
	HandleFunc(pattern string, handler func(http.ResponseWriter, *http.Request))
}) {
	mux.HandleFunc("GET "+Prefix, pprof.Index)
	mux.HandleFunc("GET "+Prefix+"profile", pprof.Profile)
	mux.HandleFunc("GET "+Prefix+"trace", pprof.Trace)
	mux.HandleFunc("GET "+Prefix+"symbol", pprof.Symbol)
	mux.HandleFunc("POST "+Prefix+"symbol", pprof.Symbol)
	// cmdline is not registered: the index answers it 404 ("Unknown
	// profile"), as the command line may hold secrets.
}

// Handler returns a handler serving only the profile routes.
func Handler() http.Handler {
	mux := http.NewServeMux()
	Register(mux)
	return mux
}

// Server serves the profiles on a listener of its own (--pprof-addr).
type Server struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
	err  error // written before done is closed
}

// Start listens on addr (host:port; port 0 picks a free one) and serves
// Handler there until Close. what names the process in the log line
// ("coordinator", "worker").
func Start(addr, what string, log *zap.Logger) (*Server, error) {
	if log == nil {
		log = zap.NewNop()
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: --pprof-addr: %w", what, err)
	}
	s := &Server{
		// A CPU profile or a trace takes as long as it is asked to
		// (?seconds=N): no write timeout.
		srv:  &http.Server{Handler: Handler(), ReadHeaderTimeout: 5 * time.Second},
		ln:   ln,
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.err = err
		}
	}()
	log.Info("serving Go profiles (unauthenticated)", zap.String("addr", "http://"+ln.Addr().String()+Prefix))
	return s, nil
}

// Addr returns the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the server; a profile being taken is cut short.
func (s *Server) Close() error {
	err := s.srv.Close()
	<-s.done
	if err = errors.Join(err, s.err); err != nil {
		return fmt.Errorf("pprof server: %w", err)
	}
	return nil
}
