package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// SDK component workers (components/sdk-nats): a Deployment running the
// unmodified stepflow-py 0.13 NATS worker in an image of ours whose
// ENTRYPOINT is python. They are checked against the SDK as our binaries
// are against their flags: the image installs the SDK version `make
// venv` tests (.venv-sdk-grpc13), every variable the manifest sets is one
// the SDK reads (found in the venv's stepflow_py sources), the NATS URL
// names the NATS Service and a user of auth.conf whose password comes
// from the Secret key the NATS container reads it from, the stream and
// consumer are those of the stepflow workers' nats plugin, and the KEDA
// trigger watches that consumer with a lag threshold of the SDK's
// concurrency. They serve no port: no probes are required of them.

// sdkVenv is `make venv`'s 0.13 venv, whose sources list the variables.
const sdkVenv = ".venv-sdk-grpc13"

var (
	sdkNATSRE       = regexp.MustCompile(`stepflow-py\[nats\]==[0-9.]+`)
	makeSDKGRPC13RE = regexp.MustCompile(`(?m)^SDK_GRPC13_VERSION\s*:=\s*([0-9.]+)\s*$`)
	pyEnvRE         = regexp.MustCompile(`os\.(?:environ\.get|getenv)\(\s*"([A-Z0-9_]+)"|os\.environ\[\s*"([A-Z0-9_]+)"\s*\]`)
)

// isSDKImage reports whether the ENTRYPOINT runs python (an SDK worker).
func isSDKImage(ep []string) bool {
	return strings.HasPrefix(path.Base(ep[0]), "python")
}

// checkSDKImage: the image installs the stepflow-py[nats] of `make venv`
// and its ENTRYPOINT runs a script of the repository (COPY'd into the
// image) that starts the SDK's worker main.
func (c *Checker) checkSDKImage(d *dockerfile) error {
	mk, err := os.ReadFile(filepath.Join(c.Root, "Makefile"))
	if err != nil {
		return err
	}
	m := makeSDKGRPC13RE.FindSubmatch(mk)
	if m == nil {
		return errors.New("Makefile: no SDK_GRPC13_VERSION")
	}
	want := "stepflow-py[nats]==" + string(m[1])
	var errs []error
	found := false
	for _, s := range d.Stages {
		for _, in := range s.Instrs {
			if got := sdkNATSRE.FindString(in.Args); in.Cmd == "RUN" && got != "" {
				found = true
				if got != want {
					errs = append(errs, fmt.Errorf("%s:%d: installs %s, `make venv` %s (.venv-sdk-grpc13, which the tests and this check use)", d.Path, in.Line, got, want))
				}
			}
		}
	}
	if !found {
		errs = append(errs, fmt.Errorf("%s: installs no %s", d.Path, want))
	}
	ep, _ := d.entrypoint()
	script := ep[len(ep)-1]
	src := ""
	for dst, from := range d.copies() {
		if script == dst || strings.HasPrefix(script, strings.TrimSuffix(dst, "/")+"/") {
			src = filepath.Join(c.Root, from, strings.TrimPrefix(script, strings.TrimSuffix(dst, "/")))
		}
	}
	if src == "" {
		return errors.Join(append(errs, fmt.Errorf("%s: ENTRYPOINT runs %s, which no COPY of the final stage provides", d.Path, script))...)
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("%s: ENTRYPOINT's %s: %w", d.Path, script, err))...)
	}
	if !strings.Contains(string(b), "stepflow_py.worker.main") {
		errs = append(errs, fmt.Errorf("%s: ENTRYPOINT's %s (%s) does not run the SDK's worker main (stepflow_py.worker.main), which reads the transport from the environment", d.Path, script, src))
	}
	return errors.Join(errs...)
}

// sdkEnvVars are the variables the SDK of the venv reads.
func (c *Checker) sdkEnvVars() (map[string]bool, error) {
	files, err := filepath.Glob(filepath.Join(c.Root, sdkVenv, "lib", "python*", "site-packages", "stepflow_py", "*", "*.py"))
	if err != nil {
		return nil, err
	}
	top, _ := filepath.Glob(filepath.Join(c.Root, sdkVenv, "lib", "python*", "site-packages", "stepflow_py", "*.py"))
	files = append(files, top...)
	if len(files) == 0 {
		return nil, fmt.Errorf("%s has no stepflow_py sources: run `make venv`", sdkVenv)
	}
	vars := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		for _, m := range pyEnvRE.FindAllStringSubmatch(string(b), -1) {
			vars[m[1]+m[2]] = true
		}
	}
	return vars, nil
}

