package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// scrapeConfigsFile holds the Prometheus scrape jobs for the pods of
// deploy/k8s (a file with `scrape_configs:`, for Prometheus's
// `scrape_config_files` or to paste into prometheus.yml). The check
// discovers each job's targets in every overlay the way Prometheus's
// kubernetes_sd (role pod) and relabelling would, and GETs them: a job
// with `authorization` must meet a path that refuses requests without the
// token and serves them with it, a job without one a path that serves
// them without.
const scrapeConfigsFile = "deploy/k8s/prometheus/scrape-configs.yml"

// The fields of a Prometheus scrape config that the check evaluates;
// decoding is strict, so any other field is an error (the check would
// not know what it does to the targets).
type scrapeFile struct {
	ScrapeConfigs []scrapeJob `json:"scrape_configs"`
}

type scrapeJob struct {
	JobName             string               `json:"job_name"`
	ScrapeInterval      string               `json:"scrape_interval,omitempty"`
	ScrapeTimeout       string               `json:"scrape_timeout,omitempty"`
	MetricsPath         string               `json:"metrics_path,omitempty"`
	Scheme              string               `json:"scheme,omitempty"`
	Authorization       *scrapeAuthorization `json:"authorization,omitempty"`
	KubernetesSDConfigs []kubernetesSDConfig `json:"kubernetes_sd_configs"`
	RelabelConfigs      []relabelConfig      `json:"relabel_configs,omitempty"`
}

type scrapeAuthorization struct {
	Type            string `json:"type,omitempty"`
	Credentials     string `json:"credentials,omitempty"`
	CredentialsFile string `json:"credentials_file,omitempty"`
}

type kubernetesSDConfig struct {
	Role       string `json:"role"`
	Namespaces *struct {
		OwnNamespace bool     `json:"own_namespace,omitempty"`
		Names        []string `json:"names,omitempty"`
	} `json:"namespaces,omitempty"`
}

type relabelConfig struct {
	SourceLabels []string `json:"source_labels,omitempty"`
	Separator    *string  `json:"separator,omitempty"`
	Regex        *string  `json:"regex,omitempty"`
	TargetLabel  string   `json:"target_label,omitempty"`
	Replacement  *string  `json:"replacement,omitempty"`
	Action       string   `json:"action,omitempty"`

	re *regexp.Regexp
}

// loadScrapeJobs reads and validates scrapeConfigsFile.
func loadScrapeJobs(root string) ([]scrapeJob, error) {
	raw, err := os.ReadFile(filepath.Join(root, scrapeConfigsFile))
	if err != nil {
		return nil, err
	}
	j, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", scrapeConfigsFile, err)
	}
	var f scrapeFile
	if err := decodeStrictJSON(j, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", scrapeConfigsFile, err)
	}
	if len(f.ScrapeConfigs) == 0 {
		return nil, fmt.Errorf("%s: no scrape_configs", scrapeConfigsFile)
	}
	var errs []error
	names := map[string]bool{}
	for i := range f.ScrapeConfigs {
		job := &f.ScrapeConfigs[i]
		if err := job.validate(); err != nil {
			errs = append(errs, fmt.Errorf("%s: job %d (%q): %w", scrapeConfigsFile, i, job.JobName, err))
		}
		if names[job.JobName] {
			errs = append(errs, fmt.Errorf("%s: job_name %q twice", scrapeConfigsFile, job.JobName))
		}
		names[job.JobName] = true
	}
	return f.ScrapeConfigs, errors.Join(errs...)
}

func (j *scrapeJob) validate() error {
	var errs []error
	if j.JobName == "" {
		errs = append(errs, errors.New("no job_name"))
	}
	if j.Scheme != "" && j.Scheme != "http" {
		errs = append(errs, fmt.Errorf("scheme %q: the coordinator and the workers serve plain HTTP", j.Scheme))
	}
	if a := j.Authorization; a != nil {
		if a.Type != "" && a.Type != "Bearer" {
			errs = append(errs, fmt.Errorf("authorization type %q: the coordinator takes a Bearer token", a.Type))
		}
		if a.Credentials != "" {
			errs = append(errs, errors.New("authorization.credentials puts the API token in the Prometheus config: use credentials_file"))
		}
		if a.CredentialsFile == "" {
			errs = append(errs, errors.New("authorization without credentials_file"))
		}
	}
	if len(j.KubernetesSDConfigs) != 1 || j.KubernetesSDConfigs[0].Role != "pod" {
		errs = append(errs, errors.New("one kubernetes_sd_configs entry with role pod (one target per pod, so that every coordinator and worker is scraped)"))
	}
	for i := range j.RelabelConfigs {
		r := &j.RelabelConfigs[i]
		if r.Action == "" {
			r.Action = "replace"
		}
		re := "(.*)"
		if r.Regex != nil {
			re = *r.Regex
		}
		var err error
		if r.re, err = regexp.Compile("^(?:" + re + ")$"); err != nil {
			errs = append(errs, fmt.Errorf("relabel_configs[%d]: regex: %w", i, err))
		}
		switch r.Action {
		case "keep", "drop", "labelmap", "labeldrop", "labelkeep":
		case "replace":
			if r.TargetLabel == "" {
				errs = append(errs, fmt.Errorf("relabel_configs[%d]: replace needs a target_label", i))
			}
		default:
			errs = append(errs, fmt.Errorf("relabel_configs[%d]: action %q is not evaluated by k8s-check (keep, drop, replace, labelmap, labeldrop, labelkeep)", i, r.Action))
		}
	}
	return errors.Join(errs...)
}

