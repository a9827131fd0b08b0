package pgstore

// CreateGroups reports how many groups of space creations were written and
// how many creates went out in a group of more than one.
func (s *Store) CreateGroups() (groups, grouped int) {
	s.creates.mu.Lock()
	defer s.creates.mu.Unlock()
	return s.creates.groups, s.creates.grouped
}

// HoldCreates takes every flight, so that creates wait; PendingCreates
// counts them. The returned release hands the waiting creates to one
// leader, which writes them as one group, and gives the flights back.
func (s *Store) HoldCreates() (release func()) {
	q := &s.creates
	q.mu.Lock()
	q.flights += maxCreateFlights
	q.mu.Unlock()
	return func() {
		q.mu.Lock()
		defer q.mu.Unlock()
		q.flights -= maxCreateFlights
		if len(q.pending) > 0 {
			next := q.pending[0]
			q.pending = q.pending[1:]
			q.flights++
			close(next.lead)
		}
	}
}

// PendingCreates counts the creates waiting for a flight.
func (s *Store) PendingCreates() int {
	s.creates.mu.Lock()
	defer s.creates.mu.Unlock()
	return len(s.creates.pending)
}
