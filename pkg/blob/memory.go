package blob

import (
	"context"
	"fmt"
	"sync"

	"github.com/stepflow-go/stepflow/pkg/value"
)

// Memory is an in-memory Store. The zero value is not usable; call
// NewMemory.
type Memory struct {
	mu    sync.RWMutex
	blobs map[string]Blob
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory {
	return &Memory{blobs: make(map[string]Blob)}
}

// Put stores data under its content id.
func (m *Memory) Put(_ context.Context, kind Kind, data value.Value) (string, error) {
	if !kind.Valid() {
		return "", fmt.Errorf("%w: %q", ErrInvalidKind, kind)
	}
	id := ID(data)
	m.mu.Lock()
	defer m.mu.Unlock()
	if prev, ok := m.blobs[id]; ok {
		if k := mergeKind(prev.Kind, kind); k != prev.Kind {
			prev.Kind = k
			m.blobs[id] = prev
		}
		return id, nil
	}
	m.blobs[id] = Blob{ID: id, Kind: kind, Data: data}
	return id, nil
}

// Get returns the blob with the id.
func (m *Memory) Get(_ context.Context, id string) (Blob, error) {
	m.mu.RLock()
	b, ok := m.blobs[id]
	m.mu.RUnlock()
	if !ok {
		return Blob{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return b, nil
}

// Len returns the number of stored blobs.
func (m *Memory) Len() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.blobs)
}
