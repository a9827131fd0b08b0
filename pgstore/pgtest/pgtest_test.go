package pgtest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stellohq/stello/internal/leakcheck"
)

func TestMain(m *testing.M) { leakcheck.Main(m, Stop) }

func must(t testing.TB, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func must1[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

var keySeq atomic.Int32

// uniqueKey returns a template key not used before in this process, so that
// tests see their own setup run even with -count > 1.
func uniqueKey(base string) string { return fmt.Sprintf("%s-%d", base, keySeq.Add(1)) }

func connect(t testing.TB, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	must(t, err, "connect "+url)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func databaseExists(t testing.TB, name string) bool {
	t.Helper()
	var ok bool
	s := getServer(t)
	must(t, s.withConn(context.Background(), func(c *pgx.Conn) error {
		return c.QueryRow(context.Background(), "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&ok)
	}), "look up database")
	return ok
}

func dbNameOf(t testing.TB, url string) string {
	t.Helper()
	var name string
	must(t, connect(t, url).QueryRow(context.Background(), "SELECT current_database()").Scan(&name), "current_database")
	return name
}

func TestNewDatabaseIsolated(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	begin := time.Now()
	url1 := NewDatabase(t)
	t.Logf("first NewDatabase (includes server start if first in binary) took %v", time.Since(begin))
	begin = time.Now()
	url2 := NewDatabase(t)
	t.Logf("second NewDatabase took %v", time.Since(begin))
	if url1 == url2 {
		t.Fatalf("same URL twice: %s", url1)
	}

	c1, c2 := connect(t, url1), connect(t, url2)
	_, err := c1.Exec(ctx, "CREATE TABLE only_here (x int)")
	must(t, err, "create table")
	var n int
	must(t, c2.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE tablename = 'only_here'").Scan(&n), "query")
	if n != 0 {
		t.Error("table created in one database is visible in the other")
	}
	var enc string
	must(t, c2.QueryRow(ctx, "SHOW server_encoding").Scan(&enc), "encoding")
	if enc != "UTF8" {
		t.Errorf("encoding %s", enc)
	}
}

func TestDatabaseDroppedAfterTest(t *testing.T) {
	t.Parallel()
	var name string
	outer := t
	t.Run("user", func(t *testing.T) {
		url := NewDatabase(t)
		name = dbNameOf(t, url)
		// A connection still open when the test ends must not block the drop.
		c, err := pgx.Connect(context.Background(), url)
		must(t, err, "connect")
		outer.Cleanup(func() { _ = c.Close(context.Background()) })
	})
	if name == "" {
		t.Fatal("subtest did not run")
	}
	if databaseExists(t, name) {
		t.Errorf("database %s still exists after its test finished", name)
	}
}

func TestTemplateClones(t *testing.T) {
	t.Parallel()
	var setups atomic.Int32
	setup := func(ctx context.Context, url string) error {
		setups.Add(1)
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		time.Sleep(100 * time.Millisecond) // let concurrent callers pile up
		_, err = conn.Exec(ctx, `CREATE TABLE migrated (id int PRIMARY KEY, v text); INSERT INTO migrated VALUES (1, 'seed')`)
		return err
	}
	var names sync.Map
	key := uniqueKey("pgtest-schema-v1")
	for i := range 8 {
		t.Run(fmt.Sprint("clone", i), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			begin := time.Now()
			url := NewDatabaseFromTemplate(t, key, setup)
			t.Logf("NewDatabaseFromTemplate took %v", time.Since(begin))
			if _, dup := names.LoadOrStore(url, true); dup {
				t.Errorf("URL handed out twice: %s", url)
			}
			c := connect(t, url)
			var v string
			must(t, c.QueryRow(ctx, "SELECT v FROM migrated WHERE id = 1").Scan(&v), "read seed row")
			if v != "seed" {
				t.Errorf("seed row = %q", v)
			}
			// Writes stay in this clone.
			_, err := c.Exec(ctx, "INSERT INTO migrated VALUES ($1, 'mine')", 100+i)
			must(t, err, "insert")
			var n int
			must(t, c.QueryRow(ctx, "SELECT count(*) FROM migrated").Scan(&n), "count")
			if n != 2 {
				t.Errorf("clone sees %d rows, want 2", n)
			}
		})
	}
	t.Cleanup(func() {
		if n := setups.Load(); n != 1 {
			t.Errorf("setup ran %d times, want once", n)
		}
	})
}

// TestTemplateKeepsConnectionsOut checks that a setup function leaking a
// connection does not break cloning.
func TestTemplateLeakedConnection(t *testing.T) {
	t.Parallel()
	var leaked *pgx.Conn
	url := NewDatabaseFromTemplate(t, uniqueKey("pgtest-leaky"), func(ctx context.Context, url string) error {
		c, err := pgx.Connect(ctx, url)
		if err != nil {
			return err
		}
		leaked = c
		_, err = c.Exec(ctx, "CREATE TABLE leaky (x int)")
		return err
	})
	defer func() { _ = leaked.Close(context.Background()) }()
	var n int
	must(t, connect(t, url).QueryRow(context.Background(), "SELECT count(*) FROM leaky").Scan(&n), "query clone")
}

// fatalTB records a Fatal call and ends the goroutine, like testing.T does.
type fatalTB struct {
	testing.TB
	mu  sync.Mutex
	msg string
}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.msg = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}

func TestTemplateSetupFailure(t *testing.T) {
	t.Parallel()
	calls := 0
	key := uniqueKey("pgtest-broken")
	for range 2 {
		f := &fatalTB{TB: t}
		done := make(chan struct{})
		go func() {
			defer close(done)
			NewDatabaseFromTemplate(f, key, func(ctx context.Context, url string) error {
				calls++
				return fmt.Errorf("migration 3 failed")
			})
			t.Error("NewDatabaseFromTemplate returned despite a failing setup")
		}()
		<-done
		if !strings.Contains(f.msg, "migration 3 failed") {
			t.Errorf("Fatal message %q does not carry the setup error", f.msg)
		}
	}
	if calls != 1 {
		t.Errorf("failing setup ran %d times, want 1", calls)
	}
}

func TestDBName(t *testing.T) {
	for _, hint := range []string{"TestX", "TestVery/Long/" + strings.Repeat("Subtest_名前-", 20), "", "___"} {
		n := dbName("t", hint)
		if len(n) > 63 || strings.ContainsFunc(n, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_')
		}) {
			t.Errorf("dbName(%q) = %q", hint, n)
		}
	}
	if a, b := dbName("t", "TestX"), dbName("t", "TestX"); a == b {
		t.Errorf("names not unique: %s", a)
	}
}

const helperEnv = "PGTEST_HELPER"

// TestHelperNewDatabase is run by TestMissingBinariesFails in a child
// process that cannot find PostgreSQL.
func TestHelperNewDatabase(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		t.Skip("helper process only")
	}
	NewDatabase(t)
}

func TestMissingBinariesFails(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperNewDatabase$", "-test.v")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, EnvURL+"=") && !strings.HasPrefix(kv, "STELLO_PG_BIN=") && !strings.HasPrefix(kv, "PATH=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, helperEnv+"=1", "STELLO_PG_BIN="+t.TempDir(), "PATH=")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("child passed; output:\n%s", out)
	}
	t.Logf("child output:\n%s", out)
	for _, want := range []string{"--- FAIL: TestHelperNewDatabase", "apt-get install postgresql", "STELLO_PG_BIN", "STELLO_DATABASE_URL"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("child output lacks %q:\n%s", want, out)
		}
	}
}

