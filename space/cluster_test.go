package space_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/session"
	"github.com/stellohq/stello/space"
)

// clusterEnv is a Manager with leases, as process node of its database.
func clusterEnv(t *testing.T, alive *atomic.Bool) (*spEnv, string) {
	t.Helper()
	node := uuid.NewString()
	e := newSpEnv(t, space.Options{Cluster: &space.Cluster{NodeID: node, LeaseTTL: 10 * time.Second, Alive: alive.Load}})
	require.NoError(t, e.store.RegisterNode(e.ctx, node, "http://self", 10*time.Second))
	return e, node
}

// TestRouteOwnsOnlyWhileAlive: a process serves its spaces only while its
// heartbeat vouches for its leases; once it lost contact, it stops them
// all, and takes them again under new leases when it is back.
func TestRouteOwnsOnlyWhileAlive(t *testing.T) {
	t.Parallel()
	var alive atomic.Bool
	alive.Store(true)
	e, node := clusterEnv(t, &alive)
	spaceID, root := e.space(t, session.SpaceInput{Label: "s"})
	rt, err := e.mgr.Route(e.ctx, spaceID, false)
	require.NoError(t, err)
	require.True(t, rt.Local)
	var epoch int64
	require.NoError(t, e.store.Pool().QueryRow(e.ctx, "SELECT epoch FROM space_leases WHERE space_id = $1 AND node_id = $2", spaceID, node).Scan(&epoch))

	alive.Store(false)
	_, err = e.mgr.Route(e.ctx, spaceID, false)
	require.ErrorIs(t, err, space.ErrUnavailable, "a process out of touch does not serve from memory")
	e.mgr.LoseLeases()
	require.Eventually(t, func() bool { return e.mgr.Len() == 0 }, 5*time.Second, 5*time.Millisecond)

	alive.Store(true)
	rt, err = e.mgr.Route(e.ctx, spaceID, false)
	require.NoError(t, err)
	require.True(t, rt.Local)
	var epoch2 int64
	require.NoError(t, e.store.Pool().QueryRow(e.ctx, "SELECT epoch FROM space_leases WHERE space_id = $1", spaceID).Scan(&epoch2))
	assert.Greater(t, epoch2, epoch, "activated again under a new lease")
	_, err = e.mgr.Session(e.ctx, e.uid, spaceID, root)
	require.NoError(t, err)
}

// TestLostLeaseStopsTheActorAndAnswersUnavailable: a write that finds the
// lease taken over fails UNAVAILABLE, stores nothing and stops the actor;
// the space then routes to its new owner.
func TestLostLeaseStopsTheActorAndAnswersUnavailable(t *testing.T) {
	t.Parallel()
	var alive atomic.Bool
	alive.Store(true)
	e, _ := clusterEnv(t, &alive)
	spaceID, root := e.space(t, session.SpaceInput{Label: "s"})
	_, err := e.mgr.Session(e.ctx, e.uid, spaceID, root)
	require.NoError(t, err)
	other := uuid.NewString()
	require.NoError(t, e.store.RegisterNode(e.ctx, other, "http://other", 10*time.Second))
	_, err = e.store.Pool().Exec(e.ctx, "UPDATE space_leases SET node_id = $2, epoch = nextval('space_lease_epoch') WHERE space_id = $1", spaceID, other)
	require.NoError(t, err)

	_, err = e.mgr.Fork(e.ctx, e.uid, spaceID, root, session.ForkOptions{Label: "lost"})
	require.ErrorIs(t, err, session.ErrLeaseLost)
	var n int
	require.NoError(t, e.store.Pool().QueryRow(e.ctx, "SELECT count(*) FROM sessions WHERE space_id = $1", spaceID).Scan(&n))
	assert.Equal(t, 1, n, "the fenced fork stored nothing")
	require.Eventually(t, func() bool { return e.mgr.Len() == 0 }, 5*time.Second, 5*time.Millisecond, "the actor stopped")
	rt, err := e.mgr.Route(e.ctx, spaceID, false)
	require.NoError(t, err)
	assert.False(t, rt.Local)
	assert.Equal(t, session.Owner{NodeID: other, URL: "http://other"}, rt.Owner)
	_, err = e.mgr.Session(e.ctx, e.uid, spaceID, root)
	var no *space.NotOwnerError
	require.ErrorAs(t, err, &no, "the manager's own calls say where the space is")
	require.ErrorIs(t, err, space.ErrUnavailable)
}
