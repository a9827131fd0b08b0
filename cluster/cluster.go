// Package cluster is this process's membership among the processes that
// share one database: it registers the process, renews its heartbeat (one
// statement per period, however many spaces it owns), says whether the
// process's space leases are still its own, listens for leases handed back
// by other processes, and deregisters the process when it stops, which
// hands every lease it holds back at once.
//
// PostgreSQL is the only coordinator: the membership and lease tables
// (migrations/003_cluster.sql) and LISTEN/NOTIFY.
package cluster

import (
	"context"

	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/stellohq/stello/internal/guard"
	"github.com/stellohq/stello/pgstore"
)

// DefaultLeaseTTL is Options.LeaseTTL when it is zero.
const DefaultLeaseTTL = 10 * time.Second

// Options configure a Membership.
type Options struct {
	// NodeID is this process's id (default: a new UUIDv7).
	NodeID string
	// AdvertiseURL is how other processes reach this one (may be set
	// later with SetAdvertiseURL, once the listener is bound).
	AdvertiseURL string
	// LeaseTTL is how long a heartbeat vouches for this process's leases
	// (default 10s); the heartbeat is renewed every third of it.
	LeaseTTL time.Duration
	// OnLost is called (on the heartbeat goroutine) when the heartbeat
	// could not be renewed for LeaseTTL: every lease may have been taken
	// over, so every space actor must stop.
	OnLost func()
	// OnReleased is called when another process hands leases back: the
	// given spaces, or every lease of nodeID when spaces is empty.
	OnReleased func(nodeID string, spaces []string)
	Log        *zap.Logger
	Guard      *guard.Guard
}

