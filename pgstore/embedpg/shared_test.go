package embedpg

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap/zaptest"
)

const ctrlCHelperEnv = "EMBEDPG_CTRLC_HELPER_DIR"

// TestCtrlCHelperProcess is not a real test: TestCtrlCDoesNotReachPostgres
// runs the test binary with it to get a process that, like stello serve,
// starts a server, catches SIGINT and only then uses and stops the server.
func TestCtrlCHelperProcess(t *testing.T) {
	dir := os.Getenv(ctrlCHelperEnv)
	if dir == "" {
		t.Skip("helper process only")
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt)
	inst, err := Start(context.Background(), Options{DataDir: dir})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	fmt.Println("READY", inst.Pid())
	select {
	case <-sig:
	case <-time.After(time.Minute):
		os.Exit(3)
	}
	// Draining: the database must still answer.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, inst.URL())
	if err == nil {
		err = conn.QueryRow(ctx, "SELECT 1").Scan(new(int))
		_ = conn.Close(ctx)
	}
	if err != nil {
		fmt.Println("GONE", err)
	} else {
		fmt.Println("ALIVE")
	}
	_ = inst.Stop(ctx)
	os.Exit(0)
}

// A Ctrl-C on the terminal signals its whole foreground process group: the
// server's PostgreSQL must not be in it, so the server can drain its
// requests against a live database before stopping it.
func TestCtrlCDoesNotReachPostgres(t *testing.T) {
	t.Parallel()
	dir := dataDir(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestCtrlCHelperProcess$")
	cmd.Env = append(os.Environ(), ctrlCHelperEnv+"="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // a terminal's foreground group of its own
	out, err := cmd.StdoutPipe()
	must(t, err, "pipe")
	must(t, cmd.Start(), "start helper")
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	r := bufio.NewReader(out)
	line, err := r.ReadString('\n')
	must(t, err, "read helper output")
	f := strings.Fields(line)
	if len(f) != 2 || f[0] != "READY" {
		t.Fatalf("helper said %q", line)
	}
	pid, err := strconv.Atoi(f[1])
	must(t, err, "parse pid")
	pgid, err := syscall.Getpgid(pid)
	must(t, err, "getpgid")
	equal(t, pid, pgid, "postmaster leads its own process group")

	must(t, syscall.Kill(-cmd.Process.Pid, syscall.SIGINT), "Ctrl-C to the helper's group")
	line, err = r.ReadString('\n')
	must(t, err, "read helper output")
	equal(t, "ALIVE", strings.TrimSpace(line), "database after Ctrl-C, before the helper stopped it")
	must(t, cmd.Wait(), "helper exit")
	if alive(pid) {
		t.Errorf("postmaster %d still running after the helper stopped it", pid)
	}
}

// Two users of one data directory share its server: whichever releases
// first, the server keeps running for the other, and the last one to
// release stops it.
func TestSharedServerStopsWithItsLastUser(t *testing.T) {
	t.Parallel()
	for _, firstOut := range []string{"starter", "attacher"} {
		t.Run(firstOut+" releases first", func(t *testing.T) {
			dir := dataDir(t)
			ctx := context.Background()
			a, err := Acquire(ctx, Options{DataDir: dir, Logger: zaptest.NewLogger(t)})
			must(t, err, "acquire a")
			b, err := Acquire(ctx, Options{DataDir: dir, Logger: zaptest.NewLogger(t)})
			must(t, err, "acquire b")
			equal(t, true, a.Started(), "a started the server")
			equal(t, false, b.Started(), "b uses a's server")
			equal(t, a.URL(), b.URL(), "same server")
			pid, _ := postmasterPid(a.DataDir())

			first, second := a, b
			if firstOut == "attacher" {
				first, second = b, a
			}
			must(t, first.Release(ctx), "release first")
			conn := connect(t, second.URL())
			var one int
			must(t, conn.QueryRow(ctx, "SELECT 1").Scan(&one), "query after the first user left")
			_ = conn.Close(ctx)
			must(t, second.Release(ctx), "release second")
			if _, ok := RunningPort(a.DataDir()); ok || alive(pid) {
				t.Errorf("server still running after its last user left")
			}
		})
	}
}

// A server whose only user was killed is taken over by the next user, who
// stops it when done.
func TestSharedServerOfAKilledUserIsTakenOver(t *testing.T) {
	t.Parallel()
	dir := dataDir(t)
	ctx := context.Background()
	a, err := Acquire(ctx, Options{DataDir: dir})
	must(t, err, "acquire a")
	pid, _ := postmasterPid(a.DataDir())
	_ = a.users.Close() // what the kernel does for a killed process
	a.users = nil
	b, err := Acquire(ctx, Options{DataDir: dir})
	must(t, err, "acquire b")
	equal(t, false, b.Started(), "b uses the running server")
	must(t, b.Release(ctx), "release b")
	if alive(pid) {
		t.Errorf("server of the killed user still running after the last user left")
	}
}
