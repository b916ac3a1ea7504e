package grpcqueue

import "strings"

// pathMatcher matches plugin-local paths against one component's
// registered path pattern (ComponentInfo.path: "/echo", "/core/{*rest}",
// "/items/{id}"), as upstream's per-plugin routing trie does.
type pathMatcher struct {
	id    string
	segs  []string // literal text, "{name}" or "{*name}"
	score int      // literal segments count, for the most specific match
}

func newPathMatcher(pattern, id string) (pathMatcher, bool) {
	if !strings.HasPrefix(pattern, "/") {
		return pathMatcher{}, false
	}
	segs := strings.Split(pattern[1:], "/")
	m := pathMatcher{id: id, segs: segs}
	for i, s := range segs {
		switch {
		case strings.HasPrefix(s, "{*") && strings.HasSuffix(s, "}"):
			if i != len(segs)-1 {
				return pathMatcher{}, false
			}
		case strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}"):
		default:
			m.score++
		}
	}
	return m, true
}

// match returns the captured parameters when path matches.
func (m pathMatcher) match(path string) (map[string]string, bool) {
	if !strings.HasPrefix(path, "/") {
		return nil, false
	}
	parts := strings.Split(path[1:], "/")
	params := map[string]string{}
	for i, s := range m.segs {
		switch {
		case strings.HasPrefix(s, "{*") && strings.HasSuffix(s, "}"):
			rest := strings.Join(parts[min(i, len(parts)):], "/")
			if rest == "" {
				return nil, false
			}
			params[s[2:len(s)-1]] = rest
			return params, true
		case i >= len(parts):
			return nil, false
		case strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}"):
			if parts[i] == "" {
				return nil, false
			}
			params[s[1:len(s)-1]] = parts[i]
		case parts[i] != s:
			return nil, false
		}
	}
	return params, len(parts) == len(m.segs)
}

// matchPath returns the component id of the most specific matcher (most
// literal segments, then the longest pattern) that matches path.
func matchPath(ms []pathMatcher, path string) (string, map[string]string, bool) {
	best := -1
	var bestParams map[string]string
	for i, m := range ms {
		params, ok := m.match(path)
		if !ok {
			continue
		}
		if best < 0 || m.score > ms[best].score || (m.score == ms[best].score && len(m.segs) > len(ms[best].segs)) {
			best, bestParams = i, params
		}
	}
	if best < 0 {
		return "", nil, false
	}
	return ms[best].id, bestParams, true
}