// sdkContainer is an SDK worker container of the overlay.
type sdkContainer struct {
	W   workload
	C   *corev1.Container
	Env map[string]string
}

func (s *sdkContainer) where() string { return s.W.Ref + " container " + s.C.Name }

// checkSDKContainer: security context, no command override, and only
// variables the SDK reads (or $(VAR) references of the others).
func (c *Checker) checkSDKContainer(w workload, ct *corev1.Container, env map[string]string, d *dockerfile) (*sdkContainer, error) {
	s := &sdkContainer{W: w, C: ct, Env: env}
	var errs []error
	uid, _, _ := d.user()
	sc := w.Pod.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		errs = append(errs, fmt.Errorf("%s: set securityContext.runAsNonRoot: true", w.Ref))
	} else if sc.RunAsUser != nil && *sc.RunAsUser != int64(uid) {
		errs = append(errs, fmt.Errorf("%s: runAsUser %d differs from the image's USER %d (%s)", w.Ref, *sc.RunAsUser, uid, d.Path))
	}
	if len(ct.Command) > 0 || len(ct.Args) > 0 {
		errs = append(errs, fmt.Errorf("%s: do not override the image's ENTRYPOINT or pass args; the SDK worker is configured by its environment", s.where()))
	}
	vars, err := c.sdkEnvVars()
	if err != nil {
		return s, err
	}
	for name := range env {
		if !vars[name] && !referenced(ct, name) {
			errs = append(errs, fmt.Errorf("%s: environment variable %s is not read by stepflow-py (%s reads %v) nor used as $(%s)", s.where(), name, sdkVenv, keys(vars), name))
		}
	}
	if env["STEPFLOW_TRANSPORT"] != "nats" {
		errs = append(errs, fmt.Errorf("%s: STEPFLOW_TRANSPORT=%q: the SDK worker fetches tasks from JetStream with nats", s.where(), env["STEPFLOW_TRANSPORT"]))
	}
	for _, v := range []string{"STEPFLOW_NATS_URL", "STEPFLOW_NATS_STREAM", "STEPFLOW_NATS_CONSUMER", "STEPFLOW_BLOB_URL", "STEPFLOW_MAX_CONCURRENT"} {
		if env[v] == "" {
			errs = append(errs, fmt.Errorf("%s: %s is unset (the SDK's default would not match the deployment)", s.where(), v))
		}
	}
	return s, errors.Join(errs...)
}

// natsPluginOf returns the first `type: nats` plugin with `listen` of the
// worker's config, as a map of its fields; nil without one.
func natsPluginOf(o *overlay, worker *ours) (map[string]any, error) {
	cfgPath, _ := worker.setting("config")
	content, err := configMapFile(o, worker, cfgPath)
	if err != nil {
		return nil, err
	}
	var cfg struct {
		Plugins map[string]map[string]any `json:"plugins"`
	}
	if err := yaml.Unmarshal([]byte(content), &cfg); err != nil {
		return nil, fmt.Errorf("%s: %s: %w", worker.where(), cfgPath, err)
	}
	for _, p := range cfg.Plugins {
		if p["type"] == "nats" && p["listen"] != nil {
			return p, nil
		}
	}
	return nil, nil
}

