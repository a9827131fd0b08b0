package session

import (
	"context"

	"github.com/stellohq/stello/llm"
)

// SpaceSetup is what a program embedding Stello chose for one space when
// its actor loaded (see the BuildSpace hook of package stello): the model
// that answers it, extra tools and default prompts. The zero value changes
// nothing.
type SpaceSetup struct {
	// Model answers the space's turns, consolidations and integrations;
	// nil means the server's model.
	Model llm.Client
	// Tools are offered to the model beside the server's registry. A tool
	// here hides a registry tool of the same name.
	Tools []Tool
	// SystemPrompt is the system prompt of a session that has none of its
	// own.
	SystemPrompt string
	// ConsolidatePrompt replaces the built-in consolidate prompt when
	// neither the session nor the space has one.
	ConsolidatePrompt string
	// IntegratePrompt replaces the built-in integrate prompt when neither
	// the root session nor the space has one.
	IntegratePrompt string
}

// with returns the engine as it serves one space: its model, its tools
// first and its default prompts. A nil setup returns e itself.
func (e *Engine) with(s *SpaceSetup) *Engine {
	if s == nil {
		return e
	}
	c := *e
	c.setup = s
	if s.Model != nil {
		c.llm = s.Model
		c.enc, _ = s.Model.(llm.HistoryEncoder)
	}
	if len(s.Tools) > 0 {
		c.tools = e.tools.overlay(s.Tools)
	}
	return &c
}

// defaultPrompt returns the setup's prompt chosen by get, or "".
func (e *Engine) defaultPrompt(get func(*SpaceSetup) string) *string {
	if e.setup == nil {
		return nil
	}
	p := get(e.setup)
	return &p
}

// overlay returns a registry holding r's tools and then tools, which win
// on a name both have.
func (r *Registry) overlay(tools []Tool) *Registry {
	r.mu.RLock()
	o := &Registry{tools: make(map[string]Tool, len(r.tools)+len(tools))}
	for n, t := range r.tools {
		o.tools[n] = t
	}
	r.mu.RUnlock()
	for _, t := range tools {
		o.tools[t.Definition().Name] = t
	}
	return o
}

// ConsolidateFor is Consolidate for a space with a setup (nil: none).
func (e *Engine) ConsolidateFor(ctx context.Context, setup *SpaceSetup, sp Space, st State) (ConsolidateResult, error) {
	return e.with(setup).Consolidate(ctx, sp, st)
}

// IntegrateFor is Integrate for a space with a setup (nil: none).
func (e *Engine) IntegrateFor(ctx context.Context, setup *SpaceSetup, sp Space, root State) (IntegrateResult, error) {
	return e.with(setup).Integrate(ctx, sp, root)
}
