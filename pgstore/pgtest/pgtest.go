// Package pgtest provides throwaway PostgreSQL databases for tests.
//
// Each test gets its own freshly created database from NewDatabase (or a
// clone of a prepared template from NewDatabaseFromTemplate), which is
// dropped when the test ends. The databases live on the server named by
// $STELLO_TEST_DATABASE_URL if set; otherwise on a private server (see
// package embedpg) that is started on first use, once per test binary, in a
// temporary directory: under /dev/shm when that is a tmpfs with room to
// spare (creating a database means creating ~300 files, which is about ten
// times faster in memory than on a typical disk), else under os.TempDir().
// Packages using pgtest should call Main from TestMain so that this server
// is stopped and its directory removed:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// A missing PostgreSQL installation fails the test (it is not skipped): the
// error explains how to install PostgreSQL or point the tests at a server.
package pgtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/stellohq/stello/pgstore/embedpg"
)

// EnvURL names the environment variable holding the URL of an existing
// server to create test databases on, instead of starting a private one. The
// URL's user must be allowed to create databases; the database it names is
// only used for administrative connections.
const EnvURL = "STELLO_TEST_DATABASE_URL"

const (
	tmpPrefix      = "stello-pgtest-"
	ownerFile      = "owner.pid"
	opTimeout      = time.Minute      // bound on creating or dropping one database
	setupTimeout   = 10 * time.Minute // bound on a template's setup function
	maxIdleAdmin   = 8
	startupTimeout = 2 * time.Minute
	shmDir         = "/dev/shm"
	shmMinFree     = 1 << 30 // use shmDir only with at least this much free space
)

// server is where test databases are created.
type server struct {
	admin   *url.URL          // URL for administrative connections
	inst    *embedpg.Instance // nil when using EnvURL
	tmpDir  string            // holds inst's data directory
	version int               // server_version_num
	idle    chan *pgx.Conn    // idle administrative connections
	mu      sync.Mutex        // guards tmpls
	tmpls   map[string]*tmpl  // templates by setup key
	logger  *zap.Logger
}

var (
	srvOnce sync.Once
	srv     *server
	srvErr  error
)

// getServer returns the shared server, starting it on first use.
func getServer(t testing.TB) *server {
	t.Helper()
	srvOnce.Do(func() {
		begin := time.Now()
		srv, srvErr = newServer()
		if srvErr == nil && srv.inst != nil {
			t.Logf("pgtest: started PostgreSQL on port %d in %v", srv.inst.Port(), time.Since(begin).Round(time.Millisecond))
		}
	})
	if srvErr != nil {
		t.Fatalf("pgtest: %v", srvErr)
	}
	return srv
}

func newServer() (*server, error) {
	ctx, cancel := context.WithTimeout(context.Background(), startupTimeout)
	defer cancel()
	s := &server{idle: make(chan *pgx.Conn, maxIdleAdmin), tmpls: map[string]*tmpl{}, logger: zap.NewNop()}

	if raw := os.Getenv(EnvURL); raw != "" {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
			return nil, fmt.Errorf("%s must be a postgres:// URL, got %q", EnvURL, raw)
		}
		s.admin = u
	} else {
		removeStaleDirs()
		dir, err := os.MkdirTemp(baseDir(), tmpPrefix)
		if err != nil {
			return nil, fmt.Errorf("create temp dir: %w", err)
		}
		s.tmpDir = dir
		// The server may run as another user (when we are root): let it in.
		if err := os.Chmod(dir, 0o755); err != nil {
			s.removeTmp()
			return nil, fmt.Errorf("chmod temp dir: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			s.removeTmp()
			return nil, fmt.Errorf("write owner file: %w", err)
		}
		inst, err := embedpg.Start(ctx, embedpg.Options{
			DataDir:  filepath.Join(dir, "data"),
			Database: "postgres", // exists already; tests create their own
			Logger:   s.logger,
		})
		if err != nil {
			s.removeTmp()
			return nil, fmt.Errorf("start PostgreSQL (or set %s to use an existing server): %w", EnvURL, err)
		}
		s.inst = inst
		s.admin, _ = url.Parse(inst.AdminURL("postgres"))
	}

	err := s.withConn(ctx, func(c *pgx.Conn) error {
		return c.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&s.version)
	})
	if err != nil {
		s.shutdown()
		return nil, fmt.Errorf("connect to %s: %w", s.admin.Redacted(), err)
	}
	return s, nil
}

