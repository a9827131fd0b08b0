package stello

import (
	"context"

	"github.com/stellohq/stello/session"
)

// Pool is the pool of space actors (the "agent pool"): one actor per
// space, started on the space's first request and stopped when idle for
// Config.IdleTTL. Each actor holds its space's session tree and the setup
// Config.BuildSpace chose for it.
type Pool struct {
	m interface {
		Agent(ctx context.Context, spaceID string) (session.Space, session.SpaceSetup, error)
		Evict(spaceID string) bool
		Len() int
	}
}

// Agent is a space whose actor is resident, with the setup the build hook
// chose for it (the zero setup without a hook).
type Agent struct {
	Space session.Space
	Setup SpaceSetup
}

// Get returns the space's actor, starting it (loading the space and
// running Config.BuildSpace) if it is not resident. It checks no
// ownership. An unknown space is session.ErrNotFound; a failed build hook
// is space.ErrBuild.
func (p *Pool) Get(ctx context.Context, spaceID string) (Agent, error) {
	sp, setup, err := p.m.Agent(ctx, spaceID)
	if err != nil {
		return Agent{}, err
	}
	return Agent{Space: sp, Setup: setup}, nil
}

// Evict asks the space's actor to stop as soon as it is idle (no
// WebSocket attached, no turn, memory work or write running); the next
// request starts a new one, running the build hook again. It reports
// whether the actor was resident.
func (p *Pool) Evict(spaceID string) bool { return p.m.Evict(spaceID) }

// Len returns the number of resident space actors.
func (p *Pool) Len() int { return p.m.Len() }
