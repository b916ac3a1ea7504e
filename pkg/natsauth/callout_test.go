package natsauth

import (
	"encoding/base64"
	"path/filepath"
	"slices"
	"testing"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// WorkerPublish is auth.conf's worker user's publish allow list: a
// worker admitted by the callout may do what one logged in with the
// static file may, no more.
func TestWorkerPublishMatchesAuthConf(t *testing.T) {
	for _, v := range []string{"NATS_COORDINATOR_PASSWORD", "NATS_WORKER_PASSWORD", "NATS_SDK_PASSWORD"} {
		t.Setenv(v, "pw-"+v)
	}
	opts, err := server.ProcessConfigFile(filepath.Join("..", "..", "deploy", "k8s", "base", "nats", "auth.conf"))
	require.NoError(t, err)
	var allow []string
	for _, u := range opts.Users {
		if u.Username == WorkerUser {
			require.NotNil(t, u.Permissions)
			allow = slices.Clone(u.Permissions.Publish.Allow)
		}
	}
	require.NotEmpty(t, allow, "auth.conf has no worker user")
	want := slices.Clone(WorkerPublish)
	slices.Sort(allow)
	slices.Sort(want)
	require.Equal(t, allow, want)
}

// auth-callout.conf parses, hands unknown logins to the callout, and has
// an nkey user (without one the server sends no nonce, and nats.go
// cannot sign in with a key).
func TestAuthCalloutConf(t *testing.T) {
	issuer, err := nkeys.CreateAccount()
	require.NoError(t, err)
	pub, err := issuer.PublicKey()
	require.NoError(t, err)
	t.Setenv("NATS_COORDINATOR_PASSWORD", "pw-coordinator")
	t.Setenv("NATS_SDK_PASSWORD", "pw-sdk")
	t.Setenv("NATS_AUTH_CALLOUT_ISSUER", pub)
	opts, err := server.ProcessConfigFile(filepath.Join("..", "..", "deploy", "k8s", "base", "nats", "auth-callout.conf"))
	require.NoError(t, err)
	require.NotNil(t, opts.AuthCallout)
	require.Equal(t, pub, opts.AuthCallout.Issuer)
	require.Equal(t, "STEPFLOW", opts.AuthCallout.Account)
	require.Equal(t, []string{"coordinator"}, opts.AuthCallout.AuthUsers)
	require.NotEmpty(t, opts.Nkeys)
	for _, u := range opts.Users {
		require.NotEqual(t, WorkerUser, u.Username, "a static worker user would bypass the callout")
	}
}

func TestParseIssuer(t *testing.T) {
	acc, err := nkeys.CreateAccount()
	require.NoError(t, err)
	seed, err := acc.Seed()
	require.NoError(t, err)
	kp, err := ParseIssuer(string(seed) + "\n")
	require.NoError(t, err)
	got, _ := kp.PublicKey()
	want, _ := acc.PublicKey()
	require.Equal(t, want, got)

	user, err := nkeys.CreateUser()
	require.NoError(t, err)
	useed, err := user.Seed()
	require.NoError(t, err)
	_, err = ParseIssuer(string(useed))
	require.ErrorIs(t, err, ErrInvalidConfig)
	require.ErrorContains(t, err, "no account seed")
	_, err = ParseIssuer("SAjunk")
	require.ErrorIs(t, err, ErrInvalidConfig)
	require.NotContains(t, err.Error(), "SAjunk")
}

// authorize admits a worker that gives the password and signs the nonce
// with the key it claims, with subscribe permission under that key's
// prefix only, and refuses every other login.
func TestAuthorize(t *testing.T) {
	issuer, err := nkeys.CreateAccount()
	require.NoError(t, err)
	s := &Service{cfg: Config{Issuer: issuer, Account: "STEPFLOW", WorkerPassword: "pw"}}
	key, err := nkeys.CreateUser()
	require.NoError(t, err)
	pub, _ := key.PublicKey()
	other, err := nkeys.CreateUser()
	require.NoError(t, err)
	request := func(user, password, nkey string, signer nkeys.KeyPair) *jwt.AuthorizationRequestClaims {
		return requestNonce(t, user, password, nkey, signer, "nonce-123")
	}
	noNonce := requestNonce(t, WorkerUser, "pw", pub, key, "")

	token, err := s.authorize(request(WorkerUser, "pw", pub, key))
	require.NoError(t, err)
	uc, err := jwt.DecodeUserClaims(token)
	require.NoError(t, err)
	ipub, _ := issuer.PublicKey()
	require.Equal(t, ipub, uc.Issuer)
	require.Equal(t, "STEPFLOW", uc.Audience)
	require.Equal(t, jwt.StringList{WorkerInbox(pub) + ".>"}, uc.Sub.Allow)
	require.Empty(t, uc.Sub.Deny)
	require.ElementsMatch(t, WorkerPublish, []string(uc.Pub.Allow))

	for name, req := range map[string]*jwt.AuthorizationRequestClaims{
		"unknown user":            request("admin", "pw", pub, key),
		"wrong password":          request(WorkerUser, "guess", pub, key),
		"no key":                  request(WorkerUser, "pw", "", nil),
		"key signed by another":   request(WorkerUser, "pw", pub, other),
		"key not signed":          request(WorkerUser, "pw", pub, nil),
		"an account key, no user": request(WorkerUser, "pw", ipub, issuer),
		"no nonce":                noNonce,
	} {
		_, err := s.authorize(req)
		require.Error(t, err, name)
	}
	// A signature of the empty nonce verifies, and is still refused.
	_, err = s.authorize(noNonce)
	require.ErrorContains(t, err, "no nonce")
}

// requestNonce is an authorization request of a login with user,
// password and nkey, the server's nonce signed by signer (nil: not
// signed).
func requestNonce(t *testing.T, user, password, nkey string, signer nkeys.KeyPair, nonce string) *jwt.AuthorizationRequestClaims {
	t.Helper()
	server, _ := nkeys.CreateServer()
	spub, _ := server.PublicKey()
	conn, _ := nkeys.CreateUser()
	cpub, _ := conn.PublicKey()
	req := jwt.NewAuthorizationRequestClaims(spub)
	req.UserNkey = cpub
	req.Server.ID = "server-id"
	req.ClientInformation.Nonce = nonce
	req.ConnectOptions.Username = user
	req.ConnectOptions.Password = password
	req.ConnectOptions.Nkey = nkey
	if signer != nil {
		sig, err := signer.Sign([]byte(nonce))
		require.NoError(t, err)
		req.ConnectOptions.SignedNonce = base64.RawURLEncoding.EncodeToString(sig)
	}
	return req
}
