package stepflow

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"

	"github.com/stepflow-go/stepflow/pkg/blob"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// Blob references of stepflow-py 0.10+ (upstream 0.11 protocol.json,
// InitializeResult.supportsBlobRefs): a server that reports
// supportsBlobRefs may return, anywhere in an output, an object
// {"$blob": "<64 hex digits>", "blobType": …, "size": …} that stands for
// a blob it stored through the blob API (it does so for top-level fields
// larger than capabilities.blobThreshold). The runtime resolves them
// before the flow sees the output.

// blobRefKey is the key of a blob reference object.
const blobRefKey = "$blob"

// maxBlobRefDepth bounds the rounds of resolution: a resolved blob may
// hold references itself (the SDK resolves at most 8 rounds too).
const maxBlobRefDepth = 8

// ErrBlobRef is wrapped by the failure to resolve a blob reference of a
// component's output.
var ErrBlobRef = errors.New("cannot resolve blob reference")

// blobRef returns the id of a blob reference object.
func blobRef(o *value.Object) (string, bool) {
	v, ok := o.Get(blobRefKey)
	if !ok {
		return "", false
	}
	id, ok := v.(string)
	return id, ok && blob.ValidID(id)
}

// resolveBlobRefs returns v with every blob reference replaced by its
// blob's data, read from store. Values without references are returned
// as they are (not copied).
func resolveBlobRefs(ctx context.Context, store blob.Store, v value.Value) (value.Value, error) {
	out, _, err := resolveRefs(ctx, store, v, 0)
	return out, err
}

func resolveRefs(ctx context.Context, store blob.Store, v value.Value, depth int) (value.Value, bool, error) {
	switch t := v.(type) {
	case *value.Object:
		if id, ok := blobRef(t); ok {
			if depth >= maxBlobRefDepth {
				return nil, false, fmt.Errorf("%w %s: references nested more than %d deep", ErrBlobRef, id, maxBlobRefDepth)
			}
			if store == nil {
				return nil, false, fmt.Errorf("%w %s: %w", ErrBlobRef, id, errNoBlobs)
			}
			b, err := store.Get(ctx, id)
			if err != nil {
				return nil, false, fmt.Errorf("%w %s: %w", ErrBlobRef, id, err)
			}
			data, _, err := resolveRefs(ctx, store, b.Data, depth+1)
			return data, true, err
		}
		var out *value.Object
		for i := range t.Len() {
			k, fv := t.At(i)
			nv, changed, err := resolveRefs(ctx, store, fv, depth)
			if err != nil {
				return nil, false, err
			}
			if changed && out == nil {
				out = value.NewObject(t.Len())
				for j := range i {
					out.Set(t.At(j))
				}
			}
			if out != nil {
				out.Set(k, nv)
			}
		}
		if out == nil {
			return t, false, nil
		}
		return out, true, nil
	case []value.Value:
		var out []value.Value
		for i, e := range t {
			ne, changed, err := resolveRefs(ctx, store, e, depth)
			if err != nil {
				return nil, false, err
			}
			if changed && out == nil {
				out = make([]value.Value, len(t))
				copy(out, t[:i])
			}
			if out != nil {
				out[i] = ne
			}
		}
		if out == nil {
			return t, false, nil
		}
		return out, true, nil
	default:
		return v, false, nil
	}
}

// loopbackURL reports whether u names this machine by a loopback address
// or localhost: only such a remote server can reach the blob API, which
// listens on loopback.
func loopbackURL(u string) bool {
	pu, err := url.Parse(u)
	if err != nil {
		return false
	}
	host := pu.Hostname()
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
