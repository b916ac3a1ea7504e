package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/stepflow-go/stepflow/pkg/queue"
)

// TestNATSWorkerPermissions runs a coordinator and a worker process
// against a NATS server configured with deploy/k8s/base/nats/auth.conf
// (the file the Kubernetes manifests mount), as the
// users it defines: a batch with nested runs (runs/submit through the
// coordinator's NATS API) and blobs put and read back completes without a
// single permissions violation. Then, logged in as the worker user, the
// test shows what a worker cannot do: delete or purge streams and
// buckets, publish items, write run records, create consumers on the
// work queue.
func TestNATSWorkerPermissions(t *testing.T) {
	skipShort(t)
	t.Parallel()
	requireVenvs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	srv, serverLogs, c := startAuthConfServer(ctx, t, nil)
	// Without its blob cache, the worker reads every blob it put back
	// from NATS.
	worker, workerLogs := startWorkerCmd(t, []string{"STEPFLOW_NATS_USER=worker", "STEPFLOW_NATS_PASSWORD=worker-pw", "STEPFLOW_BLOB_CACHE_BYTES=0"},
		"--nats-url", srv.ClientURL(), "--concurrency", "2", "--config", "examples/batch-processor/stepflow-config.yml")

	runExamplesThenStop(t, c, worker, workerLogs)
	require.Empty(t, violations(serverLogs), "the worker needed a subject auth.conf does not grant")

	// Now as the worker user.
	denied := make(chan error, 64)
	nc, err := nats.Connect(srv.ClientURL(), nats.UserInfo("worker", "worker-pw"),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case denied <- err:
			default:
			}
		}))
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	// A denied publish gets no answer: the request times out, and the
	// server reports the violation asynchronously.
	short := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 2*time.Second) }
	expectDenied := func(what, subject string, op func(context.Context) error) {
		t.Helper()
		octx, ocancel := short()
		defer ocancel()
		require.Error(t, op(octx), "%s must fail", what)
		deadline := time.After(10 * time.Second)
		for {
			select {
			case err := <-denied:
				if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), subject) {
					return
				}
			case <-deadline:
				t.Fatalf("%s: no permissions violation for %s reported", what, subject)
			}
		}
	}
	expectDenied("deleting the items stream", "$JS.API.STREAM.DELETE.STEPFLOW_ITEMS", func(ctx context.Context) error {
		return js.DeleteStream(ctx, queue.StreamItems)
	})
	expectDenied("purging the items stream", "$JS.API.STREAM.PURGE.STEPFLOW_ITEMS", func(ctx context.Context) error {
		_, err := nc.RequestWithContext(ctx, "$JS.API.STREAM.PURGE."+queue.StreamItems, []byte(`{}`))
		return err
	})
	expectDenied("deleting the runs bucket", "$JS.API.STREAM.DELETE.KV_STEPFLOW_RUNS", func(ctx context.Context) error {
		return js.DeleteKeyValue(ctx, queue.BucketRuns)
	})
	expectDenied("deleting the blobs store", "$JS.API.STREAM.DELETE.OBJ_STEPFLOW_BLOBS", func(ctx context.Context) error {
		return js.DeleteObjectStore(ctx, queue.BucketBlobs)
	})
	expectDenied("publishing an item", "stepflow.items.x", func(ctx context.Context) error {
		_, err := js.Publish(ctx, queue.ItemSubject("x"), []byte(`{}`))
		return err
	})
	expectDenied("writing a run record", "$KV.STEPFLOW_RUNS.forged", func(ctx context.Context) error {
		_, err := js.Publish(ctx, "$KV."+queue.BucketRuns+".forged", []byte(`x`))
		return err
	})
	expectDenied("creating a consumer on the work queue", "$JS.API.CONSUMER.CREATE.STEPFLOW_ITEMS", func(ctx context.Context) error {
		_, err := js.CreateOrUpdateConsumer(ctx, queue.StreamItems, jetstream.ConsumerConfig{Durable: "thief", FilterSubject: queue.ItemSubject("x")})
		return err
	})
	expectDenied("deleting a run's consumer", "$JS.API.CONSUMER.DELETE.STEPFLOW_ITEMS", func(ctx context.Context) error {
		return js.DeleteConsumer(ctx, queue.StreamItems, queue.RunConsumer("x"))
	})

	// Everything is still there, as the coordinator user sees it.
	admin, err := nats.Connect(srv.ClientURL(), nats.UserInfo("coordinator", "coord-pw"))
	require.NoError(t, err)
	defer admin.Close()
	ajs, err := jetstream.New(admin)
	require.NoError(t, err)
	for _, name := range []string{queue.StreamItems, "KV_" + queue.BucketRuns, "OBJ_" + queue.BucketBlobs} {
		_, err := ajs.Stream(ctx, name)
		require.NoError(t, err, name)
	}
	kv, err := ajs.KeyValue(ctx, queue.BucketRuns)
	require.NoError(t, err)
	_, err = kv.Get(ctx, "forged")
	require.ErrorIs(t, err, jetstream.ErrKeyNotFound)

	// A wrong password is refused.
	bad, err := nats.Connect(srv.ClientURL(), nats.UserInfo("worker", "guess"))
	if bad != nil {
		bad.Close()
	}
	require.ErrorIs(t, err, nats.ErrAuthorization)
}

