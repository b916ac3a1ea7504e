package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
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
		{"sdk-lag-threshold", false, `lagThreshold "10" differs from Deployment/sdk-worker container sdk-worker STEPFLOW_MAX_CONCURRENT "4"`},
		{"sdk-unknown-env", false, `environment variable STEPFLOW_NATS_STREAMS is not read by stepflow-py`},
		{"sdk-advertise-service", false, `the nats plugin advertises "worker-tasks": each task must name this pod`},
		{"missing-probe-path", true, "GET /ready: status 404"},
		{"coordinator-scrape-annotation", false, `scraped by scrape job "stepflow-coordinator" (deploy/k8s/prometheus/scrape-configs.yml) and by the pod's prometheus.io/scrape annotation (GET /metrics): every series would be counted twice`},
		{"ha-rwo-volume", false, "2 replicas run on the data dir /var/lib/stepflow/data, but PersistentVolumeClaim coordinator-data is [ReadWriteOnce], not ReadWriteMany"},
		{"ha-advertise-service", false, `--advertise-url="http://coordinator:7840": want http://$(POD_IP):7840 with POD_IP from the downward API (status.podIP)`},
		{"ha-no-advertise-url", false, "--advertise-url is unset: the leader would advertise http://127.0.0.1:7840, and a standby would forward the API to itself"},
		{"ha-fixed-id", false, `--id="coordinator" is the same in every pod`},
		{"worker-coordinator-user", false, `Deployment/worker container worker: STEPFLOW_NATS_USER="coordinator": with the auth callout of /etc/nats/nats.conf, workers log in as "worker", whom the coordinator admits`},
		{"nats-unknown-user", false, `STEPFLOW_NATS_USER="admin" is not a user of StatefulSet/nats /etc/nats/nats.conf (it has [coordinator sdk])`},
		{"nats-password-mismatch", false, `Deployment/worker container worker: the worker's password (STEPFLOW_NATS_PASSWORD) comes from Secret stepflow-nats key coordinator-password, the one Deployment/coordinator container coordinator checks from Secret stepflow-nats key worker-password: take both from the same key`},
		{"worker-no-inbox-key", false, `Deployment/worker container worker: STEPFLOW_NATS_INBOX_KEY="false": with the auth callout, a worker signs in with a key of its own (STEPFLOW_NATS_INBOX_KEY=true)`},
		{"callout-seed-mismatch", false, `Deployment/coordinator container coordinator: the public key of STEPFLOW_NATS_AUTH_CALLOUT_ISSUER_SEED is`},
		{"nats-password-literal", false, "STEPFLOW_NATS_PASSWORD is not taken from a Secret"},
		{"nats-no-auth", false, "/etc/nats/nats.conf defines no users"},
		{"secret-namespace", false, `namespace "", the workloads are in "stepflow"`},
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

// The coordinator's /metrics needs the token, the worker's does not: a
// scrape without the token where it is needed, or with one where the
// path is open, fails the dynamic check.
func TestScrapeAuth(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	for _, tc := range []struct {
		name, fixture string
		edit          func(jobs []scrapeJob) []scrapeJob
		want          string
	}{
		{
			name: "coordinator job without authorization", fixture: "../overlays/dev",
			edit: func(jobs []scrapeJob) []scrapeJob {
				jobByName(t, jobs, "stepflow-coordinator").Authorization = nil
				return jobs
			},
			want: `GET /metrics: status 401, want 200 without a token (scrape job "stepflow-coordinator"`,
		},
		{
			name: "coordinator scraped by annotation", fixture: "testdata/coordinator-scrape-annotation",
			edit: func(jobs []scrapeJob) []scrapeJob {
				return slices.DeleteFunc(jobs, func(j scrapeJob) bool { return j.JobName == "stepflow-coordinator" })
			},
			want: "GET /metrics: status 401, want 200 without a token (annotation-driven scrape jobs (prometheus.io/scrape) sends none); the path needs the API token",
		},
		{
			name: "worker job with authorization", fixture: "../overlays/dev",
			edit: func(jobs []scrapeJob) []scrapeJob {
				jobByName(t, jobs, "stepflow-workers").Authorization = &scrapeAuthorization{Type: "Bearer", CredentialsFile: "/x"}
				return jobs
			},
			want: `Deployment/worker container worker: GET /metrics without a token: status 200, want 401`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestChecker(t)
			c.Dynamic = true
			c.scrapeJobs = tc.edit(slices.Clone(c.scrapeJobs))
			err := c.Check(tc.fixture)
			if err == nil {
				t.Fatalf("the check passed")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("the error does not say %q:\n%v", tc.want, err)
			}
		})
	}
}

