//go:build !linux

package childproc

import "syscall"

// childAttr puts a component process in its own process group, so that
// it and whatever it spawns are signalled together. (Only Linux can also
// tie the child's life to the worker's: see sysproc_linux.go.)
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
