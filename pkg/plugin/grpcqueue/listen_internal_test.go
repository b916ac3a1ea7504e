package grpcqueue

import (
	"net"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/stepflow-go/stepflow/pkg/config"
)

func TestAdvertised(t *testing.T) {
	t.Parallel()
	bound := &net.TCPAddr{IP: net.IPv4zero, Port: 7837}
	for adv, want := range map[string]string{
		"10.1.2.3":       "10.1.2.3:7837",
		"10.1.2.3:0":     "10.1.2.3:7837",
		"10.1.2.3:9000":  "10.1.2.3:9000",
		"pod.example":    "pod.example:7837",
		"fd00::5":        "[fd00::5]:7837",
		"[fd00::5]":      "[fd00::5]:7837",
		"[fd00::5]:9000": "[fd00::5]:9000",
	} {
		got, err := advertised(adv, bound)
		require.NoError(t, err, adv)
		require.Equal(t, want, got, adv)
	}
}

func TestAllowFrom(t *testing.T) {
	t.Parallel()
	l := &allowListener{allow: config.DefaultAllowFrom, plugin: "py", log: zaptest.NewLogger(t)}
	for _, a := range []string{"127.0.0.1:1", "10.244.3.7:40000", "[fd12::1]:1", "[::ffff:192.168.1.2]:5"} {
		require.NoError(t, l.check(net.TCPAddrFromAddrPort(netip.MustParseAddrPort(a))), a)
	}
	for _, a := range []string{"8.8.8.8:1", "[2001:db8::1]:1"} {
		err := l.check(net.TCPAddrFromAddrPort(netip.MustParseAddrPort(a)))
		require.ErrorIs(t, err, ErrPeerRefused, a)
		require.ErrorContains(t, err, `plugin "py": peer `, a)
	}
}
