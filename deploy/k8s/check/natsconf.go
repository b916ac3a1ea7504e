package main

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// natsServer is the overlay's NATS StatefulSet with its parsed config.
type natsServer struct {
	STS      *appsv1.StatefulSet
	C        *corev1.Container
	ConfPath string            // in the container
	Files    map[string]string // the config's directory (its ConfigMap): nats.conf and what it includes
	Opts     *server.Options
	Env      map[string]string // the container's environment Opts was parsed with
}

func (n *natsServer) workload() workload {
	return workload{Ref: "StatefulSet/" + n.STS.Name, Kind: "StatefulSet", Name: n.STS.Name, Labels: n.STS.Spec.Template.Labels, Pod: &n.STS.Spec.Template.Spec, STS: n.STS}
}

// findNATS returns the StatefulSet whose container runs nats-server.
func findNATS(o *overlay) (*natsServer, error) {
	for _, s := range all[appsv1.StatefulSet](o) {
		for i := range s.Spec.Template.Spec.Containers {
			c := &s.Spec.Template.Spec.Containers[i]
			if !strings.HasPrefix(c.Image, "nats:") {
				continue
			}
			argv := append(append([]string{}, c.Command...), c.Args...)
			n := &natsServer{STS: s, C: c}
			for j, a := range argv {
				if (a == "--config" || a == "-c") && j+1 < len(argv) {
					n.ConfPath = argv[j+1]
				}
			}
			if n.ConfPath == "" {
				return nil, fmt.Errorf("StatefulSet/%s: nats-server has no --config", s.Name)
			}
			files, err := configMapDir(o, &ours{W: n.workload(), C: c}, n.ConfPath)
			if err != nil {
				return nil, fmt.Errorf("StatefulSet/%s: --config %s: %w", s.Name, n.ConfPath, err)
			}
			n.Files = files
			return n, nil
		}
	}
	return nil, errors.New("no StatefulSet runs nats-server")
}

// load parses the config with the nats-server of go.mod (the version
// the image runs): the files of its ConfigMap side by side in dir, as
// the container sees them (nats.conf includes auth.conf), and exactly
// the container's environment for $VAR references (Secret values through
// o, pod fields of pod 0).
func (n *natsServer) load(o *overlay, dir string) error {
	for name, content := range n.Files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			return err
		}
	}
	w := n.workload()
	env, errs := resolveEnv(o, w, n.C, staticPod(w))
	if len(errs) > 0 {
		// checkStatic reports them with every container's environment.
		return fmt.Errorf("StatefulSet/%s %s: not parsed: the container's environment does not resolve", n.STS.Name, n.ConfPath)
	}
	var opts *server.Options
	var err error
	withEnv(env, func() { opts, err = server.ProcessConfigFile(filepath.Join(dir, path.Base(n.ConfPath))) })
	if err != nil {
		return fmt.Errorf("StatefulSet/%s %s: %w", n.STS.Name, n.ConfPath, err)
	}
	n.Opts, n.Env = opts, env
	return nil
}

// withEnv runs fn with exactly env as the process environment, and
// restores the environment after: nats-server resolves a config's $VAR
// references from the process environment, and a variable of the shell
// that runs the check must not stand in for one the pod lacks. The
// check runs one overlay at a time, so nothing else reads the
// environment meanwhile.
func withEnv(env map[string]string, fn func()) {
	saved := os.Environ()
	os.Clearenv()
	for k, v := range env {
		os.Setenv(k, v)
	}
	defer func() {
		os.Clearenv()
		for _, kv := range saved {
			k, v, _ := strings.Cut(kv, "=")
			os.Setenv(k, v)
		}
	}()
	fn()
}

