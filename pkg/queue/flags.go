package queue

// Command-line flags and environment variables of NATS authentication and
// TLS, registered by one helper so that the worker, the coordinator and
// `stepflow serve` spell them identically.

// FlagSet is what the Register functions need of a flag set: the standard
// library's *flag.FlagSet and pflag's *pflag.FlagSet (cobra) both have it.
type FlagSet interface {
	StringVar(p *string, name, value, usage string)
}

// Environment variables of the NATS client flags (RegisterConnectFlags).
const (
	EnvNATSURL         = "STEPFLOW_NATS_URL"
	EnvNATSUser        = "STEPFLOW_NATS_USER"
	EnvNATSPassword    = "STEPFLOW_NATS_PASSWORD"
	EnvNATSToken       = "STEPFLOW_NATS_TOKEN"
	EnvNATSNKey        = "STEPFLOW_NATS_NKEY"
	EnvNATSCreds       = "STEPFLOW_NATS_CREDS"
	EnvNATSTLSCA       = "STEPFLOW_NATS_TLS_CA"
	EnvNATSTLSCert     = "STEPFLOW_NATS_TLS_CERT"
	EnvNATSTLSKey      = "STEPFLOW_NATS_TLS_KEY"
	EnvNATSInboxPrefix = "STEPFLOW_NATS_INBOX_PREFIX"
	// EnvNATSInboxKey turns on a worker's inbox key (ConnectOptions.InboxKey).
	EnvNATSInboxKey = "STEPFLOW_NATS_INBOX_KEY"
)

// Environment variables of the embedded server's flags
// (RegisterEmbeddedFlags).
const (
	EnvNATSServerConfig   = "STEPFLOW_NATS_SERVER_CONFIG"
	EnvNATSServerToken    = "STEPFLOW_NATS_SERVER_TOKEN"
	EnvNATSServerUser     = "STEPFLOW_NATS_SERVER_USER"
	EnvNATSServerPassword = "STEPFLOW_NATS_SERVER_PASSWORD"
	EnvNATSServerTLSCert  = "STEPFLOW_NATS_SERVER_TLS_CERT"
	EnvNATSServerTLSKey   = "STEPFLOW_NATS_SERVER_TLS_KEY"
)

// RegisterConnectFlags registers the NATS client authentication and TLS
// flags on fs, writing into o, with the environment variables above
// (read through getenv) as defaults:
//
//	--nats-user, --nats-password   user and password
//	--nats-token                   token
//	--nats-nkey                    nkey seed file
//	--nats-creds                   credentials file (user JWT + seed)
//	--nats-tls-ca                  CA of the server certificate (requires TLS)
//	--nats-tls-cert, --nats-tls-key client certificate (mutual TLS)
//	--nats-inbox-prefix            the subjects replies come on (default: the
//	                               process's own, CoordinatorInboxPrefix or
//	                               WorkerInboxPrefix)
//
// Secrets are better passed in the environment than as flags, which every
// user of the machine sees in the process list.
func RegisterConnectFlags(fs FlagSet, o *ConnectOptions, getenv func(string) string) {
	fs.StringVar(&o.User, "nats-user", getenv(EnvNATSUser), "NATS user (env "+EnvNATSUser+")")
	secretVar(fs, &o.Password, "nats-password", getenv(EnvNATSPassword), "NATS password; prefer the env variable (env "+EnvNATSPassword+")")
	secretVar(fs, &o.Token, "nats-token", getenv(EnvNATSToken), "NATS token; prefer the env variable (env "+EnvNATSToken+")")
	fs.StringVar(&o.NKeySeedFile, "nats-nkey", getenv(EnvNATSNKey), "NATS nkey seed file (env "+EnvNATSNKey+")")
	fs.StringVar(&o.CredsFile, "nats-creds", getenv(EnvNATSCreds), "NATS credentials file: user JWT and nkey seed (env "+EnvNATSCreds+")")
	fs.StringVar(&o.TLSCAFile, "nats-tls-ca", getenv(EnvNATSTLSCA), "CA of the NATS server certificate; requires TLS (env "+EnvNATSTLSCA+")")
	fs.StringVar(&o.TLSCertFile, "nats-tls-cert", getenv(EnvNATSTLSCert), "client certificate for mutual TLS with NATS (env "+EnvNATSTLSCert+")")
	fs.StringVar(&o.TLSKeyFile, "nats-tls-key", getenv(EnvNATSTLSKey), "client key for mutual TLS with NATS (env "+EnvNATSTLSKey+")")
	fs.StringVar(&o.InboxPrefix, "nats-inbox-prefix", getenv(EnvNATSInboxPrefix), "prefix of the subjects NATS replies to this process on; the NATS user must be allowed to subscribe under it (default "+CoordinatorInboxPrefix+" for a coordinator, "+WorkerInboxPrefix+" for a worker; env "+EnvNATSInboxPrefix+")")
}

