package embedpg

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// lockPoll is how often a busy lock is tried again.
const lockPoll = 25 * time.Millisecond

// Shared is one process's use of the PostgreSQL server of a data directory,
// which every process given that directory shares: the first one starts it
// (detached, in a process group of its own) and the last one to Release it
// stops it, whichever process started it. Processes that use it hold a
// shared lock on a users file beside the data directory; a process that
// dies releases its lock with it, so a killed user never keeps the server
// alive, and a server whose every user was killed is taken over by the next
// process to Acquire.
type Shared struct {
	dir     string
	port    int
	db      string
	inst    *Instance // nil when another process started the server
	users   *os.File  // holds the shared lock
	started bool
	log     *zap.Logger
}

// Acquire uses the server running in o.DataDir, or starts one (with
// o.Detached forced on). Release must be called when done.
func Acquire(ctx context.Context, o Options) (*Shared, error) {
	if o.DataDir == "" {
		return nil, errors.New("embedpg: Options.DataDir is required")
	}
	dir, err := filepath.Abs(o.DataDir)
	if err != nil {
		return nil, fmt.Errorf("embedpg: data dir %q: %w", o.DataDir, err)
	}
	log := o.Logger
	if log == nil {
		log = zap.NewNop()
	}
	db := o.Database
	if db == "" {
		db = DefaultDatabase
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, fmt.Errorf("embedpg: create parent of data dir: %w", err)
	}
	guard, err := lockFile(ctx, guardPath(dir), syscall.LOCK_EX)
	if err != nil {
		return nil, fmt.Errorf("embedpg: lock %s: %w", guardPath(dir), err)
	}
	defer guard.Close() // releases the lock

	s := &Shared{dir: dir, db: db, log: log}
	if port, ok := RunningPort(dir); ok {
		s.port = port
		log.Info("using the embedded PostgreSQL already running", zap.String("dataDir", dir), zap.Int("port", port))
	} else {
		o.DataDir, o.Detached = dir, true
		inst, err := Start(ctx, o)
		if err != nil {
			return nil, err
		}
		s.inst, s.port, s.started = inst, inst.Port(), true
	}
	users, err := lockFile(ctx, usersPath(dir), syscall.LOCK_SH)
	if err != nil {
		if s.inst != nil {
			_ = s.inst.Stop(context.WithoutCancel(ctx))
		}
		return nil, fmt.Errorf("embedpg: lock %s: %w", usersPath(dir), err)
	}
	s.users = users
	return s, nil
}

// URL returns the connection URL of the database.
func (s *Shared) URL() string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", Superuser, s.port, s.db)
}

// DataDir returns the absolute data directory.
func (s *Shared) DataDir() string { return s.dir }

// Port returns the server's TCP port on 127.0.0.1.
func (s *Shared) Port() int { return s.port }

// Started reports whether this process started the server.
func (s *Shared) Started() bool { return s.started }

// Release ends this process's use of the server and stops the server if no
// other process uses it. It may be called once.
func (s *Shared) Release(ctx context.Context) error {
	if s.users == nil {
		return nil
	}
	guard, err := lockFile(ctx, guardPath(s.dir), syscall.LOCK_EX)
	if err != nil {
		_ = s.users.Close()
		s.users = nil
		return fmt.Errorf("embedpg: lock %s: %w", guardPath(s.dir), err)
	}
	defer guard.Close()
	_ = s.users.Close() // drops our shared lock
	s.users = nil

	last, err := os.OpenFile(usersPath(s.dir), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("embedpg: %w", err)
	}
	defer last.Close()
	if err := syscall.Flock(int(last.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		s.log.Info("embedded PostgreSQL left running: another process still uses it", zap.String("dataDir", s.dir))
		return nil
	}
	if s.inst != nil {
		return s.inst.Stop(ctx)
	}
	return stopByPid(ctx, s.dir, s.log)
}

// stopByPid stops the server of dir that another (possibly dead) process
// started: SIGINT (fast shutdown), then SIGQUIT if it has not exited when
// ctx is done or after defaultStopGrace.
func stopByPid(ctx context.Context, dir string, log *zap.Logger) error {
	pid, ok := postmasterPid(dir)
	if !ok {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGINT); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		return fmt.Errorf("embedpg: stop postgres (pid %d): %w", pid, err)
	}
	grace := time.NewTimer(defaultStopGrace)
	defer grace.Stop()
	tick := time.NewTicker(lockPoll)
	defer tick.Stop()
	for processAlive(pid) {
		select {
		case <-ctx.Done():
			_ = syscall.Kill(pid, syscall.SIGQUIT)
			return fmt.Errorf("embedpg: postgres (pid %d) did not shut down in time: %w", pid, ctx.Err())
		case <-grace.C:
			_ = syscall.Kill(pid, syscall.SIGQUIT)
			return fmt.Errorf("embedpg: postgres (pid %d) did not shut down in %v", pid, defaultStopGrace)
		case <-tick.C:
		}
	}
	log.Info("PostgreSQL stopped", zap.String("dir", dir))
	return nil
}

// guardPath and usersPath are the lock files beside data directory dir
// (not inside: initdb wants an empty directory).
func guardPath(dir string) string {
	return filepath.Join(filepath.Dir(dir), "."+filepath.Base(dir)+".stello-lock")
}

func usersPath(dir string) string {
	return filepath.Join(filepath.Dir(dir), "."+filepath.Base(dir)+".stello-users")
}

// lockFile opens path (creating it) and takes an flock of kind how on it,
// polling until ctx is done. Closing the file releases the lock.
// lockWait bounds the wait for another process's hold on a lock file.
const lockWait = 2 * time.Minute

func lockFile(ctx context.Context, path string, how int) (*os.File, error) {
	// Bounded whatever the caller's context: a stello process stopped
	// while holding the lock must not hold this one for ever.
	ctx, cancel := context.WithTimeout(ctx, lockWait)
	defer cancel()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, err
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("another stello process holds it: %w", ctx.Err())
		case <-time.After(lockPoll):
		}
	}
}

// RunningPort returns the port of a live PostgreSQL server running in data
// directory dir, from its postmaster.pid.
func RunningPort(dir string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return 0, false
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 4 {
		return 0, false
	}
	pid, err1 := strconv.Atoi(strings.TrimSpace(lines[0]))
	port, err2 := strconv.Atoi(strings.TrimSpace(lines[3]))
	if err1 != nil || err2 != nil || pid <= 0 || !processAlive(pid) {
		return 0, false
	}
	return port, true
}

func postmasterPid(dir string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return 0, false
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	return pid, err == nil && pid > 0
}

// processAlive reports whether a process (other than a zombie) has pid.
func processAlive(pid int) bool {
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		st := string(b)
		if i := strings.LastIndexByte(st, ')'); i >= 0 && i+2 < len(st) {
			return st[i+2] != 'Z' && st[i+2] != 'X'
		}
		return true
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
