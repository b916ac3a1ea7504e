package childproc

import "syscall"

// childAttr puts a component process in its own process group (so that
// it and whatever it spawns are signalled together) and has the kernel
// kill it when the worker dies: a worker killed with SIGKILL cannot close
// its plugins, and an orphaned process would keep running (and executing
// whatever it was given) forever. The death signal is tied to the OS
// thread that started the child; Go only ends threads of goroutines that
// exit while locked to them, which the caller of Start never is.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