func (j *scrapeJob) where() string {
	return fmt.Sprintf("scrape job %q (%s)", j.JobName, scrapeConfigsFile)
}

// scrapeTarget is one target a job keeps: a container port of a pod.
type scrapeTarget struct {
	Job  *scrapeJob
	W    workload
	C    *corev1.Container
	Port int32
	Path string
}

var labelNameRE = regexp.MustCompile(`[^a-zA-Z0-9_]`)

// targets discovers the job's targets in the overlay as Prometheus's
// kubernetes_sd role pod does (one per declared container port, with the
// __meta_kubernetes_pod_* labels) and applies the relabelling.
func (j *scrapeJob) targets(o *overlay) ([]scrapeTarget, error) {
	sd := j.KubernetesSDConfigs[0]
	var out []scrapeTarget
	for _, w := range workloads(o) {
		ns := namespaceOf(w)
		if sd.Namespaces != nil && len(sd.Namespaces.Names) > 0 && !contains(sd.Namespaces.Names, ns) {
			continue
		}
		var ann map[string]string
		if w.Dep != nil {
			ann = w.Dep.Spec.Template.Annotations
		} else if w.STS != nil {
			ann = w.STS.Spec.Template.Annotations
		}
		for i := range w.Pod.Containers {
			ct := &w.Pod.Containers[i]
			for _, p := range ct.Ports {
				proto := string(p.Protocol)
				if proto == "" {
					proto = "TCP"
				}
				ls := map[string]string{
					"__address__":                                   net.JoinHostPort(podIPPlaceholder, strconv.Itoa(int(p.ContainerPort))),
					"__metrics_path__":                              "/metrics",
					"__scheme__":                                    "http",
					"job":                                           j.JobName,
					"__meta_kubernetes_namespace":                   ns,
					"__meta_kubernetes_pod_name":                    w.Name + "-0",
					"__meta_kubernetes_pod_ip":                      podIPPlaceholder,
					"__meta_kubernetes_pod_container_name":          ct.Name,
					"__meta_kubernetes_pod_container_init":          "false",
					"__meta_kubernetes_pod_container_port_name":     p.Name,
					"__meta_kubernetes_pod_container_port_number":   strconv.Itoa(int(p.ContainerPort)),
					"__meta_kubernetes_pod_container_port_protocol": proto,
					"__meta_kubernetes_pod_controller_kind":         w.Kind,
				}
				if j.MetricsPath != "" {
					ls["__metrics_path__"] = j.MetricsPath
				}
				if j.Scheme != "" {
					ls["__scheme__"] = j.Scheme
				}
				for k, v := range w.Labels {
					n := labelNameRE.ReplaceAllString(k, "_")
					ls["__meta_kubernetes_pod_label_"+n], ls["__meta_kubernetes_pod_labelpresent_"+n] = v, "true"
				}
				for k, v := range ann {
					n := labelNameRE.ReplaceAllString(k, "_")
					ls["__meta_kubernetes_pod_annotation_"+n], ls["__meta_kubernetes_pod_annotationpresent_"+n] = v, "true"
				}
				if !j.relabel(ls) {
					continue
				}
				_, port, err := net.SplitHostPort(ls["__address__"])
				if err != nil {
					return nil, fmt.Errorf("%s: %s container %s port %d: __address__ %q after relabelling: %w", j.where(), w.Ref, ct.Name, p.ContainerPort, ls["__address__"], err)
				}
				n, err := strconv.Atoi(port)
				if err != nil {
					return nil, fmt.Errorf("%s: %s container %s: __address__ %q has no port number", j.where(), w.Ref, ct.Name, ls["__address__"])
				}
				if ls["__scheme__"] != "http" {
					return nil, fmt.Errorf("%s: %s container %s: scheme %q after relabelling", j.where(), w.Ref, ct.Name, ls["__scheme__"])
				}
				out = append(out, scrapeTarget{Job: j, W: w, C: ct, Port: int32(n), Path: ls["__metrics_path__"]})
			}
		}
	}
	return out, nil
}

