package transport

import (
	"context"
	"crypto/sha256"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/puzpuzpuz/xsync/v3"

	"github.com/stellohq/stello/session"
)

// KeyStore resolves an API key to its user.
type KeyStore interface {
	UserByKey(ctx context.Context, key string) (string, error)
}

// keyCache remembers key lookups for a short time so that authentication
// costs no database round trip per request. A revoked key keeps working for
// at most ttl; an unknown key is remembered as unknown for negTTL.
type keyCache struct {
	store   KeyStore
	ttl     time.Duration
	negTTL  time.Duration
	entries *xsync.MapOf[[32]byte, keyEntry]
	max     int
}

type keyEntry struct {
	userID  string
	expires int64
}

func newKeyCache(store KeyStore, ttl time.Duration) *keyCache {
	neg := 5 * time.Second
	if ttl < neg {
		neg = ttl
	}
	return &keyCache{store: store, ttl: ttl, negTTL: neg, entries: xsync.NewMapOf[[32]byte, keyEntry](), max: 100_000}
}

// lookup returns the user id of the key, "" when the key is unknown.
func (c *keyCache) lookup(ctx context.Context, key string) (string, error) {
	h := sha256.Sum256([]byte(key))
	now := time.Now().UnixNano()
	if c.ttl > 0 {
		if e, ok := c.entries.Load(h); ok && e.expires > now {
			return e.userID, nil
		}
	}
	uid, err := c.store.UserByKey(ctx, key)
	if err != nil && !errors.Is(err, session.ErrNotFound) {
		return "", err
	}
	if c.ttl > 0 {
		if c.entries.Size() >= c.max {
			c.entries.Clear()
		}
		ttl := c.ttl
		if uid == "" {
			ttl = c.negTTL
		}
		c.entries.Store(h, keyEntry{userID: uid, expires: now + int64(ttl)})
	}
	return uid, nil
}

// apiKey reads the key from X-API-Key, Authorization: Bearer, or (for
// WebSocket upgrades) the stello.key.<key> subprotocol.
func apiKey(r *http.Request) (key string, viaProtocol bool) {
	if k := r.Header.Get("X-API-Key"); k != "" {
		return k, false
	}
	if a := r.Header.Get("Authorization"); len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
		return strings.TrimSpace(a[7:]), false
	}
	for _, h := range r.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(h, ",") {
			p = strings.TrimSpace(p)
			if k, ok := strings.CutPrefix(p, "stello.key."); ok && k != "" {
				return k, true
			}
		}
	}
	return "", false
}

type ctxKey int

const userKey ctxKey = 1

func userID(r *http.Request) string {
	v, _ := r.Context().Value(userKey).(string)
	return v
}

// authenticate rejects requests without a valid key and stores the user id
// in the request context.
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, _ := apiKey(r)
		if key == "" {
			s.writeError(w, r, errUnauthorized)
			return
		}
		uid, err := s.keys.lookup(r.Context(), key)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		if uid == "" {
			s.writeError(w, r, errUnauthorized)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), userKey, uid)))
	})
}
