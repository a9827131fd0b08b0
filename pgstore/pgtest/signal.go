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
	"time"
)

// ErrNoPrivateServer is returned by Pause when the databases live on a
// server named by STELLO_TEST_DATABASE_URL, whose processes are not ours to
// signal.
var ErrNoPrivateServer = errors.New("pgtest: the test databases are on an external server (" + EnvURL + "), which cannot be paused")

// Pause freezes the private PostgreSQL server as a hung database host would
// appear: it sends SIGSTOP to the postmaster (so that it accepts no new
// connection) and then to every one of its child processes (backends and
// auxiliary processes). Connections stay open but nothing answers. The
// returned resume sends SIGCONT to the same processes, children first
// (until then the freeze is held: see the comment inside); it
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
	var mu sync.Mutex
	stopped := map[int]bool{pm: true}
	restopped := map[int]bool{}
	for _, c := range childrenOf(pm) {
		if syscall.Kill(c, syscall.SIGSTOP) == nil {
			stopped[c] = true
		}
	}
	// The freeze is held until resume: a process that something else
	// continues (the kernel sends SIGCONT to a stopped process group that
	// becomes orphaned) is stopped again, with a child it forked meanwhile,
	// and the test log says so.
	done := make(chan struct{})
	held := make(chan struct{})
	go func() {
		defer close(held) // resume waits for it, whatever happens here
		defer func() {
			if p := recover(); p != nil {
				t.Errorf("pgtest: the pause's watch stopped: %v", p)
			}
		}()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			mu.Lock()
			for _, pid := range append([]int{pm}, childrenOf(pm)...) {
				// R or S: running or waiting, so continued (D may still
				// be taking the stop, at the end of a system call).
				if st := procState(pid); st == "R" || st == "S" {
					if syscall.Kill(pid, syscall.SIGSTOP) == nil {
						if !restopped[pid] {
							t.Logf("pgtest: PostgreSQL process %d was running (state %s) during a pause: stopped again", pid, st)
						}
						stopped[pid], restopped[pid] = true, true
					}
				}
			}
			mu.Unlock()
		}
	}()
	var once sync.Once
	resume = func() {
		once.Do(func() {
			close(done)
			<-held
			mu.Lock()
			defer mu.Unlock()
			for c := range stopped {
				if c != pm {
					_ = syscall.Kill(c, syscall.SIGCONT)
				}
			}
			_ = syscall.Kill(pm, syscall.SIGCONT)
		})
	}
	t.Cleanup(resume)
	return resume, nil
}

// procState is a process's state letter from /proc (R, S, D, T, t, Z…),
// "" when it is gone.
func procState(pid int) string {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 1 {
		return ""
	}
	return f[0]
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
