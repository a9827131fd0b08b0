package anthropic_test

import (
	"testing"

	"github.com/stellohq/stello/internal/leakcheck"
)

// TestMain runs the tests with a goroutine leak check.
func TestMain(m *testing.M) { leakcheck.Main(m, nil) }
