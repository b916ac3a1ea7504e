// Package natsauth is the coordinator's NATS auth callout: it signs in
// the workers that share one NATS password, each with an inbox of its
// own, so that no worker can read another's replies.
//
// A nats-server configured with an auth_callout block
// (deploy/k8s/base/nats/auth-callout.conf) hands every login it does not
// know to this service. A worker logs in as WorkerUser with the shared
// password and a user nkey it made at start (queue.ConnectOptions.InboxKey),
// signing the server's nonce with it. The service checks the password and
// the signature, and answers with a user JWT that places the worker in the
// stepflow account with the worker's publish permissions (WorkerPublish)
// and subscribe permission only under
// queue.WorkerInboxPrefix.<the worker's public key>, the inbox prefix the
// worker uses. Another worker cannot obtain that prefix: it would have to
// sign with the first worker's private key, which never leaves it.
package natsauth

import (
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"go.uber.org/zap"

	"github.com/stepflow-go/stepflow/pkg/queue"
)

// Subject is where nats-server sends its authorization requests.
const Subject = "$SYS.REQ.USER.AUTH"

// queueGroup spreads the requests over every coordinator (the leader and
// the standbys): a login does not wait for a leader election.
const queueGroup = "stepflow-auth-callout"

// WorkerUser is the user name workers log in with.
const WorkerUser = "worker"

// WorkerPublish is what a worker may publish to (the publish allow list
// of user worker in deploy/k8s/base/nats/auth.conf; a test keeps them
// equal). docs/security.md says why each subject is there.
var WorkerPublish = []string{
	"$JS.API.STREAM.INFO.KV_STEPFLOW_RUNS",
	"$JS.API.STREAM.INFO.KV_STEPFLOW_FLOWS",
	"$JS.API.STREAM.INFO.OBJ_STEPFLOW_BLOBS",
	"$JS.API.STREAM.INFO.KV_STEPFLOW_WORKERS",
	"$KV.STEPFLOW_WORKERS.>",
	"$JS.API.CONSUMER.INFO.STEPFLOW_ITEMS.*",
	"$JS.API.CONSUMER.MSG.NEXT.STEPFLOW_ITEMS.*",
	"$JS.ACK.STEPFLOW_ITEMS.>",
	"stepflow.results.>",
	"$JS.API.CONSUMER.CREATE.KV_STEPFLOW_RUNS.>",
	"$JS.API.CONSUMER.DELETE.KV_STEPFLOW_RUNS.>",
	"$JS.FC.KV_STEPFLOW_RUNS.>",
	"$JS.API.DIRECT.GET.KV_STEPFLOW_FLOWS.>",
	"$JS.API.DIRECT.GET.OBJ_STEPFLOW_BLOBS",
	"$JS.API.DIRECT.GET.OBJ_STEPFLOW_BLOBS.>",
	"$JS.API.STREAM.MSG.GET.OBJ_STEPFLOW_BLOBS",
	"$O.STEPFLOW_BLOBS.>",
	"stepflow.api.runs.submit",
	"stepflow.api.runs.get",
	"$JS.API.STREAM.CREATE.PYTHON_TASKS",
	"$JS.API.STREAM.UPDATE.PYTHON_TASKS",
	"PYTHON_TASKS.tasks",
}

// WorkerInbox is the inbox prefix of the worker whose user nkey is pub:
// the only subjects it may subscribe to are under it.
func WorkerInbox(pub string) string { return queue.WorkerInboxPrefix + "." + pub }

// Config configures the service.
type Config struct {
	// Issuer signs the answers and the users: an account key pair whose
	// public key is the server's auth_callout issuer.
	Issuer nkeys.KeyPair
	// Account is the account the workers are placed in, the one the
	// coordinator's own user is in (auth-callout.conf: STEPFLOW).
	Account string
	// WorkerPassword is the password workers log in with.
	WorkerPassword string
	// Logger receives refused logins (info) and failures to answer.
	Logger *zap.Logger
}

// ErrInvalidConfig is wrapped by errors about a Config or its files.
var ErrInvalidConfig = errors.New("natsauth: invalid configuration")

// ParseIssuer parses an account seed (SA...): the key pair whose public
// key (A...) is the auth_callout issuer of the server.
func ParseIssuer(seed string) (nkeys.KeyPair, error) {
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(seed)))
	if err != nil {
		return nil, fmt.Errorf("%w: issuer seed: %w", ErrInvalidConfig, err)
	}
	if pub, _ := kp.PublicKey(); !nkeys.IsValidPublicAccountKey(pub) {
		return nil, fmt.Errorf("%w: the issuer seed is no account seed (SA...): the server's auth_callout issuer is an account public key", ErrInvalidConfig)
	}
	return kp, nil
}