// checkSDKWorkers: the SDK workers and the stepflow workers' nats plugin
// agree (stream, consumer, a NATS user each, the plugin's port reachable
// through STEPFLOW_BLOB_URL's Service), and the SDK workers log in as a
// user of auth.conf with the password the NATS container reads.
func (c *Checker) checkSDKWorkers(o *overlay, sdks []*sdkContainer, cs []*ours) error {
	if len(sdks) == 0 {
		return nil
	}
	var worker *ours
	for _, oc := range cs {
		if oc.Bin.Name == "worker" {
			worker = oc
		}
	}
	if worker == nil {
		return errors.New("SDK workers, but no stepflow worker publishes their tasks")
	}
	plugin, err := natsPluginOf(o, worker)
	if err != nil {
		return err
	}
	if plugin == nil {
		return fmt.Errorf("%s: its config has no `type: nats` plugin with `listen`: nothing publishes the SDK workers' tasks or takes their completions", worker.where())
	}
	var errs []error
	n := c.nats[o.Dir]
	for _, s := range sdks {
		if s.Env["STEPFLOW_NATS_STREAM"] != fmt.Sprint(plugin["stream"]) || s.Env["STEPFLOW_NATS_CONSUMER"] != fmt.Sprint(plugin["consumer"]) {
			errs = append(errs, fmt.Errorf("%s: stream %q consumer %q, the worker's nats plugin publishes to stream %v for consumer %v", s.where(), s.Env["STEPFLOW_NATS_STREAM"], s.Env["STEPFLOW_NATS_CONSUMER"], plugin["stream"], plugin["consumer"]))
		}
		errs = append(errs, checkSDKNATSURL(o, s, n))
		// STEPFLOW_BLOB_URL: a Service selecting the stepflow workers, on
		// the port the plugin listens on.
		host, port, _ := net.SplitHostPort(s.Env["STEPFLOW_BLOB_URL"])
		_, lport, _ := net.SplitHostPort(fmt.Sprint(plugin["listen"]))
		svc := get[corev1.Service](o, "Service", host)
		ok := false
		if svc != nil && labelsMatch(svc.Spec.Selector, worker.W.Labels) {
			for _, p := range svc.Spec.Ports {
				if cp, found := containerPort(worker.C, p.TargetPort); found && strconv.Itoa(int(p.Port)) == port && strconv.Itoa(int(cp)) == lport {
					ok = true
				}
			}
		}
		if !ok {
			errs = append(errs, fmt.Errorf("%s: STEPFLOW_BLOB_URL=%q is not a Service of the stepflow workers whose port reaches the nats plugin's listen port %s (a containerPort of %s)", s.where(), s.Env["STEPFLOW_BLOB_URL"], lport, worker.where()))
		}
	}
	adv := fmt.Sprint(plugin["advertise"])
	if !strings.Contains(adv, "${POD_IP}") {
		errs = append(errs, fmt.Errorf("%s: the nats plugin advertises %q: each task must name this pod (advertise: \"${POD_IP}\" with POD_IP from the downward API)", worker.where(), adv))
	} else if ip := worker.Env["POD_IP"]; ip != podIPPlaceholder {
		errs = append(errs, fmt.Errorf("%s: POD_IP is not status.podIP from the downward API", worker.where()))
	}
	return errors.Join(errs...)
}

// checkSDKNATSURL: nats://<user>:$(VAR)@<nats Service>:<port>, with VAR
// from the Secret key the NATS container reads <user>'s password from.
func checkSDKNATSURL(o *overlay, s *sdkContainer, n *natsServer) error {
	raw := ""
	for _, e := range s.C.Env {
		if e.Name == "STEPFLOW_NATS_URL" {
			raw = e.Value
		}
	}
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "nats" || u.User == nil {
		return fmt.Errorf("%s: STEPFLOW_NATS_URL=%q is not nats://<user>:$(PASSWORD_VAR)@<service>:<port> (NATS requires a user)", s.where(), raw)
	}
	var errs []error
	svc := get[corev1.Service](o, "Service", u.Hostname())
	if svc == nil {
		errs = append(errs, fmt.Errorf("%s: STEPFLOW_NATS_URL names host %q, not a Service of the overlay", s.where(), u.Hostname()))
	}
	if n == nil {
		return errors.Join(errs...)
	}
	name := u.User.Username()
	var user bool
	var pw string
	for _, x := range n.Opts.Users {
		if x.Username == name {
			user, pw = true, x.Password
		}
	}
	if !user {
		return errors.Join(append(errs, fmt.Errorf("%s: NATS user %q is not a user of StatefulSet/%s %s", s.where(), name, n.STS.Name, n.ConfPath))...)
	}
	p, _ := u.User.Password()
	v := strings.TrimSuffix(strings.TrimPrefix(p, "$("), ")")
	ref := secretKeyRef(s.C, v)
	if ref == nil || !strings.HasPrefix(p, "$(") {
		return errors.Join(append(errs, fmt.Errorf("%s: the password in STEPFLOW_NATS_URL must be $(VAR) with VAR from a Secret (valueFrom.secretKeyRef)", s.where()))...)
	}
	for _, e := range n.C.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && n.Env[e.Name] == pw &&
			(e.ValueFrom.SecretKeyRef.Name != ref.Name || e.ValueFrom.SecretKeyRef.Key != ref.Key) {
			errs = append(errs, fmt.Errorf("%s: user %q's password from Secret %s key %s, the NATS container's from %s key %s", s.where(), name, ref.Name, ref.Key, e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key))
		}
	}
	return errors.Join(errs...)
}

