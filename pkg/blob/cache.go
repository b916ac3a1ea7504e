package blob

import (
	"container/list"
	"context"
	"sync"

	"github.com/stepflow-go/stepflow/pkg/value"
)

// DefaultCacheBytes is a sensible budget for a worker's Cache: 64 MiB.
const DefaultCacheBytes = 64 << 20

// cacheEntryOverhead is what a Cache counts for an entry beyond its data:
// the id, the entry, the list element and the map slot.
const cacheEntryOverhead = 256

// Cache is a bounded least-recently-used set of blobs by id, for a Store
// whose reads are expensive (a distributed one): blobs are content
// addressed, so a cached blob's data never goes stale. Its kind can: a
// blob cached as KindData may since have been stored as a flow through
// another process; see WithoutCache. The budget is counted in bytes of
// memory, as MemSize estimates them (parsed JSON takes 2 to 10 times its
// encoded size), plus a fixed overhead per entry. A nil *Cache is a
// valid, empty cache that holds nothing. It is safe for concurrent use
// and runs no goroutine.
type Cache struct {
	max int64

	mu        sync.Mutex
	bytes     int64
	lru       list.List // of *cacheEntry, most recently used first
	entries   map[string]*list.Element
	hits      uint64
	misses    uint64
	evictions uint64
}

type cacheEntry struct {
	blob Blob
	size int64 // as counted against the budget
}

// CacheStats are a Cache's counters.
type CacheStats struct {
	// Hits and Misses count Get calls that found a blob and that did not.
	Hits, Misses uint64
	// Evictions counts blobs dropped to stay within the budget.
	Evictions uint64
	// Entries and Bytes are what the cache holds now (Bytes as counted
	// against the budget).
	Entries int
	Bytes   int64
}

// NewCache returns an empty cache holding at most maxBytes of blobs.
// maxBytes <= 0 returns nil, the cache that holds nothing.
func NewCache(maxBytes int64) *Cache {
	if maxBytes <= 0 {
		return nil
	}
	return &Cache{max: maxBytes, entries: make(map[string]*list.Element)}
}

// Get returns the cached blob with the id and marks it recently used.
func (c *Cache) Get(id string) (Blob, bool) {
	if c == nil {
		return Blob{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[id]
	if !ok {
		c.misses++
		return Blob{}, false
	}
	c.hits++
	c.lru.MoveToFront(el)
	return el.Value.(*cacheEntry).blob, true
}

// Add caches b, evicting the least recently used blobs beyond the
// budget. A blob larger than the whole budget is not cached. Adding a
// cached blob again marks it recently used and merges its kind: KindFlow
// wins, as in every Store.
func (c *Cache) Add(b Blob) {
	if c == nil {
		return
	}
	c.mu.Lock()
	if el, ok := c.entries[b.ID]; ok {
		e := el.Value.(*cacheEntry)
		e.blob.Kind = mergeKind(e.blob.Kind, b.Kind)
		c.lru.MoveToFront(el)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	n := MemSize(b.Data) + cacheEntryOverhead
	if n > c.max {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[b.ID]; ok { // added meanwhile
		e := el.Value.(*cacheEntry)
		e.blob.Kind = mergeKind(e.blob.Kind, b.Kind)
		c.lru.MoveToFront(el)
		return
	}
	c.entries[b.ID] = c.lru.PushFront(&cacheEntry{blob: b, size: n})
	c.bytes += n
	for c.bytes > c.max {
		el := c.lru.Back()
		e := el.Value.(*cacheEntry)
		c.lru.Remove(el)
		delete(c.entries, e.blob.ID)
		c.bytes -= e.size
		c.evictions++
	}
}

// Stats returns the cache's counters.
func (c *Cache) Stats() CacheStats {
	if c == nil {
		return CacheStats{}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return CacheStats{Hits: c.hits, Misses: c.misses, Evictions: c.evictions, Entries: len(c.entries), Bytes: c.bytes}
}

// MaxBytes returns the cache's budget (0 for a nil cache).
func (c *Cache) MaxBytes() int64 {
	if c == nil {
		return 0
	}
	return c.max
}

type withoutCacheKey struct{}

// WithoutCache returns a context telling a caching Store to read the blob
// from its backing store rather than from its cache (and to refresh the
// cache with what it read). Use it when a cached answer may be stale: a
// blob found as KindData where a flow is expected may have been stored as
// a flow elsewhere since it was cached. Stores without a cache ignore it.
func WithoutCache(ctx context.Context) context.Context {
	return context.WithValue(ctx, withoutCacheKey{}, true)
}

// CacheBypassed reports whether ctx comes from WithoutCache.
func CacheBypassed(ctx context.Context) bool {
	v, _ := ctx.Value(withoutCacheKey{}).(bool)
	return v
}

// MemSize estimates the bytes of memory v takes as parsed by value.Parse:
// string and number contents and headers, slices of interface values,
// objects with their key and value slices (and index, for large ones).
// It is an estimate (allocation size classes and sharing are ignored),
// close enough to bound a cache.
func MemSize(v value.Value) int64 {
	const iface = 16 // the interface value holding v
	return iface + memSize(v)
}

// memSize is MemSize without v's own interface value.
func memSize(v value.Value) int64 {
	round := func(n int) int64 { return int64((n + 7) &^ 7) }
	switch x := v.(type) {
	case string:
		return 16 + round(len(x))
	case value.Number:
		return 16 + round(len(x))
	case []value.Value:
		n := 24 + 16*int64(len(x))
		for _, e := range x {
			n += memSize(e)
		}
		return n
	case *value.Object:
		l := x.Len()
		n := 64 + 32*int64(l) // the struct; key headers and values
		if l >= 24 {
			n += 48 * int64(l) // the index map
		}
		for i := range l {
			k, e := x.At(i)
			n += round(len(k)) + memSize(e)
		}
		return n
	default: // nil, bool: no allocation
		return 0
	}
}
