package space

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/stellohq/stello/actor"
	"github.com/stellohq/stello/session"
)

// Cluster ties a Manager to the other processes sharing its database. With
// it, a space is active here only while this process holds its lease:
// activating a space takes the lease (or finds the live process that holds
// it), every write of the space is fenced by the lease, and an evicted
// space hands its lease back.
type Cluster struct {
	// NodeID is this process's id in the membership table.
	NodeID string
	// LeaseTTL is how long a process's heartbeat vouches for its leases.
	LeaseTTL time.Duration
	// Alive reports whether this process's heartbeat is fresh, so that the
	// leases it holds are still its own.
	Alive func() bool
}

// NotOwnerError means another live process owns the space: requests for it
// go there.
type NotOwnerError struct {
	Owner session.Owner
}

func (e *NotOwnerError) Error() string {
	return fmt.Sprintf("the space is active on another process (%s at %s)", e.Owner.NodeID, e.Owner.URL)
}

// Route says where a space's requests are served.
type Route struct {
	// Local is true when this process owns the space (or runs without a
	// cluster).
	Local bool
	// Owner is the process that does, when not Local.
	Owner session.Owner
}

// route is a cached Route; a remote one is trusted until expires.
type route struct {
	local   bool
	owner   session.Owner
	expires time.Time
}

// releaseReq is a lease to hand back.
type releaseReq struct {
	spaceID string
	epoch   int64
}

// Route returns where spaceID is served, activating it here when no live
// process owns it. refresh ignores a cached remote owner (one that could
// not be reached). A space that does not exist is session.ErrNotFound.
func (m *Manager) Route(ctx context.Context, spaceID string, refresh bool) (Route, error) {
	c := m.opts.Cluster
	if c == nil {
		return Route{Local: true}, nil
	}
	if err := checkSpaceID(spaceID); err != nil {
		return Route{}, err
	}
	if r, ok := m.routes.Load(spaceID); ok {
		if r.local {
			if !c.Alive() {
				// Its lease may be another process's by now.
				return Route{}, fmt.Errorf("%w: this process has lost contact with the database", ErrUnavailable)
			}
			return Route{Local: true}, nil
		}
		if !refresh && time.Now().Before(r.expires) {
			return Route{Owner: r.owner}, nil
		}
		m.routes.Compute(spaceID, func(old route, loaded bool) (route, bool) {
			return old, !loaded || !old.local // drop a remote entry only
		})
	}
	_, err := m.do(ctx, "", spaceID, func(*spaceActor) (any, error) { return nil, nil })
	var no *NotOwnerError
	if errors.As(err, &no) {
		return Route{Owner: no.Owner}, nil
	}
	if err != nil {
		return Route{}, err
	}
	return Route{Local: true}, nil
}

// ForgetOwner drops cached routes to a process that handed leases back:
// the given spaces, or all of them when spaces is empty (it left).
func (m *Manager) ForgetOwner(nodeID string, spaces []string) {
	drop := func(id string) {
		m.routes.Compute(id, func(old route, loaded bool) (route, bool) {
			return old, !loaded || (!old.local && old.owner.NodeID == nodeID)
		})
	}
	if len(spaces) > 0 {
		for _, id := range spaces {
			drop(id)
		}
		return
	}
	m.routes.Range(func(id string, r route) bool {
		if !r.local && r.owner.NodeID == nodeID {
			drop(id)
		}
		return true
	})
}

// LoseLeases stops every space actor: this process can no longer vouch for
// its leases (its heartbeat went stale), so another may own them now. The
// next request activates each space again, taking its lease anew.
func (m *Manager) LoseLeases() {
	// No request is routed here any more, then every actor stops (and
	// closes its WebSockets with 1001: clients reconnect to the owner).
	m.routes.Range(func(id string, r route) bool {
		if r.local {
			m.routes.Compute(id, func(old route, loaded bool) (route, bool) { return old, !loaded || old.local })
		}
		return true
	})
	m.sys.StopAll(fmt.Errorf("%w: %w", ErrUnavailable, session.ErrLeaseLost))
}

// task runs fn as a task of the actor with the space's lease in its
// context, so every write it makes is fenced.
func (s *spaceActor) task(fn func(ctx context.Context) any, onPanic func(err error) any) {
	if !s.leased {
		s.a.Go(fn, onPanic)
		return
	}
	l := s.lease
	s.a.Go(func(ctx context.Context) any { return fn(session.WithLease(ctx, l)) }, onPanic)
}