// relabel applies the job's relabel_configs to ls and reports whether
// the target is kept.
func (j *scrapeJob) relabel(ls map[string]string) bool {
	for _, r := range j.RelabelConfigs {
		sep := ";"
		if r.Separator != nil {
			sep = *r.Separator
		}
		repl := "$1"
		if r.Replacement != nil {
			repl = *r.Replacement
		}
		vals := make([]string, len(r.SourceLabels))
		for i, l := range r.SourceLabels {
			vals[i] = ls[l]
		}
		v := strings.Join(vals, sep)
		switch r.Action {
		case "keep":
			if !r.re.MatchString(v) {
				return false
			}
		case "drop":
			if r.re.MatchString(v) {
				return false
			}
		case "replace":
			m := r.re.FindStringSubmatchIndex(v)
			if m == nil {
				continue
			}
			target := string(r.re.ExpandString(nil, r.TargetLabel, v, m))
			res := string(r.re.ExpandString(nil, repl, v, m))
			if res == "" {
				delete(ls, target)
			} else {
				ls[target] = res
			}
		case "labelmap":
			for k, lv := range ls {
				if m := r.re.FindStringSubmatchIndex(k); m != nil {
					ls[string(r.re.ExpandString(nil, repl, k, m))] = lv
				}
			}
		case "labeldrop", "labelkeep":
			for k := range ls {
				if r.re.MatchString(k) == (r.Action == "labeldrop") {
					delete(ls, k)
				}
			}
		}
	}
	return true
}

// annotationScrape returns the path that annotation-driven scrape jobs
// (prometheus.io/scrape: "true", the convention of Prometheus's example
// kubernetes-pods job) GET on the container's port, if any.
func annotationScrape(w workload, port int32) (string, bool) {
	var ann map[string]string
	if w.Dep != nil {
		ann = w.Dep.Spec.Template.Annotations
	} else if w.STS != nil {
		ann = w.STS.Spec.Template.Annotations
	}
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != strconv.Itoa(int(port)) {
		return "", false
	}
	if p := ann["prometheus.io/path"]; p != "" {
		return p, true
	}
	return "/metrics", true
}

// checkScrape: every job keeps targets in the overlay, on the port the
// binary serves its metrics on; each of our containers is scraped (by a
// job or an annotation) exactly once.
func (c *Checker) checkScrape(o *overlay, cs []*ours) error {
	var errs []error
	scraped := map[*corev1.Container][]string{}
	for i := range c.scrapeJobs {
		job := &c.scrapeJobs[i]
		ts, err := job.targets(o)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if len(ts) == 0 {
			errs = append(errs, fmt.Errorf("%s selects no container port of the overlay", job.where()))
		}
		for _, t := range ts {
			scraped[t.C] = append(scraped[t.C], job.where())
		}
	}
	for _, oc := range cs {
		port, src, err := oc.metricsPort()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if path, ok := annotationScrape(oc.W, port); ok {
			scraped[oc.C] = append(scraped[oc.C], fmt.Sprintf("the pod's prometheus.io/scrape annotation (GET %s)", path))
		}
		for i := range c.scrapeJobs {
			ts, _ := c.scrapeJobs[i].targets(o)
			for _, t := range ts {
				if t.C == oc.C && t.Port != port {
					errs = append(errs, fmt.Errorf("%s: %s scrapes port %d, but %s serves /metrics on %d (%s)", oc.where(), t.Job.where(), t.Port, oc.Bin.Name, port, src))
				}
			}
		}
		switch by := scraped[oc.C]; {
		case len(by) == 0:
			errs = append(errs, fmt.Errorf("%s: no job of %s scrapes it: its /metrics would not be collected", oc.where(), scrapeConfigsFile))
		case len(by) > 1:
			errs = append(errs, fmt.Errorf("%s: scraped by %s: every series would be counted twice", oc.where(), strings.Join(by, " and by ")))
		}
	}
	return errors.Join(errs...)
}

// metricsPort is the port the binary serves /metrics on.
func (c *ours) metricsPort() (int32, string, error) {
	flag := "port"
	if c.Bin.Name == "worker" {
		flag = "health-port"
	}
	n, src, err := c.intSetting(flag)
	return int32(n), src, err
}
