package pgstore

import "time"

// CreateGroups reports how many groups of space creations were written and
// how many creates went out in a group of more than one.
func (s *Store) CreateGroups() (groups, grouped int) { return s.creates.stats() }

// CommitGroups is CreateGroups for turn commits.
func (s *Store) CommitGroups() (groups, grouped int) { return s.commits.stats() }

// HoldCreates takes every flight of the create queue, so that creates
// wait; PendingCreates counts them. The returned release hands the waiting
// creates to one leader, which writes them as one group.
func (s *Store) HoldCreates() (release func()) { return s.creates.hold() }

// PendingCreates counts the creates waiting for a flight.
func (s *Store) PendingCreates() int { return s.creates.waiting() }

// HoldCommits and PendingCommits are HoldCreates and PendingCreates for
// turn commits.
func (s *Store) HoldCommits() (release func()) { return s.commits.hold() }

// PendingCommits counts the commits waiting for a flight.
func (s *Store) PendingCommits() int { return s.commits.waiting() }

func (q *groupQueue[T]) stats() (groups, grouped int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.groups, q.grouped
}

func (q *groupQueue[T]) waiting() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pending)
}

func (q *groupQueue[T]) hold() (release func()) {
	q.mu.Lock()
	q.flights += q.maxFlights
	q.mu.Unlock()
	return func() {
		q.mu.Lock()
		defer q.mu.Unlock()
		q.flights -= q.maxFlights
		if len(q.pending) > 0 {
			next := q.pending[0]
			q.pending = q.pending[1:]
			q.flights++
			close(next.lead)
		}
	}
}

// SetCommitWait sets how long a commit waits for a flight.
func (s *Store) SetCommitWait(d time.Duration) {
	s.commits.mu.Lock()
	defer s.commits.mu.Unlock()
	s.commits.maxWait = d
}
