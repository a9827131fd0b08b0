package session

import (
	"context"
	"errors"
)

// ErrLeaseLost means this process no longer owns the space: another
// process took its lease over (this one was paused, partitioned or
// presumed dead). Nothing of the write that found out was stored.
var ErrLeaseLost = errors.New("the space moved to another process")

// Lease is a process's ownership of one space: the node that holds it and
// the epoch it was given when it took it. Writes made under a lease commit
// only while the database still names the same node and epoch.
type Lease struct {
	NodeID string
	Epoch  int64
}

type leaseKey struct{}

// WithLease returns ctx carrying the lease every write made with it is
// fenced by.
func WithLease(ctx context.Context, l Lease) context.Context {
	return context.WithValue(ctx, leaseKey{}, l)
}

// LeaseFrom returns the lease ctx carries, if any.
func LeaseFrom(ctx context.Context) (Lease, bool) {
	l, ok := ctx.Value(leaseKey{}).(Lease)
	return l, ok
}

// Owner is the process that holds a space's lease.
type Owner struct {
	NodeID string
	// URL is where the owner serves (its advertise URL).
	URL string
}
