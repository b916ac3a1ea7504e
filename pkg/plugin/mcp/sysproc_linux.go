package mcp

import "syscall"

// childAttr starts an MCP server in its own process group, killed by the
// kernel when the worker dies: a worker killed with SIGKILL cannot close
// its plugins, and an orphaned server would run forever. The death signal
// is tied to the OS thread that started the child; Go only ends threads
// of goroutines that exit while locked to them, which the caller never is.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
