package queue

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// EmbeddedConfig configures an in-process NATS server with JetStream: the
// single-machine default of `stepflow serve` and of a coordinator started
// without --nats-url, and what the tests run against.
type EmbeddedConfig struct {
	// StoreDir is the JetStream storage directory (required). Streams,
	// buckets and consumer state survive a restart on the same directory.
	StoreDir string
	// Host is the listen address. Default "127.0.0.1": an embedded server
	// is reachable from this machine only unless told otherwise.
	Host string
	// Port is the client port; 0 picks a free port (see ClientURL).
	Port int
	// DontListen accepts in-process connections only (ConnectOptions
	// InProcess); Host and Port are then ignored.
	DontListen bool
	// ServerName names the server in logs and advisories. Default
	// "stepflow-embedded".
	ServerName string

	// ConfigFile is a nats-server configuration file
	// (https://docs.nats.io/running-a-nats-service/configuration) read for
	// everything about who may connect and how: `authorization` (users
	// with permissions, nkeys, tokens), `accounts`, operator mode
	// (`operator`, `resolver`), `tls`, limits, monitoring. stepflow then
	// sets what it owns on top: JetStream on, StoreDir, the sync settings,
	// Host, Port and DontListen (a `listen`/`port` in the file is
	// ignored), ServerName unless the file names the server, and
	// MaxPayload when set. Users defined under `accounts` need
	// `jetstream: enabled` in their account. Not combinable with Token,
	// User/Password or NKeys. See docs/security.md.
	ConfigFile string

	// Token requires clients to present this token. Mutually exclusive
	// with User/Password and NKeys.
	Token string
	// User and Password require clients to log in with them.
	User, Password string
	// NKeys lists the public user nkeys ("U…") allowed to connect; clients
	// sign the server's nonce with the matching seed (ConnectOptions
	// NKeySeedFile).
	NKeys []string

	// TLSCertFile and TLSKeyFile enable TLS for clients with this
	// certificate. TLSCAFile adds the CA that client certificates must be
	// signed by when TLSVerifyClients is set.
	TLSCertFile, TLSKeyFile, TLSCAFile string
	// TLSVerifyClients requires and verifies client certificates (mutual
	// TLS).
	TLSVerifyClients bool
	// TLSConfig, when set, is used instead of the TLS files.
	TLSConfig *tls.Config

	// Sync is when JetStream fsyncs its file store (SyncPolicy). The zero
	// value is the nats-server default, a background fsync every 2
	// minutes: writes in between sit in the OS page cache, which survives
	// the process being killed (kill -9) but not a power loss or kernel
	// crash of the machine. SyncAlways fsyncs every write before it is
	// acknowledged, so no acknowledged message is lost to either, at the
	// cost of one fsync per write. The coordinator's embedded server
	// defaults to SyncAlways (see coordinator.Config.NATSSync).
	Sync SyncPolicy
	// MaxMemory bounds JetStream memory storage in bytes; 0 = the server
	// default (75% of RAM). Nothing of stepflow's uses memory storage.
	MaxMemory int64
	// MaxStore bounds JetStream file storage in bytes; 0 = the server
	// default (up to 1 TB, limited by the disk).
	MaxStore int64
	// MaxPayload is the largest message the server accepts, in bytes;
	// 0 = the server default, 1 MiB. Larger item inputs and results are
	// offloaded to the blob store (see PublishItemsOptions.Blobs).
	MaxPayload int32

	// ResumeFreeBytes is the free space StoreDir's filesystem must have
	// before JetStream, which stops storing when its store runs out of
	// space, is restarted (see Health). Default DefaultResumeFreeBytes,
	// or a tenth of the filesystem if that is less.
	ResumeFreeBytes int64
	// ResumeCheckEvery is how often a server whose JetStream is off
	// checks for space. Default 1 s.
	ResumeCheckEvery time.Duration

	// ReadyTimeout bounds how long Start waits for the server to accept
	// connections (it may first recover streams from StoreDir). Default 30s.
	ReadyTimeout time.Duration
	// Logger receives the server's log, named "nats-server"; server debug
	// logging is on when it is enabled at debug level. Default: no logs.
	Logger *zap.Logger
}

