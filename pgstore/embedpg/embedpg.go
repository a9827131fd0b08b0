// Package embedpg runs a private PostgreSQL server from binaries installed on
// the machine (see FindBinaries). The server listens on 127.0.0.1 only, trusts
// every connection and keeps its data in Options.DataDir, so a later Start on
// the same directory sees the same data.
//
// When the calling process runs as root, initdb and postgres (which refuse to
// run as root) are run as the "postgres" user, or "nobody" if there is no such
// user, and the data directory is handed over to that user.
package embedpg

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
)

// Superuser is the database superuser created by initdb; it connects without
// a password (trust authentication) over 127.0.0.1.
const Superuser = "stello"

// DefaultDatabase is the database Start creates when Options.Database is empty.
const DefaultDatabase = "stello"

// LogFileName is the file, inside the data directory, that receives the
// server's output.
const LogFileName = "postgres.log"

const (
	readyTimeout     = 30 * time.Second // bound on waiting for the server to accept connections
	defaultStopGrace = 60 * time.Second // Stop's bound when its ctx has no deadline
	portAttempts     = 4                // attempts with a fresh free port when Options.Port is 0
	maxSocketPathLen = 100              // conservative bound on a Unix socket path (limit is 107)
)

// Options configures Start.
type Options struct {
	// DataDir is the directory holding the cluster. It is created (and
	// initialised with initdb) if needed. Required.
	DataDir string
	// Port is the TCP port on 127.0.0.1; 0 picks a free port.
	Port int
	// Fsync enables durable writes. When false (tests, throwaway data)
	// initdb runs with --no-sync and the server with fsync, synchronous_commit
	// and full_page_writes off: much faster, but transactions committed in
	// the last few hundred milliseconds are lost if the server is killed, and
	// a machine crash can corrupt the cluster.
	Fsync bool
	// Logger receives progress messages; nil discards them.
	Logger *zap.Logger
	// Database is created if missing; it defaults to DefaultDatabase.
	Database string
	// Detached leaves the server running if the calling process dies
	// without calling Stop (no parent-death signal), so that other
	// processes sharing it keep their database (see Acquire). By default
	// (tests, single users) the server gets SIGQUIT when the caller dies.
	Detached bool
}

// Instance is a running PostgreSQL server started by Start.
type Instance struct {
	dataDir  string
	binDir   string
	port     int
	database string
	log      *zap.Logger

	detached bool
	cmd      *exec.Cmd
	proc     *process

	stopMu   sync.Mutex
	stopping bool
}

// runAs describes the account initdb and postgres run as; nil when they run
// as the current user.
type runAs struct {
	name string
	cred *syscall.Credential
}

