package grpcqueue

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"go.uber.org/zap"
)

// ErrPeerRefused is logged for a TCP connection from outside `allowFrom`
// (the connection is closed before any RPC).
var ErrPeerRefused = errors.New("peer is outside allowFrom")

// allowListener accepts only peers in allow; others are closed at once
// and logged. The unmodified SDK dials without credentials (insecure
// channels, no metadata), so the peer's address is all there is to check.
type allowListener struct {
	net.Listener
	allow  []netip.Prefix
	plugin string
	log    *zap.Logger
}

func (l *allowListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if err := l.check(c.RemoteAddr()); err != nil {
			l.log.Warn("refused a connection to the worker endpoint", zap.Error(err))
			_ = c.Close()
			continue
		}
		return c, nil
	}
}

func (l *allowListener) check(a net.Addr) error {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return fmt.Errorf("plugin %q: peer %s: %w: %v", l.plugin, a, ErrPeerRefused, err)
	}
	ip := ap.Addr().Unmap()
	for _, p := range l.allow {
		if p.Contains(ip) {
			return nil
		}
	}
	return fmt.Errorf("plugin %q: peer %s: %w %v", l.plugin, a, ErrPeerRefused, l.allow)
}

// advertised is the address tasks name: adv with the bound port when adv
// has none or port 0.
func advertised(adv string, bound net.Addr) (string, error) {
	ta, ok := bound.(*net.TCPAddr)
	if !ok {
		return "", fmt.Errorf("%w: bound address %s is not TCP", ErrConfig, bound)
	}
	port := strconv.Itoa(ta.Port)
	host, p, err := net.SplitHostPort(adv)
	if err != nil {
		// A bare host (or IPv6 address): add the port.
		return net.JoinHostPort(strings.Trim(adv, "[]"), port), nil
	}
	if p == "" || p == "0" {
		return net.JoinHostPort(host, port), nil
	}
	return adv, nil
}