// checkNATS: the config parses; its users and the clients' credentials
// agree (checkNATSAuth); JetStream stores on the PVC below its size; the
// ports are the container's; the lame-duck preStop signals the config's
// pid file and fits in the grace period; a cluster has one route per pod
// and fsyncs every write; the coordinator's stream replicas fit the
// cluster.
func (c *Checker) checkNATS(o *overlay, cs []*ours) error {
	n, err := findNATS(o)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "k8s-check-nats-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := n.load(o, dir); err != nil {
		return err
	}
	c.nats[o.Dir] = n
	where := "StatefulSet/" + n.STS.Name
	opts := n.Opts
	var errs []error
	errs = append(errs, checkNATSAuth(n, cs))
	if !opts.JetStream {
		errs = append(errs, fmt.Errorf("%s: JetStream is not enabled in %s", where, n.ConfPath))
	}
	var pvc string
	for _, m := range n.C.VolumeMounts {
		for _, t := range n.STS.Spec.VolumeClaimTemplates {
			if t.Name == m.Name && strings.HasPrefix(opts.StoreDir+"/", strings.TrimSuffix(m.MountPath, "/")+"/") {
				pvc = t.Name
				size := t.Spec.Resources.Requests.Storage()
				if opts.JetStreamMaxStore <= 0 || opts.JetStreamMaxStore >= size.Value() {
					errs = append(errs, fmt.Errorf("%s: max_file_store (%d bytes) must be set below the PVC's %s, so that a full store refuses new items instead of failing the disk", where, opts.JetStreamMaxStore, size.String()))
				}
			}
		}
	}
	if pvc == "" {
		errs = append(errs, fmt.Errorf("%s: store_dir %s is not on a volumeClaimTemplate mount", where, opts.StoreDir))
	}
	for name, want := range map[string]int{"client": opts.Port, "monitor": opts.HTTPPort} {
		found := false
		for _, p := range n.C.Ports {
			if p.Name == name {
				found = true
				if int(p.ContainerPort) != want {
					errs = append(errs, fmt.Errorf("%s: container port %s is %d, the config's is %d", where, name, p.ContainerPort, want))
				}
			}
		}
		if !found {
			errs = append(errs, fmt.Errorf("%s: no container port named %s (the config's is %d)", where, name, want))
		}
	}
	// Lame duck.
	want := []string{"nats-server", "--signal", "ldm=" + opts.PidFile}
	if ct := n.C; ct.Lifecycle == nil || ct.Lifecycle.PreStop == nil || ct.Lifecycle.PreStop.Exec == nil || strings.Join(ct.Lifecycle.PreStop.Exec.Command, " ") != strings.Join(want, " ") {
		errs = append(errs, fmt.Errorf("%s: the preStop hook must be %q (lame-duck mode, the config's pid_file)", where, want))
	}
	if !onVolume(n.C, path.Dir(opts.PidFile)) {
		errs = append(errs, fmt.Errorf("%s: pid_file %s is not on a volume (the root filesystem is read-only)", where, opts.PidFile))
	}
	grace := time.Duration(30) * time.Second
	if g := n.STS.Spec.Template.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = time.Duration(*g) * time.Second
	}
	if ldm := opts.LameDuckDuration + opts.LameDuckGracePeriod; grace <= ldm {
		errs = append(errs, fmt.Errorf("%s: terminationGracePeriodSeconds %s must exceed lame_duck_grace_period + lame_duck_duration (%s)", where, grace, ldm))
	}
	// Cluster.
	replicas := 1
	if n.STS.Spec.Replicas != nil {
		replicas = int(*n.STS.Spec.Replicas)
	}
	if replicas == 1 && len(opts.Routes) > 0 {
		errs = append(errs, fmt.Errorf("%s: one replica but %d cluster routes", where, len(opts.Routes)))
	}
	if replicas > 1 {
		if opts.Cluster.Name == "" || opts.Cluster.Port == 0 {
			errs = append(errs, fmt.Errorf("%s: %d replicas need a cluster block with a name and a port", where, replicas))
		}
		hosts := map[string]bool{}
		for _, r := range opts.Routes {
			hosts[r.Hostname()+":"+r.Port()] = true
		}
		for i := 0; i < replicas; i++ {
			h := fmt.Sprintf("%s-%d.%s:%d", n.STS.Name, i, n.STS.Spec.ServiceName, opts.Cluster.Port)
			if !hosts[h] {
				errs = append(errs, fmt.Errorf("%s: %d replicas, but no route to %s", where, replicas, h))
			}
		}
		if len(opts.Routes) != replicas {
			errs = append(errs, fmt.Errorf("%s: %d routes for %d replicas", where, len(opts.Routes), replicas))
		}
		if !opts.SyncAlways {
			errs = append(errs, fmt.Errorf("%s: a production cluster fsyncs every write (jetstream.sync_interval: always; docs/kubernetes.md \"Durability\")", where))
		}
		hl := get[corev1.Service](o, "Service", n.STS.Spec.ServiceName)
		if hl == nil || hl.Spec.ClusterIP != "None" || !hl.Spec.PublishNotReadyAddresses {
			errs = append(errs, fmt.Errorf("%s: serviceName %q must be a headless Service with publishNotReadyAddresses", where, n.STS.Spec.ServiceName))
		}
	}
	for _, oc := range cs {
		if oc.Bin.Name != "coordinator" {
			continue
		}
		r, src, err := oc.intSetting("nats-replicas")
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if r == 0 {
			r = 1
		}
		switch {
		case r > replicas:
			errs = append(errs, fmt.Errorf("%s: %s=%d, but NATS has %d server(s)", oc.where(), src, r, replicas))
		case replicas >= 3 && r < 3:
			errs = append(errs, fmt.Errorf("%s: %s=%d on a %d-node NATS cluster: use R3 so that a server can fail without losing items", oc.where(), src, r, replicas))
		}
	}
	return errors.Join(errs...)
}

func onVolume(c *corev1.Container, dir string) bool {
	for _, m := range c.VolumeMounts {
		if path.Clean(m.MountPath) == path.Clean(dir) {
			return true
		}
	}
	return false
}

// natsVersion reads the nats-server version of the main go.mod.
func natsVersion(root string) (string, error) {
	raw, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(raw), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == "github.com/nats-io/nats-server/v2" {
			return strings.TrimPrefix(f[1], "v"), nil
		}
	}
	return "", errors.New("go.mod: no github.com/nats-io/nats-server/v2")
}

// natsURLFor returns the client URL of a started server.
func natsURLFor(s *server.Server) string {
	u, _ := url.Parse(s.ClientURL())
	return "nats://127.0.0.1:" + u.Port()
}
