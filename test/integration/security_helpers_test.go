package integration

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"
)

// certs are PEM files of a throwaway CA, a server certificate it signed
// for 127.0.0.1 and localhost, and a client certificate it signed.
type certs struct {
	CA, ServerCert, ServerKey, ClientCert, ClientKey string
}

// newCerts generates certs in dir.
func newCerts(t *testing.T, dir string) certs {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "stepflow test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	caCert, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)

	c := certs{CA: filepath.Join(dir, "ca.pem")}
	writePEM(t, c.CA, "CERTIFICATE", caDER)
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage) (string, string) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: name},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			DNSNames:     []string{"localhost"},
			IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		require.NoError(t, err)
		kder, err := x509.MarshalECPrivateKey(key)
		require.NoError(t, err)
		cf, kf := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
		writePEM(t, cf, "CERTIFICATE", der)
		writePEM(t, kf, "EC PRIVATE KEY", kder)
		return cf, kf
	}
	c.ServerCert, c.ServerKey = leaf("server", 2, x509.ExtKeyUsageServerAuth)
	c.ClientCert, c.ClientKey = leaf("client", 3, x509.ExtKeyUsageClientAuth)
	return c
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
}

// nkeyUser is a user nkey: its public key (for the server) and a file
// holding its seed (for --nats-nkey).
type nkeyUser struct {
	Public, SeedFile string
}

func newNKeyUser(t *testing.T, dir, name string) nkeyUser {
	t.Helper()
	kp, err := nkeys.CreateUser()
	require.NoError(t, err)
	pub, err := kp.PublicKey()
	require.NoError(t, err)
	seed, err := kp.Seed()
	require.NoError(t, err)
	f := filepath.Join(dir, name+".nk")
	require.NoError(t, os.WriteFile(f, seed, 0o600))
	return nkeyUser{Public: pub, SeedFile: f}
}

// operatorSetup writes a nats-server config in operator (decentralised
// JWT) mode: an operator, a system account, an account with JetStream,
// and returns the config file and a creds file (user JWT + seed) for each
// of users.
func operatorSetup(t *testing.T, dir string, users ...string) (string, map[string]string) {
	t.Helper()
	okp, err := nkeys.CreateOperator()
	require.NoError(t, err)
	opub, err := okp.PublicKey()
	require.NoError(t, err)
	account := func(name string, js bool) (nkeys.KeyPair, string, string) {
		akp, err := nkeys.CreateAccount()
		require.NoError(t, err)
		apub, err := akp.PublicKey()
		require.NoError(t, err)
		ac := jwt.NewAccountClaims(apub)
		ac.Name = name
		if js {
			ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
		}
		ajwt, err := ac.Encode(okp)
		require.NoError(t, err)
		return akp, apub, ajwt
	}
	_, syspub, sysjwt := account("SYS", false)
	akp, apub, ajwt := account("STEPFLOW", true)
	oc := jwt.NewOperatorClaims(opub)
	oc.Name = "stepflow-test"
	oc.SystemAccount = syspub
	ojwt, err := oc.Encode(okp)
	require.NoError(t, err)

	creds := map[string]string{}
	for _, u := range users {
		ukp, err := nkeys.CreateUser()
		require.NoError(t, err)
		upub, err := ukp.PublicKey()
		require.NoError(t, err)
		seed, err := ukp.Seed()
		require.NoError(t, err)
		uc := jwt.NewUserClaims(upub)
		uc.Name = u
		ujwt, err := uc.Encode(akp)
		require.NoError(t, err)
		data, err := jwt.FormatUserConfig(ujwt, seed)
		require.NoError(t, err)
		creds[u] = filepath.Join(dir, u+".creds")
		require.NoError(t, os.WriteFile(creds[u], data, 0o600))
	}
	conf := filepath.Join(dir, "operator.conf")
	require.NoError(t, os.WriteFile(conf, fmt.Appendf(nil, `operator: %q
system_account: %s
resolver: MEMORY
resolver_preload: {
  %s: %q
  %s: %q
}
`, ojwt, syspub, syspub, sysjwt, apub, ajwt), 0o600))
	return conf, creds
}

// coordProc is a coordinator process started by startCoordinator.
type coordProc struct {
	cmd     *exec.Cmd
	Port    int
	NATSURL string
	TLS     bool
	logs    *lockedBuffer
}

// lockedBuffer collects a process's stderr (and copies it to the test
// log) for later inspection.
type lockedBuffer struct {
	t  *testing.T
	mu sync.Mutex
	b  strings.Builder
}

func (w *lockedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.b.Write(p)
	w.mu.Unlock()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (w *lockedBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// startCoordinator starts the coordinator binary with args (after
// --port 0 --nats-port 0 --data-dir) and env added to the test's
// environment, reads its ready line, and stops it at cleanup.
func startCoordinator(t *testing.T, env []string, args ...string) *coordProc {
	t.Helper()
	all := append([]string{"--port", "0", "--nats-port", "0", "--host", "127.0.0.1", "--data-dir", t.TempDir()}, args...)
	cmd := exec.Command(coordinatorBin, all...)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), env...)
	p := &coordProc{cmd: cmd, logs: &lockedBuffer{t: t}}
	cmd.Stderr = p.logs
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { stopProcess(cmd) })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err, "the coordinator exited before its ready line; see the log")
	var ready struct {
		Port    int    `json:"port"`
		NATSURL string `json:"natsUrl"`
		TLS     bool   `json:"tls"`
	}
	require.NoError(t, json.Unmarshal([]byte(line), &ready), line)
	p.Port, p.NATSURL, p.TLS = ready.Port, ready.NATSURL, ready.TLS
	return p
}

// URL is the coordinator's REST API base URL.
func (p *coordProc) URL() string {
	scheme := "http"
	if p.TLS {
		scheme = "https"
	}
	return fmt.Sprintf("%s://127.0.0.1:%d", scheme, p.Port)
}

// startWorker starts a worker process with args and env added to the
// test's environment; it is stopped (SIGTERM) at cleanup. Its stderr is
// collected.
func startWorker(t *testing.T, env []string, args ...string) *lockedBuffer {
	t.Helper()
	_, logs := startWorkerCmd(t, env, args...)
	return logs
}

// startWorkerCmd is startWorker that also returns the process (stopping
// it twice is harmless).
func startWorkerCmd(t *testing.T, env []string, args ...string) (*exec.Cmd, *lockedBuffer) {
	t.Helper()
	cmd := exec.Command(workerBin, append([]string{"--log-level", "warn"}, args...)...)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), env...)
	logs := &lockedBuffer{t: t}
	cmd.Stderr = logs
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { stopProcess(cmd) })
	return cmd, logs
}

// stopProcess sends SIGTERM and waits, killing the process after 60s.
// A process already stopped is left alone.
func stopProcess(cmd *exec.Cmd) {
	if cmd.ProcessState != nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}
