package queue

import (
	"cmp"
	"context"
	"fmt"
	neturl "net/url"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"go.uber.org/zap"
)

// ConnectOptions configures Connect. The zero value connects without
// authentication, over plain TCP, with the defaults below.
type ConnectOptions struct {
	// Name identifies the client in server monitoring, e.g.
	// "stepflow-worker-3". Default "stepflow".
	Name string

	// Token authenticates with a token.
	Token string
	// User and Password authenticate with a user name and password.
	User, Password string
	// NKeySeedFile authenticates with the nkey seed in this file (the
	// server knows the public key).
	NKeySeedFile string
	// CredsFile authenticates with a decentralised-auth credentials file
	// (user JWT and nkey seed), as issued by nsc.
	CredsFile string

	// TLSCAFile verifies the server's certificate against this CA and
	// requires TLS.
	TLSCAFile string
	// TLSCertFile and TLSKeyFile present a client certificate (mutual
	// TLS), and require TLS.
	TLSCertFile, TLSKeyFile string

	// InboxPrefix is the first token(s) of the subjects the server
	// replies to this client on: JetStream API answers, pulled items,
	// watches' deliveries, request replies. A client reads only replies
	// under it, so a NATS user allowed to subscribe to its own prefix only
	// sees nothing of other clients' replies (deploy/k8s/base/nats/auth.conf).
	// Default nats.go's "_INBOX"; the coordinator and the workers set
	// CoordinatorInboxPrefix and WorkerInboxPrefix.
	InboxPrefix string
	// InboxKey, when set, is a user nkey the process made for itself: it
	// signs the server's nonce with it at login, next to its user and
	// password, and its inbox prefix becomes InboxPrefix.<public key>.
	// The coordinator's NATS auth callout (package natsauth) lets a
	// worker that proves its key subscribe under that prefix only, so
	// workers sharing one NATS user cannot read each other's replies. A
	// refused login is tried again rather than ending Connect: the
	// coordinator that answers may be starting.
	InboxKey nkeys.KeyPair

	// InProcess connects to an in-process server (an *Embedded) without
	// TCP; the URL is then ignored.
	InProcess nats.InProcessConnProvider

	// ReconnectWait is the pause between reconnect attempts to the same
	// server (the client adds jitter). Default 2s. The client reconnects
	// forever: a worker or coordinator outlives any NATS outage, buffering
	// up to 8 MiB of outgoing messages meanwhile.
	ReconnectWait time.Duration
	// APITimeout bounds JetStream API calls whose context has no deadline.
	// Default 5s.
	APITimeout time.Duration
	// PublishAsyncTimeout fails an asynchronous publish whose ack has not
	// arrived after this long, so that no PubAck future waits forever.
	// Default 30s.
	PublishAsyncTimeout time.Duration

	// Logger receives connection events (disconnects, reconnects, async
	// errors), named "nats". Default: no logs.
	Logger *zap.Logger

	// Reconnected, when set, is called after each reconnect, on the
	// client's callback goroutine. Requests that were in flight when the
	// connection dropped are never answered (the client does not resend
	// them): callers use it to try them again at once rather than wait
	// for their timeouts.
	Reconnected func()
}

