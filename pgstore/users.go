package pgstore

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// User is an owner of API keys and spaces.
type User struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	CreatedAt  time.Time `json:"createdAt"`
	ActiveKeys int       `json:"activeKeys"`
}

// KeyPrefix starts every API key.
const KeyPrefix = "sk_stello_"

// NewAPIKey returns a fresh random API key.
func NewAPIKey() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return KeyPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// HashKey is the stored form of an API key.
func HashKey(key string) []byte {
	h := sha256.Sum256([]byte(key))
	return h[:]
}

// CreateUser creates a user with one fresh API key and returns the plain key.
func (s *Store) CreateUser(ctx context.Context, name string) (User, string, error) {
	u := User{ID: uuid.NewString(), Name: name, CreatedAt: now(), ActiveKeys: 1}
	key := NewAPIKey()
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO users (id, name, created_at) VALUES ($1, $2, $3)", u.ID, u.Name, u.CreatedAt); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "INSERT INTO api_keys (id, user_id, key_hash) VALUES ($1, $2, $3)", uuid.NewString(), u.ID, HashKey(key))
		return err
	})
	if err != nil {
		return User{}, "", wrap(ctx, "create user", err)
	}
	return u, key, nil
}

// ListUsers lists users, oldest first.
func (s *Store) ListUsers(ctx context.Context) ([]User, error) {
	rows, err := s.pool.Query(ctx, `SELECT u.id::text, u.name, u.created_at,
		(SELECT count(*) FROM api_keys k WHERE k.user_id = u.id AND k.revoked_at IS NULL)::int
		FROM users u ORDER BY u.created_at, u.id`)
	if err != nil {
		return nil, wrap(ctx, "list users", err)
	}
	us, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (User, error) {
		var u User
		err := r.Scan(&u.ID, &u.Name, &u.CreatedAt, &u.ActiveKeys)
		u.CreatedAt = u.CreatedAt.UTC()
		return u, err
	})
	return us, wrap(ctx, "list users", err)
}

// userExists fails with ErrNotFound when the user does not exist.
func userExists(ctx context.Context, tx pgx.Tx, userID string) error {
	var one int
	return tx.QueryRow(ctx, "SELECT 1 FROM users WHERE id = $1", userID).Scan(&one)
}

// RevokeKeys revokes every active key of a user and returns how many.
func (s *Store) RevokeKeys(ctx context.Context, userID string) (int, error) {
	if uuid.Validate(userID) != nil {
		return 0, wrap(ctx, "revoke keys", pgx.ErrNoRows)
	}
	var n int
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if err := userExists(ctx, tx, userID); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, "UPDATE api_keys SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL", userID)
		if err != nil {
			return err
		}
		n = int(tag.RowsAffected())
		return notifyRevoked(ctx, tx, userID)
	})
	return n, wrap(ctx, "revoke keys", err)
}

// RotateKey revokes every key of a user and returns a new one.
func (s *Store) RotateKey(ctx context.Context, userID string) (string, error) {
	if uuid.Validate(userID) != nil {
		return "", wrap(ctx, "rotate key", pgx.ErrNoRows)
	}
	key := NewAPIKey()
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if err := userExists(ctx, tx, userID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "UPDATE api_keys SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL", userID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "INSERT INTO api_keys (id, user_id, key_hash) VALUES ($1, $2, $3)", uuid.NewString(), userID, HashKey(key)); err != nil {
			return err
		}
		return notifyRevoked(ctx, tx, userID)
	})
	if err != nil {
		return "", wrap(ctx, "rotate key", err)
	}
	return key, nil
}

// UserByKey returns the id of the user owning an active key, or ErrNotFound.
func (s *Store) UserByKey(ctx context.Context, key string) (string, error) {
	var id string
	err := s.pool.QueryRow(ctx, "SELECT user_id::text FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", HashKey(key)).Scan(&id)
	return id, wrap(ctx, "authenticate", err)
}

// KeyRevocationChannel is the PostgreSQL NOTIFY channel on which RevokeKeys
// and RotateKey announce, from their own transaction (so only once it
// commits), the id of the user whose keys were revoked.
const KeyRevocationChannel = "stello_keys_revoked"

