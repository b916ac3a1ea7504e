package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// The cluster scenarios: a coordinator and two workers on a three-node
// NATS JetStream cluster (nats-server processes on loopback), every stream
// and bucket at three replicas (--nats-replicas 3), every process given
// all three URLs. Nodes are killed and restarted while a batch runs; each
// scenario checks that every item ends with exactly one result and that
// the coordinator never exits. Each logs a "CLUSTER scenario=..." line
// with the recovery times it measured (docs/reliability.md).

// clusterItems is the batch size of the cluster scenarios.
const clusterItems = 3000

// natsCluster is three nats-server processes forming one JetStream
// cluster.
type natsCluster struct {
	t     *testing.T
	dir   string
	ports [3]int
	procs [3]*proc
	// links[i][j] carries node i's route to node j when the cluster was
	// made with newPartitionableCluster; nil otherwise.
	links [3][3]*tcpLink
	// summary is what a stalled wait found (dumpItems' lines): logged
	// again as the test's last lines when it fails, after the nodes' logs,
	// where a CI report that shows only an output's tail finds it.
	summary []string
}

// newNATSCluster writes the nodes' configurations; start them with start.
func newNATSCluster(t *testing.T) *natsCluster { return newNATSClusterOf(t, false) }

// newPartitionableCluster is newNATSCluster with every route through a
// TCP link of its own, so that a node can be cut off (partition).
func newPartitionableCluster(t *testing.T) *natsCluster { return newNATSClusterOf(t, true) }

func newNATSClusterOf(t *testing.T, linked bool) *natsCluster {
	t.Helper()
	c := &natsCluster{t: t, dir: t.TempDir()}
	var routes [3]int
	for i := range 3 {
		c.ports[i], routes[i] = freePort(t), freePort(t)
	}
	routesOf := func(i int) string {
		var rs []string
		for j, p := range routes {
			if linked {
				if j == i {
					continue
				}
				c.links[i][j] = newTCPLink(t, fmt.Sprintf("127.0.0.1:%d", p))
				p = c.links[i][j].port
			}
			rs = append(rs, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
		}
		return strings.Join(rs, ", ")
	}
	for i := range 3 {
		rs := routesOf(i)
		conf := fmt.Sprintf(`server_name: n%d
listen: 127.0.0.1:%d
log_file: %q
jetstream {
  store_dir: %q
  sync_interval: always
}
cluster {
  name: stepflow
  listen: 127.0.0.1:%d
  routes: [%s]
}
`, i, c.ports[i], filepath.Join(c.dir, fmt.Sprintf("n%d.log", i)), filepath.Join(c.dir, fmt.Sprintf("n%d", i)), routes[i], rs)
		require.NoError(t, os.WriteFile(c.conf(i), []byte(conf), 0o644))
	}
	t.Cleanup(func() {
		for _, p := range c.procs {
			if p != nil {
				p.stop(t)
			}
		}
		if t.Failed() {
			for i := range 3 {
				if log, err := os.ReadFile(filepath.Join(c.dir, fmt.Sprintf("n%d.log", i))); err == nil {
					t.Logf("n%d log (last 4 KiB):\n%s", i, log[max(0, len(log)-4096):])
				}
			}
			if len(c.summary) > 0 {
				t.Logf("the stall, as the nodes saw it (repeated from above):\n%s", strings.Join(c.summary, "\n"))
			}
		}
	})
	return c
}

func (c *natsCluster) conf(i int) string { return filepath.Join(c.dir, fmt.Sprintf("n%d.conf", i)) }

// urls is every node's client URL, comma-separated.
func (c *natsCluster) urls() string {
	var us []string
	for _, p := range c.ports {
		us = append(us, fmt.Sprintf("nats://127.0.0.1:%d", p))
	}
	return strings.Join(us, ",")
}

// start starts (or restarts, on its store) node i and waits until it
// accepts connections.
func (c *natsCluster) start(i int) {
	t := c.t
	t.Helper()
	require.True(t, c.procs[i] == nil || c.procs[i].exited(), "n%d is running", i)
	c.procs[i] = launch(t, fmt.Sprintf("n%d", i), nil, nil, natsServerBin, "-c", c.conf(i))
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", c.ports[i]), time.Second)
		if err == nil {
			_ = conn.Close()
			return
		}
		require.False(t, c.procs[i].exited(), "n%d exited: %v", i, c.procs[i].exitErr())
		require.True(t, time.Now().Before(deadline), "n%d does not accept connections: %v", i, err)
		time.Sleep(20 * time.Millisecond) // an external process: poll
	}
}

