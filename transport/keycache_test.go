package transport

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/pgstore"
	"github.com/stellohq/stello/pgstore/pgtest"
)

// The store announces revocations.
var _ KeyWatcher = (*pgstore.Store)(nil)

// countingKeys counts the database lookups of a real store.
type countingKeys struct {
	*pgstore.Store
	n atomic.Int64
}

func (c *countingKeys) UserByKey(ctx context.Context, key string) (string, error) {
	c.n.Add(1)
	return c.Store.UserByKey(ctx, key)
}

func keyStore(t *testing.T) *countingKeys {
	t.Helper()
	st, err := pgstore.Open(t.Context(), pgtest.NewDatabase(t), pgstore.PoolOptions{MaxConns: 8})
	require.NoError(t, err)
	t.Cleanup(st.Close)
	_, err = st.Migrate(t.Context())
	require.NoError(t, err)
	return &countingKeys{Store: st}
}

// A flood of 200,000 made-up keys neither evicts a valid key from the cache
// nor costs a database query each: lookups of uncached keys are rate
// limited, and the answer over the limit is 503 UNAVAILABLE, not 401.
func TestKeyCacheFloodOfUnknownKeys(t *testing.T) {
	t.Parallel()
	ks := keyStore(t)
	u, key, err := ks.CreateUser(t.Context(), "valid")
	require.NoError(t, err)
	const size, rate = 1000, 200
	c := newKeyCache(ks, time.Hour, size, rate)

	uid, err := c.lookup(t.Context(), key)
	require.NoError(t, err)
	require.Equal(t, u.ID, uid)
	before := ks.n.Load()

	begin := time.Now()
	var unknown, limited int
	for i := range 200_000 {
		uid, err := c.lookup(t.Context(), fmt.Sprintf("sk_stello_madeup%07d", i))
		switch {
		case errors.Is(err, errKeyLookupLimited):
			limited++
		case err != nil:
			t.Fatalf("lookup %d: %v", i, err)
		case uid != "":
			t.Fatalf("made-up key %d resolved to %q", i, uid)
		default:
			unknown++
		}
	}
	elapsed := time.Since(begin)
	queries := ks.n.Load() - before
	// The bucket's burst plus its rate over the time the flood took.
	bound := int64(2*rate + rate*elapsed.Seconds() + 1)
	assert.LessOrEqual(t, queries, bound, "database lookups for 200,000 made-up keys in %v", elapsed)
	assert.Equal(t, int(queries), unknown, "every looked-up made-up key is unknown")
	assert.Positive(t, limited, "the flood went over the limit")
	ae := classify(errKeyLookupLimited)
	assert.Equal(t, 503, ae.Status)
	assert.Equal(t, "UNAVAILABLE", ae.Code)

	// The valid key is still cached: no query.
	n := ks.n.Load()
	uid, err = c.lookup(t.Context(), key)
	require.NoError(t, err)
	assert.Equal(t, u.ID, uid)
	assert.Equal(t, n, ks.n.Load(), "the valid key was evicted by the flood")
}

// Concurrent lookups of one uncached key share one database query.
func TestKeyCacheOneQueryPerKeyAtATime(t *testing.T) {
	t.Parallel()
	ks := keyStore(t)
	c := newKeyCache(ks, time.Hour, 0, 0)
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			uid, err := c.lookup(context.Background(), "sk_stello_same_unknown_key")
			assert.NoError(t, err)
			assert.Empty(t, uid)
		}()
	}
	wg.Wait()
	assert.EqualValues(t, 1, ks.n.Load(), "database lookups")
}

// The cache is bounded: least recently used known keys go first.
func TestKeyCacheIsBoundedLRU(t *testing.T) {
	t.Parallel()
	ks := keyStore(t)
	c := newKeyCache(ks, time.Hour, 2, 0)
	var keys []string
	for i := range 3 {
		_, k, err := ks.CreateUser(t.Context(), fmt.Sprint("u", i))
		require.NoError(t, err)
		keys = append(keys, k)
	}
	for _, k := range keys {
		_, err := c.lookup(t.Context(), k)
		require.NoError(t, err)
	}
	assert.Equal(t, 2, c.pos.Len())
	n := ks.n.Load()
	_, err := c.lookup(t.Context(), keys[2]) // most recent: cached
	require.NoError(t, err)
	assert.Equal(t, n, ks.n.Load())
	_, err = c.lookup(t.Context(), keys[0]) // evicted: looked up again
	require.NoError(t, err)
	assert.Equal(t, n+1, ks.n.Load())
}
