package queue_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/stepflow-go/stepflow/pkg/queue"
)

// startEmbedded starts a server with cfg (StoreDir and Logger filled in).
func startEmbedded(t *testing.T, cfg queue.EmbeddedConfig) *queue.Embedded {
	t.Helper()
	if cfg.StoreDir == "" {
		cfg.StoreDir = t.TempDir()
	}
	cfg.Logger = zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	srv := queue.NewEmbedded(cfg)
	require.NoError(t, srv.Start(testCtx(t)))
	t.Cleanup(srv.Shutdown)
	return srv
}

// connectOK connects with opts and checks that JetStream answers.
func connectOK(t *testing.T, url string, opts queue.ConnectOptions) {
	t.Helper()
	nc, js, err := queue.Connect(testCtx(t), url, opts)
	require.NoError(t, err)
	defer nc.Close()
	_, err = js.AccountInfo(testCtx(t))
	require.NoError(t, err)
}

// connectFails checks that a connection with opts is refused: Connect
// returns at once when the server refused the credentials (twice), and
// otherwise keeps retrying until its context ends, then reports the last
// error.
func connectFails(t *testing.T, url string, opts queue.ConnectOptions) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(testCtx(t), 5*time.Second)
	defer cancel()
	nc, _, err := queue.Connect(ctx, url, opts)
	if nc != nil {
		nc.Close()
	}
	require.Error(t, err)
	if !errors.Is(err, nats.ErrAuthorization) {
		require.ErrorIs(t, err, context.DeadlineExceeded)
	}
	return err
}

func TestEmbeddedAuth(t *testing.T) {
	t.Parallel()
	t.Run("token", func(t *testing.T) {
		t.Parallel()
		srv := startEmbedded(t, queue.EmbeddedConfig{Token: "s3cret"})
		connectOK(t, srv.ClientURL(), queue.ConnectOptions{Token: "s3cret"})
		start := time.Now()
		err := connectFails(t, srv.ClientURL(), queue.ConnectOptions{Token: "wrong"})
		require.ErrorIs(t, err, nats.ErrAuthorization, "the server's refusal is reported")
		require.NotErrorIs(t, err, context.DeadlineExceeded, "refused credentials end the wait at once")
		require.Less(t, time.Since(start), 4*time.Second)
	})
	t.Run("user-password", func(t *testing.T) {
		t.Parallel()
		srv := startEmbedded(t, queue.EmbeddedConfig{User: "stepflow", Password: "pw"})
		connectOK(t, srv.ClientURL(), queue.ConnectOptions{User: "stepflow", Password: "pw"})
		connectFails(t, srv.ClientURL(), queue.ConnectOptions{User: "stepflow", Password: "nope"})
	})
	t.Run("nkey", func(t *testing.T) {
		t.Parallel()
		kp, err := nkeys.CreateUser()
		require.NoError(t, err)
		pub, err := kp.PublicKey()
		require.NoError(t, err)
		seed, err := kp.Seed()
		require.NoError(t, err)
		seedFile := filepath.Join(t.TempDir(), "user.nk")
		require.NoError(t, os.WriteFile(seedFile, seed, 0o600))
		srv := startEmbedded(t, queue.EmbeddedConfig{NKeys: []string{pub}})
		connectOK(t, srv.ClientURL(), queue.ConnectOptions{NKeySeedFile: seedFile})
		connectFails(t, srv.ClientURL(), queue.ConnectOptions{})
	})
	t.Run("mutual-tls", func(t *testing.T) {
		t.Parallel()
		pki := newPKI(t)
		srv := startEmbedded(t, queue.EmbeddedConfig{
			TLSCertFile: pki.serverCert, TLSKeyFile: pki.serverKey, TLSCAFile: pki.ca, TLSVerifyClients: true,
		})
		require.True(t, strings.HasPrefix(srv.ClientURL(), "tls://"), srv.ClientURL())
		connectOK(t, srv.ClientURL(), queue.ConnectOptions{TLSCAFile: pki.ca, TLSCertFile: pki.clientCert, TLSKeyFile: pki.clientKey})
		connectFails(t, srv.ClientURL(), queue.ConnectOptions{TLSCAFile: pki.ca}) // no client certificate
	})
	t.Run("in-process", func(t *testing.T) {
		t.Parallel()
		srv := startEmbedded(t, queue.EmbeddedConfig{DontListen: true})
		require.Empty(t, srv.ClientURL())
		connectOK(t, "", queue.ConnectOptions{InProcess: srv})
	})
	t.Run("bad-config", func(t *testing.T) {
		t.Parallel()
		for _, cfg := range []queue.EmbeddedConfig{
			{},
			{StoreDir: t.TempDir(), Token: "t", User: "u", Password: "p"},
			{StoreDir: t.TempDir(), User: "u"},
			{StoreDir: t.TempDir(), Port: 70000},
			{StoreDir: t.TempDir(), TLSVerifyClients: true},
		} {
			srv := queue.NewEmbedded(cfg)
			require.ErrorIs(t, srv.Start(testCtx(t)), queue.ErrInvalidConfig)
			srv.Shutdown() // safe without a successful Start
		}
		_, _, err := queue.Connect(testCtx(t), "", queue.ConnectOptions{})
		require.ErrorIs(t, err, queue.ErrInvalidConfig)
	})
}