// RegisterEmbeddedFlags registers the flags that make an embedded NATS
// server require authentication and TLS, writing into c, with the
// environment variables above as defaults:
//
//	--nats-server-config           a nats-server configuration file: users with
//	                               permissions, nkeys, accounts, operator mode, TLS
//	--nats-server-token            require this token
//	--nats-server-user, --nats-server-password  require this user and password
//	--nats-server-tls-cert, --nats-server-tls-key  serve TLS with this certificate
func RegisterEmbeddedFlags(fs FlagSet, c *EmbeddedConfig, getenv func(string) string) {
	fs.StringVar(&c.ConfigFile, "nats-server-config", getenv(EnvNATSServerConfig), "nats-server configuration file of the embedded server: authorization, accounts, TLS (env "+EnvNATSServerConfig+")")
	secretVar(fs, &c.Token, "nats-server-token", getenv(EnvNATSServerToken), "the embedded NATS server requires this token; prefer the env variable (env "+EnvNATSServerToken+")")
	fs.StringVar(&c.User, "nats-server-user", getenv(EnvNATSServerUser), "the embedded NATS server requires this user (env "+EnvNATSServerUser+")")
	secretVar(fs, &c.Password, "nats-server-password", getenv(EnvNATSServerPassword), "password of --nats-server-user; prefer the env variable (env "+EnvNATSServerPassword+")")
	fs.StringVar(&c.TLSCertFile, "nats-server-tls-cert", getenv(EnvNATSServerTLSCert), "the embedded NATS server serves TLS with this certificate (env "+EnvNATSServerTLSCert+")")
	fs.StringVar(&c.TLSKeyFile, "nats-server-tls-key", getenv(EnvNATSServerTLSKey), "key of --nats-server-tls-cert (env "+EnvNATSServerTLSKey+")")
}

// secretVar registers a string flag whose value comes from the
// environment unless the flag is given, without making that value the
// flag's documented default: flag sets print defaults in --help and in
// usage errors, which end up in terminals and logs.
func secretVar(fs FlagSet, p *string, name, envValue, usage string) {
	fs.StringVar(p, name, "", usage)
	*p = envValue
}

// Secured reports whether the embedded server requires authentication.
func (c EmbeddedConfig) Secured() bool {
	return c.ConfigFile != "" || c.Token != "" || c.User != "" || len(c.NKeys) > 0
}

// ClientAuth returns o with the embedded server's simple credentials
// (Token, or User and Password) filled in when o has no credentials of its
// own: what a process that starts the server and connects to it (the
// coordinator, `stepflow serve`) logs in with. With a ConfigFile, o must
// name its own credentials.
func (c EmbeddedConfig) ClientAuth(o ConnectOptions) ConnectOptions {
	if o.HasAuth() {
		return o
	}
	switch {
	case c.Token != "":
		o.Token = c.Token
	case c.User != "":
		o.User, o.Password = c.User, c.Password
	}
	return o
}

// HasAuth reports whether o names credentials of any kind.
func (o ConnectOptions) HasAuth() bool {
	return o.Token != "" || o.User != "" || o.Password != "" || o.NKeySeedFile != "" || o.CredsFile != ""
}

// WithoutTLS returns o without its TLS settings: an in-process connection
// to an embedded server needs none (the server accepts it in plain text
// even when it requires TLS from TCP clients).
func (o ConnectOptions) WithoutTLS() ConnectOptions {
	o.TLSCAFile, o.TLSCertFile, o.TLSKeyFile = "", "", ""
	return o
}
