package cluster_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/cluster"
	"github.com/stellohq/stello/internal/leakcheck"
	"github.com/stellohq/stello/internal/testutil"
	"github.com/stellohq/stello/pgstore"
	"github.com/stellohq/stello/pgstore/pgtest"
)

func TestMain(m *testing.M) { leakcheck.Main(m, pgtest.Stop) }

func heartbeatAt(t *testing.T, st *pgstore.Store, id string) time.Time {
	t.Helper()
	var at time.Time
	require.NoError(t, st.Pool().QueryRow(t.Context(), "SELECT heartbeat_at FROM nodes WHERE id = $1", id).Scan(&at))
	return at
}

func TestJoinBeatAndLeave(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	m, err := cluster.Join(ctx, st, cluster.Options{AdvertiseURL: "http://a:1", LeaseTTL: 300 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, uuid.Validate(m.NodeID()))
	assert.True(t, m.Alive())
	first := heartbeatAt(t, st, m.NodeID())
	require.Eventually(t, func() bool { return heartbeatAt(t, st, m.NodeID()).After(first) }, 5*time.Second, 20*time.Millisecond,
		"the heartbeat is renewed every third of the TTL")
	assert.True(t, m.Alive())

	require.NoError(t, m.SetAdvertiseURL(ctx, "http://a:2"))
	nodes, err := st.Nodes(ctx)
	require.NoError(t, err)
	require.Len(t, nodes, 1)
	assert.Equal(t, "http://a:2", nodes[0].AdvertiseURL)
	assert.True(t, nodes[0].Alive)

	require.NoError(t, m.Leave(ctx))
	nodes, err = st.Nodes(ctx)
	require.NoError(t, err)
	assert.Empty(t, nodes, "leaving deregisters the process")
}

// TestOnReleasedHearsOtherProcesses: a process hears another one hand
// leases back, and leave; never itself.
func TestOnReleasedHearsOtherProcesses(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	type notice struct {
		node   string
		spaces []string
	}
	got := make(chan notice, 8)
	m, err := cluster.Join(ctx, st, cluster.Options{AdvertiseURL: "http://a", OnReleased: func(node string, spaces []string) {
		got <- notice{node, spaces}
	}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = m.Leave(context.Background()) })
	other, err := cluster.Join(ctx, st, cluster.Options{AdvertiseURL: "http://b"})
	require.NoError(t, err)

	// The listener connects in the background: announce until heard.
	var n notice
	require.Eventually(t, func() bool {
		require.NoError(t, st.ReleaseSpaces(ctx, other.NodeID(), []string{uuid.NewString()}, []int64{1})) // nothing to release: no notice
		_, err := st.Pool().Exec(ctx, "SELECT pg_notify($1, $2)", pgstore.LeaseChannel, "spaces "+other.NodeID()+" s1,s2")
		require.NoError(t, err)
		select {
		case n = <-got:
			return true
		case <-time.After(100 * time.Millisecond):
			return false
		}
	}, 10*time.Second, 10*time.Millisecond)
	assert.Equal(t, notice{other.NodeID(), []string{"s1", "s2"}}, n)

	require.NoError(t, other.Leave(ctx))
	select {
	case n = <-got:
		assert.Equal(t, notice{other.NodeID(), nil}, n, "a process that leaves hands every lease back")
	case <-time.After(10 * time.Second):
		t.Fatal("no notice of the other process leaving")
	}
	_, err = st.Pool().Exec(ctx, "SELECT pg_notify($1, $2)", pgstore.LeaseChannel, "node "+m.NodeID())
	require.NoError(t, err)
	select {
	case n = <-got:
		t.Fatalf("a process heard its own notice: %+v", n)
	case <-time.After(300 * time.Millisecond):
	}
}

// TestHeartbeatLostWithinTheTTLStopsTrustingLeases: with the database
// frozen, the process stops counting itself alive within the TTL and
// calls OnLost once; when the database answers again, it is alive again.
func TestHeartbeatLostWithinTheTTLStopsTrustingLeases(t *testing.T) {
	t.Parallel()
	pg := pgtest.NewInstance(t)
	st, err := pgstore.Open(t.Context(), pg.URL(), pgstore.PoolOptions{MaxConns: 4, StatementTimeout: 200 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(st.Close)
	_, err = st.Migrate(t.Context())
	require.NoError(t, err)
	var lost atomic.Int32
	m, err := cluster.Join(t.Context(), st, cluster.Options{AdvertiseURL: "http://a", LeaseTTL: 600 * time.Millisecond,
		OnLost: func() { lost.Add(1) }})
	require.NoError(t, err)
	t.Cleanup(func() { _ = m.Leave(context.Background()) })

	pg.Pause(t)
	require.Eventually(t, func() bool { return !m.Alive() && lost.Load() == 1 }, 10*time.Second, 10*time.Millisecond,
		"a frozen database makes the process's leases suspect")
	time.Sleep(500 * time.Millisecond) // more failed heartbeats: still one OnLost per outage
	assert.Equal(t, int32(1), lost.Load())
	pg.Resume(t)
	require.Eventually(t, m.Alive, 10*time.Second, 10*time.Millisecond, "alive again once the heartbeat is renewed")
}

// TestReplacedWhileRunning: a process whose row another process deleted
// (taking its address over) stops its space actors and registers again;
// a process that vacated its address first is not replaced.
func TestReplacedWhileRunning(t *testing.T) {
	t.Parallel()
	st := testutil.Store(t)
	ctx := t.Context()
	url := "http://replaced-" + uuid.NewString() + ":1"
	var lost atomic.Int32
	a, err := cluster.Join(ctx, st, cluster.Options{AdvertiseURL: url, LeaseTTL: 300 * time.Millisecond,
		OnLost: func() { lost.Add(1) }})
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.Leave(context.Background()) })
	b, err := cluster.Join(ctx, st, cluster.Options{AdvertiseURL: url, LeaseTTL: 300 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Leave(context.Background()) })

	require.NoError(t, b.ReplacePredecessors(ctx))
	require.Eventually(t, func() bool { return lost.Load() == 1 }, 5*time.Second, 10*time.Millisecond,
		"the replaced process stops trusting its leases")
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, st.Pool().QueryRow(ctx, "SELECT count(*) FROM nodes WHERE id = $1", a.NodeID()).Scan(&n))
		return n == 1
	}, 5*time.Second, 10*time.Millisecond, "and registers again")

	// b stops: it vacates its address first, so a third process started
	// on it does not replace b while b drains.
	require.NoError(t, b.Vacate(ctx))
	c, err := cluster.Join(ctx, st, cluster.Options{AdvertiseURL: url, LeaseTTL: 300 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Leave(context.Background()) })
	require.NoError(t, c.ReplacePredecessors(ctx))
	var n int
	require.NoError(t, st.Pool().QueryRow(ctx, "SELECT count(*) FROM nodes WHERE id = $1", b.NodeID()).Scan(&n))
	assert.Equal(t, 1, n, "a vacated process keeps its row (and leases) until it leaves")
}
