-- The turn log: one row per turn that finished (completed, failed or
-- cancelled). Queued and running turns live in their space actor's memory.
CREATE TABLE turns (
    id                  uuid NOT NULL,
    space_id            uuid NOT NULL,
    session_id          uuid NOT NULL,
    state               text NOT NULL CHECK (state IN ('completed', 'failed', 'cancelled')),
    input               text NOT NULL,
    idempotency_key     text,
    final_content       text,
    tool_round_count    integer NOT NULL DEFAULT 0,
    tool_calls_executed integer NOT NULL DEFAULT 0,
    raw_response        text NOT NULL DEFAULT '',
    error_code          text,
    error_message       text,
    created_at          timestamptz NOT NULL,
    finished_at         timestamptz NOT NULL,
    -- One index serves the lookups (always by space, session and id) and
    -- the cascade from sessions: a completed turn costs one index entry.
    PRIMARY KEY (space_id, session_id, id),
    FOREIGN KEY (space_id, session_id) REFERENCES sessions (space_id, id) ON DELETE CASCADE
);
-- A key names at most one completed turn of a session; failed and
-- cancelled keys may be used again.
CREATE UNIQUE INDEX turns_idempotency_idx ON turns (session_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND state = 'completed';
CREATE INDEX turns_expiry_idx ON turns (finished_at) WHERE state <> 'completed';
