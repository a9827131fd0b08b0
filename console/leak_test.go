package console_test

import (
	"fmt"
	"net/http"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/stellohq/stello/pgstore/pgtest"
)

// TestMain runs the tests, stops the throwaway PostgreSQL, then fails the
// package if any goroutine is left running.
func TestMain(m *testing.M) {
	code := m.Run()
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
