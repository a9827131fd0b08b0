package stello_test

import (
	"fmt"
	"net/http"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// leakCheckMain runs the tests, then stop (when not nil: it stops the
// throwaway PostgreSQL and the goroutine that waits for it), then fails the
// package if any goroutine is left running: every goroutine the tests or
// the code under test started must have ended. Only goroutines of libraries
// that live for the whole process by design are ignored.
func leakCheckMain(m *testing.M, stop func()) {
	code := m.Run()
	if stop != nil {
		stop()
	}
	// Idle keep-alive connections of the default client are not leaks.
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	if err := goleak.Find(leakIgnores...); err != nil {
		fmt.Fprintf(os.Stderr, "goleak: goroutines still running after the tests of this package:\n%v\n", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// leakIgnores are the long-lived library goroutines the leak check accepts.
var leakIgnores = []goleak.Option{}
