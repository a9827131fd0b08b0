package console_test

import (
	"testing"

	"github.com/stellohq/stello/internal/leakcheck"
	"github.com/stellohq/stello/pgstore/pgtest"
)

// TestMain runs the tests, stops the throwaway PostgreSQL, then checks for
// leaked goroutines.
func TestMain(m *testing.M) { leakcheck.Main(m, pgtest.Stop) }