// Start initialises o.DataDir if it holds no cluster yet, starts postgres as
// a child process, waits until it accepts connections and creates
// o.Database if it does not exist. The returned Instance must be stopped with
// Stop. If the calling process dies without calling Stop, the server is
// signalled to shut down (on Linux).
func Start(ctx context.Context, o Options) (*Instance, error) {
	begin := time.Now()
	if o.DataDir == "" {
		return nil, errors.New("embedpg: Options.DataDir is required")
	}
	if o.Port < 0 || o.Port > 65535 {
		return nil, fmt.Errorf("embedpg: invalid port %d", o.Port)
	}
	dir, err := filepath.Abs(o.DataDir)
	if err != nil {
		return nil, fmt.Errorf("embedpg: data dir %q: %w", o.DataDir, err)
	}
	log := o.Logger
	if log == nil {
		log = zap.NewNop()
	}
	database := o.Database
	if database == "" {
		database = DefaultDatabase
	}

	var binDir string
	if v, err := os.ReadFile(filepath.Join(dir, "PG_VERSION")); err == nil {
		binDir, err = findBinariesFor(defaultSearch(), strings.TrimSpace(string(v)))
		if err != nil {
			return nil, fmt.Errorf("embedpg: data dir %s: %w", dir, err)
		}
	} else if binDir, err = FindBinaries(); err != nil {
		return nil, fmt.Errorf("embedpg: %w", err)
	}
	as, err := currentRunAs()
	if err != nil {
		return nil, fmt.Errorf("embedpg: %w", err)
	}
	if err := prepareDataDir(dir, as); err != nil {
		return nil, fmt.Errorf("embedpg: %w", err)
	}

	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); errors.Is(err, fs.ErrNotExist) {
		t := time.Now()
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("embedpg: %w", err)
		}
		if len(entries) > 0 {
			return nil, fmt.Errorf("embedpg: data dir %s is not empty but holds no PostgreSQL cluster (no PG_VERSION); "+
				"empty it or choose another data directory", dir)
		}
		if err := initdb(ctx, binDir, dir, o.Fsync, as); err != nil {
			// Leave no half-made cluster behind: the directory was empty.
			if entries, rerr := os.ReadDir(dir); rerr == nil {
				for _, e := range entries {
					_ = os.RemoveAll(filepath.Join(dir, e.Name()))
				}
			}
			return nil, fmt.Errorf("embedpg: %w", err)
		}
		log.Info("initialised PostgreSQL data directory", zap.String("dir", dir),
			zap.String("bin", binDir), zap.Duration("took", time.Since(t)))
	} else if err != nil {
		return nil, fmt.Errorf("embedpg: %w", err)
	}

	inst := &Instance{dataDir: dir, binDir: binDir, database: database, log: log, detached: o.Detached}
	removedPid, shmWaits := false, 0
	for attempt := 1; ; attempt++ {
		port := o.Port
		if port == 0 {
			if port, err = freePort(); err != nil {
				return nil, fmt.Errorf("embedpg: pick a free port: %w", err)
			}
		}
		inst.port = port
		failure, err := inst.launch(ctx, o.Fsync, as)
		if err == nil {
			break
		}
		switch {
		case failure == failPort && o.Port == 0 && attempt < portAttempts:
			log.Info("port taken, retrying with another one", zap.Int("port", port))
			continue
		case failure == failShm && shmWaits < 10:
			// Children of a killed server exit as soon as they notice; give them a moment.
			shmWaits++
			log.Info("shared memory of a previous server still in use, waiting", zap.String("dir", dir))
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("embedpg: %w", ctx.Err())
			case <-time.After(500 * time.Millisecond):
			}
			continue
		case failure == failLock && !removedPid:
			if stale, pid := stalePidFile(dir); stale {
				log.Warn("removing stale postmaster.pid", zap.String("dir", dir), zap.Int("pid", pid))
				if rerr := os.Remove(filepath.Join(dir, "postmaster.pid")); rerr == nil {
					removedPid = true
					continue
				}
			}
		}
		return nil, fmt.Errorf("embedpg: %w", err)
	}

	if err := inst.ensureDatabase(ctx); err != nil {
		_ = inst.Stop(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("embedpg: %w", err)
	}
	log.Info("PostgreSQL started", zap.String("dir", dir), zap.Int("port", inst.port),
		zap.Int("pid", inst.cmd.Process.Pid), zap.Duration("took", time.Since(begin)))
	return inst, nil
}

// URL returns the connection URL of the instance's database.
func (i *Instance) URL() string { return i.AdminURL(i.database) }

// AdminURL returns a superuser connection URL for database db on the instance.
func (i *Instance) AdminURL(db string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", Superuser, i.port, url.PathEscape(db))
}

// Port returns the TCP port the server listens on (on 127.0.0.1).
func (i *Instance) Port() int { return i.port }

// DataDir returns the absolute path of the data directory.
func (i *Instance) DataDir() string { return i.dataDir }

// Database returns the name of the database URL points at.
func (i *Instance) Database() string { return i.database }

// Pid returns the process id of the postmaster. It leads a process group of
// its own (the same id), which holds every backend process too.
func (i *Instance) Pid() int { return i.cmd.Process.Pid }