// Main runs the tests and then stops the private server, if one was started,
// and removes its directory (or, on a server from STELLO_TEST_DATABASE_URL,
// drops the template databases). It does not return. Call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	if srv != nil {
		srv.shutdown()
	}
	os.Exit(code)
}

func (s *server) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if s.inst == nil {
		s.mu.Lock()
		var names []string
		for _, tp := range s.tmpls {
			if tp.created {
				names = append(names, tp.name)
			}
		}
		s.mu.Unlock()
		for _, n := range names {
			if err := s.dropDatabase(ctx, n); err != nil {
				fmt.Fprintf(os.Stderr, "pgtest: drop template database %s: %v\n", n, err)
			}
		}
	}
drain:
	for {
		select {
		case c := <-s.idle:
			_ = c.Close(ctx)
		default:
			break drain
		}
	}
	if s.inst != nil {
		if err := s.inst.Stop(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: stop PostgreSQL: %v\n", err)
		}
	}
	s.removeTmp()
}

func (s *server) removeTmp() {
	if s.tmpDir != "" {
		if err := os.RemoveAll(s.tmpDir); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
		}
	}
}

// NewDatabase creates an empty database with a unique name and returns its
// URL. The database is dropped when the test and its subtests finish.
func NewDatabase(t testing.TB) string {
	t.Helper()
	s := getServer(t)
	return s.newDatabase(t, "template0")
}

// NewDatabaseFromTemplate returns the URL of a new database (dropped when the
// test finishes) that is a copy of a template database prepared by setup.
// setup runs once per key per test binary, on an empty database whose URL it
// receives; typically it applies the schema migrations, so that every test
// gets a migrated database quickly. Concurrent callers with the same key wait
// for the one running setup. setup must close its connections before
// returning (leftover ones are terminated). If setup fails, every test
// asking for that key fails.
func NewDatabaseFromTemplate(t testing.TB, key string, setup func(ctx context.Context, url string) error) string {
	t.Helper()
	s := getServer(t)

	s.mu.Lock()
	tp := s.tmpls[key]
	if tp == nil {
		tp = &tmpl{name: dbName("tpl", key)}
		s.tmpls[key] = tp
	}
	s.mu.Unlock()

	tp.once.Do(func() {
		begin := time.Now()
		// Stays if setup never returns (it called t.FailNow or panicked).
		tp.err = errors.New("setup did not return (did it call t.FailNow, runtime.Goexit or panic?)")
		tp.err = s.prepareTemplate(tp, setup)
		if tp.err == nil {
			t.Logf("pgtest: prepared template %s for key %q in %v", tp.name, key, time.Since(begin).Round(time.Millisecond))
		}
	})
	if tp.err != nil {
		t.Fatalf("pgtest: template for %q: %v", key, tp.err)
	}
	return s.newDatabase(t, tp.name)
}

// tmpl is a template database built by a setup function.
type tmpl struct {
	once    sync.Once
	name    string
	created bool // written inside once; read by shutdown under s.mu after Run
	err     error
}

func (s *server) prepareTemplate(tp *tmpl, setup func(ctx context.Context, url string) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	if err := s.exec(ctx, "CREATE DATABASE "+ident(tp.name)+" TEMPLATE template0"+s.strategy()); err != nil {
		return fmt.Errorf("create template database: %w", err)
	}
	s.mu.Lock()
	tp.created = true
	s.mu.Unlock()
	if err := setup(ctx, s.databaseURL(tp.name)); err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	// A template must have no other sessions while it is copied: end
	// leftovers and refuse new connections from now on.
	if err := s.exec(ctx, "ALTER DATABASE "+ident(tp.name)+" ALLOW_CONNECTIONS false"); err != nil {
		return fmt.Errorf("lock template database: %w", err)
	}
	if err := s.terminate(ctx, tp.name); err != nil {
		return fmt.Errorf("end sessions on template database: %w", err)
	}
	return nil
}

