package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/pgstore"
	"github.com/stellohq/stello/pgstore/pgtest"
	"github.com/stellohq/stello/session"
)

var keyRe = regexp.MustCompile(regexp.QuoteMeta(pgstore.KeyPrefix) + `[A-Za-z0-9_-]+`)

// createUser runs `users create --json` and returns the user id and key.
func createUser(t *testing.T, url, name string) (string, string) {
	t.Helper()
	out := cliOK(t, "users", "create", "--name", name, "--json", "--database-url", url)
	var got map[string]string
	decodeLine(t, out, &got)
	return got["userId"], got["apiKey"]
}

func TestUsersCreateJSON(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t) // not migrated: the command migrates
	out := cliOK(t, "users", "create", "--name", "alice", "--json", "--database-url", url)

	var got map[string]any
	decodeLine(t, out, &got)
	assert.Len(t, got, 2, "exactly userId and apiKey: %s", out)
	id, _ := got["userId"].(string)
	key, _ := got["apiKey"].(string)
	require.NoError(t, uuid.Validate(id), out)
	require.True(t, strings.HasPrefix(key, pgstore.KeyPrefix), out)

	st := openStore(t, url)
	owner, err := st.UserByKey(t.Context(), key)
	require.NoError(t, err, "the printed key authenticates")
	assert.Equal(t, id, owner)
	us, err := st.ListUsers(t.Context())
	require.NoError(t, err)
	require.Len(t, us, 1)
	assert.Equal(t, "alice", us[0].Name)
}

func TestUsersCreateText(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	out := cliOK(t, "users", "create", "--name", "bob", "--database-url", url)

	keys := keyRe.FindAllString(out, -1)
	require.Len(t, keys, 1, "the output shows the key once:\n%s", out)
	assert.Contains(t, out, "bob")
	st := openStore(t, url)
	owner, err := st.UserByKey(t.Context(), keys[0])
	require.NoError(t, err)
	assert.Contains(t, out, owner, "the output names the user id")
}

func TestUsersList(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)

	assert.Equal(t, "[]\n", cliOK(t, "users", "list", "--json", "--database-url", url), "no users yet")

	aliceID, aliceKey := createUser(t, url, "alice")
	bobID, bobKey := createUser(t, url, "bob")
	cliOK(t, "keys", "revoke", "--user", bobID, "--database-url", url)

	out := cliOK(t, "users", "list", "--json", "--database-url", url)
	var users []map[string]any
	decodeLine(t, out, &users)
	require.Len(t, users, 2)
	assert.Equal(t, aliceID, users[0]["id"])
	assert.Equal(t, "alice", users[0]["name"])
	assert.EqualValues(t, 1, users[0]["activeKeys"])
	assert.Equal(t, bobID, users[1]["id"])
	assert.EqualValues(t, 0, users[1]["activeKeys"])
	assert.NotEmpty(t, users[0]["createdAt"])

	text := cliOK(t, "users", "list", "--database-url", url)
	assert.Contains(t, text, aliceID)
	assert.Contains(t, text, "bob")

	// Never any key material.
	for _, o := range []string{out, text} {
		assert.NotContains(t, o, "apiKey")
		assert.NotContains(t, o, pgstore.KeyPrefix)
		for _, key := range []string{aliceKey, bobKey} {
			assert.NotContains(t, o, key)
			assert.NotContains(t, o, fmt.Sprintf("%x", pgstore.HashKey(key)))
		}
	}
}

func TestKeysRevoke(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	id, key := createUser(t, url, "alice")
	otherID, otherKey := createUser(t, url, "bob")
	st := openStore(t, url)

	out := cliOK(t, "keys", "revoke", "--user", id, "--database-url", url)
	assert.Contains(t, out, "revoked 1 key")
	_, err := st.UserByKey(t.Context(), key)
	assert.ErrorIs(t, err, session.ErrNotFound, "the revoked key is dead")
	owner, err := st.UserByKey(t.Context(), otherKey)
	require.NoError(t, err, "another user's key still works")
	assert.Equal(t, otherID, owner)

	out = cliOK(t, "keys", "revoke", "--user", id, "--json", "--database-url", url)
	var got map[string]any
	decodeLine(t, out, &got)
	assert.Equal(t, id, got["userId"])
	assert.EqualValues(t, 0, got["revoked"], "nothing left to revoke")
}

