package embedpg

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap/zaptest"
)

func must(t testing.TB, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func equal[T comparable](t testing.TB, want, got T, what string) {
	t.Helper()
	if want != got {
		t.Errorf("%s: want %v, got %v", what, want, got)
	}
}

// dataDir returns a fresh directory for a cluster. It is created directly
// under os.TempDir() rather than with t.TempDir(), whose 0700 parent would
// keep out the user PostgreSQL runs as when the tests run as root.
func dataDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "embedpg-test-")
	must(t, err, "mkdtemp")
	must(t, os.Chmod(d, 0o755), "chmod")
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return filepath.Join(d, "data")
}

func start(t *testing.T, o Options) *Instance {
	t.Helper()
	if o.Logger == nil {
		o.Logger = zaptest.NewLogger(t)
	}
	begin := time.Now()
	inst, err := Start(context.Background(), o)
	must(t, err, "Start")
	t.Logf("Start took %v (port %d, dir %s)", time.Since(begin), inst.Port(), inst.DataDir())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = inst.Stop(ctx)
	})
	return inst
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	must(t, err, "connect "+url)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func TestStartStopRestartKeepsData(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := dataDir(t)

	inst := start(t, Options{DataDir: dir, Database: "app"})
	if inst.Port() == 0 {
		t.Fatal("Port() = 0")
	}
	equal(t, dir, inst.DataDir(), "DataDir")
	equal(t, "app", inst.Database(), "Database")
	equal(t, fmt.Sprintf("postgres://stello@127.0.0.1:%d/app?sslmode=disable", inst.Port()), inst.URL(), "URL")
	if _, err := os.Stat(filepath.Join(dir, LogFileName)); err != nil {
		t.Errorf("server log: %v", err)
	}

	conn, err := pgx.Connect(ctx, inst.URL())
	must(t, err, "connect")
	_, err = conn.Exec(ctx, `CREATE TABLE survivor (id int PRIMARY KEY, name text); INSERT INTO survivor VALUES (1, 'still here')`)
	must(t, err, "create table")
	var enc, fsync string
	must(t, conn.QueryRow(ctx, "SELECT current_setting('server_encoding'), current_setting('fsync')").Scan(&enc, &fsync), "settings")
	equal(t, "UTF8", enc, "server_encoding")
	equal(t, "off", fsync, "fsync")
	must(t, conn.Close(ctx), "close")

	begin := time.Now()
	must(t, inst.Stop(ctx), "Stop")
	t.Logf("Stop took %v", time.Since(begin))
	must(t, inst.Stop(ctx), "second Stop")
	select {
	case <-inst.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}
	if c, err := pgx.Connect(ctx, inst.URL()); err == nil {
		_ = c.Close(ctx)
		t.Fatal("server still accepts connections after Stop")
	}

	inst2 := start(t, Options{DataDir: dir, Database: "app"})
	var name string
	must(t, connect(t, inst2.URL()).QueryRow(ctx, "SELECT name FROM survivor WHERE id = 1").Scan(&name), "select after restart")
	equal(t, "still here", name, "row after restart")
}

func TestFreePortSelection(t *testing.T) {
	t.Parallel()
	a := start(t, Options{DataDir: dataDir(t)})
	b := start(t, Options{DataDir: dataDir(t)})
	if a.Port() == b.Port() {
		t.Fatalf("both instances on port %d", a.Port())
	}
	for _, inst := range []*Instance{a, b} {
		var db, dir string
		must(t, connect(t, inst.URL()).QueryRow(context.Background(),
			"SELECT current_database(), current_setting('data_directory')").Scan(&db, &dir), "query")
		equal(t, DefaultDatabase, db, "database")
		if !sameDir(dir, inst.DataDir()) {
			t.Errorf("port %d serves %s, want %s", inst.Port(), dir, inst.DataDir())
		}
	}
}

func TestExplicitPortAndFsync(t *testing.T) {
	t.Parallel()
	port, err := freePort()
	must(t, err, "freePort")
	inst := start(t, Options{DataDir: dataDir(t), Port: port, Fsync: true})
	equal(t, port, inst.Port(), "Port")
	var fsync string
	must(t, connect(t, inst.AdminURL("postgres")).QueryRow(context.Background(), "SHOW fsync").Scan(&fsync), "SHOW fsync")
	equal(t, "on", fsync, "fsync")
}

// TestStalePostmasterPid simulates a data directory left behind by a killed
// server whose PID now belongs to an unrelated, live process.
func TestStalePostmasterPid(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := dataDir(t)
	inst := start(t, Options{DataDir: dir})
	must(t, inst.Stop(ctx), "Stop")

	sleeper := exec.Command("sleep", "60")
	must(t, sleeper.Start(), "start sleep")
	t.Cleanup(func() { _ = sleeper.Process.Kill(); _ = sleeper.Wait() })
	pidFile := fmt.Sprintf("%d\n%s\n0\n5432\n\n\n  1234 5678\n", sleeper.Process.Pid, dir)
	must(t, os.WriteFile(filepath.Join(dir, "postmaster.pid"), []byte(pidFile), 0o600), "write postmaster.pid")

	inst2 := start(t, Options{DataDir: dir})
	must(t, connect(t, inst2.URL()).Ping(ctx), "ping")
}

