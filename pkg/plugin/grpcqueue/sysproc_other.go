//go:build !linux

package grpcqueue

import "syscall"

// childAttr puts a worker in its own process group.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
