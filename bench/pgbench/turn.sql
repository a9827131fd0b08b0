-- The statements one Stello turn commits (pgstore.CommitTurn), sent as one
-- pipeline with one sync, which PostgreSQL runs as one implicit transaction
-- (exactly how pgx sends the batch: one round trip): the lease fence (the
-- server holds the lease of every space it loaded; `stello bench` copies
-- its node and epoch into bench_turn_sessions), the user input and
-- the assistant reply appended to the session's records, and the session's
-- turn count and last-active time bumped in the statement that inserts the
-- turn's row in the turn log. Each pgbench client writes to its own
-- session, listed in bench_turn_sessions by `stello bench`. The sizes are
-- those of the in-process fake model's turn on the input "load test
-- input". The turn id is time-ordered like the server's (UUID version 7:
-- PostgreSQL 15 has no generator, so the expression builds one from the
-- clock and a random UUID).
\set n :client_id
\startpipeline
SELECT stello_fence(b.space_id, b.node_id, b.epoch) FROM bench_turn_sessions b WHERE b.n = :n AND b.node_id IS NOT NULL;
INSERT INTO records (space_id, session_id, role, content, tool_calls, tool_call_id, created_at)
  SELECT b.space_id, b.session_id, t.role, t.content, t.calls, t.call_id, now()
  FROM bench_turn_sessions b,
       unnest(ARRAY['user', 'assistant']::text[],
              ARRAY['load test input', 'Echo: load test input']::text[],
              ARRAY[NULL, NULL]::jsonb[],
              ARRAY[NULL, NULL]::text[]) WITH ORDINALITY AS t(role, content, calls, call_id, n)
  WHERE b.n = :n
  ORDER BY t.n
  RETURNING id;
-- with the turn log: the session update inserts the turn's row
WITH s AS (
  UPDATE sessions SET turn_count = turn_count + 1, last_active_at = now(), updated_at = now()
    WHERE (space_id, id) = (SELECT space_id, session_id FROM bench_turn_sessions WHERE n = :n)
    RETURNING space_id, id, turn_count)
INSERT INTO turns (id, space_id, session_id, state, input, idempotency_key, final_content,
    tool_round_count, tool_calls_executed, raw_response, error_code, error_message, created_at, finished_at)
  SELECT encode(set_byte(overlay(uuid_send(gen_random_uuid())
             PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3) FROM 1 FOR 6),
           6, 112 + get_byte(uuid_send(gen_random_uuid()), 6) % 16), 'hex')::uuid,
    s.space_id, s.id, 'completed', 'load test input', NULL, 'Echo: load test input',
    0, 0, '{"content": "Echo: load test input", "model": "fake", "usage": {"InputTokens": 17, "OutputTokens": 4}}',
    NULL, NULL, now(), now()
  FROM s
  RETURNING (SELECT turn_count FROM s);
-- without the turn log (`stello serve --turn-log=false`): the update alone
UPDATE sessions SET turn_count = turn_count + 1, last_active_at = now(), updated_at = now()
  WHERE (space_id, id) = (SELECT space_id, session_id FROM bench_turn_sessions WHERE n = :n)
  RETURNING turn_count;
\endpipeline
