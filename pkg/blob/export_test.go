package blob

// SetTagIndexBits lowers the table size up to which the spill index is
// rebuilt from tags, so tests exercise the rebuild-from-file path.
func SetTagIndexBits(s *Spill, bits uint) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tagIndexBits = bits
}

// CacheEntryOverhead is what a Cache counts per entry beyond the blob's
// size.
const CacheEntryOverhead = cacheEntryOverhead
