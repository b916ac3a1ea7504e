package queue_test

import (
	"context"
	"fmt"
	"iter"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/stepflow-go/stepflow/pkg/queue"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// bundle is one test's JetStream: an embedded server on a random port with
// its store in t.TempDir(), a client connection, and the provisioned
// layout.
type bundle struct {
	srv *queue.Embedded
	nc  *nats.Conn
	js  jetstream.JetStream
	log *zap.Logger
}

// setup starts a server and connects to it; everything is shut down in
// t.Cleanup (connection first, then the server, before the temp dir goes).
func setup(t testing.TB, provision bool) *bundle {
	t.Helper()
	return setupSync(t, provision, queue.SyncPolicy{})
}

// setupSync is setup with the server's fsync policy.
func setupSync(t testing.TB, provision bool, sync queue.SyncPolicy) *bundle {
	t.Helper()
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	srv := queue.NewEmbedded(queue.EmbeddedConfig{StoreDir: t.TempDir(), Logger: log, Sync: sync})
	require.NoError(t, srv.Start(testCtx(t)))
	t.Cleanup(srv.Shutdown)
	nc, js, err := queue.Connect(testCtx(t), srv.ClientURL(), queue.ConnectOptions{Name: t.Name(), Logger: log})
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	if provision {
		require.NoError(t, queue.Provision(testCtx(t), js, queue.Config{Logger: log}))
	}
	return &bundle{srv: srv, nc: nc, js: js, log: log}
}

// testCtx returns a context bounded well below the test timeout.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// inputs yields n items {"i":<index>} from index from.
func inputs(from, n int) iter.Seq2[int, []byte] {
	return func(yield func(int, []byte) bool) {
		for i := from; i < from+n; i++ {
			if !yield(i, fmt.Appendf(nil, `{"i":%d}`, i)) {
				return
			}
		}
	}
}

// subjectCount returns how many messages stream holds on subject.
func subjectCount(t testing.TB, js jetstream.JetStream, stream, subject string) uint64 {
	t.Helper()
	s, err := js.Stream(testCtx(t), stream)
	require.NoError(t, err)
	info, err := s.Info(testCtx(t), jetstream.WithSubjectFilter(subject))
	require.NoError(t, err)
	return info.State.Subjects[subject]
}
