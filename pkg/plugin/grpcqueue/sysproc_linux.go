package grpcqueue

import "syscall"

// childAttr puts a worker in its own process group (signalled with what
// it spawns) and has the kernel kill it when the runtime dies, as for
// stepflow plugins' servers (pkg/plugin/stepflow/sysproc_linux.go).
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
