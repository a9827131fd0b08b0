// Package migrations holds the numbered SQL migrations of the Stello schema,
// embedded in the binary. pgstore applies them in order.
package migrations

import "embed"

// FS holds the migration files, named NNN_description.sql.
//
//go:embed *.sql
var FS embed.FS