// Done returns a channel closed once the postgres process has exited, whether
// through Stop or not.
func (i *Instance) Done() <-chan struct{} { return i.proc.done }

// Stop shuts the server down with a fast shutdown (SIGINT: open sessions
// are disconnected, data is flushed) and waits for it to exit. If it has not
// exited when ctx is done (or after a minute when ctx has no deadline) it is
// killed. Stop may be called more than once.
func (i *Instance) Stop(ctx context.Context) error {
	i.stopMu.Lock()
	alreadyStopping := i.stopping
	i.stopping = true
	i.stopMu.Unlock()

	select {
	case <-i.proc.done:
		if !alreadyStopping && i.proc.err != nil {
			return fmt.Errorf("embedpg: postgres had already exited: %w%s", i.proc.err, i.logTail(0))
		}
		return nil
	default:
	}

	if err := i.cmd.Process.Signal(syscall.SIGINT); err != nil && !errors.Is(err, os.ErrProcessDone) {
		i.log.Warn("signal postgres", zap.Error(err))
	}
	var grace <-chan time.Time
	if _, ok := ctx.Deadline(); !ok {
		t := time.NewTimer(defaultStopGrace)
		defer t.Stop()
		grace = t.C
	}
	select {
	case <-i.proc.done:
		i.log.Info("PostgreSQL stopped", zap.String("dir", i.dataDir))
		return nil
	case <-ctx.Done():
	case <-grace:
	}
	_ = i.cmd.Process.Kill()
	<-i.proc.done
	err := ctx.Err()
	if err == nil {
		err = context.DeadlineExceeded
	}
	return fmt.Errorf("embedpg: postgres did not shut down in time and was killed: %w", err)
}

// failure classifies why a launch failed.
type failure int

const (
	failOther failure = iota
	failPort          // the port was taken
	failLock          // postmaster.pid lock file in the way
	failShm           // shared memory of a killed server still in use by its children
)

