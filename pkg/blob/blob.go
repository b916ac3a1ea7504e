// Package blob is the content-addressed store for JSON blobs: data stored
// by /builtin/put_blob, flows stored for /builtin/eval, and (later) the
// blobs/put and blobs/get callbacks of component servers.
//
// A blob's id is the lowercase hex SHA-256 of the compact JSON encoding of
// its data (value.Marshal: key order kept, no whitespace), exactly as
// upstream Stepflow computes it, so ids agree across implementations. A
// flow blob stores the flow's canonical JSON, so its id is the flow id.
//
// Two implementations are provided: [Memory], a plain goroutine-safe map,
// and [Spill], which keeps memory bounded for very large batches by
// appending blobs beyond a memory budget to a temporary file and keeping
// only a compact index in memory.
package blob

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"

	"github.com/stepflow-go/stepflow/pkg/value"
)

// Kind tells what a blob holds.
type Kind string

// Blob kinds.
const (
	// KindData is arbitrary JSON data.
	KindData Kind = "data"
	// KindFlow is a flow in canonical JSON form; its id is the flow id.
	KindFlow Kind = "flow"
)

// Valid reports whether k is a known kind.
func (k Kind) Valid() bool { return k == KindData || k == KindFlow }

// Blob is a stored blob.
type Blob struct {
	// ID is the lowercase hex SHA-256 of value.Marshal(Data).
	ID string
	// Kind tells whether Data is plain data or a flow.
	Kind Kind
	// Data is the stored JSON. Treat it as immutable.
	Data value.Value
}

// Store stores blobs by content. Implementations are safe for concurrent
// use.
//
// Put is idempotent: storing the same data again returns the same id. When
// the same data is stored as both kinds, KindFlow wins: a blob once known
// to be a flow stays one (so that a flow stored as data first can still be
// evaluated after it was stored as a flow).
type Store interface {
	// Put stores data and returns its id.
	Put(ctx context.Context, kind Kind, data value.Value) (id string, err error)
	// Get returns the blob with the id, or an error wrapping ErrNotFound.
	Get(ctx context.Context, id string) (Blob, error)
}

var (
	// ErrNotFound is wrapped by Get errors for unknown (or malformed) ids.
	ErrNotFound = errors.New("blob not found")
	// ErrInvalidKind is returned by Put for a kind other than KindData or
	// KindFlow.
	ErrInvalidKind = errors.New("invalid blob kind")
	// ErrClosed is returned by a closed store.
	ErrClosed = errors.New("blob store closed")
)

// ID returns the blob id of data: the lowercase hex SHA-256 of its compact
// JSON encoding.
func ID(data value.Value) string {
	sum := sha256.Sum256(value.Marshal(data))
	return hex.EncodeToString(sum[:])
}

// IDOf returns the id of already encoded compact JSON.
func IDOf(compactJSON []byte) string {
	sum := sha256.Sum256(compactJSON)
	return hex.EncodeToString(sum[:])
}

// ValidID reports whether id has the form of a blob id: 64 lowercase hex
// digits. Ids are case-sensitive, as upstream.
func ValidID(id string) bool {
	if len(id) != 2*sha256.Size {
		return false
	}
	for i := range len(id) {
		c := id[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// parseID decodes a valid id into its digest.
func parseID(id string) ([sha256.Size]byte, bool) {
	var d [sha256.Size]byte
	if !ValidID(id) {
		return d, false
	}
	if _, err := hex.Decode(d[:], []byte(id)); err != nil {
		return d, false
	}
	return d, true
}

// mergeKind returns the kind a blob keeps when stored again as next.
func mergeKind(prev, next Kind) Kind {
	if prev == KindFlow || next == KindFlow {
		return KindFlow
	}
	return KindData
}