// Embedded is an in-process NATS server with JetStream. It implements
// nats.InProcessConnProvider, so ConnectOptions.InProcess can connect to
// it without TCP.
type Embedded struct {
	cfg EmbeddedConfig
	log *zap.Logger

	mu   sync.Mutex
	srv  *server.Server
	stop chan struct{} // closed by Shutdown: ends resumeJetStream
	done chan struct{} // closed when resumeJetStream returned

	health   atomic.Pointer[error]  // nil: healthy
	storeErr atomic.Pointer[string] // a critical store write error the server logged; nil: none
}

// DefaultResumeFreeBytes is EmbeddedConfig.ResumeFreeBytes' default.
const DefaultResumeFreeBytes = 64 << 20

// ErrJetStreamOff is wrapped by Health while the embedded server's
// JetStream cannot store because its store ran out of space.
var ErrJetStreamOff = errors.New("the embedded NATS server cannot store")

// NewEmbedded returns a server for cfg; it does not start it.
func NewEmbedded(cfg EmbeddedConfig) *Embedded {
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Embedded{cfg: cfg, log: log.Named("nats-server")}
}

// Validate reports settings that cannot work together, without reading
// any file (Start reads ConfigFile and the TLS files). A StoreDir is not
// required here: embedders set it last.
func (c EmbeddedConfig) Validate() error {
	auth := 0
	if c.Token != "" {
		auth++
	}
	if c.User != "" || c.Password != "" {
		if c.User == "" || c.Password == "" {
			return fmt.Errorf("%w: embedded NATS server needs both User and Password", ErrInvalidConfig)
		}
		auth++
	}
	if len(c.NKeys) > 0 {
		auth++
	}
	if auth > 1 {
		return fmt.Errorf("%w: embedded NATS server takes one of Token, User/Password or NKeys", ErrInvalidConfig)
	}
	if auth > 0 && c.ConfigFile != "" {
		return fmt.Errorf("%w: embedded NATS server: a config file (--nats-server-config) sets authorization itself; drop the token, user or nkeys", ErrInvalidConfig)
	}
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("%w: port %d out of range", ErrInvalidConfig, c.Port)
	}
	if c.TLSConfig == nil && (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return fmt.Errorf("%w: embedded NATS server TLS needs both a certificate and a key", ErrInvalidConfig)
	}
	return nil
}

// options builds the server options from the config.
func (e *Embedded) options() (*server.Options, error) {
	c := e.cfg
	if c.StoreDir == "" {
		return nil, fmt.Errorf("%w: embedded NATS server needs a StoreDir", ErrInvalidConfig)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	o := &server.Options{}
	if c.ConfigFile != "" {
		var err error
		if o, err = server.ProcessConfigFile(c.ConfigFile); err != nil {
			return nil, fmt.Errorf("%w: embedded NATS server config: %w", ErrInvalidConfig, err)
		}
	}
	o.ServerName = cmp.Or(o.ServerName, c.ServerName, "stepflow-embedded")
	o.Host = cmp.Or(c.Host, "127.0.0.1")
	o.Port = c.Port
	o.DontListen = c.DontListen
	o.JetStream = true
	o.StoreDir = c.StoreDir
	o.SyncInterval = c.Sync.Interval
	o.SyncAlways = c.Sync.Always
	o.JetStreamMaxMemory = cmp.Or(c.MaxMemory, o.JetStreamMaxMemory)
	o.JetStreamMaxStore = cmp.Or(c.MaxStore, o.JetStreamMaxStore)
	o.MaxPayload = cmp.Or(c.MaxPayload, o.MaxPayload)
	o.NoSigs = true // signals belong to main
	if c.ConfigFile == "" {
		o.Authorization = c.Token
		o.Username = c.User
		o.Password = c.Password
	}
	if o.Port == 0 {
		o.Port = server.RANDOM_PORT
	}
	for _, k := range c.NKeys {
		o.Nkeys = append(o.Nkeys, &server.NkeyUser{Nkey: k})
	}
	switch {
	case c.TLSConfig != nil:
		o.TLSConfig = c.TLSConfig
		o.TLS = true
		o.TLSVerify = c.TLSVerifyClients
	case c.TLSCertFile != "" || c.TLSKeyFile != "":
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{
			CertFile: c.TLSCertFile, KeyFile: c.TLSKeyFile, CaFile: c.TLSCAFile, Verify: c.TLSVerifyClients,
		})
		if err != nil {
			return nil, fmt.Errorf("%w: embedded NATS server TLS: %w", ErrInvalidConfig, err)
		}
		o.TLSConfig = tc
		o.TLS = true
		o.TLSVerify = c.TLSVerifyClients
	case c.TLSVerifyClients || c.TLSCAFile != "":
		return nil, fmt.Errorf("%w: TLS client verification needs TLSCertFile and TLSKeyFile", ErrInvalidConfig)
	}
	if o.TLS && o.TLSTimeout == 0 {
		o.TLSTimeout = 2 // seconds, the server default
	}
	return o, nil
}

