package session_test

import (
	"testing"

	"github.com/stellohq/stello/internal/leakcheck"
	"github.com/stellohq/stello/pgstore/pgtest"
)

func TestMain(m *testing.M) { leakcheck.Main(m, pgtest.Stop) }
