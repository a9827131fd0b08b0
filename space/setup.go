package space

import (
	"context"
	"fmt"

	"github.com/stellohq/stello/internal/apierr"
	"github.com/stellohq/stello/session"
)

// BuildFunc is the per-space build hook of a program embedding Stello: it
// is called when a space's actor loads, with the space as stored (its
// Config included), and returns the model, extra tools and default prompts
// of that space. It runs on a task of the loading actor, bounded by
// Options.LoadTimeout; an error or a panic fails the load with ErrBuild.
type BuildFunc func(ctx context.Context, sp session.Space) (session.SpaceSetup, error)

// ErrBuild means the build hook failed for a space: the space is not
// loaded and requests on it answer 503 UNAVAILABLE until a later load
// succeeds (the next request tries again).
var ErrBuild = apierr.ErrSpaceSetup

// build runs the build hook, if any, turning a panic into an error.
func (m *Manager) build(ctx context.Context, sp session.Space) (setup *session.SpaceSetup, err error) {
	if m.opts.Build == nil {
		return nil, nil
	}
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("%w: %w: %w", ErrUnavailable, ErrBuild, m.opts.Guard.Caught("build hook", v))
			setup = nil
		}
	}()
	s, err := m.opts.Build(ctx, sp)
	if err != nil {
		return nil, fmt.Errorf("%w: %w: space %s: %w", ErrUnavailable, ErrBuild, sp.ID, err)
	}
	return &s, nil
}

// Agent loads a space's actor if it is not resident (running the build
// hook) and returns the space and the setup the hook chose for it (the
// zero setup without a hook). It checks no ownership: it is for the
// program embedding Stello, not for API requests.
func (m *Manager) Agent(ctx context.Context, spaceID string) (session.Space, session.SpaceSetup, error) {
	type agent struct {
		sp    session.Space
		setup session.SpaceSetup
	}
	a, err := doTyped(ctx, m, "", spaceID, func(s *spaceActor) (agent, error) {
		a := agent{sp: s.space}
		if s.setup != nil {
			a.setup = *s.setup
		}
		return a, nil
	})
	return a.sp, a.setup, err
}