// newDatabase creates a database copied from template and registers its
// removal with t.
func (s *server) newDatabase(t testing.TB, template string) string {
	t.Helper()
	name := dbName("t", t.Name())
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := s.exec(ctx, "CREATE DATABASE "+ident(name)+" TEMPLATE "+ident(template)+s.strategy()); err != nil {
		t.Fatalf("pgtest: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		if err := s.dropDatabase(ctx, name); err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
	return s.databaseURL(name)
}

// strategy returns the CREATE DATABASE clause that copies small databases
// fastest. PostgreSQL 15 made the WAL-logged block-by-block copy the
// default; for small databases on a server running without fsync, copying
// the files is quicker. BenchmarkCreateDatabase, PostgreSQL 15 on tmpfs:
// from template0 ~12-17 ms either way serially, 22-28 ms (FILE_COPY) vs
// 46 ms (WAL_LOG) per database with 4 concurrent tests; from a template with
// 30 tables 20-26 ms vs 27-29 ms, and 24 vs 41 ms concurrently. (template0 and
// template1 cost the same; template0 is used because it is pristine.)
func (s *server) strategy() string {
	if s.version >= 150000 {
		return " STRATEGY = FILE_COPY"
	}
	return ""
}

func (s *server) dropDatabase(ctx context.Context, name string) error {
	if s.version >= 130000 {
		return s.exec(ctx, "DROP DATABASE IF EXISTS "+ident(name)+" WITH (FORCE)")
	}
	if err := s.terminate(ctx, name); err != nil {
		return err
	}
	return s.exec(ctx, "DROP DATABASE IF EXISTS "+ident(name))
}

func (s *server) terminate(ctx context.Context, db string) error {
	return s.withConn(ctx, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", db)
		return err
	})
}

func (s *server) exec(ctx context.Context, sql string) error {
	return s.withConn(ctx, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, sql)
		return err
	})
}

// withConn runs f on an administrative connection, reusing idle ones.
func (s *server) withConn(ctx context.Context, f func(*pgx.Conn) error) error {
	var c *pgx.Conn
	select {
	case c = <-s.idle:
	default:
		var err error
		if c, err = pgx.Connect(ctx, s.admin.String()); err != nil {
			return err
		}
	}
	err := f(c)
	var pgErr *pgconn.PgError
	if c.IsClosed() || (err != nil && !errors.As(err, &pgErr)) {
		_ = c.Close(context.WithoutCancel(ctx))
		return err
	}
	select {
	case s.idle <- c:
	default:
		_ = c.Close(context.WithoutCancel(ctx))
	}
	return err
}

// databaseURL returns the URL of database name on the server.
func (s *server) databaseURL(name string) string {
	u := *s.admin
	u.Path = "/" + name
	u.RawPath = ""
	return u.String()
}

// dbName builds a unique, valid database name from prefix and hint (a test
// name or template key): lower-case letters, digits and underscores, at most
// 63 bytes.
func dbName(prefix, hint string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(hint) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			if s := b.String(); s != "" && !strings.HasSuffix(s, "_") {
				b.WriteByte('_')
			}
		}
	}
	clean := strings.Trim(b.String(), "_")
	if prefix == "tpl" {
		// Distinct keys may sanitise alike; the hash keeps them apart.
		sum := sha256.Sum256([]byte(hint))
		clean = truncate(clean, 20) + "_" + hex.EncodeToString(sum[:4])
	}
	var rnd [5]byte
	_, _ = rand.Read(rnd[:])
	suffix := hex.EncodeToString(rnd[:])
	clean = truncate(clean, 63-len(prefix)-len(suffix)-2)
	if clean == "" {
		return prefix + "_" + suffix
	}
	return prefix + "_" + clean + "_" + suffix
}

func truncate(s string, n int) string {
	if len(s) > n {
		s = s[:n]
	}
	return strings.Trim(s, "_")
}

func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

// baseDir picks where the private server's directory goes: shmDir if it is
// a writable tmpfs with at least shmMinFree bytes free, else os.TempDir().
func baseDir() string {
	var st syscall.Statfs_t
	const tmpfsMagic = 0x01021994
	if err := syscall.Statfs(shmDir, &st); err == nil && int64(st.Type) == tmpfsMagic &&
		uint64(st.Bavail)*uint64(st.Bsize) >= shmMinFree && syscall.Access(shmDir, 0o2|0o1) == nil {
		return shmDir
	}
	return os.TempDir()
}