func jobByName(t *testing.T, jobs []scrapeJob, name string) *scrapeJob {
	t.Helper()
	for i := range jobs {
		if jobs[i].JobName == name {
			return &jobs[i]
		}
	}
	t.Fatalf("no scrape job %q in %s", name, scrapeConfigsFile)
	return nil
}

// A job that selects nothing, and scrape configs the check cannot
// evaluate or that put the token in the config, fail.
func TestScrapeConfigRules(t *testing.T) {
	c := newTestChecker(t)
	c.scrapeJobs = slices.Clone(c.scrapeJobs)
	job := jobByName(t, c.scrapeJobs, "stepflow-workers")
	job.RelabelConfigs = slices.Clone(job.RelabelConfigs)
	re := "worker;metrics" // a port name the worker does not have
	job.RelabelConfigs[0].Regex = &re
	if err := job.validate(); err != nil {
		t.Fatal(err)
	}
	err := c.Check("../overlays/dev")
	for _, want := range []string{
		`scrape job "stepflow-workers" (deploy/k8s/prometheus/scrape-configs.yml) selects no container port of the overlay`,
		"Deployment/worker container worker: no job of deploy/k8s/prometheus/scrape-configs.yml scrapes it",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q:\n%v", want, err)
		}
	}

	for body, want := range map[string]string{
		"scrape_configs:\n- job_name: a\n  authorization: {credentials: secret}\n  kubernetes_sd_configs: [{role: pod}]\n": "use credentials_file",
		"scrape_configs:\n- job_name: a\n  kubernetes_sd_configs: [{role: pod}]\n  relabel_config: []\n":                   `unknown field "relabel_config"`,
		"scrape_configs:\n- job_name: a\n  kubernetes_sd_configs: [{role: pod}]\n  relabel_configs: [{action: hashmod}]\n": `action "hashmod" is not evaluated by k8s-check`,
		"scrape_configs:\n- job_name: a\n  kubernetes_sd_configs: [{role: endpoints}]\n":                                   "role pod",
	} {
		root := t.TempDir()
		p := filepath.Join(root, scrapeConfigsFile)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := loadScrapeJobs(root); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", body, err, want)
		}
	}
}

// The dynamic check runs the batch under the overlay's permissions: a
// worker user that lacks one subject it publishes to (the worker
// registry's stream info, derived from the shipped file at test time)
// fails it with the server's violation, although the batch succeeds.
func TestDynamicPermissionViolation(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	const calloutConf = "deploy/k8s/base/nats/auth-callout.conf"
	raw, err := os.ReadFile(filepath.Join("../../..", calloutConf))
	if err != nil {
		t.Fatal(err)
	}
	// The SDK workers' acks.
	const drop = "$JS.ACK.PYTHON_TASKS.python-workers.>"
	var kept []string
	for _, l := range strings.Split(string(raw), "\n") {
		if !strings.Contains(l, `"`+drop+`"`) {
			kept = append(kept, l)
		}
	}
	if len(kept) == len(strings.Split(string(raw), "\n")) {
		t.Fatalf("%s does not grant %s", calloutConf, drop)
	}
	sdk, err := filepath.Abs("../overlays/prod-sdk-nats")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "auth-callout.conf"), []byte(strings.Join(kept, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(dir, sdk) // kustomize takes no absolute paths
	if err != nil {
		t.Fatal(err)
	}
	k := "resources: [" + rel + "]\nconfigMapGenerator:\n  - {name: nats-config, behavior: merge, files: [auth-callout.conf]}\n"
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newTestChecker(t)
	c.Dynamic = true
	err = c.Check(dir)
	want := `"STEPFLOW/user:sdk" - Publish Violation - Subject "$JS.ACK.PYTHON_TASKS.python-workers.`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("the error does not say %q:\n%v", want, err)
	}
}