func TestKeysRotate(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	id, old := createUser(t, url, "alice")
	st := openStore(t, url)

	out := cliOK(t, "keys", "rotate", "--user", id, "--json", "--database-url", url)
	var got map[string]string
	decodeLine(t, out, &got)
	assert.Equal(t, id, got["userId"])
	key := got["apiKey"]
	require.True(t, strings.HasPrefix(key, pgstore.KeyPrefix), out)
	assert.NotEqual(t, old, key)
	owner, err := st.UserByKey(t.Context(), key)
	require.NoError(t, err, "the new key works")
	assert.Equal(t, id, owner)
	_, err = st.UserByKey(t.Context(), old)
	assert.ErrorIs(t, err, session.ErrNotFound, "the old key is dead")

	// The text form prints the new key too.
	text := cliOK(t, "keys", "rotate", "--user", id, "--database-url", url)
	keys := keyRe.FindAllString(text, -1)
	require.Len(t, keys, 1, text)
	owner, err = st.UserByKey(t.Context(), keys[0])
	require.NoError(t, err)
	assert.Equal(t, id, owner)
	_, err = st.UserByKey(t.Context(), key)
	assert.ErrorIs(t, err, session.ErrNotFound)
}

func TestCLIErrors(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	_, key := createUser(t, url, "alice")
	missing := uuid.NewString()

	tests := []struct {
		name   string
		args   []string
		want   string // in the error message
		stderr string // in stderr, if set
		exit   int
	}{
		{"no command", nil, "a command is required", "Usage:", 2},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`, "Usage:", 2},
		{"users without subcommand", []string{"users"}, "usage: stello users create", "", 2},
		{"unknown users command", []string{"users", "delete", "--database-url", url}, `unknown users command "delete"`, "", 2},
		{"create without name", []string{"users", "create", "--json", "--database-url", url}, "--name is required", "", 2},
		{"unknown flag", []string{"users", "create", "--name", "x", "--colour", "--database-url", url}, "-colour", "", 2},
		{"stray argument", []string{"users", "create", "--name", "x", "--database-url", url, "extra"}, "unexpected arguments", "", 2},
		{"unknown keys command", []string{"keys", "delete", "--user", missing, "--database-url", url}, `unknown keys command "delete"`, "", 2},
		{"revoke without user", []string{"keys", "revoke", "--database-url", url}, "--user is required", "", 2},
		{"revoke unknown user", []string{"keys", "revoke", "--user", missing, "--database-url", url}, fmt.Sprintf("no user with id %q", missing), "", 1},
		{"rotate unknown user", []string{"keys", "rotate", "--user", missing, "--database-url", url}, fmt.Sprintf("no user with id %q", missing), "", 1},
		{"rotate invalid user id", []string{"keys", "rotate", "--user", "not-a-uuid", "--database-url", url}, `no user with id "not-a-uuid"`, "", 1},
		{"unreachable database", []string{"migrate", "--database-url", "postgres://stello@127.0.0.1:1/none?sslmode=disable&connect_timeout=5"}, "connect to database", "", 1},
		{"bad database url", []string{"users", "list", "--database-url", "mysql://x"}, "database url", "", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, err := cli(t, tc.args...)
			require.Error(t, err, "stdout: %s", out)
			assert.Contains(t, err.Error(), tc.want)
			assert.Equal(t, tc.exit, exitCode(err), err.Error())
			if tc.stderr != "" {
				assert.Contains(t, errOut, tc.stderr)
			}
			assert.NotContains(t, out, pgstore.KeyPrefix, "no key printed on failure")
		})
	}

	// None of them created a user or touched the existing key.
	st := openStore(t, url)
	us, err := st.ListUsers(t.Context())
	require.NoError(t, err)
	assert.Len(t, us, 1)
	_, err = st.UserByKey(t.Context(), key)
	assert.NoError(t, err)
}

func TestHelp(t *testing.T) {
	t.Parallel()
	out := cliOK(t, "help")
	for _, cmd := range []string{"serve", "migrate", "users create", "users list", "keys revoke", "keys rotate"} {
		assert.Contains(t, out, "stello "+cmd)
	}
	_, _, err := cli(t, "users", "create", "-h")
	assert.True(t, errors.Is(err, flag.ErrHelp), "%v", err)
}

func TestMigrateCommand(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	ms, err := pgstore.Migrations()
	require.NoError(t, err)
	var versions []string
	for _, m := range ms {
		versions = append(versions, fmt.Sprint(m.Version))
	}

	out := cliOK(t, "migrate", "--database-url", url)
	assert.Equal(t, fmt.Sprintf("applied %d migration(s) [%s]\n", len(ms), strings.Join(versions, " ")), out)
	st := openStore(t, url)
	var n int
	require.NoError(t, st.Pool().QueryRow(t.Context(), "SELECT count(*) FROM schema_migrations").Scan(&n))
	assert.Equal(t, len(ms), n)

	out = cliOK(t, "migrate", "--database-url", url)
	assert.Equal(t, "applied 0 migration(s) []\n", out, "a second run applies nothing")
	require.NoError(t, st.Pool().QueryRow(t.Context(), "SELECT count(*) FROM schema_migrations").Scan(&n))
	assert.Equal(t, len(ms), n)

	// The schema is usable.
	_, key, err := st.CreateUser(t.Context(), "after")
	require.NoError(t, err)
	_, err = st.UserByKey(t.Context(), key)
	assert.NoError(t, err)
}

// Flags read STELLO_* environment variables; the command line wins.
// (t.Setenv: not parallel.)
func TestFlagsFromEnvironment(t *testing.T) {
	envURL := pgtest.NewDatabase(t)
	flagURL := pgtest.NewDatabase(t)
	t.Setenv("STELLO_DATABASE_URL", envURL)

	ms, err := pgstore.Migrations()
	require.NoError(t, err)
	out := cliOK(t, "migrate")
	assert.Contains(t, out, fmt.Sprintf("applied %d migration(s)", len(ms)), "STELLO_DATABASE_URL names the database")

	envID, envKey := func() (string, string) {
		out := cliOK(t, "users", "create", "--name", "from-env", "--json")
		var got map[string]string
		decodeLine(t, out, &got)
		return got["userId"], got["apiKey"]
	}()
	flagID, flagKey := createUser(t, flagURL, "from-flag")

	envStore, flagStore := openStore(t, envURL), openStore(t, flagURL)
	owner, err := envStore.UserByKey(t.Context(), envKey)
	require.NoError(t, err, "STELLO_DATABASE_URL was used")
	assert.Equal(t, envID, owner)
	owner, err = flagStore.UserByKey(t.Context(), flagKey)
	require.NoError(t, err, "--database-url won over the environment")
	assert.Equal(t, flagID, owner)

	_, err = envStore.UserByKey(t.Context(), flagKey)
	assert.ErrorIs(t, err, session.ErrNotFound)
	_, err = flagStore.UserByKey(t.Context(), envKey)
	assert.ErrorIs(t, err, session.ErrNotFound)

	// Other flags too: STELLO_JSON, STELLO_NAME.
	t.Setenv("STELLO_JSON", "true")
	t.Setenv("STELLO_NAME", "named-by-env")
	out = cliOK(t, "users", "create")
	var got map[string]string
	decodeLine(t, out, &got)
	require.NotEmpty(t, got["apiKey"])
	us, err := envStore.ListUsers(t.Context())
	require.NoError(t, err)
	require.Len(t, us, 2)
	assert.Equal(t, "named-by-env", us[1].Name)
	out = cliOK(t, "users", "create", "--name", "named-by-flag", "--json=false")
	assert.NotContains(t, out, "{", "--json=false on the command line wins")
	us, err = envStore.ListUsers(t.Context())
	require.NoError(t, err)
	require.Len(t, us, 3)
	assert.Equal(t, "named-by-flag", us[2].Name)
}

// The JSON user list and the create output are stable JSON objects.
func TestUsersJSONShapes(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	createUser(t, url, "alice")
	out := cliOK(t, "users", "list", "--json", "--database-url", url)
	var raw []json.RawMessage
	decodeLine(t, out, &raw)
	require.Len(t, raw, 1)
	var fields map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(raw[0], &fields))
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	assert.ElementsMatch(t, []string{"id", "name", "createdAt", "activeKeys"}, keys)
}