func notifyRevoked(ctx context.Context, tx pgx.Tx, userID string) error {
	_, err := tx.Exec(ctx, "SELECT pg_notify($1, $2)", KeyRevocationChannel, userID)
	return err
}

// ActiveKeyHashes returns which of the given key hashes (see HashKey)
// belong to keys that exist and are not revoked.
func (s *Store) ActiveKeyHashes(ctx context.Context, hashes [][32]byte) (map[[32]byte]bool, error) {
	out := make(map[[32]byte]bool, len(hashes))
	if len(hashes) == 0 {
		return out, nil
	}
	arg := make([][]byte, len(hashes))
	for i := range hashes {
		arg[i] = hashes[i][:]
	}
	rows, err := s.pool.Query(ctx, "SELECT key_hash FROM api_keys WHERE key_hash = ANY($1) AND revoked_at IS NULL", arg)
	if err != nil {
		return nil, wrap(ctx, "active keys", err)
	}
	found, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil {
		return nil, wrap(ctx, "active keys", err)
	}
	for _, b := range found {
		var h [32]byte
		copy(h[:], b)
		out[h] = true
	}
	return out, nil
}

// Listener timings.
const (
	listenIdleCheck  = 15 * time.Second // ping the listening connection after this long without a notification
	listenPing       = 5 * time.Second  // bound on that ping and on connecting
	listenBackoffMin = 100 * time.Millisecond
	listenBackoffMax = 5 * time.Second
)

// ListenKeyRevocations listens on KeyRevocationChannel on a dedicated
// connection until ctx is done, calling revoked with each user id
// announced. After every (re)connection, once listening, it calls resync:
// notifications sent while it was not listening are lost, so the caller
// must assume any key may have been revoked meanwhile. A lost or silent
// connection (no answer to a ping) is replaced, with exponential backoff
// between attempts. It returns ctx's error.
func (s *Store) ListenKeyRevocations(ctx context.Context, revoked func(userID string), resync func()) error {
	return s.Listen(ctx, KeyRevocationChannel, revoked, resync)
}

// Listen listens on a notification channel on a dedicated connection until
// ctx is done, calling notified with each payload, and resync after every
// (re)connection once listening (notifications sent while it was not
// listening are lost). A lost or silent connection is replaced, with
// exponential backoff between attempts. It returns ctx's error.
func (s *Store) Listen(ctx context.Context, channel string, notified func(payload string), resync func()) error {
	cfg := s.pool.Config().ConnConfig.Copy()
	cfg.Tracer = nil
	// The connection only sends LISTEN and pings, as simple queries: it
	// needs no statement or description cache (512 entries each, allocated
	// up front).
	cfg.StatementCacheCapacity, cfg.DescriptionCacheCapacity = 0, 0
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > listenPing {
		cfg.ConnectTimeout = listenPing
	}
	backoff := listenBackoffMin
	for {
		err := s.listenOnce(ctx, cfg, channel, notified, resync, func() { backoff = listenBackoffMin })
		if ctx.Err() != nil {
			return ctx.Err()
		}
		_ = err // a lost connection: try again after the backoff
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, listenBackoffMax)
	}
}

func (s *Store) listenOnce(ctx context.Context, cfg *pgx.ConnConfig, channel string, notified func(string), resync, connected func()) error {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	lctx, cancel := context.WithTimeout(ctx, listenPing)
	_, err = conn.Exec(lctx, "LISTEN "+pgx.Identifier{channel}.Sanitize())
	cancel()
	if err != nil {
		return err
	}
	connected()
	resync()
	for {
		wctx, cancel := context.WithTimeout(ctx, listenIdleCheck)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			notified(n.Payload)
			continue
		case ctx.Err() != nil:
			return ctx.Err()
		case !errors.Is(err, context.DeadlineExceeded) || conn.IsClosed():
			return err
		}
		// Quiet for a while: make sure the server still answers.
		pctx, cancel := context.WithTimeout(ctx, listenPing)
		err = conn.Ping(pctx)
		cancel()
		if err != nil {
			return err
		}
	}
}