// launch starts postgres on i.port and waits for it to accept connections.
func (i *Instance) launch(ctx context.Context, fsync bool, as *runAs) (failure, error) {
	logPath := filepath.Join(i.dataDir, LogFileName)
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return failOther, fmt.Errorf("open server log: %w", err)
	}
	defer logFile.Close() // the child keeps its own descriptor
	if as != nil {
		if err := logFile.Chown(int(as.cred.Uid), int(as.cred.Gid)); err != nil {
			return failOther, fmt.Errorf("chown server log: %w", err)
		}
	}
	logStart, _ := logFile.Seek(0, io.SeekEnd)
	fmt.Fprintf(logFile, "---- embedpg: starting postgres on 127.0.0.1:%d at %s ----\n",
		i.port, time.Now().Format(time.RFC3339))

	args := []string{
		"-D", i.dataDir,
		"-p", strconv.Itoa(i.port),
		"-c", "listen_addresses=127.0.0.1",
		"-k", i.socketDir(),
		"-c", "max_connections=200",
		"-c", "shared_buffers=128MB",
	}
	if !fsync {
		args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	cmd := exec.Command(filepath.Join(i.binDir, "postgres"), args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Dir = "/"
	cmd.Env = childEnv()
	cmd.SysProcAttr = sysProcAttr(as, i.detached)

	proc, err := startProcess(cmd)
	if err != nil {
		return failOther, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	i.cmd, i.proc = cmd, proc
	done := proc.done

	err = i.waitReady(ctx)
	if err == nil {
		return 0, nil
	}
	// Make sure the process is gone before looking at why it failed.
	select {
	case <-done:
	default:
		_ = cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	tail := i.logTail(logStart)
	kind := failOther
	switch {
	case strings.Contains(tail, "could not bind") || strings.Contains(tail, "Address already in use"):
		kind = failPort
	case strings.Contains(tail, `lock file "postmaster.pid" already exists`):
		kind = failLock
	case strings.Contains(tail, "pre-existing shared memory block"):
		kind = failShm
	}
	return kind, fmt.Errorf("%w (exit: %v)%s", err, proc.err, tail)
}

// waitReady polls the server until it accepts connections, the process
// exits, ctx is done or readyTimeout elapses.
func (i *Instance) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var last error
	for {
		select {
		case <-i.proc.done:
			return errors.New("postgres exited during startup")
		default:
		}
		if last = i.probe(ctx); last == nil {
			return nil
		}
		select {
		case <-i.proc.done:
			return errors.New("postgres exited during startup")
		case <-ctx.Done():
			return fmt.Errorf("postgres did not accept connections on port %d: %w (last error: %v)", i.port, ctx.Err(), last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// probe connects once and checks that the server answering is this one (the
// port might have been grabbed by another server in the meantime).
func (i *Instance) probe(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := pgx.Connect(pctx, i.AdminURL("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var dataDir string
	if err := conn.QueryRow(pctx, "SELECT current_setting('data_directory')").Scan(&dataDir); err != nil {
		return err
	}
	if !sameDir(dataDir, i.dataDir) {
		return fmt.Errorf("port %d is served by another server (data directory %s)", i.port, dataDir)
	}
	return nil
}

// ensureDatabase creates i.database unless it exists.
func (i *Instance) ensureDatabase(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, i.AdminURL("postgres"))
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", i.database).Scan(&exists); err != nil {
		return fmt.Errorf("look up database %q: %w", i.database, err)
	}
	if exists {
		return nil
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{i.database}.Sanitize())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // duplicate_database: created concurrently
		err = nil
	}
	if err != nil {
		return fmt.Errorf("create database %q: %w", i.database, err)
	}
	i.log.Info("created database", zap.String("database", i.database))
	return nil
}

// socketDir returns the directory for the server's Unix socket: the data
// directory when the socket path fits, else "" (no Unix socket; clients use
// TCP anyway).
func (i *Instance) socketDir() string {
	if len(i.dataDir)+len("/.s.PGSQL.65535.lock") > maxSocketPathLen ||
		strings.ContainsAny(i.dataDir, ", \t\"'\\") {
		return ""
	}
	return i.dataDir
}

// logTail returns the last lines of the server log written after offset,
// formatted for appending to an error message.
func (i *Instance) logTail(offset int64) string {
	return readLogTail(filepath.Join(i.dataDir, LogFileName), offset, 30)
}

func readLogTail(path string, offset int64, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size()-offset > 64<<10 {
		offset = fi.Size() - 64<<10
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return ""
	}
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	if len(lines) == 0 {
		return ""
	}
	return "\n--- last lines of " + path + " ---\n" + strings.Join(lines, "\n")
}

// initdb creates a new cluster in dir.
func initdb(ctx context.Context, binDir, dir string, fsync bool, as *runAs) error {
	args := []string{
		"-D", dir,
		"-U", Superuser,
		"--auth=trust",
		"--encoding=UTF8",
		"--locale=C",
	}
	if !fsync {
		args = append(args, "--no-sync")
	}
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "initdb"), args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.Dir = "/"
	cmd.Env = childEnv()
	cmd.SysProcAttr = sysProcAttr(as, false)
	proc, err := startProcess(cmd)
	if err != nil {
		return fmt.Errorf("start initdb: %w", err)
	}
	<-proc.done
	if err := proc.err; err != nil {
		return fmt.Errorf("initdb %s: %w\n%s", dir, err, strings.TrimSpace(out.String()))
	}
	return nil
}

// process is a started child process.
type process struct {
	done chan struct{} // closed once the child has exited
	err  error         // result of cmd.Wait; read only after done is closed
}

// startProcess starts cmd from a goroutine locked to its OS thread, which
// stays alive until the child exits: a Linux parent-death signal fires when
// the starting thread dies, so this way it fires only when the whole process
// goes away.
func startProcess(cmd *exec.Cmd) (*process, error) {
	started := make(chan error, 1)
	p := &process{done: make(chan struct{})}
	go func() {
		// Deliberately never unlocked: the thread is discarded when this
		// goroutine returns, after the child is gone.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

func sysProcAttr(as *runAs, detached bool) *syscall.SysProcAttr {
	var cred *syscall.Credential
	if as != nil {
		cred = as.cred
	}
	return platformSysProcAttr(cred, detached)
}

// childEnv is the environment for initdb and postgres: ours without PG*
// variables (which would change defaults behind our back), with the C locale.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PG") || strings.HasPrefix(k, "LC_") || k == "LANG" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C", "LANG=C")
}

// currentRunAs picks the account to run PostgreSQL as: nil (ourselves)
// unless we are root, which initdb and postgres refuse; then "postgres" if
// it exists, else "nobody".
func currentRunAs() (*runAs, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	var lastErr error
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			lastErr = err
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil || uid == 0 {
			lastErr = fmt.Errorf("unusable user %q (uid %s, gid %s)", name, u.Uid, u.Gid)
			continue
		}
		return &runAs{name: name, cred: &syscall.Credential{
			Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{},
		}}, nil
	}
	return nil, fmt.Errorf("running as root, and PostgreSQL refuses to run as root, "+
		"but neither a \"postgres\" nor a \"nobody\" user exists to run it as (%v); "+
		"run as a non-root user, create a postgres user, or use an existing server "+
		"via --database-url / STELLO_DATABASE_URL", lastErr)
}

// prepareDataDir creates dir (parents 0755, dir 0700) and, when running as
// another user, checks that user can reach it and hands it over.
func prepareDataDir(dir string, as *runAs) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("create parent of data dir: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create data dir: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("data dir %s is not a directory", dir)
	}
	// PostgreSQL insists on 0700 or 0750.
	if fi.Mode().Perm()&^0o750 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("chmod data dir: %w", err)
		}
	}
	if as == nil {
		return nil
	}
	if err := checkTraversable(dir, as); err != nil {
		return err
	}
	if err := chownTree(dir, int(as.cred.Uid), int(as.cred.Gid)); err != nil {
		return fmt.Errorf("hand data dir %s over to user %q: %w", dir, as.name, err)
	}
	return nil
}

// checkTraversable verifies that user as can reach dir: every ancestor must
// be searchable (x permission) by it.
func checkTraversable(dir string, as *runAs) error {
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("data dir parent: %w", err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if ok {
			mode := fi.Mode().Perm()
			var bit fs.FileMode = 0o001
			switch {
			case st.Uid == as.cred.Uid:
				bit = 0o100
			case st.Gid == as.cred.Gid:
				bit = 0o010
			}
			if mode&bit == 0 {
				return fmt.Errorf("running as root, so PostgreSQL runs as user %q (uid %d), "+
					"which cannot reach the data directory %s: %s has mode %#o and is owned by uid %d; "+
					"choose a data directory that user can reach (e.g. --data-dir /var/lib/stello/pgdata "+
					"or one under /tmp), make %s searchable (chmod o+x), or run as a non-root user",
					as.name, as.cred.Uid, dir, p, mode, st.Uid, p)
			}
		}
		if parent := filepath.Dir(p); parent == p {
			return nil
		}
	}
}

func chownTree(root string, uid, gid int) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, uid, gid)
	})
}

// freePort asks the kernel for a free TCP port on 127.0.0.1.
func freePort() (int, error) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// stalePidFile reports whether dir/postmaster.pid names a process that is
// not a running postgres (gone, or the PID was reused by something else).
func stalePidFile(dir string) (bool, int) {
	b, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return false, 0
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 {
		return true, pid // unreadable: postgres would not be able to use it either
	}
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true, pid
	}
	if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil {
		if !bytes.Contains(cmdline, []byte("postgres")) && !bytes.Contains(cmdline, []byte("postmaster")) {
			return true, pid
		}
	}
	return false, pid
}

// sameDir reports whether a and b name the same directory.
func sameDir(a, b string) bool {
	if a == b {
		return true
	}
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(fa, fb)
}
