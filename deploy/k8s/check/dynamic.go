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
	"slices"
	"strconv"
	"strings"
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
}

func (p *proc) stop(timeout time.Duration) error {
	if p == nil {
		return nil
	}
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

// getPaths GETs every path at base until it answers 200, and reports
// paths of expectedAfterMerge that answer 404 as pending.
//
// Probes and scrapers send no token, so a path must answer 200 without
// one. A path of expectedAfterMerge that answers 404, or 401 without the
// token and 404 with it (the coordinator's auth runs before routing), is
// not served by this branch's binary yet.
func (c *Checker) getPaths(who, bin, base, token string, paths []string, deadline time.Duration) error {
	var errs []error
	hc := &http.Client{Timeout: 5 * time.Second}
	for _, p := range paths {
		end := time.Now().Add(deadline)
		for {
			status, body, err := httpGet(hc, base+p, "")
			if err == nil && status == http.StatusOK {
				if slices.Contains(expectedAfterMerge[bin], p) {
					c.logf("     %s: GET %s is served now: remove it from expectedAfterMerge (expected.go)", who, p)
				}
				break
			}
			if err == nil && slices.Contains(expectedAfterMerge[bin], p) {
				withToken := status
				if status == http.StatusUnauthorized && token != "" {
					withToken, _, _ = httpGet(hc, base+p, token)
				}
				if withToken == http.StatusNotFound {
					c.logf("     %s: GET %s -> %d: not served yet, expected after merge (expected.go)", who, p, status)
					break
				}
			}
			// 404 and 401 are answers, not a server still starting
			// (readiness answers 503 until it is ready).
			definitive := err == nil && (status == http.StatusNotFound || status == http.StatusUnauthorized)
			if definitive || time.Now().After(end) {
				errs = append(errs, fmt.Errorf("%s: GET %s: status %d, %v %s", who, p, status, err, body))
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return errors.Join(errs...)
}

func httpGet(hc *http.Client, url, token string) (int, string, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(b), nil
}

// httpPaths lists the httpGet probe paths of a container and the
// Prometheus scrape path its pod announces for the same port.
func httpPaths(w workload, ct *corev1.Container, port int32) []string {
	var paths []string
	for _, p := range []*corev1.Probe{ct.StartupProbe, ct.LivenessProbe, ct.ReadinessProbe} {
		if p != nil && p.HTTPGet != nil && !slices.Contains(paths, p.HTTPGet.Path) {
			paths = append(paths, p.HTTPGet.Path)
		}
	}
	var ann map[string]string
	if w.Dep != nil {
		ann = w.Dep.Spec.Template.Annotations
	} else if w.STS != nil {
		ann = w.STS.Spec.Template.Annotations
	}
	if ann["prometheus.io/scrape"] == "true" && ann["prometheus.io/port"] == strconv.Itoa(int(port)) && ann["prometheus.io/path"] != "" {
		paths = append(paths, ann["prometheus.io/path"])
	}
	return paths
}

// checkDynamic starts NATS from the overlay's config, the coordinator and
// a worker with the manifests' args and environment (ports, hosts, data
// dir and NATS URL replaced by local ones; the replaced values are
// checked statically), GETs every probe path, and runs smokeFlow.
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

	// NATS, from the overlay's own config, on loopback and random ports,
	// without its cluster block (one process cannot be three servers).
	n := c.nats[o.Dir]
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
	ns.Start()
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	if !ns.ReadyForConnections(20 * time.Second) {
		return errors.New("nats-server from the overlay's config did not become ready")
	}
	natsURL := natsURLFor(ns)
	var natsPaths []string
	monitor, _ := containerPortByName(n.C, "monitor")
	natsPaths = httpPaths(workload{STS: n.STS}, n.C, monitor)
	if err := c.getPaths("StatefulSet/"+n.STS.Name, "nats-server", "http://"+ns.MonitorAddr().String(), "", natsPaths, 20*time.Second); err != nil {
		return err
	}

	// The coordinator.
	env := cloneMap(coord.Env)
	args := slices.Clone(coord.C.Args)
	args = override(coord, args, env, "nats-url", natsURL)
	args = override(coord, args, env, "port", "0")
	args = override(coord, args, env, "host", "127.0.0.1")
	args = override(coord, args, env, "data-dir", filepath.Join(tmp, "coordinator"))
	args = override(coord, args, env, "nats-replicas", "1")
	cp, out, err := start("coordinator", coord.Bin.Path, args, env, tmp)
	if err != nil {
		return err
	}
	defer func() {
		if serr := cp.stop(40 * time.Second); serr != nil && err == nil {
			err = serr
		}
	}()
	port, err := readyPort(out, cp)
	if err != nil {
		return err
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	token, _ := coord.setting("auth-token")
	cport, _ := containerPortByName(coord.C, "")
	if err := c.getPaths(coord.where(), "coordinator", base, token, httpPaths(coord.W, coord.C, cport), 30*time.Second); err != nil {
		return err
	}
	if err := c.checkBacklog(o, base, token); err != nil {
		return err
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
	env = cloneMap(worker.Env)
	args = slices.Clone(worker.C.Args)
	args = override(worker, args, env, "nats-url", natsURL)
	args = override(worker, args, env, "health-port", strconv.Itoa(hport))
	args = override(worker, args, env, "health-host", "127.0.0.1")
	args = override(worker, args, env, "config", cfg)
	wp, wout, err := start("worker", worker.Bin.Path, args, env, tmp)
	if err != nil {
		return err
	}
	go func() { _, _ = io.Copy(io.Discard, wout) }()
	defer func() {
		if serr := wp.stop(2 * time.Minute); serr != nil && err == nil {
			err = serr
		}
	}()
	wport, _ := containerPortByName(worker.C, "")
	if err := c.getPaths(worker.where(), "worker", "http://127.0.0.1:"+strconv.Itoa(hport), "", httpPaths(worker.W, worker.C, wport), 90*time.Second); err != nil {
		return fmt.Errorf("%w\nworker stderr:\n%s", err, tail(wp.stderr))
	}

	// A batch through both.
	return c.submit(base, token, tmp)
}

func cloneMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

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
	if slices.Contains(expectedAfterMerge["coordinator"], backlogPath) {
		withToken, _, _ := httpGet(hc, base+backlogPath, token)
		if withToken == http.StatusNotFound {
			c.logf("     coordinator: GET %s -> %d/%d: not served yet, expected after merge (expected.go)", backlogPath, status, withToken)
			return nil
		}
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
	if c.Log != nil && slices.Contains(expectedAfterMerge["coordinator"], backlogPath) {
		c.logf("     coordinator: GET %s is served now: remove it from expectedAfterMerge (expected.go)", backlogPath)
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

// sameSDK: the image installs the stepflow-py that `make venv` does.
func (c *Checker) sameSDK(d *dockerfile) error {
	mk, err := os.ReadFile(filepath.Join(c.Root, "Makefile"))
	if err != nil {
		return err
	}
	want := sdkRE.FindString(string(mk))
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

// submit runs smokeFlow through the coordinator with `stepflow submit`.
func (c *Checker) submit(base, token, tmp string) error {
	out := filepath.Join(tmp, "results.jsonl")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.Root, "bin", "stepflow"), "submit", "--url", base+"/api/v1",
		"--flow", filepath.Join(c.Root, smokeFlow), "--inputs", filepath.Join(c.Root, smokeInputs), "--output", out, "--quiet")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + tmp, "STEPFLOW_TOKEN=" + token}
	msg, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("stepflow submit %s: %w\n%s", smokeFlow, err, msg)
	}
	in, err := os.ReadFile(filepath.Join(c.Root, smokeInputs))
	if err != nil {
		return err
	}
	res, err := os.ReadFile(out)
	if err != nil {
		return err
	}
	want, got := bytes.Count(in, []byte("\n")), bytes.Count(res, []byte("\n"))
	if want != got || !bytes.Contains(res, []byte(`"outcome":"success"`)) {
		return fmt.Errorf("stepflow submit %s: %d results for %d items:\n%s", smokeFlow, got, want, res)
	}
	c.logf("     %s: %d items through the coordinator and a worker, all succeeded", smokeFlow, got)
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