// kill9 kills node i.
func (c *natsCluster) kill9(i int) { c.procs[i].kill9(c.t) }

// isolate cuts node i off from the other two (both directions of every
// route; clients keep their connections), or joins it again.
func (c *natsCluster) isolate(i int, cut bool) {
	for a := range 3 {
		for b := range 3 {
			if l := c.links[a][b]; l != nil && (a == i || b == i) {
				l.setCut(cut)
			}
		}
	}
}

// tcpLink forwards connections from a port of its own to target until it
// is cut: then it closes the connections it carries and refuses new ones
// (accepts and closes them) until joined again.
type tcpLink struct {
	target string
	port   int
	ln     net.Listener

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}
}

func newTCPLink(t *testing.T, target string) *tcpLink {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	l := &tcpLink{target: target, port: ln.Addr().(*net.TCPAddr).Port, ln: ln, conns: map[net.Conn]struct{}{}}
	var wg sync.WaitGroup
	wg.Go(func() { l.serve(&wg) })
	t.Cleanup(func() {
		_ = ln.Close()
		l.setCut(true)
		wg.Wait()
	})
	return l
}

func (l *tcpLink) serve(wg *sync.WaitGroup) {
	for {
		in, err := l.ln.Accept()
		if err != nil {
			return
		}
		if !l.track(in) {
			_ = in.Close()
			continue
		}
		wg.Go(func() {
			defer l.untrack(in)
			out, err := net.DialTimeout("tcp", l.target, 2*time.Second)
			if err != nil || !l.track(out) {
				if out != nil {
					_ = out.Close()
				}
				return
			}
			defer l.untrack(out)
			done := make(chan struct{}, 2)
			go func() { _, _ = io.Copy(out, in); done <- struct{}{} }()
			go func() { _, _ = io.Copy(in, out); done <- struct{}{} }()
			<-done
			_ = in.Close()
			_ = out.Close()
			<-done
		})
	}
}

// track registers a connection; false while cut.
func (l *tcpLink) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cut {
		return false
	}
	l.conns[c] = struct{}{}
	return true
}

func (l *tcpLink) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
	_ = c.Close()
}

func (l *tcpLink) setCut(cut bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cut = cut
	if cut {
		for c := range l.conns {
			_ = c.Close()
		}
	}
}

// streamLeader returns the index of the node leading stream.
func (c *natsCluster) streamLeader(stream string) int {
	t := c.t
	t.Helper()
	nc, err := nats.Connect(c.urls(), nats.Name("cluster-test"))
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	var leader string
	deadline := time.Now().Add(chaosWait)
	for leader == "" {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		s, err := js.Stream(ctx, stream)
		if err == nil && s.CachedInfo().Cluster != nil {
			leader = s.CachedInfo().Cluster.Leader
		}
		cancel()
		require.True(t, time.Now().Before(deadline), "stream %s has no leader", stream)
		if leader == "" {
			time.Sleep(100 * time.Millisecond) // an election under way: poll
		}
	}
	i, err := strconv.Atoi(strings.TrimPrefix(leader, "n"))
	require.NoError(t, err, leader)
	return i
}

// newClusterEnv starts the cluster (unless late) and the chaos harness on
// it: a coordinator with --nats-replicas 3 and two workers of 4 slots.
func newClusterEnv(t *testing.T, c *natsCluster, launched func(), coordArgs ...string) *chaosEnv {
	t.Helper()
	e := newChaosEnv(t, chaosOptions{natsURL: c.urls(), launched: launched,
		coordArgs: append([]string{"--nats-replicas", "3"}, coordArgs...)})
	e.addWorker("w1", 4)
	e.addWorker("w2", 4)
	e.stalled = func(what string) {
		c.summary = append(c.summary, "timed out waiting until "+what)
		c.dumpItems()
		// The coordinator's goroutines, on its stderr (in the test log).
		if !e.coord.exited() {
			_ = e.coord.cmd.Process.Signal(syscall.SIGQUIT)
			select {
			case <-e.coord.done:
			case <-time.After(10 * time.Second):
			}
		}
	}
	return e
}