// Service answers the server's authorization requests.
type Service struct {
	cfg Config
	log *zap.Logger
	sub *nats.Subscription
}

// Start subscribes to the authorization requests on nc, whose user must
// be one of the server's auth_users.
func Start(nc *nats.Conn, cfg Config) (*Service, error) {
	switch {
	case cfg.Issuer == nil:
		return nil, fmt.Errorf("%w: no issuer", ErrInvalidConfig)
	case cfg.Account == "":
		return nil, fmt.Errorf("%w: no account", ErrInvalidConfig)
	case cfg.WorkerPassword == "":
		return nil, fmt.Errorf("%w: no worker password", ErrInvalidConfig)
	}
	s := &Service{cfg: cfg, log: cfg.Logger}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	s.log = s.log.Named("auth-callout")
	sub, err := nc.QueueSubscribe(Subject, queueGroup, s.handle)
	if err != nil {
		return nil, fmt.Errorf("natsauth: subscribe to %s: %w", Subject, err)
	}
	s.sub = sub
	return s, nil
}

// Stop stops answering.
func (s *Service) Stop() error { return s.sub.Unsubscribe() }

// handle answers one authorization request.
func (s *Service) handle(m *nats.Msg) {
	req, err := jwt.DecodeAuthorizationRequestClaims(string(m.Data))
	if err != nil {
		s.log.Warn("dropping a malformed authorization request", zap.Error(err))
		return
	}
	res := jwt.NewAuthorizationResponseClaims(req.UserNkey)
	res.Audience = req.Server.ID
	user, err := s.authorize(req)
	if err != nil {
		s.log.Info("refused a NATS login", zap.String("user", req.ConnectOptions.Username),
			zap.String("host", req.ClientInformation.Host), zap.Error(err))
		res.Error = err.Error()
	} else {
		res.Jwt = user
	}
	token, err := res.Encode(s.cfg.Issuer)
	if err != nil {
		s.log.Error("cannot sign an authorization answer", zap.Error(err))
		return
	}
	if err := m.Respond([]byte(token)); err != nil {
		s.log.Warn("cannot answer an authorization request", zap.Error(err))
	}
}

// authorize checks a login and returns the user JWT it gets.
func (s *Service) authorize(req *jwt.AuthorizationRequestClaims) (string, error) {
	opts := req.ConnectOptions
	if opts.Username != WorkerUser {
		return "", fmt.Errorf("unknown user %q", opts.Username)
	}
	if subtle.ConstantTimeCompare([]byte(opts.Password), []byte(s.cfg.WorkerPassword)) != 1 {
		return "", errors.New("wrong password")
	}
	if opts.Nkey == "" {
		return "", errors.New("a worker signs in with a user nkey of its own (worker --nats-inbox-key)")
	}
	if !nkeys.IsValidPublicUserKey(opts.Nkey) {
		return "", fmt.Errorf("%q is no user public key", opts.Nkey)
	}
	if req.ClientInformation.Nonce == "" {
		// A signature of nothing proves nothing about this login: it
		// could be replayed. The server sends a nonce when it has an
		// nkey user (auth-callout.conf has one).
		return "", errors.New("the server sent no nonce to sign (give it an nkey user)")
	}
	if err := verifyNonce(opts.Nkey, opts.SignedNonce, req.ClientInformation.Nonce); err != nil {
		return "", err
	}
	uc := jwt.NewUserClaims(req.UserNkey)
	uc.Name = WorkerUser
	uc.Audience = s.cfg.Account
	uc.Pub.Allow.Add(WorkerPublish...)
	uc.Sub.Allow.Add(WorkerInbox(opts.Nkey) + ".>")
	return uc.Encode(s.cfg.Issuer)
}

// verifyNonce checks that sig (base64, as nats.go sends it) is pub's
// signature of nonce.
func verifyNonce(pub, sig, nonce string) error {
	raw, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil {
		if raw, err = base64.StdEncoding.DecodeString(sig); err != nil {
			return errors.New("the nonce signature is not base64")
		}
	}
	kp, err := nkeys.FromPublicKey(pub)
	if err != nil {
		return fmt.Errorf("user key: %w", err)
	}
	if err := kp.Verify([]byte(nonce), raw); err != nil {
		return errors.New("the nonce is not signed by the user key")
	}
	return nil
}
