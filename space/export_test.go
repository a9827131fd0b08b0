package space

import (
	"context"
	"fmt"
	"time"
)

// HoldActor blocks a space actor's goroutine until release is called, so a
// test can line messages up in its mailbox. The space is loaded first.
func HoldActor(m *Manager, spaceID string) (release func(), err error) {
	entered, hold := make(chan struct{}), make(chan struct{})
	c := &call{fn: func(*spaceActor) (any, error) {
		close(entered)
		<-hold
		return nil, nil
	}, reply: make(chan result, 1)}
	if err := m.sys.Send(spaceID, c); err != nil {
		return nil, err
	}
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		return nil, fmt.Errorf("the actor of %s did not take the hold", spaceID)
	}
	return func() { close(hold) }, nil
}

// PanicActor makes a space actor panic while it handles a message and
// returns the error its caller got.
func PanicActor(m *Manager, spaceID string) error {
	_, err := m.do(context.Background(), "", spaceID, func(s *spaceActor) (any, error) {
		s.tree.root = nil // state a later message would trip over
		panic("actor exploded")
	})
	return err
}
