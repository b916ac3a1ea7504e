package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	corev1 "k8s.io/api/core/v1"
)

// The batch the dynamic check runs through the coordinator and a worker
// configured as the manifests configure them: the example whose
// component server the worker image carries.
const (
	smokeFlow   = "examples/data-pipeline/data-pipeline.yaml"
	smokeInputs = "examples/data-pipeline/items.jsonl"
)

// imageVenv is the image's virtual environment and localVenv the one
// `make venv` creates with the same stepflow-py (checked below): a path
// under the first runs here under the second.
const (
	imageVenv = "/opt/venv"
	localVenv = ".venv-sdk-http"
)

// proc is a started binary.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	done   chan error

	stopOnce sync.Once
	stopErr  error
}

// stop sends SIGTERM and waits up to timeout for a clean exit; an exit
// before stop is an error. Later calls return the first one's result.
func (p *proc) stop(timeout time.Duration) error {
	if p == nil {
		return nil
	}
	p.stopOnce.Do(func() { p.stopErr = p.terminate(timeout) })
	return p.stopErr
}

func (p *proc) terminate(timeout time.Duration) error {
	select {
	case err := <-p.done:
		return fmt.Errorf("%s exited early: %v\n%s", p.name, err, tail(p.stderr))
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		if err != nil {
			return fmt.Errorf("%s did not exit cleanly on SIGTERM: %w\n%s", p.name, err, tail(p.stderr))
		}
		return nil
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not exit within %s of SIGTERM\n%s", p.name, timeout, tail(p.stderr))
	}
}

func tail(b *bytes.Buffer) string {
	s := b.String()
	if len(s) > 3000 {
		s = "…" + s[len(s)-3000:]
	}
	return s
}

// start runs bin with args and exactly env (plus PATH and HOME), the way
// the container would.
func start(name, bin string, args []string, env map[string]string, home string) (*proc, io.Reader, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	p := &proc{name: name, cmd: cmd, stderr: &bytes.Buffer{}, done: make(chan error, 1)}
	cmd.Stderr = p.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { p.done <- cmd.Wait() }()
	return p, out, nil
}