// dumpItems logs every replicated stream's leader and replicas, and the
// items stream and its consumers, as each running node sees them: where a
// stalled batch stands. Each line is kept in c.summary too.
func (c *natsCluster) dumpItems() {
	logf := func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		c.summary = append(c.summary, line)
		c.t.Log(line)
	}
	for i, p := range c.procs {
		if p == nil || p.exited() {
			continue
		}
		func() {
			nc, err := nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", c.ports[i]))
			if err != nil {
				logf("n%d: %v", i, err)
				return
			}
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			for si := range js.ListStreams(ctx).Info() {
				if si.Cluster == nil {
					continue
				}
				var peers []string
				for _, p := range si.Cluster.Replicas {
					peers = append(peers, fmt.Sprintf("%s(current=%t offline=%t lag=%d active=%s)", p.Name, p.Current, p.Offline, p.Lag, p.Active.Round(time.Millisecond)))
				}
				logf("n%d: stream %s: msgs=%d last_seq=%d leader=%q replicas=%v", i, si.Config.Name, si.State.Msgs, si.State.LastSeq, si.Cluster.Leader, peers)
			}
			s, err := js.Stream(ctx, "STEPFLOW_ITEMS")
			if err != nil {
				logf("n%d: stream: %v", i, err)
				return
			}
			si := s.CachedInfo()
			logf("n%d: stream STEPFLOW_ITEMS: state=%+v cluster=%+v", i, si.State, si.Cluster)
			for ci := range s.ListConsumers(ctx).Info() {
				logf("n%d: consumer %s: delivered=%+v ack_floor=%+v ack_pending=%d redelivered=%d waiting=%d pending=%d cluster=%+v",
					i, ci.Name, ci.Delivered, ci.AckFloor, ci.NumAckPending, ci.NumRedelivered, ci.NumWaiting, ci.NumPending, ci.Cluster)
			}
		}()
	}
}

// startClusterBatch starts c's three nodes, a coordinator and two
// workers on them, and submits a batch of clusterItems items tagged tag
// at concurrency 8.
func startClusterBatch(t *testing.T, c *natsCluster, tag string) (*chaosEnv, string) {
	t.Helper()
	for i := range 3 {
		c.start(i)
	}
	e := newClusterEnv(t, c, nil)
	return e, e.submitNoWait(e.writeFlow("cluster", ""), e.writeInputs(tag, clusterItems, nil), 8)
}

// progressAfter waits until the run (of n items) has more results than it
// had when called, and returns how long that took since since. done
// reports a run that already had all n results when called: there is no
// more progress to wait for (a rolling restart can outlast a batch on a
// loaded machine; waiting for an n+1st result timed out in CI).
func (e *chaosEnv) progressAfter(runID string, n int, since time.Time) (d time.Duration, done bool) {
	e.t.Helper()
	var base int
	e.waitUntil("the coordinator answers", func() bool {
		st, ok := e.status(runID)
		base = st.Items.Completed + st.Items.Failed
		return ok
	})
	if base >= n {
		return 0, true
	}
	e.waitCompleted(runID, base+1)
	return time.Since(since), false
}

// reportCluster logs the line the figures in docs/reliability.md come
// from: go test -v -run TestCluster ./test/integration/ | grep CLUSTER
func reportCluster(t *testing.T, scenario string, n int, rep chaosReport, extra ...string) {
	t.Helper()
	t.Log(strings.Join(append([]string{fmt.Sprintf("CLUSTER scenario=%s items=%d lost=%d duplicates=%d reexecuted=%d",
		scenario, n, rep.lost, rep.duplicates, rep.reexecuted)}, extra...), " "))
}

