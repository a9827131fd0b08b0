// Package pgbench holds the pgbench script that issues the statements of one
// Stello turn commit: the physical limit a turn's throughput is compared to.
package pgbench

import (
	_ "embed"
	"strings"
)

// TurnSQL is turn.sql: one turn's commit, turn log row included.
//
//go:embed turn.sql
var TurnSQL string

// turnLogMarker starts the turn log statement in turn.sql; it runs to the
// end of the pipeline.
const turnLogMarker = "-- turn log"

// TurnSQLWithoutLog is turn.sql without the turn log row: the commit of a
// server run with --turn-log=false.
var TurnSQLWithoutLog = withoutLog(TurnSQL)

func withoutLog(s string) string {
	i := strings.Index(s, turnLogMarker)
	j := strings.Index(s, `\endpipeline`)
	if i < 0 || j < i {
		panic("turn.sql: no turn log statement before \\endpipeline")
	}
	return s[:i] + s[j:]
}
