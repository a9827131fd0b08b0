package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

// nodeJSON is one process in `stello cluster status --json`.
type nodeJSON struct {
	ID             string    `json:"id"`
	AdvertiseURL   string    `json:"advertiseUrl"`
	StartedAt      time.Time `json:"startedAt"`
	HeartbeatAt    time.Time `json:"heartbeatAt"`
	HeartbeatAgeMs int64     `json:"heartbeatAgeMs"`
	LeaseTTLMs     int64     `json:"leaseTtlMs"`
	Alive          bool      `json:"alive"`
	Spaces         int       `json:"spaces"`
}

func cmdCluster(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "status" {
		return &usageError{"usage: stello cluster status [--json]"}
	}
	fs := flag.NewFlagSet("stello cluster status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var d dbFlags
	d.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	return withDB(ctx, d, stderr, func(db *database) error {
		nodes, err := db.store.Nodes(ctx)
		if err != nil {
			return err
		}
		if *asJSON {
			out := make([]nodeJSON, 0, len(nodes))
			for _, n := range nodes {
				out = append(out, nodeJSON{ID: n.ID, AdvertiseURL: n.AdvertiseURL, StartedAt: n.StartedAt, HeartbeatAt: n.HeartbeatAt,
					HeartbeatAgeMs: n.HeartbeatAge.Milliseconds(), LeaseTTLMs: n.LeaseTTL.Milliseconds(), Alive: n.Alive, Spaces: n.Spaces})
			}
			return json.NewEncoder(stdout).Encode(out)
		}
		if len(nodes) == 0 {
			fmt.Fprintln(stdout, "no process is serving this database")
			return nil
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tADDRESS\tSTARTED\tHEARTBEAT\tSTATE\tSPACES")
		for _, n := range nodes {
			state := "alive"
			if !n.Alive {
				state = "dead"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s ago\t%s\t%d\n", n.ID, n.AdvertiseURL, n.StartedAt.Format(time.RFC3339),
				n.HeartbeatAge.Round(100*time.Millisecond), state, n.Spaces)
		}
		return tw.Flush()
	})
}
