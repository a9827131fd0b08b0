-- Several processes over one database. A process (node) registers itself
-- and renews its heartbeat; a space is active on the node named by its
-- lease, which is valid while that node's heartbeat is fresh. Every write
-- the owner makes for a space checks its lease (stello_fence) in the same
-- transaction, so a node that lost a lease can never commit for the space.
CREATE TABLE nodes (
    id            uuid PRIMARY KEY,
    advertise_url text NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    -- The node is alive while its heartbeat is younger than its own lease
    -- TTL (processes may run with different TTLs).
    lease_ttl     interval NOT NULL
);

-- Epochs come from one sequence: an epoch is never given twice, even to a
-- space whose lease row was released and taken again.
CREATE SEQUENCE space_lease_epoch;

CREATE TABLE space_leases (
    space_id    uuid PRIMARY KEY REFERENCES spaces (id) ON DELETE CASCADE,
    node_id     uuid NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    epoch       bigint NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX space_leases_node_idx ON space_leases (node_id);

-- stello_fence fails the transaction (SQLSTATE SLOST) unless the space's
-- lease still names this node and epoch. FOR SHARE holds the lease row
-- until the transaction ends: a takeover (which updates the row) waits for
-- the write to commit, so a write either commits before the takeover or
-- not at all, and the new owner, which loads the space after taking the
-- lease, sees every write of the old one.
CREATE FUNCTION stello_fence(p_space uuid, p_node uuid, p_epoch bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM space_leases
        WHERE space_id = p_space AND node_id = p_node AND epoch = p_epoch
        FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'space % is no longer leased to this process', p_space
            USING ERRCODE = 'SLOST';
    END IF;
END
$$;
