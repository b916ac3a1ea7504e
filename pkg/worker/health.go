package worker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"
)

// healthServer serves the probes and the metrics:
//
//	GET /healthz  200 while the process is alive (liveness)
//	GET /readyz   200 while the worker takes items: started, not
//	              draining, connected to NATS, watching run records and
//	              every component server up; 503 with the reason
//	              otherwise (readiness)
//	GET /metrics  the worker's registry, Prometheus text format
type healthServer struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
	err  error // written before done is closed
}

func startHealth(host string, port int, ready func() error, metrics http.Handler, log *zap.Logger) (*healthServer, error) {
	if port < 0 {
		port = 0
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("worker: health server: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, _ *http.Request) {
		rw.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = rw.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(rw http.ResponseWriter, _ *http.Request) {
		rw.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := ready(); err != nil {
			rw.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprintf(rw, "not ready: %v\n", err)
			return
		}
		_, _ = rw.Write([]byte("ready\n"))
	})
	mux.Handle("GET /metrics", metrics)
	h := &healthServer{
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second},
		ln:   ln,
		done: make(chan struct{}),
	}
	go func() {
		defer close(h.done)
		if err := h.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			h.err = err
		}
	}()
	log.Info("health server listening", zap.String("addr", ln.Addr().String()))
	return h, nil
}

func (h *healthServer) addr() string { return h.ln.Addr().String() }

func (h *healthServer) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := h.srv.Shutdown(ctx)
	<-h.done
	if err = errors.Join(err, h.err); err != nil {
		return fmt.Errorf("worker: health server: %w", err)
	}
	return nil
}