// Start starts the server and waits until it accepts connections and
// JetStream is enabled, or until ctx ends or ReadyTimeout passes. Starting
// an already started server is a no-op.
func (e *Embedded) Start(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.srv != nil {
		return nil
	}
	opts, err := e.options()
	if err != nil {
		return err
	}
	s, err := e.launch(ctx, opts)
	if err != nil {
		return err
	}
	e.srv = s
	e.stop, e.done = make(chan struct{}), make(chan struct{})
	go e.resumeJetStream(e.stop, e.done)
	e.log.Info("embedded NATS server ready", zap.String("url", e.clientURL(s)), zap.String("store", opts.StoreDir),
		zap.Stringer("sync", e.cfg.Sync))
	return nil
}

// launch starts a server with opts and waits until it accepts
// connections with JetStream on.
func (e *Embedded) launch(ctx context.Context, opts *server.Options) (*server.Server, error) {
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("queue: embedded NATS server: %w", err)
	}
	debug := e.log.Core().Enabled(zapcore.DebugLevel)
	fatal := &fatalSignal{ch: make(chan struct{})}
	s.SetLoggerV2(serverLogger{l: e.log.Sugar(), fatal: fatal, storeErr: func(msg string) { e.storeErr.CompareAndSwap(nil, &msg) }}, debug, false, false)
	// Start is not blocking: it recovers JetStream state from StoreDir,
	// starts the accept loops on their own goroutines and returns.
	s.Start()
	deadline := time.Now().Add(cmp.Or(e.cfg.ReadyTimeout, 30*time.Second))
	for !s.ReadyForConnections(50 * time.Millisecond) {
		select {
		case <-fatal.ch:
			// The server gave up (a port in use, an unusable store
			// directory): fail now rather than at ReadyTimeout.
			s.Shutdown()
			s.WaitForShutdown()
			return nil, fmt.Errorf("queue: embedded NATS server: %s", fatal.msg)
		default:
		}
		if err := ctx.Err(); err != nil {
			s.Shutdown()
			s.WaitForShutdown()
			return nil, fmt.Errorf("queue: embedded NATS server not ready: %w", context.Cause(ctx))
		}
		if time.Now().After(deadline) {
			s.Shutdown()
			s.WaitForShutdown()
			return nil, fmt.Errorf("queue: embedded NATS server not ready after %s", cmp.Or(e.cfg.ReadyTimeout, 30*time.Second))
		}
	}
	if !s.JetStreamEnabled() {
		s.Shutdown()
		s.WaitForShutdown()
		return nil, errors.New("queue: embedded NATS server started without JetStream (see its log)")
	}
	return s, nil
}

