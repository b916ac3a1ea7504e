package queue

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// The object info of a new blob is encoded by hand exactly as
// encoding/json encodes it; any other info goes through encoding/json.
func TestPlainObjectInfoMatchesEncodingJSON(t *testing.T) {
	info := func(kind string, size uint64, chunks uint32, nuid string) *jetstream.ObjectInfo {
		return &jetstream.ObjectInfo{
			ObjectMeta: jetstream.ObjectMeta{
				Name:     strings.Repeat("ab", 32),
				Metadata: map[string]string{MetaBlobKind: kind},
				Opts:     &jetstream.ObjectMetaOptions{ChunkSize: blobChunkSize},
			},
			Bucket: BucketBlobs, NUID: nuid, Size: size, Chunks: chunks, Digest: "SHA-256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU=",
		}
	}
	for _, in := range []*jetstream.ObjectInfo{
		info("data", 12, 1, strings.Repeat("ab", 32)),
		info("flow", 1<<20, 8, "N0BXP5BWU0RRUWVLUOP7T4"),
		func() *jetstream.ObjectInfo { i := info("data", 0, 1, "x"); i.Digest = ""; return i }(),
	} {
		want, err := json.Marshal(in)
		require.NoError(t, err)
		got, ok := appendPlainObjectInfo(nil, in)
		require.True(t, ok)
		require.Equal(t, string(want), string(got))
		m, err := metaMsg(in, 0)
		require.NoError(t, err)
		require.Equal(t, string(want), string(m.Data))
		require.Empty(t, m.Header.Get(jetstream.MsgRollup), "a first info needs no rollup")
		m, err = metaMsg(in, 7)
		require.NoError(t, err)
		require.Equal(t, jetstream.MsgRollupSubject, m.Header.Get(jetstream.MsgRollup))
	}
	for name, mod := range map[string]func(*jetstream.ObjectInfo){
		"description": func(i *jetstream.ObjectInfo) { i.Description = "d" },
		"headers":     func(i *jetstream.ObjectInfo) { i.Headers = nats.Header{"A": {"b"}} },
		"metadata":    func(i *jetstream.ObjectInfo) { i.Metadata["other"] = "x" },
		"no kind":     func(i *jetstream.ObjectInfo) { i.Metadata = map[string]string{"other": "x"} },
		"link":        func(i *jetstream.ObjectInfo) { i.Opts.Link = &jetstream.ObjectLink{Bucket: "b"} },
		"mtime":       func(i *jetstream.ObjectInfo) { i.ModTime = time.Unix(1, 0) },
		"deleted":     func(i *jetstream.ObjectInfo) { i.Deleted = true },
		"escape":      func(i *jetstream.ObjectInfo) { i.Metadata[MetaBlobKind] = `a"<b>` },
	} {
		in := info("data", 1, 1, "n")
		mod(in)
		_, ok := appendPlainObjectInfo(nil, in)
		require.False(t, ok, name)
		want, err := json.Marshal(in)
		require.NoError(t, err)
		m, err := metaMsg(in, 0)
		require.NoError(t, err)
		require.Equal(t, string(want), string(m.Data), name)
	}
}
