package main

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/nats-io/nkeys"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// overlay is one rendered kustomization.
type overlay struct {
	Dir  string
	Objs []object
	// Secrets replaces the values of Secret keys (name -> key -> value)
	// wherever a container reads them: the passwords the dynamic check
	// generates, as the Secret would hold them.
	Secrets map[string]map[string]string
	// SDKs are the SDK worker containers (sdk.go), found by checkStatic.
	SDKs []*sdkContainer
}

func get[T any](o *overlay, kind, name string) *T {
	for _, x := range o.Objs {
		if x.Kind == kind && x.Name == name {
			if t, ok := x.Typed.(*T); ok {
				return t
			}
		}
	}
	return nil
}

func all[T any](o *overlay) []*T {
	var out []*T
	for _, x := range o.Objs {
		if t, ok := x.Typed.(*T); ok {
			out = append(out, t)
		}
	}
	return out
}

// workload is a Deployment or StatefulSet's pod template.
type workload struct {
	Ref    string // "Deployment/worker"
	Kind   string
	Name   string
	Labels map[string]string
	Pod    *corev1.PodSpec
	Dep    *appsv1.Deployment
	STS    *appsv1.StatefulSet
}

func workloads(o *overlay) []workload {
	var ws []workload
	for _, d := range all[appsv1.Deployment](o) {
		ws = append(ws, workload{Ref: "Deployment/" + d.Name, Kind: "Deployment", Name: d.Name, Labels: d.Spec.Template.Labels, Pod: &d.Spec.Template.Spec, Dep: d})
	}
	for _, s := range all[appsv1.StatefulSet](o) {
		ws = append(ws, workload{Ref: "StatefulSet/" + s.Name, Kind: "StatefulSet", Name: s.Name, Labels: s.Spec.Template.Labels, Pod: &s.Spec.Template.Spec, STS: s})
	}
	return ws
}

// arg is one flag of a container's args: --name=value or --name value.
type arg struct {
	Name, Value string
	Index       int // in args
	Eq          bool
}

// parseArgs reads Go-flag style args (every flag of ours takes a value).
func parseArgs(args []string) ([]arg, error) {
	var out []arg
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			return nil, fmt.Errorf("argument %q is not a flag (our commands take no positional arguments)", a)
		}
		name := strings.TrimLeft(a, "-")
		if n, v, ok := strings.Cut(name, "="); ok {
			out = append(out, arg{Name: n, Value: v, Index: i, Eq: true})
			continue
		}
		if i+1 >= len(args) {
			return nil, fmt.Errorf("flag %q has no value", a)
		}
		out = append(out, arg{Name: name, Value: args[i+1], Index: i})
		i++
	}
	return out, nil
}

// ours is a container that runs one of our binaries, with its settings
// resolved the way the binary resolves them: the flag, else its
// environment variable, else the default --help prints.
type ours struct {
	W    workload
	C    *corev1.Container
	Bin  *binary
	Args []arg
	Env  map[string]string // every variable the container gets, resolved
}

func (c *ours) where() string { return c.W.Ref + " container " + c.C.Name }

// setting returns the effective value of flag and where it comes from.
func (c *ours) setting(flag string) (string, string) {
	for i := len(c.Args) - 1; i >= 0; i-- {
		if c.Args[i].Name == flag {
			return c.Args[i].Value, "--" + flag
		}
	}
	if e := c.Bin.FlagEnv[flag]; e != "" {
		if v, ok := c.Env[e]; ok {
			return v, e
		}
	}
	return c.Bin.Flags[flag], "the default of --" + flag
}

func (c *ours) intSetting(flag string) (int, string, error) {
	v, src := c.setting(flag)
	if v == "" {
		return 0, src, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, src, fmt.Errorf("%s: %s=%q is not a number", c.where(), src, v)
	}
	return n, src, nil
}

// pod is one pod of a workload, as the downward API describes it to
// the container's fieldRef variables.
type pod struct {
	Name string // metadata.name
	IP   string // status.podIP
}