// Shutdown stops the server and waits until it has stopped (JetStream
// state is flushed to StoreDir). It is idempotent and safe before Start.
func (e *Embedded) Shutdown() {
	e.mu.Lock()
	s, stop, done := e.srv, e.stop, e.done
	e.srv, e.stop, e.done = nil, nil, nil
	if stop != nil {
		close(stop) // under mu: a restart under way sees it (restart)
	}
	e.mu.Unlock()
	if s == nil {
		return
	}
	<-done
	s.Shutdown()
	s.WaitForShutdown()
}

// Health returns nil while the server's JetStream can store, and an
// error wrapping ErrJetStreamOff, saying why and what brings it back,
// while it cannot. When a write to its store fails for want of space,
// nats-server fails every later write to that stream (or turns JetStream
// off) until it is restarted; the embedded server restarts JetStream in
// place (recovering every stream from StoreDir) once the filesystem has
// ResumeFreeBytes free: the process needs no restart. Clients see
// JetStream errors meanwhile and retry.
func (e *Embedded) Health() error {
	if p := e.health.Load(); p != nil {
		return *p
	}
	return nil
}

// resumeJetStream watches the server for JetStream that cannot store and
// restarts the server once there is space, until stop is closed.
func (e *Embedded) resumeJetStream(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(cmp.Or(e.cfg.ResumeCheckEvery, time.Second))
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		e.mu.Lock()
		s := e.srv
		e.mu.Unlock()
		failed := e.storeErr.Load()
		if s == nil || (failed == nil && s.JetStreamEnabled()) {
			continue
		}
		why := "JetStream is off"
		if failed != nil {
			why = *failed
		}
		free, total, ferr := diskSpace(e.cfg.StoreDir)
		want := e.cfg.ResumeFreeBytes
		if want == 0 {
			want = min(DefaultResumeFreeBytes, total/10)
		}
		if errors.Is(ferr, errors.ErrUnsupported) {
			free, ferr = want, nil
		}
		if ferr != nil || free < want {
			err := fmt.Errorf("%w: its store %s ran out of space (%s free; it restarts on its own once %s are free): %s",
				ErrJetStreamOff, e.cfg.StoreDir, friendlyBytes(free), friendlyBytes(want), why)
			if ferr != nil {
				err = fmt.Errorf("%w (its store %s: %w): %s", ErrJetStreamOff, e.cfg.StoreDir, ferr, why)
			}
			if prev := e.health.Swap(&err); prev == nil {
				e.log.Error("JetStream cannot store: its store ran out of space; waiting for space", zap.Error(err))
			}
			continue
		}
		if err := e.restart(stop, s); err != nil {
			err = fmt.Errorf("%w: restarting the server failed: %w", ErrJetStreamOff, err)
			e.health.Store(&err)
			e.log.Error("cannot restart the NATS server; retrying", zap.Error(err))
			continue
		}
		e.health.Store(nil)
		e.log.Warn("NATS server restarted: its store has space again", zap.String("free", friendlyBytes(free)))
	}
}

