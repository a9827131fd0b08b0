package space

import (
	"errors"
	"fmt"

	"github.com/google/uuid"

	"github.com/stellohq/stello/session"
)

// checkSpaceID refuses, as not found, an id that is not a canonical UUID.
func checkSpaceID(spaceID string) error {
	if _, err := parseID(spaceID); err != nil {
		return fmt.Errorf("space %q: %w", spaceID, session.ErrNotFound)
	}
	return nil
}

// parseID accepts only the canonical spelling of a UUID (lower case, with
// hyphens): the id is the actor's key, so another spelling of the same UUID
// would start a second actor for the same space.
func parseID(id string) (string, error) {
	u, err := uuid.Parse(id)
	if err != nil {
		return "", err
	}
	if u.String() != id {
		return "", errors.New("not a canonical UUID")
	}
	return id, nil
}
