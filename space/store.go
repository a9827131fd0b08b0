// Package space runs each space as an actor that owns the space row, its
// session tree with every session's data slots, the per-session turn queues
// and the set of live connections. Manager is the handle transport uses.
package space

import (
	"context"
	"time"

	"github.com/stellohq/stello/session"
)

// Store is the storage the space actors need.
type Store interface {
	CreateSpace(ctx context.Context, userID string, in session.SpaceInput) (session.Space, session.State, error)
	ListSpaces(ctx context.Context, userID string) ([]session.Space, error)
	LoadSpace(ctx context.Context, spaceID string) (session.Space, []session.State, error)
	UpdateSpace(ctx context.Context, spaceID string, p session.SpacePatch) (session.Space, error)
	DeleteSpace(ctx context.Context, spaceID string) error
	CreateSession(ctx context.Context, st session.State, inherit bool, prompt *string) error
	ArchiveSession(ctx context.Context, spaceID, sessionID string) (time.Time, error)
	SetSlot(ctx context.Context, spaceID, sessionID string, slot session.Slot, content *string) error
	ListRecords(ctx context.Context, spaceID, sessionID string, limit, offset int) ([]session.Record, error)
	LogTurn(ctx context.Context, l session.TurnLog) error
	TurnLog(ctx context.Context, spaceID, sessionID, turnID string) (session.TurnLog, error)
	CompletedTurnByKey(ctx context.Context, spaceID, sessionID, key string) (session.TurnLog, bool, error)
	DeleteExpiredTurnLogs(ctx context.Context, before time.Time) (int64, error)
	// AcquireSpace and ReleaseSpaces manage space leases (with a Cluster).
	AcquireSpace(ctx context.Context, spaceID, nodeID string) (session.Lease, *session.Owner, error)
	ReleaseSpaces(ctx context.Context, nodeID string, spaces []string, epochs []int64) error
}
