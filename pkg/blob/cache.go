package blob

import (
	"container/list"
	"context"
	"sync"
)

// DefaultCacheBytes is a sensible budget for a worker's Cache: 64 MiB of
// blob JSON.
const DefaultCacheBytes = 64 << 20

// cacheEntryOverhead is what a Cache counts for an entry beyond its JSON
// size: the id, the list element and the map slot.
const cacheEntryOverhead = 160

// Cache is a bounded least-recently-used set of blobs by id, for a Store
// whose reads are expensive (a distributed one): blobs are content
// addressed, so a cached blob's data never goes stale. Its kind can: a
// blob cached as KindData may since have been stored as a flow through
// another process; see WithoutCache. The budget is counted in bytes of
// compact JSON (plus a small fixed overhead per entry); the parsed values
// take a few times that in memory. A nil *Cache is a valid, empty cache
// that holds nothing. It is safe for concurrent use and runs no goroutine.
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

// NewCache returns an empty cache holding at most maxBytes (counted as
// the blobs' compact JSON sizes plus a small overhead each). maxBytes <= 0
// returns nil, the cache that holds nothing.
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

// Add caches b, whose compact JSON is size bytes, evicting the least
// recently used blobs beyond the budget. A blob larger than the whole
// budget is not cached. Adding a cached blob again marks it recently used
// and merges its kind: KindFlow wins, as in every Store.
func (c *Cache) Add(b Blob, size int) {
	if c == nil {
		return
	}
	n := int64(size) + cacheEntryOverhead
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[b.ID]; ok {
		e := el.Value.(*cacheEntry)
		e.blob.Kind = mergeKind(e.blob.Kind, b.Kind)
		c.lru.MoveToFront(el)
		return
	}
	if n > c.max {
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