// checkLease stops the actor when a task found that the space moved to
// another process: its memory can no longer be trusted, and its callers
// are answered UNAVAILABLE (a retry reaches the new owner).
func (s *spaceActor) checkLease(err error) {
	if err == nil || !errors.Is(err, session.ErrLeaseLost) || s.a.Stopping() {
		return
	}
	s.logger().Warn("the space's lease was taken over by another process; stopping its actor")
	s.lost = true
	s.a.StopSelf(fmt.Errorf("%w: %w", ErrUnavailable, session.ErrLeaseLost))
}

// acquire takes the space's lease for this process (load task).
func (m *Manager) acquire(ctx context.Context, spaceID string) (session.Lease, error) {
	c := m.opts.Cluster
	l, owner, err := m.store.AcquireSpace(ctx, spaceID, c.NodeID)
	if err != nil {
		return session.Lease{}, err
	}
	if owner != nil {
		return session.Lease{}, &NotOwnerError{Owner: *owner}
	}
	return l, nil
}

// loaded records where a space is served after its load.
func (m *Manager) loaded(spaceID string, err error) {
	if m.opts.Cluster == nil {
		return
	}
	var no *NotOwnerError
	switch {
	case err == nil:
		m.routes.Store(spaceID, route{local: true})
	case errors.As(err, &no):
		m.routes.Store(spaceID, route{owner: no.Owner, expires: time.Now().Add(m.opts.Cluster.LeaseTTL)})
	}
}

// unloaded forgets a local route and hands the lease back when the actor
// was evicted (not when the process closes, which hands back every lease
// at once, nor when the lease was lost or the space deleted).
func (m *Manager) unloaded(spaceID string, l session.Lease, release bool) {
	m.routes.Compute(spaceID, func(old route, loaded bool) (route, bool) {
		return old, !loaded || old.local // keep a remote entry
	})
	if !release {
		return
	}
	select {
	case m.releases <- releaseReq{spaceID: spaceID, epoch: l.Epoch}:
	default: // the lease stays ours; the next activation here renews it
	}
}

// releaseLoop hands evicted spaces' leases back in batches and drops
// expired remote routes, until the manager closes.
func (m *Manager) releaseLoop() {
	defer m.sweeping.Done()
	ctx := m.sys.Context()
	t := time.NewTicker(m.opts.Cluster.LeaseTTL)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-m.releases:
			batch := []releaseReq{r}
		drain:
			for len(batch) < 1000 {
				select {
				case r := <-m.releases:
					batch = append(batch, r)
				default:
					break drain
				}
			}
			m.release(ctx, batch)
		case <-t.C:
			m.dropExpiredRoutes()
		}
	}
}

// dropExpiredRoutes forgets remote routes older than the lease TTL.
func (m *Manager) dropExpiredRoutes() {
	defer func() {
		if v := recover(); v != nil {
			_ = m.opts.Guard.Caught("routes.sweep", v)
		}
	}()
	now := time.Now()
	m.routes.Range(func(id string, r route) bool {
		if !r.local && now.After(r.expires) {
			m.routes.Compute(id, func(old route, loaded bool) (route, bool) {
				return old, !loaded || (!old.local && now.After(old.expires))
			})
		}
		return true
	})
}

func (m *Manager) release(ctx context.Context, batch []releaseReq) {
	defer func() {
		if v := recover(); v != nil {
			_ = m.opts.Guard.Caught("lease.release", v)
		}
	}()
	ids := make([]string, len(batch))
	epochs := make([]int64, len(batch))
	for i, r := range batch {
		ids[i], epochs[i] = r.spaceID, r.epoch
	}
	ctx, cancel := context.WithTimeout(ctx, m.opts.WriteTimeout)
	defer cancel()
	if err := m.store.ReleaseSpaces(ctx, m.opts.Cluster.NodeID, ids, epochs); err != nil && ctx.Err() == nil {
		m.log.Warn("hand back space leases", zap.Int("spaces", len(ids)), zap.Error(err))
	}
}

// releasing reports whether an actor stopping with err should hand its
// lease back: only when it was evicted while idle.
func releasing(err error) bool { return errors.Is(err, actor.ErrStopped) }