// TestEmbeddedConfigFile: a nats-server config file sets authorization
// (users with permissions) for the embedded server; stepflow's host, port
// and JetStream settings apply on top of it, and in-process clients
// authenticate too.
func TestEmbeddedConfigFile(t *testing.T) {
	t.Parallel()
	conf := filepath.Join(t.TempDir(), "server.conf")
	require.NoError(t, os.WriteFile(conf, []byte(`
listen: 127.0.0.1:1   # ignored: stepflow sets host and port
server_name: from-file
authorization {
  users: [
    { user: admin, password: adminpw }
    { user: reader, password: readerpw, permissions: { publish: ["$JS.API.INFO"], subscribe: ["_INBOX.>"] } }
  ]
}
`), 0o600))
	srv := startEmbedded(t, queue.EmbeddedConfig{ConfigFile: conf})
	require.True(t, srv.Secured())
	require.Equal(t, "from-file", srv.Server().Name())
	require.NotContains(t, srv.ClientURL(), ":1", srv.ClientURL())
	connectOK(t, srv.ClientURL(), queue.ConnectOptions{User: "admin", Password: "adminpw"})
	connectOK(t, "", queue.ConnectOptions{User: "reader", Password: "readerpw", InProcess: srv})
	connectFails(t, "", queue.ConnectOptions{InProcess: srv}) // in-process clients authenticate too

	// The reader may not create a stream.
	nc, js, err := queue.Connect(testCtx(t), srv.ClientURL(), queue.ConnectOptions{User: "reader", Password: "readerpw"})
	require.NoError(t, err)
	defer nc.Close()
	ctx, cancel := context.WithTimeout(testCtx(t), time.Second)
	defer cancel()
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: "X", Subjects: []string{"x"}})
	require.Error(t, err)

	for _, cfg := range []queue.EmbeddedConfig{
		{StoreDir: t.TempDir(), ConfigFile: conf, Token: "t"},
		{StoreDir: t.TempDir(), ConfigFile: filepath.Join(t.TempDir(), "missing.conf")},
		{StoreDir: t.TempDir(), TLSCertFile: "cert.pem"},
	} {
		require.ErrorIs(t, queue.NewEmbedded(cfg).Start(testCtx(t)), queue.ErrInvalidConfig, "%+v", cfg)
	}
}

