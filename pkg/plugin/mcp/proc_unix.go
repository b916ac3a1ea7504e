//go:build unix

package mcp

import (
	"os/exec"
	"syscall"
)

// setProcessGroup makes the child the leader of a new process group, so
// that the server and everything it spawns can be signalled together
// (and, on Linux, has the kernel kill it when the worker dies: see
// childAttr).
func setProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = childAttr()
}

// signalGroup sends sig to the process group led by pid. Errors (the
// group is already gone) are ignored.
func signalGroup(pid int, sig syscall.Signal) {
	if pid > 0 {
		_ = syscall.Kill(-pid, sig)
	}
}