// TestRestartAfterKill checks that a data directory whose server was killed
// (SIGKILL, so postmaster.pid and shared memory are left behind) starts again
// and recovers committed data. (With Fsync off the server commits
// asynchronously, so the session asks for a synchronous commit.)
func TestRestartAfterKill(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := dataDir(t)
	inst := start(t, Options{DataDir: dir})
	_, err := connect(t, inst.URL()).Exec(ctx, "SET synchronous_commit = on; CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
	must(t, err, "create table")
	must(t, inst.cmd.Process.Kill(), "kill")
	<-inst.Done()
	if _, err := os.Stat(filepath.Join(dir, "postmaster.pid")); err != nil {
		t.Fatalf("expected a leftover postmaster.pid: %v", err)
	}

	inst2 := start(t, Options{DataDir: dir})
	var x int
	must(t, connect(t, inst2.URL()).QueryRow(ctx, "SELECT x FROM t").Scan(&x), "select after kill")
	equal(t, 42, x, "row after kill")
}

// TestStartFailureShowsLog checks that a server that cannot start fails
// Start quickly, with the end of its log in the error.
func TestStartFailureShowsLog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := dataDir(t)
	inst := start(t, Options{DataDir: dir})
	must(t, inst.Stop(ctx), "Stop")
	conf, err := os.OpenFile(filepath.Join(dir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	must(t, err, "open postgresql.conf")
	_, err = conf.WriteString("\nbogus_setting_xyz = 1\n")
	must(t, err, "write postgresql.conf")
	must(t, conf.Close(), "close")

	begin := time.Now()
	_, err = Start(ctx, Options{DataDir: dir})
	if err == nil {
		t.Fatal("Start succeeded with a broken configuration")
	}
	if took := time.Since(begin); took > 10*time.Second {
		t.Errorf("failing Start took %v", took)
	}
	for _, want := range []string{LogFileName, "bogus_setting_xyz", "exited during startup"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q: %v", want, err)
		}
	}
	t.Logf("failed after %v: %v", time.Since(begin), err)
}

func TestStartWithoutBinaries(t *testing.T) {
	t.Setenv(EnvBinDir, t.TempDir())
	_, err := Start(context.Background(), Options{DataDir: filepath.Join(t.TempDir(), "data")})
	if !errors.Is(err, ErrNoBinaries) {
		t.Fatalf("want ErrNoBinaries, got %v", err)
	}
}

func TestStartUnreachableDataDirAsRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only relevant when running as root")
	}
	t.Parallel()
	// t.TempDir() lives in a 0700 directory owned by root.
	_, err := Start(context.Background(), Options{DataDir: filepath.Join(t.TempDir(), "data")})
	if err == nil {
		t.Fatal("Start succeeded in a directory the postgres user cannot reach")
	}
	for _, want := range []string{"cannot reach the data directory", "--data-dir"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	t.Log(err)
}

func TestFindBinaries(t *testing.T) {
	dir, err := FindBinaries()
	must(t, err, "FindBinaries")
	if !hasBinaries(dir) {
		t.Fatalf("%s lacks initdb or postgres", dir)
	}
	t.Logf("binaries in %s", dir)
	wantMsg := []string{"apt-get install postgresql", "STELLO_PG_BIN", "--database-url", "STELLO_DATABASE_URL"}

	t.Run("env", func(t *testing.T) {
		t.Setenv(EnvBinDir, dir)
		got, err := FindBinaries()
		must(t, err, "FindBinaries")
		equal(t, dir, got, "dir")
	})

	t.Run("env points at an empty dir and PATH is empty", func(t *testing.T) {
		empty := t.TempDir()
		t.Setenv(EnvBinDir, empty)
		t.Setenv("PATH", "")
		_, err := FindBinaries()
		if !errors.Is(err, ErrNoBinaries) {
			t.Fatalf("want ErrNoBinaries, got %v", err)
		}
		for _, want := range append(wantMsg, empty) {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("message does not mention %q", want)
			}
		}
		t.Log(err)
	})

	t.Run("nothing anywhere", func(t *testing.T) {
		_, err := findBinaries(searchInput{pathList: t.TempDir(), globs: []string{filepath.Join(t.TempDir(), "*", "bin")}})
		if !errors.Is(err, ErrNoBinaries) {
			t.Fatalf("want ErrNoBinaries, got %v", err)
		}
		for _, want := range wantMsg {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("message does not mention %q", want)
			}
		}
		t.Log(err)
	})

	t.Run("PATH symlinks are resolved", func(t *testing.T) {
		shim := t.TempDir()
		// Only initdb on PATH, as a symlink: postgres is found next to its target.
		must(t, os.Symlink(filepath.Join(dir, "initdb"), filepath.Join(shim, "initdb")), "symlink")
		got, err := findBinaries(searchInput{pathList: shim})
		must(t, err, "findBinaries")
		want, _ := filepath.EvalSymlinks(dir)
		equal(t, want, got, "dir")
	})

	t.Run("wrapper without postgres is skipped, newest version wins", func(t *testing.T) {
		shim := t.TempDir()
		fakeExe(t, filepath.Join(shim, "initdb"))
		root := t.TempDir()
		for _, v := range []string{"9.6", "15", "10"} {
			fakeExe(t, filepath.Join(root, v, "bin", "initdb"))
			fakeExe(t, filepath.Join(root, v, "bin", "postgres"))
		}
		got, err := findBinaries(searchInput{pathList: shim, globs: []string{filepath.Join(root, "*", "bin")}})
		must(t, err, "findBinaries")
		equal(t, filepath.Join(root, "15", "bin"), got, "dir")
	})
}

