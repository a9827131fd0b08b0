//go:build linux

package embedpg

import "syscall"

// platformSysProcAttr returns the attributes for child processes. On Linux
// the child gets SIGQUIT (PostgreSQL's "immediate shutdown") when the thread
// that started it dies; startProcess keeps that thread alive, locked, for as
// long as the child runs, so in practice the signal fires when the Go process
// exits without calling Stop (e.g. a killed test binary).
func platformSysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGQUIT}
}
