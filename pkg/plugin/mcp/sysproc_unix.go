//go:build unix && !linux

package mcp

import "syscall"

// childAttr starts an MCP server in its own process group.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