// restart replaces s, whose JetStream cannot store, by a new server on
// the same port and store: a stream that failed a write keeps failing
// until it is loaded again, and turning JetStream off and on in a running
// server races with its API. Every stream is recovered from the store
// (memory streams come back empty); clients reconnect.
func (e *Embedded) restart(stop <-chan struct{}, s *server.Server) error {
	opts, err := e.options()
	if err != nil {
		return err
	}
	if addr, ok := s.Addr().(*net.TCPAddr); ok {
		opts.Port = addr.Port
	}
	s.Shutdown()
	s.WaitForShutdown()
	e.storeErr.Store(nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	ns, err := e.launch(ctx, opts)
	if err != nil {
		return err
	}
	e.mu.Lock()
	select {
	case <-stop: // Shutdown took the old server: this one is ours to stop
		e.mu.Unlock()
		ns.Shutdown()
		ns.WaitForShutdown()
		return errors.New("queue: embedded NATS server shut down")
	default:
		e.srv = ns
	}
	e.mu.Unlock()
	return nil
}

// friendlyBytes formats n as MiB with one decimal.
func friendlyBytes(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// ClientURL returns the URL clients connect to (nats://host:port, or
// tls://… with TLS), with the actual port when Port was 0. It is "" before
// Start and with DontListen.
func (e *Embedded) ClientURL() string {
	e.mu.Lock()
	s := e.srv
	e.mu.Unlock()
	if s == nil || e.cfg.DontListen {
		return ""
	}
	return e.clientURL(s)
}

func (e *Embedded) clientURL(s *server.Server) string {
	addr, ok := s.Addr().(*net.TCPAddr)
	if !ok {
		return s.ClientURL()
	}
	u, err := url.Parse(s.ClientURL())
	if err != nil {
		return s.ClientURL()
	}
	host := u.Hostname()
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1" // listening everywhere: loopback reaches it
	}
	u.Host = net.JoinHostPort(host, strconv.Itoa(addr.Port))
	return u.String()
}

// InProcessURL is the URL to pass to Connect with ConnectOptions.InProcess
// set: ClientURL with the nats:// scheme, since an in-process connection
// never uses TLS (a tls:// URL would make the client insist on it); "" with
// DontListen. Only logs show it: the connection bypasses TCP.
func (e *Embedded) InProcessURL() string {
	return strings.Replace(e.ClientURL(), "tls://", "nats://", 1)
}

// InProcessConn returns a connection to the server that bypasses TCP
// (nats.InProcessConnProvider).
func (e *Embedded) InProcessConn() (net.Conn, error) {
	e.mu.Lock()
	s := e.srv
	e.mu.Unlock()
	if s == nil {
		return nil, errors.New("queue: embedded NATS server not started")
	}
	return s.InProcessConn()
}

// Secured reports whether the server requires clients to authenticate.
func (e *Embedded) Secured() bool { return e.cfg.Secured() }

// Server returns the running nats-server, or nil; for diagnostics.
func (e *Embedded) Server() *server.Server {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.srv
}

// serverLogger adapts zap to the nats-server Logger interface. The
// server's notices (its start-up banner of some thirty lines, listening
// ports, JetStream recovery) are logged at debug level: at info level
// the coordinator logs one line about its start instead. Fatal messages
// are logged as errors and signalled to Start: the server gives up after
// them, and exiting the process is main's decision.
type serverLogger struct {
	l     *zap.SugaredLogger
	fatal *fatalSignal
	// storeErr receives the message of a critical store write error
	// (a full disk): nats-server keeps failing every later write to that
	// stream until JetStream is restarted.
	storeErr func(string)
}

// fatalSignal records the server's first fatal message.
type fatalSignal struct {
	once sync.Once
	ch   chan struct{}
	msg  string // written before ch is closed
}

func (s serverLogger) Noticef(format string, v ...any) { s.l.Debugf(format, v...) }
func (s serverLogger) Warnf(format string, v ...any)   { s.l.Warnf(format, v...) }
func (s serverLogger) Fatalf(format string, v ...any) {
	s.l.Errorf("fatal: "+format, v...)
	s.fatal.once.Do(func() {
		s.fatal.msg = fmt.Sprintf(format, v...)
		close(s.fatal.ch)
	})
}
func (s serverLogger) Errorf(format string, v ...any) {
	s.l.Errorf(format, v...)
	if s.storeErr != nil && (strings.Contains(format, "critical write error") || strings.Contains(format, "Critical write error") ||
		strings.Contains(format, "out of space") || strings.Contains(format, "out of resources")) {
		s.storeErr(fmt.Sprintf(format, v...))
	}
}
func (s serverLogger) Debugf(format string, v ...any) { s.l.Debugf(format, v...) }
func (s serverLogger) Tracef(format string, v ...any) { s.l.Debugf(format, v...) }