// podIPPlaceholder stands for status.podIP in the static checks: a
// documentation address (RFC 5737) that nothing else in a manifest
// produces, so a setting that contains it came from the pod's IP.
const podIPPlaceholder = "192.0.2.10"

// staticPod stands for any pod of w in the static checks.
func staticPod(w workload) pod { return pod{Name: w.Name + "-0", IP: podIPPlaceholder} }

// resolveEnv collects the container's environment: envFrom ConfigMaps
// and Secrets, then env entries (values with the kubelet's $(VAR)
// expansion, ConfigMap and Secret keys, and the downward API's fieldRefs
// of pod p). A reference to an object the overlay does not render is an
// error unless the Secret is in externalSecrets.
func resolveEnv(o *overlay, w workload, c *corev1.Container, p pod) (map[string]string, []error) {
	env := map[string]string{}
	var errs []error
	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			cm := get[corev1.ConfigMap](o, "ConfigMap", ef.ConfigMapRef.Name)
			if cm == nil {
				errs = append(errs, fmt.Errorf("%s container %s: envFrom ConfigMap %q is not in the overlay", w.Ref, c.Name, ef.ConfigMapRef.Name))
				continue
			}
			for k, v := range cm.Data {
				env[ef.Prefix+k] = v
			}
		case ef.SecretRef != nil:
			s := get[corev1.Secret](o, "Secret", ef.SecretRef.Name)
			if s == nil {
				errs = append(errs, fmt.Errorf("%s container %s: envFrom Secret %q is not in the overlay", w.Ref, c.Name, ef.SecretRef.Name))
				continue
			}
			for k, v := range secretData(s) {
				env[ef.Prefix+k] = v
			}
		}
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = expandVars(e.Value, env)
		case e.ValueFrom.ConfigMapKeyRef != nil:
			r := e.ValueFrom.ConfigMapKeyRef
			cm := get[corev1.ConfigMap](o, "ConfigMap", r.Name)
			if cm == nil {
				errs = append(errs, fmt.Errorf("%s container %s: env %s: ConfigMap %q is not in the overlay", w.Ref, c.Name, e.Name, r.Name))
				continue
			}
			v, ok := cm.Data[r.Key]
			if !ok {
				errs = append(errs, fmt.Errorf("%s container %s: env %s: ConfigMap %q has no key %q", w.Ref, c.Name, e.Name, r.Name, r.Key))
			}
			env[e.Name] = v
		case e.ValueFrom.SecretKeyRef != nil:
			v, err := secretValue(o, e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s container %s: env %s: %w", w.Ref, c.Name, e.Name, err))
			}
			env[e.Name] = v
		case e.ValueFrom.FieldRef != nil:
			switch e.ValueFrom.FieldRef.FieldPath {
			case "metadata.name":
				env[e.Name] = p.Name
			case "status.podIP":
				env[e.Name] = p.IP
			case "metadata.namespace":
				env[e.Name] = namespaceOf(w)
			default:
				env[e.Name] = "resolved-by-kubelet"
			}
		default:
			env[e.Name] = "resolved-by-kubelet"
		}
	}
	return env, errs
}

func namespaceOf(w workload) string {
	switch {
	case w.Dep != nil:
		return w.Dep.Namespace
	case w.STS != nil:
		return w.STS.Namespace
	}
	return ""
}

// referenced reports whether the container's args, command or env values
// use the variable name as $(name): a variable the binary does not read
// may exist for that (POD_IP for --advertise-url).
func referenced(c *corev1.Container, name string) bool {
	ref := "$(" + name + ")"
	for _, s := range slices.Concat(c.Command, c.Args) {
		if strings.Contains(s, ref) {
			return true
		}
	}
	for _, e := range c.Env {
		if strings.Contains(e.Value, ref) {
			return true
		}
	}
	return false
}