// startAuthConfServer starts an embedded server configured with the
// shipped deploy/k8s/base/nats/auth.conf, its password references filled
// in (the server resolves them from its environment, which an in-process
// server shares with the parallel tests) and then passed through edit
// when set, and a coordinator process logged in as its coordinator user.
// It returns the server, the server's logs and the coordinator.
func startAuthConfServer(ctx context.Context, t *testing.T, edit func(conf string) string) (*queue.Embedded, *observer.ObservedLogs, *coordProc) {
	t.Helper()
	srv, serverLogs := startShippedNATSConf(ctx, t, "auth.conf", func(conf string) string {
		conf = strings.NewReplacer("$NATS_COORDINATOR_PASSWORD", `"coord-pw"`, "$NATS_WORKER_PASSWORD", `"worker-pw"`, "$NATS_SDK_PASSWORD", `"sdk-pw"`).Replace(conf)
		if edit != nil {
			conf = edit(conf)
		}
		return conf
	})
	c := startCoordinator(t, []string{"STEPFLOW_NATS_PASSWORD=coord-pw"},
		"--nats-url", srv.ClientURL(), "--nats-user", "coordinator", "--log-level", "warn")
	return srv, serverLogs, c
}

// startShippedNATSConf starts an embedded server configured with the
// shipped deploy/k8s/base/nats/<name>, its variables filled in by fill
// (the server resolves them from its environment, which an in-process
// server shares with the parallel tests), and returns it and its logs.
func startShippedNATSConf(ctx context.Context, t *testing.T, name string, fill func(conf string) string) (*queue.Embedded, *observer.ObservedLogs) {
	t.Helper()
	shipped, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "k8s", "base", "nats", name))
	require.NoError(t, err)
	conf := fill(string(shipped))
	require.NotEqual(t, string(shipped), conf, "%s: nothing filled in", name)
	path := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(path, []byte(conf), 0o600))
	core, serverLogs := observer.New(zapcore.InfoLevel)
	srv := queue.NewEmbedded(queue.EmbeddedConfig{StoreDir: t.TempDir(), ConfigFile: path, Logger: zap.New(core)})
	require.NoError(t, srv.Start(ctx))
	t.Cleanup(srv.Shutdown)
	return srv, serverLogs
}

// runExamplesThenStop runs the batch-processor example (nested runs,
// put_blob of the sub-flow) and the hello example (put_blob, get_blob)
// through c, then stops worker with SIGTERM: it drains, its run watch
// ends, and it exits 0 without an error logged.
func runExamplesThenStop(t *testing.T, c *coordProc, worker *exec.Cmd, workerLogs *lockedBuffer) {
	t.Helper()
	code, out, stderr := runStepflow(t, nil, "submit", "--url", c.URL(), "--quiet",
		"--flow", "examples/batch-processor/main-workflow.yaml", "--inputs", "examples/batch-processor/inputs.jsonl")
	require.Equal(t, 0, code, stderr)
	require.Equal(t, batchProcessorWant, lines(out))
	submitHello(t, c.URL())
	stopProcess(worker)
	require.True(t, worker.ProcessState.Success(), "the worker exits 0 after SIGTERM")
	require.NotContains(t, workerLogs.String(), "ERROR")
}

