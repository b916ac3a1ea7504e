package main

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	checkerOnce sync.Once
	checker     *Checker
	checkerErr  error
)

// newTestChecker loads the repository's binaries (bin/, built by `make
// build`) once for all tests.
func newTestChecker(t *testing.T) *Checker {
	t.Helper()
	checkerOnce.Do(func() {
		root, err := filepath.Abs("../../..")
		if err != nil {
			checkerErr = err
			return
		}
		checker, checkerErr = NewChecker(root, false, nil)
	})
	if checkerErr != nil {
		t.Fatalf("%v (run `make build` first)", checkerErr)
	}
	c := *checker
	c.nats = map[string]*natsServer{}
	return &c
}

// Every fixture of testdata/ is a real overlay with one thing broken;
// the check must fail on it, naming the problem.
func TestBrokenFixtures(t *testing.T) {
	for _, tc := range []struct {
		fixture string
		dynamic bool
		want    string
	}{
		{"unknown-field", false, `unknown field "httpGett"`},
		{"wrong-case-field", false, `unknown field "spec.template.spec.containers[0].readinessProbe.httpget"`},
		{"wrong-probe-port", false, "readinessProbe port other is 8082, but worker listens on 8081 (--health-port)"},
		{"unknown-flag", false, "unknown flag --max-items"},
		{"unknown-env", false, "environment variable STEPFLOW_NATS_REPLICA is not read by coordinator"},
		{"grace-below-drain", false, "terminationGracePeriodSeconds 60 must exceed preStop 5s + drain timeout 1m0s"},
		{"health-loopback", false, `--health-host="127.0.0.1": the kubelet probes the pod IP`},
		{"unpinned-image", false, `image "ghcr.io/stepflow-go/worker-python:latest" is not one of the kustomization's images`},
		{"replicas-above-nodes", false, "STEPFLOW_NATS_REPLICAS=3, but NATS has 1 server(s)"},
		{"two-autoscalers", false, "apply one autoscaler (components/keda or components/hpa), not both"},
		{"keda-target-value", false, `targetValue "10" differs from the worker's --concurrency 4`},
		{"keda-unknown-field", false, `unknown field "maxReplicas"`},
		{"missing-probe-path", true, "GET /ready: status 404"},
	} {
		t.Run(tc.fixture, func(t *testing.T) {
			if tc.dynamic && testing.Short() {
				t.Skip("starts processes")
			}
			c := newTestChecker(t)
			c.Dynamic = tc.dynamic
			err := c.Check(filepath.Join("testdata", tc.fixture))
			if err == nil {
				t.Fatalf("the check passed on testdata/%s", tc.fixture)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("the error does not say %q:\n%v", tc.want, err)
			}
		})
	}
}

// The real overlays pass the static rules (make k8s-check also runs the
// dynamic ones with `go run .`).
func TestOverlaysPass(t *testing.T) {
	c := newTestChecker(t)
	dirs, err := c.Overlays()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		if err := c.Check(d); err != nil {
			t.Errorf("%s: %v", d, err)
		}
	}
}

// A Dockerfile whose final stage runs as root, or has no USER, fails.
func TestDockerfileUser(t *testing.T) {
	dir := t.TempDir()
	for body, want := range map[string]string{
		"FROM golang:1.26 AS build\nFROM debian:12-slim\nUSER 0:0\n":  "USER is root",
		"FROM golang:1.26 AS build\nFROM debian:12-slim\nUSER app\n":  "is not numeric",
		"FROM golang:1.26 AS build\nUSER 1000\nFROM debian:12-slim\n": "has no USER",
	} {
		if err := os.WriteFile(filepath.Join(dir, "x.Dockerfile"), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		d, err := parseDockerfile(dir, "x.Dockerfile")
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := d.user(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", body, err, want)
		}
	}
}
