package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/stellohq/stello/bench/mockllm"
)

// mockModel is an in-process OpenAI-compatible mock model.
type mockModel struct {
	srv *http.Server
	url string
}

func startMock(cfg mockllm.Config) (*mockModel, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: mockllm.NewQuiet(cfg), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return &mockModel{srv: srv, url: "http://" + ln.Addr().String() + "/v1"}, nil
}

func (m *mockModel) stop() {
	if m.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = m.srv.Shutdown(ctx)
}

// spawned is a Stello server run as a child process.
type spawned struct {
	cmd    *exec.Cmd
	url    string
	args   []string
	exited chan struct{} // closed once the process has exited and been reaped
	err    error         // cmd.Wait's error, set before exited is closed
}

// spawnServer runs `stello serve` with args and waits until it listens.
func spawnServer(ctx context.Context, exe string, args []string, logw io.Writer) (*spawned, error) {
	full := append([]string{"serve", "--addr", "127.0.0.1:0", "--log-level", "warn"}, args...)
	cmd := exec.Command(exe, full...)
	cmd.Stderr = logw
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start server: %w", err)
	}
	s := &spawned{cmd: cmd, args: full, exited: make(chan struct{})}
	urlCh := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if u, ok := strings.CutPrefix(sc.Text(), "stello listening on "); ok {
				select {
				case urlCh <- u:
				default:
				}
			}
		}
	}()
	go func() {
		s.err = cmd.Wait()
		close(s.exited)
	}()
	select {
	case u := <-urlCh:
		s.url = u
		return s, nil
	case <-s.exited:
		return nil, fmt.Errorf("server exited before listening: %v", s.err)
	case <-time.After(60 * time.Second):
		s.kill()
		return nil, errors.New("server did not start listening within 60s")
	case <-ctx.Done():
		s.kill()
		return nil, ctx.Err()
	}
}

func (s *spawned) pid() int { return s.cmd.Process.Pid }

// addr is the host:port the server listens on.
func (s *spawned) addr() string { return strings.TrimPrefix(s.url, "http://") }

// stop shuts the server down gracefully (SIGTERM), killing it after 30s. A
// server that already exited is left alone.
func (s *spawned) stop() {
	select {
	case <-s.exited:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		s.kill()
	}
}

// kill sends SIGKILL and waits until the process is reaped.
func (s *spawned) kill() {
	_ = s.cmd.Process.Kill()
	<-s.exited
}

// createUser runs `stello users create` against the database.
func createUser(ctx context.Context, exe, dbURL string) (string, error) {
	out, err := exec.CommandContext(ctx, exe, "users", "create", "--name", "bench", "--json", "--database-url", dbURL).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("users create: %v: %s", err, ee.Stderr)
		}
		return "", fmt.Errorf("users create: %w", err)
	}
	var v struct {
		APIKey string `json:"apiKey"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		return "", fmt.Errorf("users create output: %w", err)
	}
	return v.APIKey, nil
}

// rssKiB reads VmRSS of a process.
func rssKiB(pid int) (int64, error) { return statusKiB(pid, "VmRSS") }

// statusKiB reads one kB field of /proc/<pid>/status (VmRSS, RssAnon,
// RssFile, …).
func statusKiB(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			var n int64
			_, err := fmt.Sscanf(strings.TrimSpace(v), "%d", &n)
			return n, err
		}
	}
	return 0, errors.New("no " + field)
}
