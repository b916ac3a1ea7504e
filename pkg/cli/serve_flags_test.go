package cli

import (
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"
)

// `stepflow serve` takes the coordinator's flags, except those about
// sharing a NATS deployment with other coordinators (serve embeds its
// own server), replicas (one embedded server) and the auth callout (for a
// NATS server shared with a fleet of remote workers: `coordinator`).
func TestServeTakesTheCoordinatorFlags(t *testing.T) {
	coord := stepflow(t, nil, "", "coordinator", "--help")
	require.Equal(t, ExitOK, coord.code, coord.stderr)
	coordFlags := regexp.MustCompile(`(?m)^ +(?:-[a-z], )?--([a-z-]+)`).FindAllStringSubmatch(coord.stdout, -1)
	require.NotEmpty(t, coordFlags)
	r := stepflow(t, nil, "", "serve", "--help")
	require.Equal(t, ExitOK, r.code, r.stderr)
	skip := map[string]bool{"id": true, "advertise-url": true, "lease-ttl": true, "nats-replicas": true,
		"nats-auth-callout-issuer-seed": true, "nats-auth-callout-account": true, "nats-auth-callout-worker-password": true}
	for _, m := range coordFlags {
		if skip[m[1]] {
			continue
		}
		require.Contains(t, r.stdout+r.stderr, "--"+m[1]+" ", "serve lacks the coordinator's --%s", m[1])
	}
}
