package transport

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/stellohq/stello/session"
)

// KeyStore resolves an API key to its user.
type KeyStore interface {
	UserByKey(ctx context.Context, key string) (string, error)
}

// KeyWatcher is a KeyStore that announces revocations (pgstore.Store does,
// through PostgreSQL LISTEN/NOTIFY). With one, a revoked key stops working
// on every server within a second instead of after the cache TTL.
type KeyWatcher interface {
	KeyStore
	// ListenKeyRevocations runs until ctx is done, calling revoked with the
	// id of each user whose keys were revoked, and resync after every
	// (re)connection (announcements may have been missed meanwhile).
	ListenKeyRevocations(ctx context.Context, revoked func(userID string), resync func()) error
	// ActiveKeyHashes tells which key hashes (SHA-256 of the key) belong to
	// existing, unrevoked keys.
	ActiveKeyHashes(ctx context.Context, hashes [][32]byte) (map[[32]byte]bool, error)
}

// Key cache defaults.
const (
	defaultKeyCacheSize  = 100_000
	defaultKeyLookupRate = 200 // database lookups per second for keys not in the cache
	maxNegTTL            = 5 * time.Second
	keyLookupTimeout     = 10 * time.Second
	revokeCheckTimeout   = 5 * time.Second
)

// CloseKeyRevoked is the WebSocket close code of a connection whose API key
// was revoked.
const CloseKeyRevoked = 4401

// errKeyLookupLimited answers a request whose key is not cached while the
// database lookups of uncached keys are over their rate.
var errKeyLookupLimited = apiErr(http.StatusServiceUnavailable, "UNAVAILABLE",
	"too many lookups of unknown API keys right now; retry shortly")

// keyCache remembers key lookups so that authentication costs no database
// round trip per request. Known keys live in a bounded LRU for at most ttl
// (the safety net should a revocation announcement be lost); unknown keys
// in a separate, smaller LRU for at most negTTL, so a flood of made-up keys
// evicts only other made-up keys. Lookups of uncached keys are shared per
// key (one query for many concurrent callers) and rate limited overall.
type keyCache struct {
	store  KeyStore
	ttl    time.Duration
	negTTL time.Duration
	pos    *lru.Cache[[32]byte, keyEntry]
	neg    *lru.Cache[[32]byte, int64] // expiry, unix nanoseconds
	flight singleflight.Group
	limit  *tokenBucket
	// gen changes whenever entries are dropped; a lookup that started
	// before does not store its (possibly stale) answer.
	gen atomic.Uint64

	watchCancel context.CancelFunc
	watchDone   chan struct{}
}

type keyEntry struct {
	userID  string
	expires int64
}

func newKeyCache(store KeyStore, ttl time.Duration, size int, rate float64) *keyCache {
	if size <= 0 {
		size = defaultKeyCacheSize
	}
	if rate <= 0 {
		rate = defaultKeyLookupRate
	}
	negSize := max(size/10, 1000)
	pos, _ := lru.New[[32]byte, keyEntry](size) // only fails for size <= 0
	neg, _ := lru.New[[32]byte, int64](negSize)
	return &keyCache{store: store, ttl: ttl, negTTL: min(ttl, maxNegTTL), pos: pos, neg: neg,
		limit: newTokenBucket(rate, 2*rate)}
}

// lookup returns the user id of the key, "" when the key is unknown.
func (c *keyCache) lookup(ctx context.Context, key string) (string, error) {
	h := sha256.Sum256([]byte(key))
	if c.ttl <= 0 {
		uid, err := c.store.UserByKey(ctx, key)
		if errors.Is(err, session.ErrNotFound) {
			return "", nil
		}
		return uid, err
	}
	now := time.Now().UnixNano()
	if e, ok := c.pos.Get(h); ok && e.expires > now {
		return e.userID, nil
	}
	if exp, ok := c.neg.Get(h); ok && exp > now {
		return "", nil
	}
	ch := c.flight.DoChan(string(h[:]), func() (v any, err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("key lookup panicked: %v", p)
			}
		}()
		if !c.limit.allow() {
			return "", errKeyLookupLimited
		}
		gen := c.gen.Load()
		// Shared by every caller waiting for this key: not cut short by
		// the first caller going away.
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), keyLookupTimeout)
		defer cancel()
		uid, err := c.store.UserByKey(lctx, key)
		if err != nil && !errors.Is(err, session.ErrNotFound) {
			return "", err
		}
		if c.gen.Load() == gen {
			t := time.Now().UnixNano()
			if uid == "" {
				c.neg.Add(h, t+int64(c.negTTL))
			} else {
				c.neg.Remove(h)
				c.pos.Add(h, keyEntry{userID: uid, expires: t + int64(c.ttl)})
			}
		}
		return uid, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return "", r.Err
		}
		return r.Val.(string), nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// dropUser forgets every cached key of a user.
