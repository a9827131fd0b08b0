package pgtest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// ErrNoPrivateServer is returned by Pause when the databases live on a
// server named by STELLO_TEST_DATABASE_URL, whose processes are not ours to
// signal.
var ErrNoPrivateServer = errors.New("pgtest: the test databases are on an external server (" + EnvURL + "), which cannot be paused")

// Pause freezes the private PostgreSQL server as a hung database host would
// appear: it sends SIGSTOP to the postmaster (so that it accepts no new
// connection) and then to every one of its child processes (backends and
// auxiliary processes). Connections stay open but nothing answers. The
// returned resume sends SIGCONT to the same processes, children first; it
// may be called more than once and is also registered with t.Cleanup, so a
// failing test never leaves the server frozen. Pause starts the private
// server if it is not running yet.
func Pause(t testing.TB) (resume func(), err error) {
	t.Helper()
	s := getServer(t)
	if s.inst == nil {
		return nil, ErrNoPrivateServer
	}
	pm, err := readPid(filepath.Join(s.inst.DataDir(), "postmaster.pid"))
	if err != nil {
		return nil, fmt.Errorf("pgtest: read postmaster.pid: %w", err)
	}
	if err := syscall.Kill(pm, syscall.SIGSTOP); err != nil {
		return nil, fmt.Errorf("pgtest: stop postmaster %d: %w", pm, err)
	}
	// The postmaster is stopped, so it forks no new child from here on.
	children := childPids(pm)
	stopped := make([]int, 0, len(children))
	for _, c := range children {
		if syscall.Kill(c, syscall.SIGSTOP) == nil {
			stopped = append(stopped, c)
		}
	}
	var once sync.Once
	resume = func() {
		once.Do(func() {
			for _, c := range stopped {
				_ = syscall.Kill(c, syscall.SIGCONT)
			}
			_ = syscall.Kill(pm, syscall.SIGCONT)
		})
	}
	t.Cleanup(resume)
	return resume, nil
}

// childPids lists the processes whose parent is pid, from /proc.
func childPids(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// Fields after the parenthesised command: state ppid ...
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		if pp, err := strconv.Atoi(f[1]); err == nil && pp == pid {
			out = append(out, n)
		}
	}
	return out
}

// Stop stops the private server, if one was started, and removes its
// directory (or drops the template databases on an external server), as
// Main does after the tests. It is for a TestMain that must run checks of
// its own after m.Run and before exiting:
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		// … checks that may change code …
//		pgtest.Stop()
//		os.Exit(code)
//	}
func Stop() {
	if srv != nil {
		srv.shutdown()
	}
}