// externalSecrets are Secrets an overlay may reference without rendering
// them: the operator creates them (docs/kubernetes.md), so that no real
// credential is in git. The check substitutes a generated value.
var externalSecrets = map[string][]string{
	"stepflow-auth": {"token"},
	"stepflow-nats": {"coordinator-password", "worker-password", "sdk-password", calloutIssuerKey, calloutSeedKey},
}

// The keys of Secret stepflow-nats that hold the auth callout's account
// key pair: the public key (NATS's auth_callout issuer) and the seed
// (the coordinator's). They stand in as a key pair, not as passwords.
const (
	calloutIssuerKey = "auth-callout-issuer"
	calloutSeedKey   = "auth-callout-issuer-seed"
)

// externalSecretValue stands in for the value of key of an external
// Secret: one per key, so that two keys mixed up do not compare equal.
// The callout's keys get one key pair, made once per check.
func externalSecretValue(name, key string) string {
	switch key {
	case calloutIssuerKey:
		return checkIssuer().pub
	case calloutSeedKey:
		return checkIssuer().seed
	}
	return "k8s-check-generated-" + name + "-" + key
}

// issuerPair is an account key pair as the Secret holds it.
type issuerPair struct{ pub, seed string }

// checkIssuer is the key pair that stands in for the auth callout's.
var checkIssuer = sync.OnceValue(func() issuerPair {
	p, err := newIssuerPair()
	if err != nil {
		panic(err) // crypto/rand failed
	}
	return p
})

// newIssuerPair makes an account key pair.
func newIssuerPair() (issuerPair, error) {
	kp, err := nkeys.CreateAccount()
	if err != nil {
		return issuerPair{}, err
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return issuerPair{}, err
	}
	seed, err := kp.Seed()
	if err != nil {
		return issuerPair{}, err
	}
	return issuerPair{pub: pub, seed: string(seed)}, nil
}

func secretData(s *corev1.Secret) map[string]string {
	m := map[string]string{}
	for k, v := range s.Data {
		m[k] = string(v)
	}
	for k, v := range s.StringData {
		m[k] = v
	}
	return m
}

func secretValue(o *overlay, name, key string) (string, error) {
	if v, ok := o.Secrets[name][key]; ok {
		return v, nil
	}
	if s := get[corev1.Secret](o, "Secret", name); s != nil {
		v, ok := secretData(s)[key]
		if !ok {
			return "", fmt.Errorf("secret %q has no key %q", name, key)
		}
		return v, nil
	}
	if keys, ok := externalSecrets[name]; ok && contains(keys, key) {
		return externalSecretValue(name, key), nil
	}
	return "", fmt.Errorf("secret %q (key %q) is neither in the overlay nor a documented external Secret", name, key)
}

// expandVars does the kubelet's $(VAR) expansion of env values, command
// and args: a defined variable is replaced, an undefined reference stays
// as written, and $$ is a literal $.
func expandVars(s string, env map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := env[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

// expandArgs expands every arg as the kubelet does.
func expandArgs(args []string, env map[string]string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = expandVars(a, env)
	}
	return out
}

// containerPort resolves a probe or service port (a number or a name).
func containerPort(c *corev1.Container, p intstr.IntOrString) (int32, bool) {
	for _, cp := range c.Ports {
		if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
			return cp.ContainerPort, true
		}
	}
	return 0, false
}

// probes returns the container's probes by kind.
func probes(c *corev1.Container) map[string]*corev1.Probe {
	return map[string]*corev1.Probe{"startupProbe": c.StartupProbe, "livenessProbe": c.LivenessProbe, "readinessProbe": c.ReadinessProbe}
}

// preStopSeconds is how long the preStop hook takes at most: its sleep,
// or 0 for an exec hook that returns at once (nats-server --signal).
func preStopSeconds(c *corev1.Container) int64 {
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil {
		return 0
	}
	return c.Lifecycle.PreStop.Sleep.Seconds
}

func labelsMatch(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}
