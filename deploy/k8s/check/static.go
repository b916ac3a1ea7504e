package main

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// image is one entry of the base kustomization's `images:`.
type image struct {
	Name    string `json:"name"`
	NewName string `json:"newName"`
	NewTag  string `json:"newTag"`
}

func (i image) ref() string {
	n := i.NewName
	if n == "" {
		n = i.Name
	}
	return n + ":" + i.NewTag
}

// ourImagePrefix marks the images built from deploy/docker.
const ourImagePrefix = "stepflow/"

// imageSet reads the one set of images (base kustomization) and checks
// it against deploy/docker: every stepflow image is built by
// deploy/docker/<name>.Dockerfile (and every Dockerfile builds one), all
// share one registry and tag, the Dockerfiles' USER is non-root and their
// documented `docker build -t` matches, and NATS runs the nats-server
// version of go.mod.
func (c *Checker) imageSet() ([]image, error) {
	raw, err := os.ReadFile(filepath.Join(c.Root, baseKustomization))
	if err != nil {
		return nil, err
	}
	var k struct {
		Images []image `json:"images"`
	}
	if err := yaml.Unmarshal(raw, &k); err != nil {
		return nil, fmt.Errorf("%s: %w", baseKustomization, err)
	}
	var errs []error
	tags, registries := map[string]bool{}, map[string]bool{}
	dockerfiles, _ := filepath.Glob(filepath.Join(c.Root, "deploy/docker/*.Dockerfile"))
	built := map[string]bool{}
	for _, im := range k.Images {
		if im.NewTag == "" {
			errs = append(errs, fmt.Errorf("%s: image %s has no newTag: pin every image", baseKustomization, im.Name))
		}
		if im.Name == "nats" {
			if want := c.natsVersion + "-alpine"; im.NewTag != want {
				errs = append(errs, fmt.Errorf("%s: image nats:%s, but go.mod has nats-server %s: use %s so that the config check and the embedded server match the deployed server", baseKustomization, im.NewTag, c.natsVersion, want))
			}
			continue
		}
		if !strings.HasPrefix(im.Name, ourImagePrefix) {
			continue
		}
		tags[im.NewTag] = true
		registries[path.Dir(im.NewName)] = true
		base := strings.TrimPrefix(im.Name, ourImagePrefix)
		if path.Base(im.NewName) != base {
			errs = append(errs, fmt.Errorf("%s: image %s is renamed to %s: keep the last path element %q", baseKustomization, im.Name, im.NewName, base))
		}
		rel := "deploy/docker/" + base + ".Dockerfile"
		built[filepath.Join(c.Root, rel)] = true
		d, err := parseDockerfile(c.Root, rel)
		if err != nil {
			errs = append(errs, fmt.Errorf("image %s: %w", im.Name, err))
			continue
		}
		c.dockerfiles[im.ref()] = d
		if _, _, err := d.user(); err != nil {
			errs = append(errs, err)
		}
		if f, tag := d.builds(); f != rel || tag != im.ref() {
			errs = append(errs, fmt.Errorf("%s: the header documents `docker build -f %s -t %s .`; the kustomization's image is %s", rel, f, tag, im.ref()))
		}
		ep, err := d.entrypoint()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if isSDKImage(ep) {
			// An SDK component worker, not one of our commands (sdk.go).
			delete(c.dockerfiles, im.ref())
			c.sdkImages[im.ref()] = d
			if err := c.checkSDKImage(d); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		bin := path.Base(ep[len(ep)-1])
		if c.Bins[bin] == nil {
			errs = append(errs, fmt.Errorf("%s: ENTRYPOINT runs %s, which is not one of our commands", rel, bin))
			continue
		}
		if err := d.checkBinaryBuild(bin); err != nil {
			errs = append(errs, err)
		}
	}
	for _, f := range dockerfiles {
		if !built[f] {
			rel, _ := filepath.Rel(c.Root, f)
			errs = append(errs, fmt.Errorf("%s: no image of %s is built by it (add it to `images:`)", rel, baseKustomization))
		}
	}
	if len(tags) > 1 || len(registries) > 1 {
		errs = append(errs, fmt.Errorf("%s: the stepflow images must share one registry and one tag, have %v and %v", baseKustomization, keys(registries), keys(tags)))
	}
	return k.Images, errors.Join(errs...)
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// checkStatic runs every rule that needs no process.
func (c *Checker) checkStatic(o *overlay) ([]*ours, []error) {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	known := map[string]bool{}
	for _, im := range c.images {
		known[im.ref()] = true
	}
	var containers []*ours
	var sdks []*sdkContainer
	for _, w := range workloads(o) {
		for i := range w.Pod.InitContainers {
			if !known[w.Pod.InitContainers[i].Image] {
				add(fmt.Errorf("%s init container %s: image %q is not one of the kustomization's images", w.Ref, w.Pod.InitContainers[i].Name, w.Pod.InitContainers[i].Image))
			}
		}
		for i := range w.Pod.Containers {
			ct := &w.Pod.Containers[i]
			if !known[ct.Image] {
				add(fmt.Errorf("%s container %s: image %q is not one of the kustomization's images %v", w.Ref, ct.Name, ct.Image, keys(known)))
			}
			if ct.Resources.Requests.Cpu().IsZero() || ct.Resources.Requests.Memory().IsZero() || ct.Resources.Limits.Memory().IsZero() {
				add(fmt.Errorf("%s container %s: set CPU and memory requests and a memory limit", w.Ref, ct.Name))
			}
			sdk := c.sdkImages[ct.Image]
			for kind, p := range probes(ct) {
				if sdk != nil {
					break // the SDK's NATS worker serves no port to probe
				}
				if p == nil {
					add(fmt.Errorf("%s container %s: no %s", w.Ref, ct.Name, kind))
				} else if p.HTTPGet != nil {
					if _, ok := containerPort(ct, p.HTTPGet.Port); !ok {
						add(fmt.Errorf("%s container %s: %s port %s is not a port of the container", w.Ref, ct.Name, kind, p.HTTPGet.Port.String()))
					}
				}
			}
			env, envErrs := resolveEnv(o, w, ct, staticPod(w))
			errs = append(errs, envErrs...)
			if sdk != nil {
				s, err := c.checkSDKContainer(w, ct, env, sdk)
				add(err)
				sdks = append(sdks, s)
				continue
			}
			d := c.dockerfiles[ct.Image]
			if d == nil {
				continue
			}
			ep, _ := d.entrypoint()
			bin := c.Bins[path.Base(ep[len(ep)-1])]
			uid, _, _ := d.user()
			sc := w.Pod.SecurityContext
			if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
				add(fmt.Errorf("%s: set securityContext.runAsNonRoot: true", w.Ref))
			} else if sc.RunAsUser != nil && *sc.RunAsUser != int64(uid) {
				add(fmt.Errorf("%s: runAsUser %d differs from the image's USER %d (%s)", w.Ref, *sc.RunAsUser, uid, d.Path))
			}
			if len(ct.Command) > 0 {
				add(fmt.Errorf("%s container %s: do not override the image's ENTRYPOINT (command); pass flags in args", w.Ref, ct.Name))
			}
			args, err := parseArgs(expandArgs(ct.Args, env))
			if err != nil {
				add(fmt.Errorf("%s container %s: %w", w.Ref, ct.Name, err))
				continue
			}
			oc := &ours{W: w, C: ct, Bin: bin, Args: args, Env: env}
			containers = append(containers, oc)
			for _, a := range args {
				if _, ok := bin.Flags[a.Name]; !ok {
					add(fmt.Errorf("%s: unknown flag --%s: `%s --help` lists %v", oc.where(), a.Name, bin.Name, keys(bin.Flags)))
				}
			}
			for name := range env {
				if !bin.Env[name] && !referenced(ct, name) && !configReferenced(o, oc, name) {
					add(fmt.Errorf("%s: environment variable %s is not read by %s (it reads %v) nor used as $(%s) in the container's args or env", oc.where(), name, bin.Name, keys(bin.Env), name))
				}
			}
			switch bin.Name {
			case "worker":
				add(c.checkWorker(o, oc))
			case "coordinator":
				add(c.checkCoordinator(o, oc))
			}
		}
	}
	add(c.checkNATS(o, containers))
	add(c.checkSDKWorkers(o, sdks, containers))
	o.SDKs = sdks
	add(c.checkNamespaces(o))
	add(c.checkServices(o))
	add(c.checkAutoscaling(o, containers, sdks))
	add(c.checkScrape(o, containers))
	return containers, errs
}

// listenPortProbes checks that every httpGet probe of c targets the port
// the binary listens on, and that it listens on every interface.
func listenPortProbes(oc *ours, port int, portSrc, host, hostSrc string) error {
	var errs []error
	if host != "" && host != "0.0.0.0" && host != "::" {
		errs = append(errs, fmt.Errorf("%s: %s=%q: the kubelet probes the pod IP, listen on 0.0.0.0", oc.where(), hostSrc, host))
	}
	for kind, p := range probes(oc.C) {
		if p == nil || p.HTTPGet == nil {
			continue
		}
		if cp, ok := containerPort(oc.C, p.HTTPGet.Port); ok && int(cp) != port {
			errs = append(errs, fmt.Errorf("%s: %s port %s is %d, but %s listens on %d (%s)", oc.where(), kind, p.HTTPGet.Port.String(), cp, oc.Bin.Name, port, portSrc))
		}
	}
	return errors.Join(errs...)
}

func (c *Checker) checkWorker(o *overlay, oc *ours) error {
	var errs []error
	port, src, err := oc.intSetting("health-port")
	if err != nil {
		return err
	}
	if port <= 0 {
		return fmt.Errorf("%s: %s is %d: the probes need the health server (--health-port)", oc.where(), src, port)
	}
	host, hsrc := oc.setting("health-host")
	errs = append(errs, listenPortProbes(oc, port, src, host, hsrc))
	drainS, dsrc := oc.setting("drain-timeout")
	drain, err := time.ParseDuration(drainS)
	if err != nil {
		return fmt.Errorf("%s: %s=%q: %w", oc.where(), dsrc, drainS, err)
	}
	grace := int64(30)
	if g := oc.W.Pod.TerminationGracePeriodSeconds; g != nil {
		grace = *g
	}
	pre := preStopSeconds(oc.C)
	stop := oc.Bin.Consts["stopGrace"]
	need := time.Duration(pre)*time.Second + drain + stop
	if time.Duration(grace)*time.Second <= need {
		errs = append(errs, fmt.Errorf("%s: terminationGracePeriodSeconds %d must exceed preStop %ds + drain timeout %s (%s) + the worker's stop margin %s (stopGrace): the kubelet would kill it before its in-flight items finish or go back", oc.where(), grace, pre, drain, dsrc, stop))
	}
	if oc.C.Lifecycle == nil || oc.C.Lifecycle.PreStop == nil {
		errs = append(errs, fmt.Errorf("%s: no preStop hook", oc.where()))
	}
	errs = append(errs, c.checkNATSURL(o, oc))
	// The stepflow-config.yml must come from a ConfigMap volume.
	cfgPath, csrc := oc.setting("config")
	if cfgPath == "" {
		errs = append(errs, fmt.Errorf("%s: no --config: the worker would run builtins only", oc.where()))
	} else if _, err := configMapFile(o, oc, cfgPath); err != nil {
		errs = append(errs, fmt.Errorf("%s: %s=%s: %w", oc.where(), csrc, cfgPath, err))
	}
	return errors.Join(errs...)
}

func (c *Checker) checkCoordinator(o *overlay, oc *ours) error {
	var errs []error
	port, src, err := oc.intSetting("port")
	if err != nil {
		return err
	}
	host, hsrc := oc.setting("host")
	errs = append(errs, listenPortProbes(oc, port, src, host, hsrc))
	grace := int64(30)
	if g := oc.W.Pod.TerminationGracePeriodSeconds; g != nil {
		grace = *g
	}
	pre := preStopSeconds(oc.C)
	stop := oc.Bin.Consts["stopTimeout"]
	if time.Duration(grace)*time.Second <= time.Duration(pre)*time.Second+stop {
		errs = append(errs, fmt.Errorf("%s: terminationGracePeriodSeconds %d must exceed preStop %ds + the coordinator's shutdown bound %s (stopTimeout)", oc.where(), grace, pre, stop))
	}
	if u, _ := oc.setting("nats-url"); u == "" {
		errs = append(errs, fmt.Errorf("%s: no NATS URL: the coordinator would start an embedded NATS server in its pod", oc.where()))
	} else {
		errs = append(errs, c.checkNATSURL(o, oc))
	}
	if tok, _ := oc.setting("auth-token"); tok == "" {
		errs = append(errs, fmt.Errorf("%s: no API token (STEPFLOW_AUTH_TOKEN from a Secret): the API would be open", oc.where()))
	}
	for _, a := range oc.Args {
		if a.Name == "auth-token" {
			errs = append(errs, fmt.Errorf("%s: --auth-token in args shows the token in the process list and the manifest; use STEPFLOW_AUTH_TOKEN from a Secret", oc.where()))
		}
	}
	dir, dsrc := oc.setting("data-dir")
	if !underPVC(oc, dir) {
		errs = append(errs, fmt.Errorf("%s: %s=%s is not on a PersistentVolumeClaim mount: results would be lost with the pod", oc.where(), dsrc, dir))
	}
	errs = append(errs, checkCoordinatorReplicas(o, oc, dir))
	return errors.Join(errs...)
}

// checkCoordinatorReplicas: coordinators that run at once (replicas > 1,
// or the old and the new pod during a RollingUpdate) share the data dir
// and the leadership lease; the leader does the work and the standbys
// forward the API to the URL it advertises. So the data dir's volume is
// ReadWriteMany, the advertised URL is the pod's own IP and port, and an
// explicit --id differs per pod.
func checkCoordinatorReplicas(o *overlay, oc *ours, dir string) error {
	d := oc.W.Dep
	if d == nil {
		return nil
	}
	replicas := int32(1)
	if d.Spec.Replicas != nil {
		replicas = *d.Spec.Replicas
	}
	rolling := d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType
	if replicas <= 1 && !rolling {
		return nil
	}
	why := fmt.Sprintf("%d replicas run", replicas)
	if replicas <= 1 {
		why = "strategy RollingUpdate runs the new pod next to the old one, so two run"
	}
	var errs []error
	if pvc := dataPVC(o, oc, dir); pvc != nil && !slices.Contains(pvc.Spec.AccessModes, corev1.ReadWriteMany) {
		errs = append(errs, fmt.Errorf("%s: %s on the data dir %s, but PersistentVolumeClaim %s is %v, not ReadWriteMany: a pod on another node cannot mount it (use one replica and Recreate, or a ReadWriteMany volume with POSIX locks as components/coordinator-ha does)", oc.where(), why, dir, pvc.Name, pvc.Spec.AccessModes))
	}
	port, _, err := oc.intSetting("port")
	if err != nil {
		return err
	}
	show := func(s string) string { return strings.ReplaceAll(s, podIPPlaceholder, "<status.podIP>") }
	u, src := oc.setting("advertise-url")
	if u == "" {
		errs = append(errs, fmt.Errorf("%s: %s, but --advertise-url is unset: the leader would advertise http://127.0.0.1:%d, and a standby would forward the API to itself; use http://$(POD_IP):%d with POD_IP from the downward API (status.podIP)", oc.where(), why, port, port))
	} else if pu, err := url.Parse(u); err != nil || pu.Scheme != "http" || pu.Hostname() != podIPPlaceholder || pu.Port() != strconv.Itoa(port) || strings.Trim(pu.Path, "/") != "" {
		errs = append(errs, fmt.Errorf("%s: %s=%q: want http://$(POD_IP):%d with POD_IP from the downward API (status.podIP): the standbys forward the API there, so it must reach this very pod on its port", oc.where(), src, show(u), port))
	}
	if id, isrc := oc.setting("id"); id != "" && !strings.Contains(id, oc.W.Name+"-0") {
		errs = append(errs, fmt.Errorf("%s: %s=%q is the same in every pod: two coordinators would hold the lease under one name; use $(POD_NAME) (metadata.name), or leave it unset (host name and port)", oc.where(), isrc, show(id)))
	}
	return errors.Join(errs...)
}

// dataPVC returns the PersistentVolumeClaim mounted at dir.
func dataPVC(o *overlay, oc *ours, dir string) *corev1.PersistentVolumeClaim {
	for _, m := range oc.C.VolumeMounts {
		if dir != m.MountPath && !strings.HasPrefix(dir, strings.TrimSuffix(m.MountPath, "/")+"/") {
			continue
		}
		for _, v := range oc.W.Pod.Volumes {
			if v.Name == m.Name && v.PersistentVolumeClaim != nil {
				return get[corev1.PersistentVolumeClaim](o, "PersistentVolumeClaim", v.PersistentVolumeClaim.ClaimName)
			}
		}
	}
	return nil
}

func underPVC(oc *ours, dir string) bool {
	for _, m := range oc.C.VolumeMounts {
		if dir != m.MountPath && !strings.HasPrefix(dir, strings.TrimSuffix(m.MountPath, "/")+"/") {
			continue
		}
		for _, v := range oc.W.Pod.Volumes {
			if v.Name == m.Name && v.PersistentVolumeClaim != nil {
				return true
			}
		}
		if oc.W.STS != nil {
			for _, t := range oc.W.STS.Spec.VolumeClaimTemplates {
				if t.Name == m.Name {
					return true
				}
			}
		}
	}
	return false
}

// configMapFile returns the content of the file at p in the container,
// which must be a key of a ConfigMap volume.
func configMapFile(o *overlay, oc *ours, p string) (string, error) {
	files, err := configMapDir(o, oc, p)
	if err != nil {
		return "", err
	}
	return files[path.Base(p)], nil
}

// configMapDir returns the files next to p (which must be one of them) in
// the container: the keys of the ConfigMap volume mounted at p's
// directory.
func configMapDir(o *overlay, oc *ours, p string) (map[string]string, error) {
	for _, m := range oc.C.VolumeMounts {
		if path.Dir(p) != path.Clean(m.MountPath) {
			continue
		}
		for _, v := range oc.W.Pod.Volumes {
			if v.Name != m.Name || v.ConfigMap == nil {
				continue
			}
			cm := get[corev1.ConfigMap](o, "ConfigMap", v.ConfigMap.Name)
			if cm == nil {
				return nil, fmt.Errorf("ConfigMap %q is not in the overlay", v.ConfigMap.Name)
			}
			if _, ok := cm.Data[path.Base(p)]; !ok {
				return nil, fmt.Errorf("ConfigMap %q has no key %q", v.ConfigMap.Name, path.Base(p))
			}
			return cm.Data, nil
		}
	}
	return nil, errors.New("not a file of a ConfigMap volume mount")
}

// checkNATSURL: the NATS URL names the NATS Service and its client port.
func (c *Checker) checkNATSURL(o *overlay, oc *ours) error {
	raw, src := oc.setting("nats-url")
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "nats" {
		return fmt.Errorf("%s: %s=%q is not a nats:// URL", oc.where(), src, raw)
	}
	svc := get[corev1.Service](o, "Service", u.Hostname())
	if svc == nil {
		return fmt.Errorf("%s: %s=%q: no Service %q in the overlay", oc.where(), src, raw, u.Hostname())
	}
	for _, p := range svc.Spec.Ports {
		if strconv.Itoa(int(p.Port)) == u.Port() {
			return nil
		}
	}
	return fmt.Errorf("%s: %s=%q: Service %s has no port %s", oc.where(), src, raw, svc.Name, u.Port())
}

// checkNamespaces: every object but the Namespace is in the workloads'
// namespace. An object without one (made by an overlay's generator when
// only the base sets `namespace:`) goes wherever kubectl's context
// points, where the pods would not find it.
func (c *Checker) checkNamespaces(o *overlay) error {
	ns := c.namespace(o)
	var errs []error
	for _, x := range o.Objs {
		m, ok := x.Typed.(metav1.Object)
		if !ok || x.Kind == "Namespace" || m.GetNamespace() == ns {
			continue
		}
		errs = append(errs, fmt.Errorf("%s: namespace %q, the workloads are in %q: set `namespace: %s` in the kustomization that makes it (an object without one lands in kubectl's current namespace)", x, m.GetNamespace(), ns, ns))
	}
	return errors.Join(errs...)
}

// checkServices: selectors select pods, target ports exist, PDBs select
// pods.
func (c *Checker) checkServices(o *overlay) error {
	var errs []error
	ws := workloads(o)
	for _, s := range all[corev1.Service](o) {
		var sel *workload
		for i := range ws {
			if labelsMatch(s.Spec.Selector, ws[i].Labels) {
				sel = &ws[i]
			}
		}
		if sel == nil {
			errs = append(errs, fmt.Errorf("service %s: selector %v selects no pod of the overlay", s.Name, s.Spec.Selector))
			continue
		}
		for _, p := range s.Spec.Ports {
			found := false
			for i := range sel.Pod.Containers {
				if _, ok := containerPort(&sel.Pod.Containers[i], p.TargetPort); ok {
					found = true
				}
			}
			if !found {
				errs = append(errs, fmt.Errorf("service %s port %d: targetPort %s is not a port of %s", s.Name, p.Port, p.TargetPort.String(), sel.Ref))
			}
		}
	}
	for _, p := range all[policyv1.PodDisruptionBudget](o) {
		found := false
		for _, w := range ws {
			if p.Spec.Selector != nil && labelsMatch(p.Spec.Selector.MatchLabels, w.Labels) {
				found = true
			}
		}
		if !found {
			errs = append(errs, fmt.Errorf("PodDisruptionBudget/%s selects no pod of the overlay", p.Name))
		}
	}
	return errors.Join(errs...)
}

// checkAutoscaling: at most one autoscaler per Deployment (KEDA makes its
// own HPA), the target exists and leaves spec.replicas to it, and the
// KEDA trigger polls the coordinator's backlog with its token.
func (c *Checker) checkAutoscaling(o *overlay, cs []*ours, sdks []*sdkContainer) error {
	var errs []error
	scaled := map[string][]string{}
	for _, h := range all[autoscalingv2.HorizontalPodAutoscaler](o) {
		scaled[h.Spec.ScaleTargetRef.Kind+"/"+h.Spec.ScaleTargetRef.Name] = append(scaled[h.Spec.ScaleTargetRef.Kind+"/"+h.Spec.ScaleTargetRef.Name], "HorizontalPodAutoscaler/"+h.Name)
	}
	for _, so := range all[ScaledObject](o) {
		if so.Spec.ScaleTargetRef == nil {
			errs = append(errs, fmt.Errorf("ScaledObject/%s: no scaleTargetRef", so.Name))
			continue
		}
		kind := so.Spec.ScaleTargetRef.Kind
		if kind == "" {
			kind = "Deployment"
		}
		ref := kind + "/" + so.Spec.ScaleTargetRef.Name
		scaled[ref] = append(scaled[ref], "ScaledObject/"+so.Name)
		var sdk *sdkContainer
		for _, x := range sdks {
			if x.W.Kind == kind && x.W.Name == so.Spec.ScaleTargetRef.Name {
				sdk = x
			}
		}
		if sdk != nil {
			errs = append(errs, c.checkSDKScaledObject(o, so, sdk))
			continue
		}
		errs = append(errs, c.checkScaledObject(o, so, cs))
	}
	for ref, by := range scaled {
		if len(by) > 1 {
			errs = append(errs, fmt.Errorf("%s is scaled by %v: apply one autoscaler (components/keda or components/hpa), not both", ref, by))
		}
		kind, name, _ := strings.Cut(ref, "/")
		d := get[appsv1.Deployment](o, kind, name)
		if d == nil {
			errs = append(errs, fmt.Errorf("%v: scale target %s is not in the overlay", by, ref))
		} else if d.Spec.Replicas != nil {
			errs = append(errs, fmt.Errorf("%s sets spec.replicas while %v scales it: every `kubectl apply` would reset the count", ref, by))
		}
	}
	return errors.Join(errs...)
}

var backlogURLRE = regexp.MustCompile(`^http://([a-z0-9-]+)\.([a-z0-9-]+)\.svc(?:\.cluster\.local)?:(\d+)(/\S*)$`)

func (c *Checker) checkScaledObject(o *overlay, so *ScaledObject, cs []*ours) error {
	var errs []error
	var worker, coord *ours
	for _, oc := range cs {
		if oc.W.Kind == "Deployment" && oc.W.Name == so.Spec.ScaleTargetRef.Name && oc.Bin.Name == "worker" {
			worker = oc
		}
		if oc.Bin.Name == "coordinator" {
			coord = oc
		}
	}
	if worker == nil || coord == nil {
		return fmt.Errorf("ScaledObject/%s: scales %s, which is not a worker Deployment (or there is no coordinator)", so.Name, so.Spec.ScaleTargetRef.Name)
	}
	ns := get[corev1.Namespace](o, "Namespace", c.namespace(o))
	if ns == nil {
		errs = append(errs, fmt.Errorf("the overlay renders no Namespace %q", c.namespace(o)))
	}
	for i, t := range so.Spec.Triggers {
		where := fmt.Sprintf("ScaledObject/%s trigger %d", so.Name, i)
		if t.Type != "metrics-api" {
			errs = append(errs, fmt.Errorf("%s: type %q; the coordinator's backlog is read with metrics-api", where, t.Type))
			continue
		}
		m := backlogURLRE.FindStringSubmatch(t.Metadata["url"])
		if m == nil {
			errs = append(errs, fmt.Errorf("%s: url %q is not http://<service>.<namespace>.svc:<port>/<path> (KEDA runs in its own namespace)", where, t.Metadata["url"]))
			continue
		}
		svc := get[corev1.Service](o, "Service", m[1])
		switch {
		case svc == nil:
			errs = append(errs, fmt.Errorf("%s: url names Service %q, which is not in the overlay", where, m[1]))
		case m[2] != svc.Namespace:
			errs = append(errs, fmt.Errorf("%s: url names namespace %q, the Service is in %q", where, m[2], svc.Namespace))
		case !labelsMatch(svc.Spec.Selector, coord.W.Labels):
			errs = append(errs, fmt.Errorf("%s: Service %s does not select the coordinator", where, svc.Name))
		default:
			ok := false
			cport, _, _ := coord.intSetting("port")
			for _, p := range svc.Spec.Ports {
				if cp, found := containerPort(coord.C, p.TargetPort); strconv.Itoa(int(p.Port)) == m[3] && found && int(cp) == cport {
					ok = true
				}
			}
			if !ok {
				errs = append(errs, fmt.Errorf("%s: port %s of Service %s does not reach the coordinator's port %d", where, m[3], svc.Name, cport))
			}
		}
		if m[4] != backlogPath {
			errs = append(errs, fmt.Errorf("%s: path %s; the coordinator serves its backlog at %s", where, m[4], backlogPath))
		}
		if t.Metadata["valueLocation"] != backlogField {
			errs = append(errs, fmt.Errorf("%s: valueLocation %q; the backlog (queued + in flight) is field %q", where, t.Metadata["valueLocation"], backlogField))
		}
		conc, _, err := worker.intSetting("concurrency")
		if err != nil {
			errs = append(errs, err)
		} else if t.Metadata["targetValue"] != strconv.Itoa(conc) {
			errs = append(errs, fmt.Errorf("%s: targetValue %q differs from the worker's --concurrency %d: one pod per %d backlog items keeps every slot busy", where, t.Metadata["targetValue"], conc, conc))
		}
		if t.Metadata["authMode"] != "bearer" || t.AuthenticationRef == nil {
			errs = append(errs, fmt.Errorf("%s: the backlog needs the API token: authMode bearer and an authenticationRef", where))
			continue
		}
		ta := get[TriggerAuthentication](o, "TriggerAuthentication", t.AuthenticationRef.Name)
		if ta == nil {
			errs = append(errs, fmt.Errorf("%s: TriggerAuthentication %q is not in the overlay", where, t.AuthenticationRef.Name))
			continue
		}
		var tokenRef *AuthTargetRef
		for i := range ta.Spec.SecretTargetRef {
			if ta.Spec.SecretTargetRef[i].Parameter == "token" {
				tokenRef = &ta.Spec.SecretTargetRef[i]
			}
		}
		tokEnv := coord.Bin.FlagEnv["auth-token"]
		var coordRef *corev1.SecretKeySelector
		for _, e := range coord.C.Env {
			if e.Name == tokEnv && e.ValueFrom != nil {
				coordRef = e.ValueFrom.SecretKeyRef
			}
		}
		switch {
		case tokenRef == nil:
			errs = append(errs, fmt.Errorf("TriggerAuthentication/%s: no secretTargetRef with parameter \"token\" (metrics-api bearer)", ta.Name))
		case coordRef == nil:
			errs = append(errs, fmt.Errorf("%s: the coordinator takes %s from no Secret", coord.where(), tokEnv))
		case tokenRef.Name != coordRef.Name || tokenRef.Key != coordRef.Key:
			errs = append(errs, fmt.Errorf("TriggerAuthentication/%s: token from Secret %s key %s, the coordinator's from %s key %s", ta.Name, tokenRef.Name, tokenRef.Key, coordRef.Name, coordRef.Key))
		default:
			if _, err := secretValue(o, tokenRef.Name, tokenRef.Key); err != nil {
				errs = append(errs, fmt.Errorf("TriggerAuthentication/%s: %w", ta.Name, err))
			}
		}
	}
	return errors.Join(errs...)
}

func (c *Checker) namespace(o *overlay) string {
	for _, d := range all[appsv1.Deployment](o) {
		return d.Namespace
	}
	return ""
}
