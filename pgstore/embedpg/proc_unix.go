//go:build unix && !linux

package embedpg

import "syscall"

// platformSysProcAttr returns the attributes for child processes: each
// leads a process group of its own (see the Linux version). Outside Linux
// there is no parent-death signal; Stop must be called.
func platformSysProcAttr(cred *syscall.Credential, _ bool) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Setpgid: true}
}
