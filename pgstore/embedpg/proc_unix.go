//go:build unix && !linux

package embedpg

import "syscall"

// platformSysProcAttr returns the attributes for child processes. Outside
// Linux there is no parent-death signal; Stop must be called.
func platformSysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred}
}