// Connect connects to the NATS server(s) at url (a comma-separated list is
// allowed) and returns the connection and a JetStream handle on it (the
// jetstream package API). If the server is not reachable yet, Connect keeps
// trying until ctx ends, so that a worker started before NATS waits for it
// rather than failing; the error then includes the last connection error.
// A server that refuses the credentials twice ends the wait at once with
// that error (nats.ErrAuthorization, for instance). After the first
// connection the client reconnects forever.
//
// The caller closes the connection (nc.Drain or nc.Close) when done.
func Connect(ctx context.Context, url string, opts ConnectOptions) (*nats.Conn, jetstream.JetStream, error) {
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	log = log.Named("nats")
	connected := make(chan struct{}, 1)
	// closed: the client gave up, which it does before the first
	// connection only when the server refused the same credentials twice
	// (nats.go's auth-error abort): retrying cannot help.
	closed := make(chan struct{})
	var closedOnce sync.Once
	var lastErr connErr
	no := []nats.Option{
		nats.Name(cmp.Or(opts.Name, "stepflow")),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(cmp.Or(opts.ReconnectWait, 2*time.Second)),
		nats.ConnectHandler(func(nc *nats.Conn) {
			log.Info("connected to NATS", zap.String("url", nc.ConnectedUrlRedacted()))
			select {
			case connected <- struct{}{}:
			default:
			}
		}),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if err != nil {
				log.Warn("disconnected from NATS", zap.Error(err))
			} else {
				log.Info("disconnected from NATS")
			}
		}),
		nats.ReconnectErrHandler(func(nc *nats.Conn, err error) {
			// Called for every failed (re)connect attempt; log each new
			// kind of failure once, not every ReconnectWait.
			if lastErr.set(err) {
				log.Warn("cannot connect to NATS; retrying", zap.Error(err))
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("reconnected to NATS", zap.String("url", nc.ConnectedUrlRedacted()))
			if opts.Reconnected != nil {
				opts.Reconnected()
			}
		}),
		nats.ClosedHandler(func(nc *nats.Conn) {
			closedOnce.Do(func() { close(closed) })
			if err := nc.LastError(); err != nil {
				log.Info("NATS connection closed", zap.Error(err))
			} else {
				log.Debug("NATS connection closed")
			}
		}),
		nats.ErrorHandler(func(nc *nats.Conn, sub *nats.Subscription, err error) {
			f := []zap.Field{zap.Error(err)}
			if sub != nil {
				f = append(f, zap.String("subject", sub.Subject))
			}
			log.Error("NATS asynchronous error", f...)
		}),
		nats.LameDuckModeHandler(func(nc *nats.Conn) {
			log.Warn("NATS server entering lame-duck mode; will reconnect elsewhere", zap.String("url", nc.ConnectedUrlRedacted()))
		}),
		nats.DiscoveredServersHandler(func(nc *nats.Conn) {
			log.Debug("NATS servers discovered", zap.Strings("servers", nc.DiscoveredServers()))
		}),
	}
	if opts.Token != "" {
		no = append(no, nats.Token(opts.Token))
	}
	if opts.User != "" || opts.Password != "" {
		no = append(no, nats.UserInfo(opts.User, opts.Password))
	}
	if opts.NKeySeedFile != "" {
		o, err := nats.NkeyOptionFromSeed(opts.NKeySeedFile)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: nkey seed file: %w", ErrInvalidConfig, err)
		}
		no = append(no, o)
	}
	if opts.CredsFile != "" {
		no = append(no, nats.UserCredentials(opts.CredsFile))
	}
	if opts.TLSCAFile != "" {
		no = append(no, nats.RootCAs(opts.TLSCAFile))
	}
	if opts.TLSCertFile != "" || opts.TLSKeyFile != "" {
		if opts.TLSCertFile == "" || opts.TLSKeyFile == "" {
			return nil, nil, fmt.Errorf("%w: a client certificate needs both TLSCertFile and TLSKeyFile", ErrInvalidConfig)
		}
		no = append(no, nats.ClientCert(opts.TLSCertFile, opts.TLSKeyFile))
	}
	if opts.InboxKey != nil {
		o, prefix, err := inboxKeyOptions(url, opts)
		if err != nil {
			return nil, nil, err
		}
		no = append(no, o)
		opts.InboxPrefix = prefix
	}
	if opts.InboxPrefix != "" {
		if !ValidInboxPrefix(opts.InboxPrefix) {
			return nil, nil, fmt.Errorf("%w: inbox prefix %q: use subject tokens (letters, digits, _ and -) separated by dots, without wildcards", ErrInvalidConfig, opts.InboxPrefix)
		}
		no = append(no, nats.CustomInboxPrefix(opts.InboxPrefix))
	}
	if opts.InProcess != nil {
		no = append(no, nats.InProcessServer(opts.InProcess))
		url = cmp.Or(url, nats.DefaultURL)
	}
	if url == "" {
		return nil, nil, fmt.Errorf("%w: no NATS URL", ErrInvalidConfig)
	}

	nc, err := nats.Connect(url, no...)
	if err != nil {
		return nil, nil, fmt.Errorf("queue: connect to NATS at %s: %w", RedactURL(url), err)
	}
	if !nc.IsConnected() {
		log.Info("NATS not reachable yet; retrying", zap.Error(nc.LastError()))
		select {
		case <-connected:
		case <-closed:
			last := cmp.Or(lastErr.get(), nc.LastError())
			if last == nil {
				last = nats.ErrConnectionClosed
			}
			return nil, nil, fmt.Errorf("queue: connect to NATS at %s: %w", RedactURL(url), last)
		case <-ctx.Done():
			last := cmp.Or(lastErr.get(), nc.LastError())
			nc.Close()
			if last != nil {
				return nil, nil, fmt.Errorf("queue: connect to NATS at %s: %w (last error: %w)", RedactURL(url), context.Cause(ctx), last)
			}
			return nil, nil, fmt.Errorf("queue: connect to NATS at %s: %w", RedactURL(url), context.Cause(ctx))
		}
	}
	js, err := jetstream.New(nc,
		jetstream.WithDefaultTimeout(cmp.Or(opts.APITimeout, 5*time.Second)),
		jetstream.WithPublishAsyncTimeout(cmp.Or(opts.PublishAsyncTimeout, 30*time.Second)),
	)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("queue: JetStream: %w", err)
	}
	return nc, js, nil
}

