package mcp

// SetSentHook makes the plugin's sessions call f with the method of each
// request and notification once it is written to the server. Call it
// before Start.
func SetSentHook(p *Plugin, f func(method string)) { p.sent = f }

// ServerPID returns the pid of the running server, or 0.
func ServerPID(p *Plugin) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sess == nil {
		return 0
	}
	return p.sess.pid
}