// Membership is this process's place in the cluster.
type Membership struct {
	store *pgstore.Store
	opts  Options
	log   *zap.Logger

	// lastBeat is when (monotonic nanoseconds since start) the last
	// successful heartbeat was sent: the database judges this process alive
	// until at least that time plus LeaseTTL.
	start    time.Time
	lastBeat atomic.Int64
	lost     atomic.Bool
	leaving  atomic.Bool

	mu  sync.Mutex
	url string

	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

// Join registers this process and starts renewing its heartbeat and
// listening for released leases, until Leave.
func Join(ctx context.Context, store *pgstore.Store, o Options) (*Membership, error) {
	if o.NodeID == "" {
		id, err := uuid.NewV7()
		if err != nil {
			return nil, fmt.Errorf("node id: %w", err)
		}
		o.NodeID = id.String()
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = DefaultLeaseTTL
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Guard == nil {
		o.Guard = guard.New(o.Log)
	}
	m := &Membership{store: store, opts: o, log: o.Log.With(zap.String("node", o.NodeID)), start: time.Now(), url: o.AdvertiseURL}
	sent := time.Now()
	if err := store.RegisterNode(ctx, o.NodeID, o.AdvertiseURL, o.LeaseTTL); err != nil {
		return nil, fmt.Errorf("join the cluster: %w", err)
	}
	m.lastBeat.Store(int64(sent.Sub(m.start)))
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	m.cancel = cancel
	m.wg.Add(2)
	go m.beatLoop(lctx)
	go m.listen(lctx)
	return m, nil
}

// NodeID is this process's id.
func (m *Membership) NodeID() string { return m.opts.NodeID }

// AdvertiseURL is how other processes reach this one.
func (m *Membership) AdvertiseURL() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.url
}

// SetAdvertiseURL records how other processes reach this one.
func (m *Membership) SetAdvertiseURL(ctx context.Context, url string) error {
	m.mu.Lock()
	m.url = url
	m.mu.Unlock()
	if err := m.store.RegisterNode(ctx, m.opts.NodeID, url, m.opts.LeaseTTL); err != nil {
		return fmt.Errorf("advertise %s: %w", url, err)
	}
	return nil
}

// Vacate starts leaving: this process stops accepting requests and gives
// up its advertise URL, so that a process started on the same address
// while this one drains does not take its spaces (and fence its turns in
// flight) before Leave hands them back.
func (m *Membership) Vacate(ctx context.Context) error {
	m.leaving.Store(true)
	if err := m.store.VacateNode(ctx, m.opts.NodeID); err != nil {
		return fmt.Errorf("leave the cluster: %w", err)
	}
	return nil
}

// ReplacePredecessors removes the processes that were registered at this
// process's advertise URL before it (see pgstore.ReplaceNodesAt): call it
// only once this process holds the address (its listener is bound there).
func (m *Membership) ReplacePredecessors(ctx context.Context) error {
	n, err := m.store.ReplaceNodesAt(ctx, m.opts.NodeID, m.AdvertiseURL())
	if err != nil {
		return err
	}
	if n > 0 {
		m.log.Info("took over from the previous process at this address", zap.Int("processes", n))
	}
	return nil
}

// Alive reports whether this process's last heartbeat is recent enough
// that the database still counts it alive, so its leases are its own. A
// tenth of the TTL is kept as a margin for the heartbeat's own travel.
func (m *Membership) Alive() bool {
	since := time.Since(m.start) - time.Duration(m.lastBeat.Load())
	return since < m.opts.LeaseTTL-m.opts.LeaseTTL/10
}

// PruneAfter is how long a dead process stays in the membership table
// (shown dead by `stello cluster status`) before a live one deletes it.
const PruneAfter = time.Hour

// pruneEvery is how many heartbeats apart the pruning runs.
const pruneEvery = 300

func (m *Membership) beatLoop(ctx context.Context) {
	defer m.wg.Done()
	period := m.opts.LeaseTTL / 3
	t := time.NewTicker(period)
	defer t.Stop()
	for n := 0; ; n++ {
		if n%pruneEvery == 0 {
			m.prune(ctx, period)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.beat(ctx, period)
	}
}

// prune deletes processes dead for longer than PruneAfter (and so their
// leases, which are free anyway).
func (m *Membership) prune(ctx context.Context, timeout time.Duration) {
	defer func() {
		if v := recover(); v != nil {
			_ = m.opts.Guard.Caught("cluster.prune", v)
		}
	}()
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	n, err := m.store.PruneNodes(pctx, max(PruneAfter, 100*m.opts.LeaseTTL))
	switch {
	case err != nil && ctx.Err() == nil:
		m.log.Warn("prune dead processes", zap.Error(err))
	case n > 0:
		m.log.Info("pruned dead processes", zap.Int64("processes", n))
	}
}

// beat renews the heartbeat once; a failure that lasts past the TTL makes
// every lease suspect (OnLost), once per outage.
func (m *Membership) beat(ctx context.Context, timeout time.Duration) {
	defer func() {
		if v := recover(); v != nil {
			_ = m.opts.Guard.Caught("cluster.heartbeat", v)
		}
	}()
	sent := time.Now()
	bctx, cancel := context.WithTimeout(ctx, timeout)
	ok, err := m.store.Heartbeat(bctx, m.opts.NodeID)
	// The row is gone: pruned after a long silence, or deleted by a process
	// that took this one's address over. Its leases went with it.
	gone := err == nil && !ok && !m.leaving.Load()
	if gone {
		err = m.store.RegisterNode(bctx, m.opts.NodeID, m.AdvertiseURL(), m.opts.LeaseTTL)
	}
	cancel()
	if err == nil {
		if gone {
			m.log.Warn("this process's registration was deleted, and its leases with it: registered again; stopping every space actor")
			if m.opts.OnLost != nil {
				m.opts.OnLost()
			}
		} else if !m.Alive() && !m.lost.Load() {
			// The process was paused (or the heartbeat slow) past the TTL
			// without a failure to notice it: others may own its spaces
			// by now, so its memory of them cannot be trusted.
			m.log.Warn("heartbeat renewed after more than the lease TTL: stopping every space actor")
			if m.opts.OnLost != nil {
				m.opts.OnLost()
			}
		} else if m.lost.Load() {
			m.log.Info("heartbeat renewed; spaces are activated again on demand")
		}
		m.lost.Store(false)
		m.lastBeat.Store(int64(sent.Sub(m.start)))
		return
	}
	if ctx.Err() != nil {
		return
	}
	m.log.Warn("heartbeat failed", zap.Error(err))
	if !m.Alive() && !m.lost.Swap(true) {
		m.log.Error("heartbeat not renewed within the lease TTL: stopping every space actor")
		if m.opts.OnLost != nil {
			m.opts.OnLost()
		}
	}
}

func (m *Membership) listen(ctx context.Context) {
	defer m.wg.Done()
	for ctx.Err() == nil {
		err := m.listenGuarded(ctx)
		if ctx.Err() == nil {
			m.log.Warn("lease listener stopped; restarting", zap.Error(err))
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

func (m *Membership) listenGuarded(ctx context.Context) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = m.opts.Guard.Caught("cluster.listen", v)
		}
	}()
	return m.store.Listen(ctx, pgstore.LeaseChannel, func(payload string) {
		node, spaces, ok := pgstore.ParseLeaseNotice(payload)
		if !ok || node == m.opts.NodeID || m.opts.OnReleased == nil {
			return
		}
		m.opts.OnReleased(node, spaces)
	}, func() {})
}

// Leave deregisters this process, handing back every lease it holds, and
// stops the heartbeat. Call it after the space actors stopped.
func (m *Membership) Leave(ctx context.Context) error {
	var err error
	m.once.Do(func() {
		// Hand the leases back first: the other processes may take the
		// spaces over while the background loops wind down.
		m.leaving.Store(true)
		if e := m.store.DeregisterNode(ctx, m.opts.NodeID); e != nil {
			err = fmt.Errorf("leave the cluster: %w", e)
		}
		m.cancel()
		m.wg.Wait()
	})
	return err
}