// kill -9 of the items stream's leader mid-batch, then its restart: the
// other two elect a new leader and the batch goes on.
func TestClusterStreamLeaderKill(t *testing.T) {
	skipShort(t)
	c := newNATSCluster(t)
	e, run := startClusterBatch(t, c, "c1")
	e.waitCompleted(run, clusterItems*3/10)

	leader := c.streamLeader("STEPFLOW_ITEMS")
	killed := time.Now()
	c.kill9(leader)
	resumed, _ := e.progressAfter(run, clusterItems, killed)
	c.start(leader)
	rep := e.verify(run, "c1", clusterItems)
	finished := time.Since(killed)
	require.False(t, e.coord.exited(), "the coordinator exited: %v", e.coord.exitErr())
	e.requireAlive("w1", "w2")
	reportCluster(t, "leader-kill", clusterItems, rep, fmt.Sprintf("killed=n%d results_again_after=%s finished_after=%s",
		leader, resumed.Round(100*time.Millisecond), finished.Round(100*time.Millisecond)))
}

// Two of the three nodes down together for 15 s (quorum lost), then back:
// the run pauses and completes; the coordinator stays up throughout.
func TestClusterQuorumLoss(t *testing.T) { clusterQuorumLoss(t, 15*time.Second, "c2") }

// The same for 2 minutes: far past the lease TTL, the items' AckWait and
// every client's request timeouts.
func TestClusterQuorumLossLong(t *testing.T) { clusterQuorumLoss(t, 2*time.Minute, "c2long") }

func clusterQuorumLoss(t *testing.T, down time.Duration, tag string) {
	skipShort(t)
	c := newNATSCluster(t)
	e, run := startClusterBatch(t, c, tag)
	e.waitCompleted(run, clusterItems*3/10)

	leader := c.streamLeader("STEPFLOW_ITEMS")
	other := (leader + 1) % 3
	c.kill9(leader)
	c.kill9(other)
	// The outage's length is the scenario: nothing to wait for.
	outage := time.NewTimer(down)
	select {
	case <-outage.C:
	case <-e.coord.done:
		t.Fatalf("the coordinator exited while the quorum was lost: %v", e.coord.err)
	}
	back := time.Now()
	c.start(leader)
	c.start(other)
	resumed, _ := e.progressAfter(run, clusterItems, back)
	rep := e.verify(run, tag, clusterItems)
	finished := time.Since(back)
	require.False(t, e.coord.exited(), "the coordinator exited: %v", e.coord.exitErr())
	e.requireAlive("w1", "w2")
	reportCluster(t, "quorum-loss", clusterItems, rep, fmt.Sprintf("outage=%s results_again_after=%s finished_after=%s",
		down, resumed.Round(100*time.Millisecond), finished.Round(100*time.Millisecond)))
}

// A coordinator started before the NATS cluster (as on Kubernetes, where
// they start together) waits for it, not ready meanwhile, then runs a
// batch.
func TestClusterCoordinatorBeforeNATS(t *testing.T) {
	skipShort(t)
	c := newNATSCluster(t)
	port := freePort(t)
	var formed time.Time
	// The cluster starts once the coordinator says it waits for NATS.
	launched := func() {
		readyz := fmt.Sprintf("http://127.0.0.1:%d/readyz", port)
		deadline := time.Now().Add(chaosWait)
		for {
			resp, err := http.Get(readyz)
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				_ = resp.Body.Close()
				require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "%s", body)
				require.Contains(t, string(body), "NATS")
				break
			}
			require.True(t, time.Now().Before(deadline), "the coordinator never listened on port %d: %v", port, err)
			time.Sleep(20 * time.Millisecond) // a process starting: poll
		}
		formed = time.Now()
		for i := range 3 {
			c.start(i)
		}
	}
	e := newClusterEnv(t, c, launched, "--port", strconv.Itoa(port))
	ready := time.Since(formed)
	begin := time.Now()
	run := e.submitNoWait(e.writeFlow("cluster", ""), e.writeInputs("c3", clusterItems, nil), 8)
	rep := e.verify(run, "c3", clusterItems)
	require.False(t, e.coord.exited(), "the coordinator exited: %v", e.coord.exitErr())
	reportCluster(t, "coordinator-first", clusterItems, rep, fmt.Sprintf("ready_after_nats_start=%s batch=%s",
		ready.Round(100*time.Millisecond), time.Since(begin).Round(100*time.Millisecond)))
}