func fakeExe(t *testing.T, path string) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Dir(path), 0o755), "mkdir")
	must(t, os.WriteFile(path, []byte("#!/bin/sh\nexit 1\n"), 0o755), "write")
}

// fakeBinDir makes dir/initdb and dir/postgres, the latter answering
// --version with version.
func fakeBinDir(t *testing.T, dir, version string) {
	t.Helper()
	fakeExe(t, filepath.Join(dir, "initdb"))
	script := fmt.Sprintf("#!/bin/sh\necho 'postgres (PostgreSQL) %s (Debian %[1]s-1)'\n", version)
	must(t, os.WriteFile(filepath.Join(dir, "postgres"), []byte(script), 0o755), "write")
}

func TestFindBinariesForExistingCluster(t *testing.T) {
	root := t.TempDir()
	fakeBinDir(t, filepath.Join(root, "16", "bin"), "16.4")
	fakeBinDir(t, filepath.Join(root, "15", "bin"), "15.18")
	fakeBinDir(t, filepath.Join(root, "9.6", "bin"), "9.6.24")
	in := searchInput{globs: []string{filepath.Join(root, "*", "bin")}}

	got, err := findBinaries(in)
	must(t, err, "findBinaries")
	equal(t, filepath.Join(root, "16", "bin"), got, "newest")
	for _, v := range []string{"15", "9.6", "16"} {
		got, err := findBinariesFor(in, v)
		must(t, err, "findBinariesFor "+v)
		equal(t, filepath.Join(root, v, "bin"), got, "for "+v)
	}
	_, err = findBinariesFor(in, "14")
	if !errors.Is(err, ErrNoBinaries) {
		t.Fatalf("want ErrNoBinaries, got %v", err)
	}
	for _, want := range []string{"initialised by PostgreSQL 14", "postgresql-14", "version 16", "pg_upgrade"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message does not mention %q", want)
		}
	}
	t.Log(err)

	real, err := FindBinaries()
	must(t, err, "FindBinaries")
	v, err := binaryMajor(real)
	must(t, err, "binaryMajor")
	t.Logf("installed binaries in %s are version %s", real, v)
}

func TestPathVersionOrder(t *testing.T) {
	p := []string{"/usr/lib/postgresql/9.6/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/10/bin", "/usr/pgsql-13/bin"}
	sortNewestFirst(p)
	want := []string{"/usr/lib/postgresql/16/bin", "/usr/pgsql-13/bin", "/usr/lib/postgresql/10/bin", "/usr/lib/postgresql/9.6/bin"}
	if !slices.Equal(want, p) {
		t.Errorf("want %v, got %v", want, p)
	}
}

const helperEnv = "EMBEDPG_TEST_HELPER_DIR"

// TestHelperProcess is not a real test: TestServerDiesWithParent runs the
// test binary with it to get a process that starts a server and is then
// killed.
func TestHelperProcess(t *testing.T) {
	dir := os.Getenv(helperEnv)
	if dir == "" {
		t.Skip("helper process only")
	}
	inst, err := Start(context.Background(), Options{DataDir: dir})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	fmt.Println("READY", inst.cmd.Process.Pid)
	time.Sleep(time.Minute)
	os.Exit(3)
}

// TestServerDiesWithParent checks that a server whose owning process is
// killed (no Stop) does not outlive it.
func TestServerDiesWithParent(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("parent-death signal is Linux only")
	}
	t.Parallel()
	dir := dataDir(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	must(t, err, "pipe")
	must(t, cmd.Start(), "start helper")
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	line, err := bufio.NewReader(out).ReadString('\n')
	must(t, err, "read helper output")
	f := strings.Fields(line)
	if len(f) != 2 || f[0] != "READY" {
		t.Fatalf("helper said %q", line)
	}
	pid, err := strconv.Atoi(f[1])
	must(t, err, "parse pid")
	if !alive(pid) {
		t.Fatalf("postmaster %d not running", pid)
	}

	must(t, cmd.Process.Kill(), "kill helper")
	_ = cmd.Wait()
	deadline := time.Now().Add(15 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("postmaster %d survived its parent", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// alive reports whether pid is a live (not zombie) process.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
	}
	// The state follows the parenthesised command name.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z' && s[i+2] != 'X'
	}
	return true
}
