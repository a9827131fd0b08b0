package space

import "context"

// Space event kinds, as `space.event` carries them.
const (
	EventSessionCreated  = "session.created"
	EventSessionArchived = "session.archived"
	EventSessionUpdated  = "session.updated"
	EventTurnCommitted   = "turn.committed"
	EventMemoryUpdated   = "memory.updated"
	EventInsightUpdated  = "insight.updated"
)

// SpaceEvent is a change of a space, published to its subscribed
// connections whoever caused it.
type SpaceEvent struct {
	Event     string
	SessionID string
	Session   *SessionView // the session after the change, when it changed
	TurnID    string
}

// Subscriber is a connection that takes space events. Event must not
// block: a subscriber that cannot keep up drops itself.
type Subscriber interface {
	Conn
	Event(ev SpaceEvent)
}

func viewPtr(n *node) *SessionView {
	v := n.view()
	return &v
}

// publish hands an event to every subscribed connection.
func (s *spaceActor) publish(ev SpaceEvent) {
	for c := range s.subs {
		if sub, ok := c.(Subscriber); ok {
			sub.Event(ev)
		}
	}
}

// Subscribe makes a connection bound to the space receive its events.
func (m *Manager) Subscribe(ctx context.Context, userID, spaceID string, c Subscriber) error {
	_, err := m.do(ctx, userID, spaceID, func(s *spaceActor) (any, error) {
		if s.subs == nil {
			s.subs = map[Conn]struct{}{}
		}
		s.subs[c] = struct{}{}
		return nil, nil
	})
	return err
}
