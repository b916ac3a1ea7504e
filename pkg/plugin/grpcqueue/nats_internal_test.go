package grpcqueue

import (
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"

	"github.com/stepflow-go/stepflow/pkg/plugin/pluginapi"
	sfqueue "github.com/stepflow-go/stepflow/pkg/queue"
)

// applied returns nats.go's options after opts.
func applied(t *testing.T, opts []nats.Option) nats.Options {
	t.Helper()
	o := nats.GetDefaultOptions()
	for _, opt := range opts {
		require.NoError(t, opt(&o))
	}
	return o
}

// A worker with an inbox key has its nats plugin sign in with the key,
// under the key's prefix, with the URL's credentials moved to options
// (nats.go sends no key next to credentials in the URL).
func TestNATSLoginWithInboxKey(t *testing.T) {
	p := &Plugin{host: pluginapi.Host{NATSInboxPrefix: sfqueue.WorkerInboxPrefix}}
	url, opts, err := p.natsLogin("nats://worker:pw@h1:4222")
	require.NoError(t, err)
	require.Equal(t, "nats://worker:pw@h1:4222", url)
	require.Equal(t, sfqueue.WorkerInboxPrefix, applied(t, opts).InboxPrefix)

	key, err := nkeys.CreateUser()
	require.NoError(t, err)
	pub, _ := key.PublicKey()
	p.host.NATSInboxKey = key
	url, opts, err = p.natsLogin("nats://worker:pw@h1:4222, nats://worker:pw@h2:4222")
	require.NoError(t, err)
	require.Equal(t, "nats://h1:4222,nats://h2:4222", url)
	o := applied(t, opts)
	require.Equal(t, sfqueue.WorkerInboxPrefix+"."+pub, o.InboxPrefix)
	require.Equal(t, pub, o.Nkey)
	require.Equal(t, "worker", o.User)
	require.Equal(t, "pw", o.Password)
	require.True(t, o.IgnoreAuthErrorAbort, "a refused login is tried again, as the worker's own")

	_, opts, err = p.natsLogin("nats://tok@h1:4222")
	require.NoError(t, err)
	require.Equal(t, "tok", applied(t, opts).Token)

	_, _, err = p.natsLogin("nats://worker:pw@h1:4222,nats://other:pw@h2:4222")
	require.ErrorContains(t, err, "different credentials")
	require.NotContains(t, err.Error(), ":pw@")
}
