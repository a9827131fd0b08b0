package space_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stellohq/stello/space"
)

// A space deleted while one of its turns waits for the model: the turn's
// caller still gets an answer (the commit fails, nothing is written)
// instead of waiting for ever.
func TestTurnOfADeletedSpaceStillAnswers(t *testing.T) {
	t.Parallel()
	e := newTQEnv(t, space.Options{}, true)
	done := e.goTurn(e.rootID, "hello")
	require.Eventually(t, func() bool { return e.model.entered.Load() == 1 }, 10*time.Second, 5*time.Millisecond)
	require.NoError(t, e.mgr.DeleteSpace(e.ctx, e.userID, e.spaceID))
	e.model.release()
	select {
	case r := <-done:
		require.Error(t, r.err, "the session is gone, so the turn cannot commit")
	case <-time.After(20 * time.Second):
		t.Fatal("the turn's caller never got an answer")
	}
	var n int
	require.NoError(t, e.store.Pool().QueryRow(e.ctx, "SELECT count(*) FROM records").Scan(&n))
	assert.Zero(t, n)
}