// The permission rules, against a real server with the shipped users
// (authConfFile): the worker is refused deleting the items stream and
// the server's log shows the violation; a "worker" that logs in as the
// coordinator deletes it, and the check says so.
func TestNATSPermissionRules(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a NATS server")
	}
	dir := t.TempDir()
	raw, err := os.ReadFile(filepath.Join("../../..", authConfFile))
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(filepath.Join(dir, "auth.conf"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte("jetstream {}\ninclude ./auth.conf\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	coordPW, _ := randomPassword()
	workerPW, _ := randomPassword()
	sdkPW, _ := randomPassword()
	var opts *server.Options
	withEnv(map[string]string{"NATS_COORDINATOR_PASSWORD": coordPW, "NATS_WORKER_PASSWORD": workerPW, "NATS_SDK_PASSWORD": sdkPW}, func() {
		opts, err = server.ProcessConfigFile(conf)
	})
	if err != nil {
		t.Fatal(err)
	}
	perms := map[string]*server.Permissions{}
	for _, u := range opts.Users {
		perms[u.Username] = u.Permissions
	}
	if !publishesEverything(perms["coordinator"]) || !mayPublish(perms["coordinator"], createItemsSubj) {
		t.Errorf("the coordinator user of %s may not publish everywhere", authConfFile)
	}
	if publishesEverything(perms["worker"]) || mayPublish(perms["worker"], deleteItemsSubj) || !mayPublish(perms["worker"], "stepflow.results.r1") {
		t.Errorf("the worker user of %s: publish permissions %+v", authConfFile, perms["worker"].Publish)
	}
	// The SDK workers' user takes tasks of its consumer only.
	if sdk := perms["sdk"]; publishesEverything(sdk) || mayPublish(sdk, deleteItemsSubj) || mayPublish(sdk, "$JS.API.CONSUMER.MSG.NEXT.STEPFLOW_ITEMS.r1") ||
		mayPublish(sdk, "PYTHON_TASKS.tasks") || !mayPublish(sdk, "$JS.API.CONSUMER.MSG.NEXT.PYTHON_TASKS.python-workers") {
		t.Errorf("the sdk user of %s: publish permissions %+v", authConfFile, sdk.Publish)
	}

	opts.Host, opts.Port, opts.StoreDir, opts.NoSigs = "127.0.0.1", server.RANDOM_PORT, filepath.Join(dir, "js"), true
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	nlog := &natsLog{}
	ns.SetLogger(nlog, false, false)
	ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	url := natsURLFor(ns)
	nc, err := nats.Connect(url, nats.UserInfo("coordinator", coordPW))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: itemsStream, Subjects: []string{"stepflow.items.>"}}); err != nil {
		t.Fatal(err)
	}

	if err := checkWorkerDenied(url, "worker", "worker", workerPW, false, "coordinator", coordPW); err != nil {
		t.Fatal(err)
	}
	if v := nlog.take(); len(v) == 0 || !strings.Contains(strings.Join(v, "\n"), deleteItemsSubj) {
		t.Errorf("the server's log has no violation for %s: %q", deleteItemsSubj, v)
	}
	err = checkWorkerDenied(url, "worker", "coordinator", coordPW, false, "coordinator", coordPW)
	if want := `NATS user "coordinator" deleted stream STEPFLOW_ITEMS`; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("got %v, want %q", err, want)
	}
}
