// Package pgbench holds the pgbench script that issues the statements of one
// Stello turn commit: the physical limit a turn's throughput is compared to.
package pgbench

import (
	_ "embed"
	"strings"
)

// turnSQL is turn.sql: both variants of the session update, each after its
// marker.
//
//go:embed turn.sql
var turnSQL string

// The markers in turn.sql: the session update that inserts the turn log
// row follows withLogMarker, the plain one withoutLogMarker, and the
// pipeline ends after both.
const (
	withLogMarker    = "-- with the turn log"
	withoutLogMarker = "-- without the turn log"
	endMarker        = `\endpipeline`
)

// TurnSQL is one turn's commit, turn log row included.
var TurnSQL = variant(turnSQL, true)

// TurnSQLWithoutLog is the commit of a server run with --turn-log=false.
var TurnSQLWithoutLog = variant(turnSQL, false)

func variant(s string, withLog bool) string {
	i := strings.Index(s, withLogMarker)
	j := strings.Index(s, withoutLogMarker)
	k := strings.Index(s, endMarker)
	if i < 0 || j < i || k < j {
		panic("turn.sql: the markers are not in order: " + withLogMarker + ", " + withoutLogMarker + ", " + endMarker)
	}
	if withLog {
		return s[:j] + s[k:]
	}
	return s[:i] + s[j:]
}