// BenchmarkCreateDatabase compares ways of creating a test database.
// Results on the development machine are recorded in strategy's comment.
func BenchmarkCreateDatabase(b *testing.B) {
	s := getServer(b)
	ctx := context.Background()
	tplURL := NewDatabase(b)
	tpl := strings.TrimPrefix(must1(url.Parse(tplURL)).Path, "/")
	c, err := pgx.Connect(ctx, tplURL)
	must(b, err, "connect")
	// A modest schema, like a migrated application database.
	for i := range 30 {
		_, err := c.Exec(ctx, fmt.Sprintf("CREATE TABLE t%d (id bigserial PRIMARY KEY, a text, b jsonb, c timestamptz DEFAULT now()); CREATE INDEX ON t%[1]d (a)", i))
		must(b, err, "schema")
	}
	must(b, c.Close(ctx), "close")

	variants := []struct{ name, clause string }{
		{"template0-default", "TEMPLATE template0"},
		{"template0-file_copy", "TEMPLATE template0 STRATEGY = FILE_COPY"},
		{"template1-default", "TEMPLATE template1"},
		{"template1-file_copy", "TEMPLATE template1 STRATEGY = FILE_COPY"},
		{"schema-wal_log", "TEMPLATE " + ident(tpl) + " STRATEGY = WAL_LOG"},
		{"schema-file_copy", "TEMPLATE " + ident(tpl) + " STRATEGY = FILE_COPY"},
	}
	for _, v := range variants {
		if s.version < 150000 && strings.Contains(v.clause, "STRATEGY") {
			continue
		}
		b.Run(v.name, func(b *testing.B) {
			for b.Loop() {
				name := dbName("bench", v.name)
				must(b, s.exec(ctx, "CREATE DATABASE "+ident(name)+" "+v.clause), "create")
				b.StopTimer()
				must(b, s.dropDatabase(ctx, name), "drop")
				b.StartTimer()
			}
		})
		// Parallel tests: create, write a little, drop; per-op time is
		// wall time divided by operations.
		b.Run(v.name+"-parallel", func(b *testing.B) {
			b.SetParallelism(4)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					name := dbName("bench", v.name)
					must(b, s.exec(ctx, "CREATE DATABASE "+ident(name)+" "+v.clause), "create")
					c, err := pgx.Connect(ctx, s.databaseURL(name))
					must(b, err, "connect")
					_, err = c.Exec(ctx, "CREATE TABLE w (x int); INSERT INTO w SELECT generate_series(1, 10000)")
					must(b, err, "write")
					must(b, c.Close(ctx), "close")
					must(b, s.dropDatabase(ctx, name), "drop")
				}
			})
		})
	}
}
