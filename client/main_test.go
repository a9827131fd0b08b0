package client_test

import (
	"fmt"
	"net/http"
	"os"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/pgstore/pgtest"
)

// TestMain runs the tests and the examples, stops the examples' stack and
// the throwaway PostgreSQL, then fails if any goroutine is left running.
func TestMain(m *testing.M) {
	code := m.Run()
	example.stop()
	pgtest.Stop()
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	if err := goleak.Find(); err != nil {
		fmt.Fprintf(os.Stderr, "goleak: goroutines still running after the tests of this package:\n%v\n", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// exampleTB lets Example functions, which get no *testing.T, start a real
// stack: failures panic (failing the example), cleanups run in TestMain.
type exampleTB struct {
	testing.TB
	mu       sync.Mutex
	cleanups []func()
}

func (e *exampleTB) Helper()                   {}
func (e *exampleTB) Name() string              { return "Example" }
func (e *exampleTB) Logf(string, ...any)       {}
func (e *exampleTB) Errorf(f string, a ...any) { panic(fmt.Sprintf(f, a...)) }
func (e *exampleTB) Fatalf(f string, a ...any) { panic(fmt.Sprintf(f, a...)) }
func (e *exampleTB) FailNow()                  { panic("FailNow") }
func (e *exampleTB) Cleanup(f func())          { e.mu.Lock(); e.cleanups = append(e.cleanups, f); e.mu.Unlock() }
func (e *exampleTB) stopAll() {
	for i := len(e.cleanups) - 1; i >= 0; i-- {
		e.cleanups[i]()
	}
}

// exampleStack is the one stack every example shares, started on first use.
type exampleStack struct {
	once  sync.Once
	tb    *exampleTB
	stack *testutil.Stack
}

var example exampleStack

// server returns the URL of the examples' server (the fake model, whose
// reply is "Echo: " and the input) and a fresh user's API key.
func exampleServer() (url, apiKey string) {
	example.once.Do(func() {
		example.tb = &exampleTB{}
		example.stack = testutil.NewStack(example.tb, testutil.StackOptions{})
	})
	_, key := example.stack.User(example.tb, "example")
	return example.stack.URL, key
}

func (e *exampleStack) stop() {
	if e.tb != nil {
		e.tb.stopAll()
	}
}