// TestEmbeddedClientAuth: a process that starts a secured server logs in
// with the server's simple credentials unless it names its own.
func TestEmbeddedClientAuth(t *testing.T) {
	t.Parallel()
	require.Equal(t, queue.ConnectOptions{Token: "t"}, queue.EmbeddedConfig{Token: "t"}.ClientAuth(queue.ConnectOptions{}))
	require.Equal(t, queue.ConnectOptions{User: "u", Password: "p"}, queue.EmbeddedConfig{User: "u", Password: "p"}.ClientAuth(queue.ConnectOptions{}))
	own := queue.ConnectOptions{NKeySeedFile: "x.nk"}
	require.Equal(t, own, queue.EmbeddedConfig{Token: "t"}.ClientAuth(own))
	require.Equal(t, queue.ConnectOptions{}, queue.EmbeddedConfig{ConfigFile: "f"}.ClientAuth(queue.ConnectOptions{}))
	require.Equal(t, queue.ConnectOptions{Token: "t"}, queue.ConnectOptions{Token: "t", TLSCAFile: "ca", TLSCertFile: "c", TLSKeyFile: "k"}.WithoutTLS())
}

func TestConnectWaitsForServer(t *testing.T) {
	t.Parallel()
	// Reserve a port, free it, and start connecting before the server.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())

	type result struct {
		nc  *nats.Conn
		js  jetstream.JetStream
		err error
	}
	done := make(chan result, 1)
	go func() {
		nc, js, err := queue.Connect(testCtx(t), "nats://127.0.0.1:"+strconv.Itoa(port),
			queue.ConnectOptions{ReconnectWait: 20 * time.Millisecond})
		done <- result{nc, js, err}
	}()
	select {
	case r := <-done:
		t.Fatalf("Connect returned before the server started: %v", r.err)
	default:
	}
	startEmbedded(t, queue.EmbeddedConfig{Port: port})
	r := <-done
	require.NoError(t, r.err)
	defer r.nc.Close()
	_, err = r.js.AccountInfo(testCtx(t))
	require.NoError(t, err)
}

func TestConnectReconnectedHook(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	srv := startEmbedded(t, queue.EmbeddedConfig{StoreDir: dir})
	url := srv.ClientURL()
	port, err := strconv.Atoi(url[strings.LastIndexByte(url, ':')+1:])
	require.NoError(t, err)
	reconnected := make(chan struct{}, 1)
	nc, _, err := queue.Connect(testCtx(t), url, queue.ConnectOptions{
		ReconnectWait: 20 * time.Millisecond,
		Reconnected: func() {
			select {
			case reconnected <- struct{}{}:
			default:
			}
		},
	})
	require.NoError(t, err)
	defer nc.Close()
	srv.Shutdown()
	startEmbedded(t, queue.EmbeddedConfig{StoreDir: dir, Port: port})
	select {
	case <-reconnected:
	case <-testCtx(t).Done():
		t.Fatal("Reconnected was not called after the server came back")
	}
}

