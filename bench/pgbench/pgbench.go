// Package pgbench holds the pgbench script that issues the statements of one
// Stello turn commit: the physical limit a turn's throughput is compared to.
package pgbench

import _ "embed"

// TurnSQL is turn.sql.
//
//go:embed turn.sql
var TurnSQL string