// violations returns the permissions violations the server logged.
func violations(logs *observer.ObservedLogs) []string {
	var out []string
	for _, e := range logs.All() {
		if strings.Contains(e.Message, "Violation") {
			out = append(out, fmt.Sprint(e.Message))
		}
	}
	return out
}

// snooper is a client that subscribes to every subject it names and
// counts what reaches it, or the permissions violation each subscription
// got.
type snooper struct {
	t    *testing.T
	nc   *nats.Conn
	mu   sync.Mutex
	got  map[string]int // subscription subject -> messages received
	last string         // the subject of the last message received
	// arrived is signalled (without blocking) after each message.
	arrived chan struct{}
	denied  chan string // subjects whose subscription was refused
}

func newSnooper(t *testing.T, url, user, password string, subjects ...string) *snooper {
	t.Helper()
	return newSnooperWith(t, url, []nats.Option{nats.UserInfo(user, password)}, subjects...)
}

// newSnooperWith is newSnooper logged in with opts.
func newSnooperWith(t *testing.T, url string, opts []nats.Option, subjects ...string) *snooper {
	t.Helper()
	s := &snooper{t: t, got: map[string]int{}, denied: make(chan string, 16), arrived: make(chan struct{}, 1)}
	nc, err := nats.Connect(url, append(opts,
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrPermissionViolation) {
				for _, subj := range subjects {
					if strings.Contains(err.Error(), `"`+subj+`"`) {
						s.denied <- subj
					}
				}
			}
		}))...)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	s.nc = nc
	for _, subj := range subjects {
		_, err := nc.Subscribe(subj, func(m *nats.Msg) {
			s.mu.Lock()
			s.got[subj]++
			s.last = m.Subject
			s.mu.Unlock()
			select {
			case s.arrived <- struct{}{}:
			default:
			}
		})
		require.NoError(t, err)
	}
	// The server has every subscription (or refused it) once the flush
	// returns.
	require.NoError(t, nc.Flush())
	return s
}

// received is the number of messages the subscription to subj got.
func (s *snooper) received(subj string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.got[subj]
}

// waitReceived waits until the subscription to subj has received n
// messages (the handler runs after the flush that brought them).
func (s *snooper) waitReceived(subj string, n int, msg string) {
	s.t.Helper()
	deadline := time.After(10 * time.Second)
	for s.received(subj) < n {
		select {
		case <-s.arrived:
		case <-deadline:
			s.t.Fatalf("%s: %d messages on %s, want %d", msg, s.received(subj), subj, n)
		}
	}
}

// lastSubjectToken returns token i (from 0) of the subject of the last
// message received, "" if there is none.
func (s *snooper) lastSubjectToken(i int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	tokens := strings.Split(s.last, ".")
	if i >= len(tokens) {
		return ""
	}
	return tokens[i]
}

// requireDenied waits for the server to refuse the subscriptions to
// subjects, in any order.
func (s *snooper) requireDenied(subjects ...string) {
	s.t.Helper()
	want := map[string]bool{}
	for _, subj := range subjects {
		want[subj] = true
	}
	deadline := time.After(10 * time.Second)
	for len(want) > 0 {
		select {
		case subj := <-s.denied:
			delete(want, subj)
		case <-deadline:
			s.t.Fatalf("no permissions violation reported for the subscriptions to %v", want)
		}
	}
}