// The node leading the items stream cut off from the other two (its
// routes dropped, clients still connected) for 15 s, longer than the
// election timeout, then joined again: the majority elects a new leader,
// and a worker connected to the cut-off node moves to another server once
// JetStream has not answered through it for queue.DefaultMoveAfter. The
// batch completes exactly once; the figures say how far it got while the
// node was cut off.
func TestClusterPartition(t *testing.T) {
	skipShort(t)
	c := newPartitionableCluster(t)
	e, run := startClusterBatch(t, c, "c5")
	e.waitCompleted(run, clusterItems/5)

	leader := c.streamLeader("STEPFLOW_ITEMS")
	before, _ := e.status(run)
	cut := time.Now()
	c.isolate(leader, true)
	// The partition's length is the scenario: nothing to wait for.
	partition := time.NewTimer(15 * time.Second)
	select {
	case <-partition.C:
	case <-e.coord.done:
		t.Fatalf("the coordinator exited during the partition: %v", e.coord.err)
	}
	// The run's record as the coordinator reads it then ("unknown" when
	// it cannot: it reads through the cut-off node).
	progress := "unknown"
	if during, ok := e.status(run); ok {
		progress = strconv.Itoa(during.Items.Completed - before.Items.Completed)
	}
	c.isolate(leader, false)
	rep := e.verify(run, "c5", clusterItems)
	require.False(t, e.coord.exited(), "the coordinator exited: %v", e.coord.exitErr())
	e.requireAlive("w1", "w2")
	reportCluster(t, "partition", clusterItems, rep, fmt.Sprintf("isolated=n%d results_during_partition=%s finished_after=%s",
		leader, progress, time.Since(cut).Round(100*time.Millisecond)))
}

// A rolling restart of the three nodes, one at a time, each stopped with
// SIGTERM (what a Kubernetes upgrade of the NATS StatefulSet does) and
// started again at once: the batch completes exactly once. About one run
// in three, the memory-storage items stream comes back empty after a
// restart, its sequences back at their start and its incarnation
// unchanged; the coordinator sees it went back, creates it anew and
// publishes the unfinished items again (before, the batch stalled for
// good: the consumer waited for acks of messages that were gone).
func TestClusterRollingRestart(t *testing.T) {
	skipShort(t)
	c := newNATSCluster(t)
	e, run := startClusterBatch(t, c, "c4")
	e.waitCompleted(run, clusterItems/5)

	began := time.Now()
	var gaps []string
	for i := range 3 {
		c.procs[i].stop(t)
		stopped := time.Now()
		c.start(i)
		gap, done := e.progressAfter(run, clusterItems, stopped)
		if done {
			gaps = append(gaps, fmt.Sprintf("n%d=after-the-batch", i))
			continue
		}
		gaps = append(gaps, fmt.Sprintf("n%d=%s", i, gap.Round(100*time.Millisecond)))
	}
	rep := e.verify(run, "c4", clusterItems)
	require.False(t, e.coord.exited(), "the coordinator exited: %v", e.coord.exitErr())
	e.requireAlive("w1", "w2")
	reportCluster(t, "rolling-restart", clusterItems, rep, fmt.Sprintf("results_again_after_each=%s finished_after=%s",
		strings.Join(gaps, ","), time.Since(began).Round(100*time.Millisecond)))
}

// A worker started while the cluster has no quorum (two of three nodes
// down) waits for JetStream instead of exiting, and serves a batch once
// the nodes are back. Found by the soak: a worker restarted while a node
// was down exited with "object store STEPFLOW_BLOBS: context deadline
// exceeded".
func TestClusterWorkerStartsWithoutQuorum(t *testing.T) {
	skipShort(t)
	c := newNATSCluster(t)
	for i := range 3 {
		c.start(i)
	}
	e := newChaosEnv(t, chaosOptions{natsURL: c.urls(), coordArgs: []string{"--nats-replicas", "3"}})
	c.kill9(1)
	c.kill9(2)
	w := e.addWorker("w1", 4)
	// Longer than a JetStream request's timeout (5 s): the outage is the
	// scenario, nothing to wait for.
	outage := time.NewTimer(8 * time.Second)
	select {
	case <-outage.C:
	case <-w.done:
		t.Fatalf("the worker exited while the cluster had no quorum: %v", w.err)
	}
	c.start(1)
	c.start(2)
	run := e.submitNoWait(e.writeFlow("cluster", ""), e.writeInputs("c6", 500, nil), 4)
	rep := e.verify(run, "c6", 500)
	e.requireAlive("w1")
	reportCluster(t, "worker-without-quorum", 500, rep)
}