func (c *keyCache) dropUser(userID string) {
	c.gen.Add(1)
	for _, h := range c.pos.Keys() {
		if e, ok := c.pos.Peek(h); ok && e.userID == userID {
			c.pos.Remove(h)
		}
	}
}

// purge forgets every cached key.
func (c *keyCache) purge() {
	c.gen.Add(1)
	c.pos.Purge()
	c.neg.Purge()
}

// tokenBucket is a rate limiter: rate tokens per second, at most burst.
type tokenBucket struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func newTokenBucket(rate, burst float64) *tokenBucket {
	return &tokenBucket{rate: rate, burst: burst, tokens: burst, last: time.Now()}
}

func (b *tokenBucket) allow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// watchKeys starts, when the key store announces revocations, the
// goroutine that applies them; Close stops it.
func (s *Server) watchKeys(store KeyStore) {
	w, ok := store.(KeyWatcher)
	if !ok {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	s.keys.watchCancel, s.keys.watchDone = cancel, done
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			func() {
				defer func() {
					if p := recover(); p != nil {
						_ = s.guard.Caught("keys.listener", p) // logged and counted; restarted below
					}
				}()
				_ = w.ListenKeyRevocations(ctx, s.keyRevoked, s.resyncKeys)
			}()
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
}

// stopWatchingKeys stops the revocation listener and waits (boundedly) for it.
func (s *Server) stopWatchingKeys() {
	if s.keys.watchCancel == nil {
		return
	}
	s.keys.watchCancel()
	select {
	case <-s.keys.watchDone:
	case <-time.After(10 * time.Second):
		s.log.Warn("key revocation listener did not stop in time")
	}
}

// keyRevoked applies an announced revocation of a user's keys.
func (s *Server) keyRevoked(userID string) {
	s.keys.dropUser(userID)
	s.closeRevokedConns(userID)
}

// resyncKeys runs after the listener (re)connected: revocations may have
// been missed, so forget every cached key and check every open connection.
func (s *Server) resyncKeys() {
	s.keys.purge()
	s.closeRevokedConns("")
}

// closeRevokedConns closes, with code 4401, the WebSockets of userID (of
// every user when "") that were opened with a key no longer active. If the
// database cannot tell, a user's connections are all closed (they may
// reconnect with a valid key); a resync leaves them open.
func (s *Server) closeRevokedConns(userID string) {
	w, ok := s.keys.store.(KeyWatcher)
	if !ok {
		return
	}
	var conns []*wsConn
	seen := map[[32]byte]bool{}
	var hashes [][32]byte
	s.conns.Range(func(c *wsConn, _ struct{}) bool {
		if userID == "" || c.userID == userID {
			conns = append(conns, c)
			if !seen[c.keyHash] {
				seen[c.keyHash] = true
				hashes = append(hashes, c.keyHash)
			}
		}
		return true
	})
	if len(conns) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), revokeCheckTimeout)
	defer cancel()
	active, err := w.ActiveKeyHashes(ctx, hashes)
	if err != nil {
		if userID == "" {
			s.log.Warn("could not check the keys of open WebSockets", zap.Error(err))
			return
		}
		s.log.Warn("could not check the keys of a user's WebSockets; closing them all", zap.String("user", userID), zap.Error(err))
		active = nil
	}
	for _, c := range conns {
		if active[c.keyHash] {
			continue
		}
		c.CloseWith(CloseKeyRevoked, "API key revoked") // never blocks
	}
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

const (
	userKey ctxKey = iota + 1
	keyHashKey
)

func userID(r *http.Request) string {
	v, _ := r.Context().Value(userKey).(string)
	return v
}

// requestKeyHash is the SHA-256 of the API key the request authenticated with.
func requestKeyHash(r *http.Request) [32]byte {
	v, _ := r.Context().Value(keyHashKey).([32]byte)
	return v
}

// authenticate rejects requests without a valid key and stores the user id
// (and the key's hash) in the request context.
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
		ctx := context.WithValue(r.Context(), userKey, uid)
		ctx = context.WithValue(ctx, keyHashKey, sha256.Sum256([]byte(key)))
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}