// sdkAccount is the NATS account of user sdk (where stream PYTHON_TASKS
// is): "$G", the global account, unless the config puts it in one.
func sdkAccount(n *natsServer) string {
	if n == nil || n.Opts == nil {
		return "$G"
	}
	for _, u := range n.Opts.Users {
		if u.Username == "sdk" && u.Account != nil {
			return u.Account.Name
		}
	}
	return "$G"
}

// checkSDKScaledObject: a nats-jetstream trigger on the SDK workers'
// stream and consumer, read from the NATS monitoring port of a Service
// in our namespace, with the lag threshold the SDK's concurrency.
func (c *Checker) checkSDKScaledObject(o *overlay, so *ScaledObject, s *sdkContainer) error {
	var errs []error
	for i, t := range so.Spec.Triggers {
		where := fmt.Sprintf("ScaledObject/%s trigger %d", so.Name, i)
		if t.Type != "nats-jetstream" {
			errs = append(errs, fmt.Errorf("%s: type %q; the SDK workers' backlog is their consumer's lag (nats-jetstream)", where, t.Type))
			continue
		}
		md := t.Metadata
		if md["stream"] != s.Env["STEPFLOW_NATS_STREAM"] || md["consumer"] != s.Env["STEPFLOW_NATS_CONSUMER"] {
			errs = append(errs, fmt.Errorf("%s: stream %q consumer %q, %s fetches from stream %q consumer %q", where, md["stream"], md["consumer"], s.where(), s.Env["STEPFLOW_NATS_STREAM"], s.Env["STEPFLOW_NATS_CONSUMER"]))
		}
		if md["lagThreshold"] != s.Env["STEPFLOW_MAX_CONCURRENT"] {
			errs = append(errs, fmt.Errorf("%s: lagThreshold %q differs from %s STEPFLOW_MAX_CONCURRENT %q: one pod per that many waiting tasks keeps every slot busy", where, md["lagThreshold"], s.where(), s.Env["STEPFLOW_MAX_CONCURRENT"]))
		}
		if want := sdkAccount(c.nats[o.Dir]); md["account"] != want {
			errs = append(errs, fmt.Errorf("%s: account %q; the NATS users (and stream %s) are in account %q", where, md["account"], md["stream"], want))
		}
		host, port, _ := net.SplitHostPort(md["natsServerMonitoringEndpoint"])
		parts := strings.Split(host, ".")
		if len(parts) < 3 || parts[2] != "svc" {
			errs = append(errs, fmt.Errorf("%s: natsServerMonitoringEndpoint %q is not <service>.<namespace>.svc:<port> (KEDA runs in its own namespace)", where, md["natsServerMonitoringEndpoint"]))
			continue
		}
		svc := get[corev1.Service](o, "Service", parts[0])
		n := c.nats[o.Dir]
		switch {
		case svc == nil:
			errs = append(errs, fmt.Errorf("%s: names Service %q, which is not in the overlay", where, parts[0]))
		case parts[1] != svc.Namespace:
			errs = append(errs, fmt.Errorf("%s: names namespace %q, the Service is in %q", where, parts[1], svc.Namespace))
		case n == nil || !labelsMatch(svc.Spec.Selector, n.STS.Spec.Template.Labels):
			errs = append(errs, fmt.Errorf("%s: Service %s does not select the NATS pods", where, svc.Name))
		default:
			ok := false
			for _, p := range svc.Spec.Ports {
				if cp, found := containerPort(n.C, p.TargetPort); found && strconv.Itoa(int(p.Port)) == port && cp == int32(n.Opts.HTTPPort) {
					ok = true
				}
			}
			if !ok {
				errs = append(errs, fmt.Errorf("%s: port %s of Service %s does not reach the NATS monitoring port %d (http_port of %s)", where, port, svc.Name, n.Opts.HTTPPort, n.ConfPath))
			}
		}
	}
	return errors.Join(errs...)
}

// configReferenced reports whether the worker's config uses the variable
// as ${name} (config substitution: POD_IP for a nats plugin's advertise).
func configReferenced(o *overlay, oc *ours, name string) bool {
	cfgPath, _ := oc.setting("config")
	if cfgPath == "" {
		return false
	}
	content, err := configMapFile(o, oc, cfgPath)
	if err != nil {
		return false
	}
	content = stripComments(content)
	return strings.Contains(content, "${"+name+"}") || strings.Contains(content, "${"+name+":-")
}

