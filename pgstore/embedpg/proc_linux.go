//go:build linux

package embedpg

import "syscall"

// platformSysProcAttr returns the attributes for child processes. Each child
// leads a process group of its own, so a Ctrl-C on the terminal (SIGINT to
// the terminal's foreground group) reaches stello but not PostgreSQL: the
// server drains its requests first and then stops the database. Unless
// detached, the child gets SIGQUIT (PostgreSQL's "immediate shutdown") when the thread
// that started it dies; startProcess keeps that thread alive, locked, for as
// long as the child runs, so in practice the signal fires when the Go process
// exits without calling Stop (e.g. a killed test binary).
// A detached child (shared by several processes) gets no such signal.
func platformSysProcAttr(cred *syscall.Credential, detached bool) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Credential: cred, Setpgid: true}
	if !detached {
		a.Pdeathsig = syscall.SIGQUIT
	}
	return a
}
