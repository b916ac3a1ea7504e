// Command check is `make k8s-check`: it renders every overlay of
// deploy/k8s with kustomize, decodes every object strictly against the
// Kubernetes API types (and KEDA's), and checks the manifests against the
// binaries of bin/ and the Dockerfiles of deploy/docker: flags and
// environment variables exist, probes hit the ports the binaries listen
// on, grace periods cover the drains, images are one consistent set, the
// Prometheus jobs of deploy/k8s/prometheus scrape every coordinator and
// worker once, NATS requires users and the worker logs in as the
// restricted one (natsauth.go). With -dynamic (the default) it then
// starts NATS from the overlay's own config with generated passwords in
// its Secrets, the coordinator(s) and a worker with the manifests' own
// args and environment, GETs every probe path (200 without a token) and
// scrape path (with the token where the job sends it, and then 401
// without), runs a batch through them without a permissions violation,
// and has the worker's credentials refused a stream delete.
//
//	go run . [-dynamic=false] REPO_ROOT
package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"
)

// baseKustomization holds the one set of images.
const baseKustomization = "deploy/k8s/base/kustomization.yaml"

// overlaysDir holds one directory per deployable overlay.
const overlaysDir = "deploy/k8s/overlays"

// Checker checks overlays against one repository checkout.
type Checker struct {
	Root    string
	Dynamic bool
	Log     io.Writer

	Bins        map[string]*binary
	natsVersion string
	images      []image
	dockerfiles map[string]*dockerfile // by image ref
	sdkImages   map[string]*dockerfile // SDK worker images (sdk.go), by image ref
	nats        map[string]*natsServer // by overlay dir
	scrapeJobs  []scrapeJob            // scrapeConfigsFile
}

// NewChecker loads what the checks compare against: the binaries'
// flags, the image set and the Dockerfiles. Its error is a problem of
// the repository, not of one overlay.
func NewChecker(root string, dynamic bool, log io.Writer) (*Checker, error) {
	c := &Checker{Root: root, Dynamic: dynamic, Log: log, Bins: map[string]*binary{},
		dockerfiles: map[string]*dockerfile{}, sdkImages: map[string]*dockerfile{}, nats: map[string]*natsServer{}}
	for _, s := range binarySpecs {
		b, err := loadBinary(root, s.name, s.source, s.consts)
		if err != nil {
			return nil, err
		}
		c.Bins[s.name] = b
	}
	v, err := natsVersion(root)
	if err != nil {
		return nil, err
	}
	c.natsVersion = v
	if c.scrapeJobs, err = loadScrapeJobs(root); err != nil {
		return nil, err
	}
	images, err := c.imageSet()
	c.images = images
	return c, err
}

// Overlays lists the overlay directories of the repository.
func (c *Checker) Overlays() ([]string, error) {
	dirs, err := filepath.Glob(filepath.Join(c.Root, overlaysDir, "*", "kustomization.yaml"))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, d := range dirs {
		out = append(out, filepath.Dir(d))
	}
	sort.Strings(out)
	if len(out) == 0 {
		return nil, fmt.Errorf("no overlays in %s", overlaysDir)
	}
	return out, nil
}

// Check renders the kustomization in dir and runs every rule on it.
func (c *Checker) Check(dir string) error {
	objs, err := render(dir)
	if err != nil {
		return err
	}
	o := &overlay{Dir: dir, Objs: objs}
	cs, errs := c.checkStatic(o)
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if !c.Dynamic {
		return nil
	}
	return c.checkDynamic(o, cs)
}

func (c *Checker) logf(format string, args ...any) {
	if c.Log != nil {
		fmt.Fprintf(c.Log, format+"\n", args...)
	}
}
