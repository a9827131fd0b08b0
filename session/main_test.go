package session_test

import (
	"testing"

	"github.com/stellohq/stello/pgstore/pgtest"
)

func TestMain(m *testing.M) { leakCheckMain(m, pgtest.Stop) }