// TestNATSRepliesArePrivate: with auth.conf's users, no client logged in
// as a worker or an SDK user reads another process's replies (results'
// answers, pulled items, run records, blobs, JetStream API answers, the
// run API's answers). The server gets the shipped file plus two workers
// with users of their own, as its comment describes; worker-1 runs the
// batch-processor example (nested runs) and the hello example (blobs)
// while worker-2, the shared worker user and the SDK user subscribe to
// every inbox they can. A coordinator-user subscription to the same
// inboxes is the control: the traffic was there to be seen.
func TestNATSRepliesArePrivate(t *testing.T) {
	skipShort(t)
	t.Parallel()
	requireVenvs(t)
	// Two users of their own, each the worker user with its subscribe
	// permission narrowed to its prefix.
	ownUsers := func(conf string) string {
		start := strings.Index(conf, "      user: worker\n")
		require.Positive(t, start)
		start = strings.LastIndex(conf[:start], "    {\n")
		end := strings.Index(conf[start:], "\n    }\n")
		require.Positive(t, end)
		block := conf[start : start+end+len("\n    }\n")]
		require.Contains(t, block, `allow: ["_INBOX_stepflow_worker.>"]`)
		own := func(n string) string {
			return strings.NewReplacer("user: worker\n", "user: worker-"+n+"\n", `"worker-pw"`, `"w`+n+`-pw"`,
				`allow: ["_INBOX_stepflow_worker.>"]`, `allow: ["_INBOX_stepflow_worker.w`+n+`.>"]`).Replace(block)
		}
		return strings.Replace(conf, block, block+own("1")+own("2"), 1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	srv, serverLogs, c := startAuthConfServer(ctx, t, ownUsers)
	url := srv.ClientURL()

	const (
		everyWorker = "_INBOX_stepflow_worker.>"
		worker1     = "_INBOX_stepflow_worker.w1.>"
		worker2     = "_INBOX_stepflow_worker.w2.>"
		coordinator = "_INBOX_stepflow_coordinator.>"
		natsDefault = "_INBOX.>"
	)
	other := newSnooper(t, url, "worker-2", "w2-pw", worker2, worker1, everyWorker, coordinator, natsDefault, ">")
	other.requireDenied(worker1, everyWorker, coordinator, natsDefault, ">")
	shared := newSnooper(t, url, "worker", "worker-pw", coordinator, natsDefault, ">")
	shared.requireDenied(coordinator, natsDefault, ">")
	sdk := newSnooper(t, url, "sdk", "sdk-pw", natsDefault, everyWorker, coordinator)
	sdk.requireDenied(everyWorker, coordinator)
	control := newSnooper(t, url, "coordinator", "coord-pw", worker1, coordinator)

	worker, workerLogs := startWorkerCmd(t, []string{"STEPFLOW_NATS_PASSWORD=w1-pw", "STEPFLOW_BLOB_CACHE_BYTES=0"},
		"--nats-url", url, "--nats-user", "worker-1", "--nats-inbox-prefix", "_INBOX_stepflow_worker.w1",
		"--concurrency", "2", "--config", "examples/batch-processor/stepflow-config.yml")
	runExamplesThenStop(t, c, worker, workerLogs)
	var needed []string
	for _, v := range violations(serverLogs) {
		if strings.Contains(v, "user:worker-1") || strings.Contains(v, "user:coordinator") {
			needed = append(needed, v)
		}
	}
	require.Empty(t, needed, "worker-1 or the coordinator needed a subject its user does not grant")

	// Every message anyone could have seen was sent before the worker
	// stopped; a round trip through the server makes sure each snooper
	// got what was routed to it.
	for _, s := range []*snooper{other, shared, sdk, control} {
		require.NoError(t, s.nc.Flush())
	}
	require.Positive(t, control.received(worker1), "the worker's inbox carried nothing: the test proves nothing")
	require.Positive(t, control.received(coordinator), "the coordinator's inbox carried nothing: the test proves nothing")
	require.Zero(t, other.received(worker2), "worker-2 read replies that were not its own")
	require.Zero(t, sdk.received(natsDefault), "the SDK user read a stepflow process's replies")
}

// TestNATSAuthCalloutIsolatesWorkers: with auth-callout.conf, workers
// share one user and password, and still none reads another's replies.
// The coordinator answers the server's auth callout; a worker started
// with --nats-inbox-key runs the batch-processor example (nested runs)
// and the hello example (blobs) while a second login of the worker user,
// with a key of its own, subscribes to every inbox it can: the server
// lets it subscribe under its own key's prefix only. A login that claims
// the first worker's key without its private key, one without a key and
// one with a wrong password are refused. A coordinator-user subscription
// to the worker's inbox is the control.
func TestNATSAuthCalloutIsolatesWorkers(t *testing.T) {
	skipShort(t)
	t.Parallel()
	requireVenvs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	issuer, err := nkeys.CreateAccount()
	require.NoError(t, err)
	issuerPub, err := issuer.PublicKey()
	require.NoError(t, err)
	seed, err := issuer.Seed()
	require.NoError(t, err)

	srv, serverLogs := startShippedNATSConf(ctx, t, "auth-callout.conf", strings.NewReplacer("$NATS_COORDINATOR_PASSWORD", `"coord-pw"`,
		"$NATS_SDK_PASSWORD", `"sdk-pw"`, "$NATS_AUTH_CALLOUT_ISSUER", `"`+issuerPub+`"`).Replace)
	url := srv.ClientURL()

	// The worker's key is made by the worker; the test learns it from the
	// control's subscription (the prefix's second token).
	control := newSnooper(t, url, "coordinator", "coord-pw", "_INBOX_stepflow_worker.>")
	// The worker starts first: no coordinator answers its login yet, and
	// it tries again until one does.
	worker, workerLogs := startWorkerCmd(t, []string{"STEPFLOW_NATS_USER=worker", "STEPFLOW_NATS_PASSWORD=worker-pw", "STEPFLOW_BLOB_CACHE_BYTES=0"},
		"--nats-url", url, "--nats-inbox-key", "--concurrency", "2", "--config", "examples/batch-processor/stepflow-config.yml")
	for !strings.Contains(workerLogs.String(), "cannot connect to NATS; retrying") {
		select {
		case <-ctx.Done():
			t.Fatalf("the worker did not try to log in: %s", workerLogs.String())
		case <-time.After(20 * time.Millisecond): // polls the worker's log
		}
	}
	c := startCoordinator(t, []string{"STEPFLOW_NATS_PASSWORD=coord-pw", "STEPFLOW_NATS_AUTH_CALLOUT_WORKER_PASSWORD=worker-pw",
		"STEPFLOW_NATS_AUTH_CALLOUT_ISSUER_SEED=" + string(seed)},
		"--nats-url", url, "--nats-user", "coordinator", "--log-level", "warn")

	// Another login of the worker user, with a key of its own.
	thief, err := nkeys.CreateUser()
	require.NoError(t, err)
	thiefPub, err := thief.PublicKey()
	require.NoError(t, err)
	const (
		everyWorker = "_INBOX_stepflow_worker.>"
		anyKey      = "_INBOX_stepflow_worker.*.>"
		coordinator = "_INBOX_stepflow_coordinator.>"
		natsDefault = "_INBOX.>"
	)
	own := "_INBOX_stepflow_worker." + thiefPub + ".>"
	other := newSnooperWith(t, url, []nats.Option{nats.UserInfo("worker", "worker-pw"), nats.Nkey(thiefPub, thief.Sign)},
		own, everyWorker, anyKey, coordinator, natsDefault, ">")
	other.requireDenied(everyWorker, anyKey, coordinator, natsDefault, ">")
	// Its own prefix it may read: the callout granted it.
	require.NoError(t, control.nc.Publish("_INBOX_stepflow_worker."+thiefPub+".probe", nil))
	other.waitReceived(own, 1, "the second login cannot read its own inbox")

	runExamplesThenStop(t, c, worker, workerLogs)
	thiefCID, err := other.nc.GetClientID()
	require.NoError(t, err)
	var needed []string
	for _, v := range violations(serverLogs) {
		if !strings.Contains(v, fmt.Sprintf(" - cid:%d - ", thiefCID)) {
			needed = append(needed, v)
		}
	}
	require.Empty(t, needed, "the worker or the coordinator needed a subject it is not granted")
	for _, s := range []*snooper{other, control} {
		require.NoError(t, s.nc.Flush())
	}
	require.Positive(t, control.received("_INBOX_stepflow_worker.>"), "the worker's inbox carried nothing: the test proves nothing")
	require.Equal(t, 1, other.received(own), "a reply reached another worker's own prefix")

	// The worker's key, from a reply subject the control saw, cannot be
	// claimed without its private key.
	victim := control.lastSubjectToken(1)
	require.True(t, nkeys.IsValidPublicUserKey(victim), "the worker's inbox is not under its key: %q", victim)
	refused := func(what string, opts ...nats.Option) {
		t.Helper()
		nc, err := nats.Connect(url, opts...)
		if nc != nil {
			nc.Close()
		}
		require.ErrorIs(t, err, nats.ErrAuthorization, what)
	}
	refused("the worker's key signed by another", nats.UserInfo("worker", "worker-pw"), nats.Nkey(victim, thief.Sign))
	refused("a worker without a key", nats.UserInfo("worker", "worker-pw"))
	refused("a wrong password", nats.UserInfo("worker", "guess"), nats.Nkey(thiefPub, thief.Sign))
	refused("an unknown user", nats.UserInfo("admin", "worker-pw"), nats.Nkey(thiefPub, thief.Sign))
}