// override sets flag to value for the test run: in args if the manifest
// passes it there, else in the environment if it sets it there, else as
// a new arg. The manifest's values for these are checked statically.
func override(oc *ours, args []string, env map[string]string, flag, value string) []string {
	for _, a := range oc.Args {
		if a.Name == flag {
			if a.Eq {
				args[a.Index] = "--" + flag + "=" + value
			} else {
				args[a.Index+1] = value
			}
			return args
		}
	}
	if e := oc.Bin.FlagEnv[flag]; e != "" {
		if _, ok := env[e]; ok {
			env[e] = value
			return args
		}
	}
	return append(args, "--"+flag+"="+value)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// endpoint is a path that something in the cluster GETs from a
// container: a probe of the kubelet, or a Prometheus scrape.
type endpoint struct {
	Path string
	By   []string // who GETs it
	Auth bool     // with the API token (a scrape job with authorization)
}

func (e endpoint) by() string { return strings.Join(e.By, ", ") }

// endpoints lists what the cluster GETs from container ct of w, whose
// binary serves HTTP on port: its httpGet probes (no token), the scrape
// of annotation-driven Prometheus jobs (no token), and the targets of the
// jobs of scrapeConfigsFile (the token if the job has authorization).
func (c *Checker) endpoints(o *overlay, w workload, ct *corev1.Container, port int32) []endpoint {
	var eps []endpoint
	add := func(path, by string, auth bool) {
		for i := range eps {
			if eps[i].Path == path && eps[i].Auth == auth {
				eps[i].By = append(eps[i].By, by)
				return
			}
		}
		eps = append(eps, endpoint{Path: path, By: []string{by}, Auth: auth})
	}
	for _, k := range []string{"startupProbe", "livenessProbe", "readinessProbe"} {
		if p := probes(ct)[k]; p != nil && p.HTTPGet != nil {
			add(p.HTTPGet.Path, "the kubelet's "+k, false)
		}
	}
	if path, ok := annotationScrape(w, port); ok {
		add(path, "annotation-driven scrape jobs (prometheus.io/scrape)", false)
	}
	for i := range c.scrapeJobs {
		job := &c.scrapeJobs[i]
		ts, _ := job.targets(o)
		for _, t := range ts {
			if t.C == ct {
				add(t.Path, job.where(), job.Authorization != nil)
			}
		}
	}
	return eps
}

// checkEndpoints GETs every endpoint at base: a path GET without a token
// must answer 200 without one; a path scraped with the token must answer
// 401 without it and 200 with it (token: the coordinator's, from the
// manifests' Secret). Connection errors and 503 (readiness until ready)
// are retried until deadline; any other status is an answer.
func (c *Checker) checkEndpoints(who, base, token string, eps []endpoint, deadline time.Duration) error {
	var errs []error
	hc := &http.Client{Timeout: 5 * time.Second}
	for _, ep := range eps {
		if !ep.Auth {
			status, body, err := getUntil(hc, base+ep.Path, "", http.StatusOK, deadline)
			if status != http.StatusOK {
				hint := ""
				if status == http.StatusUnauthorized && !strings.Contains(ep.by(), "kubelet") {
					hint = fmt.Sprintf("; the path needs the API token: scrape it with a job that sends it (authorization: credentials_file, as in %s)", scrapeConfigsFile)
				}
				errs = append(errs, fmt.Errorf("%s: GET %s: status %d, want 200 without a token (%s sends none)%s: %v %s", who, ep.Path, status, ep.by(), hint, err, body))
			}
			continue
		}
		status, body, err := getUntil(hc, base+ep.Path, "", http.StatusUnauthorized, deadline)
		if status != http.StatusUnauthorized {
			errs = append(errs, fmt.Errorf("%s: GET %s without a token: status %d, want 401 (%s sends the API token, so the path is expected to require it): %v %s", who, ep.Path, status, ep.by(), err, body))
			continue
		}
		status, body, err = getUntil(hc, base+ep.Path, token, http.StatusOK, deadline)
		if status != http.StatusOK {
			errs = append(errs, fmt.Errorf("%s: GET %s with the token of the manifests' Secret: status %d, want 200 (%s): %v %s", who, ep.Path, status, ep.by(), err, body))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	var open, auth []string
	for _, ep := range eps {
		if ep.Auth {
			auth = append(auth, ep.Path)
		} else {
			open = append(open, ep.Path)
		}
	}
	msg := fmt.Sprintf("     %s: GET %s: 200 without a token", who, strings.Join(open, " "))
	if len(auth) > 0 {
		msg += fmt.Sprintf("; GET %s: 401 without, 200 with the token", strings.Join(auth, " "))
	}
	c.logf("%s", msg)
	return nil
}

// getUntil GETs url until it answers want, another status than 503, or
// deadline passes.
func getUntil(hc *http.Client, url, token string, want int, deadline time.Duration) (int, string, error) {
	end := time.Now().Add(deadline)
	for {
		status, body, err := httpGet(hc, url, token)
		if err == nil && (status == want || status != http.StatusServiceUnavailable) {
			return status, body, nil
		}
		if time.Now().After(end) {
			return status, body, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func httpGet(hc *http.Client, url, token string) (int, string, error) {
	status, body, _, err := httpGetHeader(hc, url, token)
	return status, body, err
}

func httpGetHeader(hc *http.Client, url, token string) (int, string, http.Header, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, "", nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(b), resp.Header, nil
}

// coordProc is a started coordinator, as pod Pod of the Deployment.
type coordProc struct {
	*proc
	Pod  pod
	ID   string // its --id as the manifests set it ("" = the default)
	Base string // http://127.0.0.1:<port>
	Who  string
	Run  *ours // its container with the args and environment it runs with
}

// startCoordinator starts the coordinator as pod i of its Deployment
// would run: the manifests' args and environment with the pod's
// downward-API values (name <deployment>-<i>, IP 127.0.0.1), and the
// port, host, data dir, NATS URL and advertised URL replaced by local
// ones (their manifest values are checked statically). Coordinators
// started with the same dataDir share it, as the replicas of
// components/coordinator-ha share their ReadWriteMany volume.
func (c *Checker) startCoordinator(o *overlay, coord *ours, i int, natsURL, dataDir, home string) (*coordProc, error) {
	p := pod{Name: fmt.Sprintf("%s-%d", coord.W.Name, i), IP: "127.0.0.1"}
	env, errs := resolveEnv(o, coord.W, coord.C, p)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	args := expandArgs(coord.C.Args, env)
	id := ""
	for _, a := range mustParseArgs(args) {
		if a.Name == "id" {
			id = a.Value
		}
	}
	if e := coord.Bin.FlagEnv["id"]; id == "" && e != "" {
		id = env[e]
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	args = override(coord, args, env, "nats-url", natsURL)
	args = override(coord, args, env, "port", strconv.Itoa(port))
	args = override(coord, args, env, "host", "127.0.0.1")
	args = override(coord, args, env, "data-dir", dataDir)
	args = override(coord, args, env, "nats-replicas", "1")
	if u, _ := coord.setting("advertise-url"); u != "" {
		args = override(coord, args, env, "advertise-url", base)
	}
	pr, out, err := start("coordinator "+p.Name, coord.Bin.Path, args, env, home)
	if err != nil {
		return nil, err
	}
	got, err := readyPort(out, pr)
	if err != nil {
		_ = pr.stop(5 * time.Second)
		return nil, err
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	if got != port {
		_ = pr.stop(40 * time.Second)
		return nil, fmt.Errorf("coordinator %s: listens on %d, was given --port %d", p.Name, got, port)
	}
	run := *coord
	run.Args, run.Env = mustParseArgs(args), env
	return &coordProc{proc: pr, Pod: p, ID: id, Base: base, Who: fmt.Sprintf("%s (pod %s)", coord.where(), p.Name), Run: &run}, nil
}

func mustParseArgs(args []string) []arg {
	a, _ := parseArgs(args) // parsed already by the static checks
	return a
}

// checkDynamic starts NATS from the overlay's config, the coordinator
// (two sharing one data dir, when the Deployment has more than one
// replica) and a worker with the manifests' args and environment (ports,
// hosts, data dir and NATS URL replaced by local ones; the replaced values
// are checked statically), GETs every probe and scrape path, and runs
// smokeFlow. The Secret keys NATS reads its users' passwords from get
// generated passwords, which the coordinator and the worker get through
// the same keys: they log in as the manifests say, and the batch runs
// under the config's permissions, without a single violation. Then the
// worker's credentials must be refused deleting the items stream. With
// two coordinators, the batch goes through the standby (which forwards to
// the leader), and the standby must take over when the leader stops.
func (c *Checker) checkDynamic(o *overlay, cs []*ours) (err error) {
	var coord, worker *ours
	for _, oc := range cs {
		switch oc.Bin.Name {
		case "coordinator":
			coord = oc
		case "worker":
			worker = oc
		}
	}
	if coord == nil || worker == nil {
		return errors.New("the overlay runs no coordinator or no worker")
	}
	tmp, err := os.MkdirTemp("", "k8s-check-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	// NATS, from the overlay's own config with generated passwords in its
	// Secrets, on loopback and random ports, without its cluster block
	// (one process cannot be three servers).
	secrets, secretKeys, err := generateNATSSecrets(c.nats[o.Dir])
	if err != nil {
		return err
	}
	o.Secrets = secrets
	n := *c.nats[o.Dir]
	confDir := filepath.Join(tmp, "nats-config")
	if err := os.Mkdir(confDir, 0o700); err != nil {
		return err
	}
	if err := n.load(o, confDir); err != nil {
		return err
	}
	opts := n.Opts.Clone()
	opts.Host, opts.Port = "127.0.0.1", server.RANDOM_PORT
	opts.HTTPHost, opts.HTTPPort = "127.0.0.1", server.RANDOM_PORT
	opts.StoreDir = filepath.Join(tmp, "nats")
	opts.PidFile = filepath.Join(tmp, "nats.pid")
	opts.Cluster = server.ClusterOpts{}
	opts.Routes = nil
	opts.NoSigs, opts.NoLog = true, true
	ns, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("nats-server with %s: %w", n.ConfPath, err)
	}
	nlog := &natsLog{}
	ns.SetLogger(nlog, false, false)
	ns.Start()
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	if !ns.ReadyForConnections(20 * time.Second) {
		return errors.New("nats-server from the overlay's config did not become ready")
	}
	natsURL := natsURLFor(ns)
	monitor, _ := containerPortByName(n.C, "monitor")
	natsWL := n.workload()
	if err := c.checkEndpoints(natsWL.Ref, "http://"+ns.MonitorAddr().String(), "", c.endpoints(o, natsWL, n.C, monitor), 20*time.Second); err != nil {
		return err
	}
	var users []string
	for _, u := range opts.Users {
		users = append(users, u.Username)
	}
	c.logf("     %s: users %v of %s, passwords generated for Secret keys %v", natsWL.Ref, users, n.ConfPath, secretKeys)

	// The coordinator(s): with replicas, two sharing one data dir, the
	// first leading.
	replicas := 1
	if r := coord.W.Dep.Spec.Replicas; r != nil {
		replicas = int(*r)
	}
	token, _ := coord.setting("auth-token")
	cport, _, _ := coord.metricsPort()
	ceps := c.endpoints(o, coord.W, coord.C, cport)
	dataDir := filepath.Join(tmp, "coordinator")
	var coords []*coordProc
	defer func() {
		for i := len(coords) - 1; i >= 0; i-- {
			if serr := coords[i].stop(40 * time.Second); serr != nil && err == nil {
				err = serr
			}
		}
	}()
	for i := range min(replicas, 2) {
		cp, err := c.startCoordinator(o, coord, i, natsURL, dataDir, tmp)
		if err != nil {
			return err
		}
		coords = append(coords, cp)
		if err := c.checkEndpoints(cp.Who, cp.Base, token, ceps, 30*time.Second); err != nil {
			return err
		}
	}
	leader, entry := coords[0], coords[len(coords)-1]
	if err := c.checkBacklog(o, leader.Base, token); err != nil {
		return err
	}
	if entry != leader {
		if err := c.checkForwarding(entry, leader, token); err != nil {
			return err
		}
	}

	// A worker.
	cfg, err := c.localConfig(o, worker, tmp)
	if err != nil {
		return err
	}
	hport, err := freePort()
	if err != nil {
		return err
	}
	tport, err := freePort()
	if err != nil {
		return err
	}
	if err := localNATSPlugins(o, cfg, natsURL, tport); err != nil {
		return err
	}
	wenv, errs := resolveEnv(o, worker.W, worker.C, pod{Name: worker.W.Name + "-0", IP: "127.0.0.1"})
	if err := errors.Join(errs...); err != nil {
		return err
	}
	args := expandArgs(worker.C.Args, wenv)
	args = override(worker, args, wenv, "nats-url", natsURL)
	args = override(worker, args, wenv, "health-port", strconv.Itoa(hport))
	args = override(worker, args, wenv, "health-host", "127.0.0.1")
	args = override(worker, args, wenv, "config", cfg)
	wrun := *worker
	wrun.Args, wrun.Env = mustParseArgs(args), wenv
	wp, wout, err := start("worker", worker.Bin.Path, args, wenv, tmp)
	if err != nil {
		return err
	}
	go func() { _, _ = io.Copy(io.Discard, wout) }()
	defer func() {
		if serr := wp.stop(2 * time.Minute); serr != nil && err == nil {
			err = serr
		}
	}()
	wport, _, _ := worker.metricsPort()
	if err := c.checkEndpoints(worker.where(), "http://127.0.0.1:"+strconv.Itoa(hport), "", c.endpoints(o, worker.W, worker.C, wport), 90*time.Second); err != nil {
		return fmt.Errorf("%w\nworker stderr:\n%s", err, tail(wp.stderr))
	}

	// A batch through the last coordinator (the standby, if any).
	via := "the coordinator"
	if entry != leader {
		via = entry.Pod.Name + " (standby, forwarding to " + leader.Pod.Name + ")"
	}
	if err := c.submit(entry.Base, via, token, tmp); err != nil {
		if v := nlog.take(); len(v) > 0 {
			err = fmt.Errorf("%w\nthe NATS server refused:\n%s", err, strings.Join(v, "\n"))
		}
		return err
	}
	if err := c.runSDKWorkers(o, natsURL, tport, entry.Base, token, tmp); err != nil {
		if v := nlog.take(); len(v) > 0 {
			err = fmt.Errorf("%w\nthe NATS server refused:\n%s", err, strings.Join(v, "\n"))
		}
		return err
	}
	if err := wp.stop(2 * time.Minute); err != nil {
		return err
	}
	if v := nlog.take(); len(v) > 0 {
		return fmt.Errorf("the NATS server refused the coordinator or the worker during the batch or the worker's stop (the permissions of %s lack a subject they use, or a password is wrong):\n%s", n.ConfPath, strings.Join(v, "\n"))
	}
	if err := c.checkWorkerCredentials(&wrun, leader.Run, natsURL, n.Opts.AuthCallout != nil, nlog); err != nil {
		return err
	}
	if entry != leader {
		return c.checkTakeover(leader, entry, token)
	}
	return nil
}

// checkWorkerCredentials: the worker's NATS user, logged in with the
// worker's password (and a key of its own, through the auth callout), is
// refused deleting the items stream.
func (c *Checker) checkWorkerCredentials(worker, coord *ours, natsURL string, callout bool, nlog *natsLog) error {
	user, _ := worker.setting("nats-user")
	pw, _ := worker.setting("nats-password")
	admin, _ := coord.setting("nats-user")
	apw, _ := coord.setting("nats-password")
	if err := checkWorkerDenied(natsURL, worker.where(), user, pw, callout, admin, apw); err != nil {
		return err
	}
	nlog.take()
	c.logf("     the batch ran without a permissions violation; the worker's NATS user %q is refused %s", user, deleteItemsSubj)
	return nil
}

// checkForwarding: the standby forwards API requests to the leader,
// which it finds by the URL the leader advertises (--advertise-url).
func (c *Checker) checkForwarding(standby, leader *coordProc, token string) error {
	hc := &http.Client{Timeout: 5 * time.Second}
	status, body, h, err := httpGetHeader(hc, standby.Base+backlogPath, token)
	if err != nil || status != http.StatusOK {
		return fmt.Errorf("%s (standby): GET %s: status %d, %v %s: it does not reach the leader at its advertised URL", standby.Who, backlogPath, status, err, body)
	}
	to := h.Get(forwardedHeader)
	if to == "" || (leader.ID != "" && to != leader.ID) {
		return fmt.Errorf("%s (standby): GET %s was answered with %s %q, want the leader's id %q", standby.Who, backlogPath, forwardedHeader, to, leader.ID)
	}
	c.logf("     %s: standby, forwards the API to %s", standby.Pod.Name, to)
	return nil
}

// checkTakeover stops the leader; the standby must answer the API
// itself within the lease TTL (the leader releases the lease on a
// graceful stop, so it takes over at once).
func (c *Checker) checkTakeover(leader, standby *coordProc, token string) error {
	if err := leader.stop(40 * time.Second); err != nil {
		return err
	}
	hc := &http.Client{Timeout: 5 * time.Second}
	end := time.Now().Add(3 * leaseTTL)
	for {
		status, body, h, err := httpGetHeader(hc, standby.Base+backlogPath, token)
		if err == nil && status == http.StatusOK && h.Get(forwardedHeader) == "" {
			c.logf("     %s: leads after %s stopped", standby.Pod.Name, leader.Pod.Name)
			return nil
		}
		if time.Now().After(end) {
			return fmt.Errorf("%s: did not take over within %s of the leader's stop: GET %s: status %d, %s %q, %v %s\n%s", standby.Who, 3*leaseTTL, backlogPath, status, forwardedHeader, h.Get(forwardedHeader), err, body, tail(standby.stderr))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// forwardedHeader names the leader on a response a standby forwarded
// (pkg/coordinator/leader.go); leaseTTL is the leadership lease's TTL
// (queue.DefaultLeaseTTL).
const (
	forwardedHeader = "Stepflow-Forwarded-To"
	leaseTTL        = 10 * time.Second
)

// containerPortByName returns the named port, or the first one for "".
func containerPortByName(c *corev1.Container, name string) (int32, bool) {
	for _, p := range c.Ports {
		if name == "" || p.Name == name {
			return p.ContainerPort, true
		}
	}
	return 0, false
}

// readyPort reads the coordinator's ready line {"port":N,"natsUrl":…}.
func readyPort(out io.Reader, p *proc) (int, error) {
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- s
	}()
	select {
	case s := <-line:
		var ready struct {
			Port int `json:"port"`
		}
		if err := json.Unmarshal([]byte(s), &ready); err != nil || ready.Port == 0 {
			return 0, fmt.Errorf("coordinator: no ready line (%q): %v\n%s", s, err, tail(p.stderr))
		}
		return ready.Port, nil
	case <-time.After(60 * time.Second):
		return 0, fmt.Errorf("coordinator: no ready line after 60s\n%s", tail(p.stderr))
	}
}

// checkBacklog: the backlog endpoint KEDA polls needs the token and
// answers the JSON the ScaledObject reads.
func (c *Checker) checkBacklog(o *overlay, base, token string) error {
	field := backlogField
	for _, so := range all[ScaledObject](o) {
		for _, t := range so.Spec.Triggers {
			if v := t.Metadata["valueLocation"]; v != "" {
				field = v
			}
		}
	}
	hc := &http.Client{Timeout: 5 * time.Second}
	status, _, err := httpGet(hc, base+backlogPath, "")
	if err != nil {
		return err
	}
	if status != http.StatusUnauthorized {
		return fmt.Errorf("coordinator: GET %s without the token: status %d, want 401", backlogPath, status)
	}
	status, body, err := httpGet(hc, base+backlogPath, token)
	if err != nil {
		return err
	}
	var v map[string]any
	if status != http.StatusOK || json.Unmarshal([]byte(body), &v) != nil {
		return fmt.Errorf("coordinator: GET %s: status %d, body %q, want 200 and a JSON object", backlogPath, status, body)
	}
	if _, ok := v[field].(float64); !ok {
		return fmt.Errorf("coordinator: GET %s: %q has no number %q (the ScaledObject's valueLocation)", backlogPath, body, field)
	}
	return nil
}

var absPathRE = regexp.MustCompile(`(?:^|[\s"'\[,])(/[A-Za-z0-9_.@-]+(?:/[A-Za-z0-9_.@-]+)+)`)

// localConfig writes the worker's stepflow-config.yml (from its
// ConfigMap) with the image's paths mapped to this checkout: each COPY of
// the worker's Dockerfile maps its destination to its source, and the
// image's venv to `make venv`'s, whose stepflow-py must be the image's.
// A path of the config that no COPY provides is an error: the image
// would not have it.
func (c *Checker) localConfig(o *overlay, w *ours, tmp string) (string, error) {
	cfgPath, _ := w.setting("config")
	content, err := configMapFile(o, w, cfgPath)
	if err != nil {
		return "", err
	}
	d := c.dockerfiles[w.C.Image]
	mapping := map[string]string{}
	for dst, src := range d.copies() {
		mapping[strings.TrimSuffix(dst, "/")] = filepath.Join(c.Root, src)
	}
	if strings.Contains(content, imageVenv) {
		if err := c.sameSDK(d); err != nil {
			return "", err
		}
		mapping[imageVenv] = filepath.Join(c.Root, localVenv)
	}
	var errs []error
	for _, m := range absPathRE.FindAllStringSubmatch(stripComments(content), -1) {
		p := m[1]
		mapped := ""
		for dst, src := range mapping {
			if p == dst || strings.HasPrefix(p, dst+"/") {
				mapped = src + strings.TrimPrefix(p, dst)
			}
		}
		if mapped == "" {
			errs = append(errs, fmt.Errorf("%s: the worker config %s names %s, which no COPY of %s provides", w.where(), cfgPath, p, d.Path))
			continue
		}
		if _, err := os.Stat(mapped); err != nil {
			errs = append(errs, fmt.Errorf("%s: the worker config's %s is %s here: %w (run `make venv` for %s)", w.where(), p, mapped, err, localVenv))
			continue
		}
		content = strings.ReplaceAll(content, p, mapped)
	}
	if err := errors.Join(errs...); err != nil {
		return "", err
	}
	f := filepath.Join(tmp, "stepflow-config.yml")
	return f, os.WriteFile(f, []byte(content), 0o600)
}

var sdkRE = regexp.MustCompile(`stepflow-py\[http\]==[0-9.]+`)

// makeSDKRE finds the version `make venv` installs over HTTP.
var makeSDKRE = regexp.MustCompile(`(?m)^SDK_HTTP_VERSION\s*:=\s*([0-9.]+)\s*$`)

// sameSDK: the image installs the stepflow-py that `make venv` does.
func (c *Checker) sameSDK(d *dockerfile) error {
	mk, err := os.ReadFile(filepath.Join(c.Root, "Makefile"))
	if err != nil {
		return err
	}
	want := sdkRE.FindString(string(mk))
	if m := makeSDKRE.FindSubmatch(mk); m != nil {
		want = "stepflow-py[http]==" + string(m[1])
	}
	for _, s := range d.Stages {
		for _, in := range s.Instrs {
			if in.Cmd == "RUN" && sdkRE.FindString(in.Args) != "" {
				if got := sdkRE.FindString(in.Args); got != want {
					return fmt.Errorf("%s:%d: installs %s, `make venv` %s: the check runs the image's components with the latter", d.Path, in.Line, got, want)
				}
				return nil
			}
		}
	}
	return fmt.Errorf("%s: installs no stepflow-py[http] into %s", d.Path, imageVenv)
}

// submit runs smokeFlow through the coordinator at base (described by
// via) with `stepflow submit`.
func (c *Checker) submit(base, via, token, tmp string) error {
	return c.submitFlow(base, via+" and a worker", token, tmp, filepath.Join(c.Root, smokeFlow), filepath.Join(c.Root, smokeInputs))
}

// submitFlow runs flow on inputs through the coordinator at base: every
// item succeeds.
func (c *Checker) submitFlow(base, via, token, tmp, flow, inputs string) error {
	out := filepath.Join(tmp, "results.jsonl")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.Root, "bin", "stepflow"), "submit", "--url", base+"/api/v1",
		"--flow", flow, "--inputs", inputs, "--output", out, "--quiet")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + tmp, "STEPFLOW_TOKEN=" + token}
	msg, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("stepflow submit %s: %w\n%s", flow, err, msg)
	}
	in, err := os.ReadFile(inputs)
	if err != nil {
		return err
	}
	res, err := os.ReadFile(out)
	if err != nil {
		return err
	}
	want, got := bytes.Count(in, []byte("\n")), bytes.Count(res, []byte("\n"))
	if want != got || !bytes.Contains(res, []byte(`"outcome":"success"`)) {
		return fmt.Errorf("stepflow submit %s: %d results for %d items:\n%s", flow, got, want, res)
	}
	name, err := filepath.Rel(c.Root, flow)
	if err != nil || strings.HasPrefix(name, "..") {
		name = filepath.Base(flow)
	}
	c.logf("     %s: %d items through %s, all succeeded", name, got, via)
	return nil
}

// stripComments drops YAML comments (a # at a line's start or after a
// blank), which may mention paths of the container.
func stripComments(y string) string {
	lines := strings.Split(y, "\n")
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "#") {
			lines[i] = ""
		} else if j := strings.Index(l, " #"); j >= 0 {
			lines[i] = l[:j]
		}
	}
	return strings.Join(lines, "\n")
}