// removeStaleDirs deletes temporary directories left by test binaries that
// died without calling Main's cleanup (killed, or timed out), once neither
// the test binary nor its server is alive.
func removeStaleDirs() {
	var dirs []string
	for _, base := range []string{shmDir, os.TempDir()} {
		m, _ := filepath.Glob(filepath.Join(base, tmpPrefix+"*"))
		dirs = append(dirs, m...)
	}
	for _, d := range dirs {
		fi, err := os.Stat(d)
		if err != nil || !fi.IsDir() {
			continue
		}
		owner, err := readPid(filepath.Join(d, ownerFile))
		if err != nil {
			// Possibly a directory being set up right now: leave it unless old.
			if time.Since(fi.ModTime()) > time.Hour {
				_ = os.RemoveAll(d)
			}
			continue
		}
		if pidAlive(owner) {
			continue
		}
		if pm, err := readPid(filepath.Join(d, "data", "postmaster.pid")); err == nil && pidAlive(pm) {
			continue
		}
		_ = os.RemoveAll(d)
	}
}

func readPid(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	first, _, _ := strings.Cut(string(b), "\n")
	return strconv.Atoi(strings.TrimSpace(first))
}

// pidAlive reports whether a process (other than a zombie) has the given pid.
func pidAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
			return s[i+2] != 'Z' && s[i+2] != 'X'
		}
		return true
	}
	return !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// Instance is a private PostgreSQL server for one test, which the test may
// pause and resume to play a frozen database host. Unlike the shared server
// behind NewDatabase, pausing it affects no other test.
type Instance struct {
	inst *embedpg.Instance
	dir  string
}

// NewInstance starts a private server (from the local PostgreSQL binaries,
// whatever STELLO_TEST_DATABASE_URL says) with an empty database "stello".
// It is resumed, stopped and removed when the test ends.
func NewInstance(t testing.TB) *Instance {
	t.Helper()
	dir, err := os.MkdirTemp(baseDir(), tmpPrefix)
	if err != nil {
		t.Fatalf("pgtest: create temp dir: %v", err)
	}
	cleanupDir := func() { _ = os.RemoveAll(dir) }
	// The server may run as another user (when we are root): let it in.
	if err := os.Chmod(dir, 0o755); err != nil {
		cleanupDir()
		t.Fatalf("pgtest: chmod temp dir: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		cleanupDir()
		t.Fatalf("pgtest: write owner file: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), startupTimeout)
	defer cancel()
	inst, err := embedpg.Start(ctx, embedpg.Options{DataDir: filepath.Join(dir, "data")})
	if err != nil {
		cleanupDir()
		t.Fatalf("pgtest: start private PostgreSQL: %v", err)
	}
	i := &Instance{inst: inst, dir: dir}
	t.Cleanup(func() {
		_ = i.signal(syscall.SIGCONT)
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		if err := inst.Stop(ctx); err != nil {
			t.Errorf("pgtest: stop private PostgreSQL: %v", err)
		}
		cleanupDir()
	})
	return i
}

// URL returns the URL of the instance's database "stello".
func (i *Instance) URL() string { return i.inst.URL() }

// Pid returns the postmaster's process id.
func (i *Instance) Pid() int { return i.inst.Pid() }

// Pause stops the postmaster and every backend process with SIGSTOP:
// connections stay open but nothing answers, like a frozen host. (Each
// PostgreSQL child leads a session of its own, so they are signalled one by
// one: the postmaster first, so that it forks no new one meanwhile.)
func (i *Instance) Pause(t testing.TB) {
	t.Helper()
	if err := i.signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("pgtest: pause PostgreSQL: %v", err)
	}
}

// Resume continues a paused server (SIGCONT).
func (i *Instance) Resume(t testing.TB) {
	t.Helper()
	if err := i.signal(syscall.SIGCONT); err != nil {
		t.Fatalf("pgtest: resume PostgreSQL: %v", err)
	}
}

func (i *Instance) signal(sig syscall.Signal) error {
	pm := i.inst.Pid()
	pids := append([]int{pm}, childrenOf(pm)...)
	if sig == syscall.SIGCONT {
		pids = append(pids[1:], pm) // children first, postmaster last
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("signal %d: %w", pid, err)
		}
	}
	return nil
}

// childrenOf lists the processes whose parent is pid (from /proc).
func childrenOf(pid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		// Fields after the command (in parentheses): state, ppid, ...
		if j := strings.LastIndexByte(s, ')'); j >= 0 {
			f := strings.Fields(s[j+1:])
			if len(f) > 1 && f[1] == strconv.Itoa(pid) {
				out = append(out, child)
			}
		}
	}
	return out
}