// inboxKeyOptions returns the login option of opts.InboxKey and the
// inbox prefix it proves.
func inboxKeyOptions(url string, opts ConnectOptions) (nats.Option, string, error) {
	if opts.NKeySeedFile != "" || opts.CredsFile != "" {
		return nil, "", fmt.Errorf("%w: an inbox key signs in next to a user and password, not with an nkey seed or credentials file of its own", ErrInvalidConfig)
	}
	if strings.Contains(url, "@") {
		// nats.go sends no nkey when the URL carries the credentials.
		return nil, "", fmt.Errorf("%w: with an inbox key, give the NATS user and password as options (--nats-user, STEPFLOW_NATS_PASSWORD), not in the URL", ErrInvalidConfig)
	}
	return InboxKeyLogin(opts.InboxKey, cmp.Or(opts.InboxPrefix, nats.InboxPrefix[:len(nats.InboxPrefix)-1]))
}

// InboxKeyLogin returns the login option of an inbox key
// (ConnectOptions.InboxKey) and the inbox prefix it proves, prefix.<its
// public key>: for Connect, and for a plugin's own connection as the
// same worker.
func InboxKeyLogin(kp nkeys.KeyPair, prefix string) (nats.Option, string, error) {
	pub, err := kp.PublicKey()
	if err != nil || !nkeys.IsValidPublicUserKey(pub) {
		return nil, "", fmt.Errorf("%w: the inbox key is no user nkey", ErrInvalidConfig)
	}
	return func(o *nats.Options) error {
		// A refused login is tried again, not the end: the coordinator
		// that answers the server's auth callout may be starting or
		// restarting (a wrong password shows in the log, as every failed
		// connection does).
		o.IgnoreAuthErrorAbort = true
		return nats.Nkey(pub, kp.Sign)(o)
	}, prefix + "." + pub, nil
}

// NewInboxKey makes a user nkey for ConnectOptions.InboxKey.
func NewInboxKey() (nkeys.KeyPair, error) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return nil, fmt.Errorf("queue: make an inbox key: %w", err)
	}
	return kp, nil
}

// RedactURL returns a NATS URL (or comma-separated list) with the
// password or token of each URL replaced by "xxxxx", so that credentials
// written into a URL never reach a log or an error.
func RedactURL(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		u, err := neturl.Parse(strings.TrimSpace(p))
		if err != nil || u.User == nil {
			if err != nil && strings.Contains(p, "@") {
				parts[i] = "[unparsable URL with credentials]"
			}
			continue
		}
		if _, ok := u.User.Password(); ok {
			u.User = neturl.UserPassword(u.User.Username(), "xxxxx")
		} else {
			u.User = neturl.User("xxxxx") // a token
		}
		parts[i] = u.String()
	}
	return strings.Join(parts, ",")
}

// connErr remembers the last connection error for Connect's report.
type connErr struct {
	mu  sync.Mutex
	err error
}

// set records err and reports whether its message differs from the
// previous one.
func (c *connErr) set(err error) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	changed := c.err == nil || err == nil || c.err.Error() != err.Error()
	c.err = err
	return changed
}

func (c *connErr) get() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}