var (
	natsServiceURLRE = regexp.MustCompile(`nats://([^@\s"']+@)?([a-z0-9-]+):(\d+)`)
	listenRE         = regexp.MustCompile(`(?m)^(\s+listen:\s*)\S+\s*$`)
)

// localNATSPlugins rewrites the local copy of the worker's config for the
// dynamic run: a nats:// URL naming a Service of the overlay reaches the
// check's NATS server (credentials kept), and a nats plugin listens on
// 127.0.0.1:port (advertising the pod IP, 127.0.0.1 here).
func localNATSPlugins(o *overlay, cfgFile, natsURL string, port int) error {
	b, err := os.ReadFile(cfgFile)
	if err != nil {
		return err
	}
	local := strings.TrimPrefix(natsURL, "nats://")
	content := natsServiceURLRE.ReplaceAllStringFunc(string(b), func(m string) string {
		sm := natsServiceURLRE.FindStringSubmatch(m)
		if get[corev1.Service](o, "Service", sm[2]) == nil {
			return m
		}
		return "nats://" + sm[1] + local
	})
	content = listenRE.ReplaceAllString(content, fmt.Sprintf(`${1}"127.0.0.1:%d"`, port))
	return os.WriteFile(cfgFile, []byte(content), 0o600)
}

// sdkFlow calls the SDK's own echo component (registered by
// stepflow_py.worker.main, which every SDK worker image runs) through the
// stepflow workers' nats plugin at /python.
const sdkFlow = `schema: https://stepflow.org/schemas/v1/flow.json
steps:
  - id: e
    component: /python/echo
    input: { x: { $input: x } }
output: { $step: e }
`

// runSDKWorkers starts each SDK worker container as the manifest
// configures it (its script from the repository, `make venv`'s 0.13
// venv, the manifest's environment with the generated NATS password),
// pointed at the check's NATS and at the worker's nats plugin on
// 127.0.0.1:port, and runs a batch through it: the sdk user's
// permissions suffice to take the tasks, the worker's to publish them.
func (c *Checker) runSDKWorkers(o *overlay, natsURL string, port int, base, token, tmp string) error {
	for _, s := range o.SDKs {
		d := c.sdkImages[s.C.Image]
		ep, _ := d.entrypoint()
		script := ep[len(ep)-1]
		for dst, from := range d.copies() {
			if script == dst || strings.HasPrefix(script, strings.TrimSuffix(dst, "/")+"/") {
				script = filepath.Join(c.Root, from, strings.TrimPrefix(script, strings.TrimSuffix(dst, "/")))
			}
		}
		env, errs := resolveEnv(o, s.W, s.C, pod{Name: s.W.Name + "-0", IP: "127.0.0.1"})
		if err := errors.Join(errs...); err != nil {
			return err
		}
		u, err := url.Parse(env["STEPFLOW_NATS_URL"])
		if err != nil {
			return fmt.Errorf("%s: STEPFLOW_NATS_URL: %w", s.where(), err)
		}
		u.Host = strings.TrimPrefix(natsURL, "nats://")
		env["STEPFLOW_NATS_URL"] = u.String()
		env["STEPFLOW_BLOB_URL"] = fmt.Sprintf("127.0.0.1:%d", port)
		py := filepath.Join(c.Root, sdkVenv, "bin", "python")
		p, out, err := start(s.W.Name, py, []string{script}, env, tmp)
		if err != nil {
			return err
		}
		go func() { _, _ = io.Copy(io.Discard, out) }()
		flow := filepath.Join(tmp, "sdk-flow.yaml")
		inputs := filepath.Join(tmp, "sdk-items.jsonl")
		if err := os.WriteFile(flow, []byte(sdkFlow), 0o600); err != nil {
			return err
		}
		if err := os.WriteFile(inputs, []byte("{\"x\": 1}\n{\"x\": 2}\n{\"x\": 3}\n"), 0o600); err != nil {
			return err
		}
		err = c.submitFlow(base, "the coordinator, a worker's nats plugin and "+s.where(), token, tmp, flow, inputs)
		// The SDK leaves on SIGTERM between tasks; its exit status is
		// not this check's business.
		_ = p.cmd.Process.Kill()
		<-p.done
		if err != nil {
			return fmt.Errorf("%w\n%s stderr:\n%s", err, s.W.Name, tail(p.stderr))
		}
	}
	return nil
}