func TestEmbeddedRestartKeepsState(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := testCtx(t)
	srv := startEmbedded(t, queue.EmbeddedConfig{StoreDir: dir, Sync: queue.SyncAlways})
	nc, js, err := queue.Connect(ctx, srv.ClientURL(), queue.ConnectOptions{})
	require.NoError(t, err)
	cfg := queue.Config{ItemsFileStorage: true} // the default memory storage is lost on purpose
	require.NoError(t, queue.Provision(ctx, js, cfg))
	_, err = queue.PublishItems(ctx, js, "durable", inputs(0, 100), queue.PublishItemsOptions{})
	require.NoError(t, err)
	_, err = queue.CreateRunConsumer(ctx, js, "durable", queue.RunConsumerConfig{MaxAckPending: 5})
	require.NoError(t, err)
	nc.Close()
	srv.Shutdown()
	srv.Shutdown() // idempotent

	srv2 := startEmbedded(t, queue.EmbeddedConfig{StoreDir: dir})
	nc2, js2, err := queue.Connect(ctx, srv2.ClientURL(), queue.ConnectOptions{})
	require.NoError(t, err)
	defer nc2.Close()
	require.NoError(t, queue.Provision(ctx, js2, cfg))
	require.Equal(t, uint64(100), subjectCount(t, js2, queue.StreamItems, queue.ItemSubject("durable")))
	cons, err := queue.RunConsumerHandle(ctx, js2, "durable")
	require.NoError(t, err)
	require.Equal(t, 5, cons.CachedInfo().Config.MaxAckPending)
	nc2.Close()
	srv2.Shutdown()

	// With the default memory storage, a restart loses the items and the
	// consumers (the coordinator republishes them from its spools), and
	// the stream comes back as a new incarnation.
	srv3 := startEmbedded(t, queue.EmbeddedConfig{StoreDir: dir})
	nc3, js3, err := queue.Connect(ctx, srv3.ClientURL(), queue.ConnectOptions{})
	require.NoError(t, err)
	defer nc3.Close()
	require.NoError(t, queue.Provision(ctx, js3, queue.Config{}))
	before, err := queue.ItemsStreamIncarnation(ctx, js3)
	require.NoError(t, err)
	_, err = queue.PublishItems(ctx, js3, "memory", inputs(0, 10), queue.PublishItemsOptions{})
	require.NoError(t, err)
	nc3.Close()
	srv3.Shutdown()
	srv4 := startEmbedded(t, queue.EmbeddedConfig{StoreDir: dir})
	nc4, js4, err := queue.Connect(ctx, srv4.ClientURL(), queue.ConnectOptions{})
	require.NoError(t, err)
	defer nc4.Close()
	_, err = queue.ItemsStreamIncarnation(ctx, js4)
	require.ErrorIs(t, err, queue.ErrNotProvisioned)
	after, created, err := queue.EnsureItemsStream(ctx, js4, queue.Config{})
	require.NoError(t, err)
	require.True(t, created)
	require.Greater(t, after.FirstSeq, before.FirstSeq)
}

// pki is a throwaway CA with a server and a client certificate, as PEM
// files.
type pki struct {
	ca, serverCert, serverKey, clientCert, clientKey string
}

func newPKI(t *testing.T) pki {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
		return p
	}
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		return k
	}
	keyDER := func(k *ecdsa.PrivateKey) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		require.NoError(t, err)
		return der
	}
	now := time.Now()
	caKey := newKey()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "stepflow test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	caCert, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	issue := func(serial int64, cn string, usage x509.ExtKeyUsage, ips []net.IP) ([]byte, *ecdsa.PrivateKey) {
		k := newKey()
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		require.NoError(t, err)
		return der, k
	}
	srvDER, srvKey := issue(2, "127.0.0.1", x509.ExtKeyUsageServerAuth, []net.IP{net.ParseIP("127.0.0.1")})
	cliDER, cliKey := issue(3, "worker", x509.ExtKeyUsageClientAuth, nil)
	return pki{
		ca:         write("ca.pem", "CERTIFICATE", caDER),
		serverCert: write("server.pem", "CERTIFICATE", srvDER),
		serverKey:  write("server-key.pem", "PRIVATE KEY", keyDER(srvKey)),
		clientCert: write("client.pem", "CERTIFICATE", cliDER),
		clientKey:  write("client-key.pem", "PRIVATE KEY", keyDER(cliKey)),
	}
}

func TestEmbeddedPortInUseFailsFast(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	srv := queue.NewEmbedded(queue.EmbeddedConfig{StoreDir: t.TempDir(), Port: l.Addr().(*net.TCPAddr).Port})
	ctx, cancel := context.WithTimeout(testCtx(t), 10*time.Second) // well below ReadyTimeout (30s)
	defer cancel()
	err = srv.Start(ctx)
	require.Error(t, err)
	require.NotErrorIs(t, err, context.DeadlineExceeded)
	require.Contains(t, err.Error(), "listen")
	srv.Shutdown()
}
