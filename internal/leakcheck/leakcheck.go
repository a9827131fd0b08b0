// Package leakcheck is the goroutine leak check every test package runs
// after its tests.
package leakcheck

import (
	"fmt"
	"net/http"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// Main runs the tests, then stop (when not nil: it stops the throwaway
// PostgreSQL and the goroutine that waits for it), then fails the package
// if any goroutine is left running: every goroutine the tests or the code
// under test started must have ended. Nothing is ignored.
func Main(m *testing.M, stop func()) {
	code := m.Run()
	if stop != nil {
		stop()
	}
	// Idle keep-alive connections of the default client are not leaks.
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	if err := goleak.Find(); err != nil {
		fmt.Fprintf(os.Stderr, "goleak: goroutines still running after the tests of this package:\n%v\n", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}
