package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/stellohq/stello/session"
)

func cmdUsers(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return &usageError{"usage: stello users create --name NAME [--json] | stello users list [--json]"}
	}
	fs := flag.NewFlagSet("stello users "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	var d dbFlags
	d.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	switch args[0] {
	case "create":
		name := fs.String("name", "", "user name (required)")
		if err := parse(fs, args[1:]); err != nil {
			return err
		}
		if *name == "" {
			return &usageError{"users create: --name is required"}
		}
		return withDB(ctx, d, stderr, func(db *database) error {
			u, key, err := db.store.CreateUser(ctx, *name)
			if err != nil {
				return err
			}
			if *asJSON {
				return json.NewEncoder(stdout).Encode(map[string]string{"userId": u.ID, "apiKey": key})
			}
			fmt.Fprintf(stdout, "user:    %s (%s)\napi key: %s\nThe key is shown only now; store it safely.\n", u.ID, u.Name, key)
			return nil
		})
	case "list":
		if err := parse(fs, args[1:]); err != nil {
			return err
		}
		return withDB(ctx, d, stderr, func(db *database) error {
			us, err := db.store.ListUsers(ctx)
			if err != nil {
				return err
			}
			if *asJSON {
				if us == nil {
					return json.NewEncoder(stdout).Encode([]any{})
				}
				return json.NewEncoder(stdout).Encode(us)
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tCREATED\tACTIVE KEYS")
			for _, u := range us {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", u.ID, u.Name, u.CreatedAt.Format("2006-01-02T15:04:05Z"), u.ActiveKeys)
			}
			return tw.Flush()
		})
	}
	return &usageError{fmt.Sprintf("unknown users command %q (create, list)", args[0])}
}

func cmdKeys(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return &usageError{"usage: stello keys revoke --user ID | stello keys rotate --user ID [--json]"}
	}
	fs := flag.NewFlagSet("stello keys "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	var d dbFlags
	d.register(fs)
	user := fs.String("user", "", "user id (required)")
	asJSON := fs.Bool("json", false, "print JSON")
	if args[0] != "revoke" && args[0] != "rotate" {
		return &usageError{fmt.Sprintf("unknown keys command %q (revoke, rotate)", args[0])}
	}
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	if *user == "" {
		return &usageError{"keys " + args[0] + ": --user is required"}
	}
	return withDB(ctx, d, stderr, func(db *database) error {
		if args[0] == "revoke" {
			n, err := db.store.RevokeKeys(ctx, *user)
			if err != nil {
				return userErr(*user, err)
			}
			if *asJSON {
				return json.NewEncoder(stdout).Encode(map[string]any{"userId": *user, "revoked": n})
			}
			fmt.Fprintf(stdout, "revoked %d key(s) of user %s\n", n, *user)
			return nil
		}
		key, err := db.store.RotateKey(ctx, *user)
		if err != nil {
			return userErr(*user, err)
		}
		if *asJSON {
			return json.NewEncoder(stdout).Encode(map[string]string{"userId": *user, "apiKey": key})
		}
		fmt.Fprintf(stdout, "api key: %s\nEvery earlier key of this user is revoked. The key is shown only now.\n", key)
		return nil
	})
}

func userErr(id string, err error) error {
	if errors.Is(err, session.ErrNotFound) {
		return fmt.Errorf("no user with id %q", id)
	}
	return err
}

func withDB(ctx context.Context, d dbFlags, stderr io.Writer, fn func(db *database) error) error {
	log, _ := newLogger("warn", "console", stderr)
	db, err := d.open(ctx, log)
	if err != nil {
		return err
	}
	defer func() { _ = db.close(context.Background()) }()
	fmt.Fprintf(stderr, "stello: database: %s\n", db.desc)
	if _, err := db.store.Migrate(ctx); err != nil {
		return err
	}
	return fn(db)
}
