-- The statements one Stello turn commits (pgstore.CommitTurn), sent as one
-- pipeline with one sync, which PostgreSQL runs as one implicit transaction
-- (exactly how pgx sends the batch: one round trip): the lease fence (the
-- server holds the lease of every space it loaded; `stello bench` copies
-- its node and epoch into bench_turn_sessions), the user input and the
-- assistant reply appended to the session's records, the session's turn
-- count and last-active time bumped in the statement that inserts the
-- turn's row in the turn log. The server sends these
-- statements with arrays: the turns of sessions that commit at the same
-- moment share one such transaction, one row each in the arrays. Here
-- every transaction is one turn. Each pgbench client writes to its own
-- session, listed in bench_turn_sessions by `stello bench`. The sizes are
-- those of the in-process fake model's turn on the input "load test
-- input". The turn id is time-ordered like the server's (UUID version 7:
-- PostgreSQL 15 has no generator, so the expression builds one from the
-- clock and a random UUID).
\set n :client_id
\startpipeline
SELECT stello_fence(t.space, t.node, t.epoch)
  FROM bench_turn_sessions b, unnest(ARRAY[b.space_id], ARRAY[b.node_id], ARRAY[b.epoch]) AS t(space, node, epoch)
  WHERE b.n = :n AND b.node_id IS NOT NULL;
INSERT INTO records (space_id, session_id, role, content, tool_calls, tool_call_id, created_at)
  SELECT b.space_id, b.session_id, t.role, t.content, t.calls, t.call_id, t.at
  FROM bench_turn_sessions b,
       unnest(ARRAY['user', 'assistant']::text[],
              ARRAY['load test input', 'Echo: load test input']::text[],
              ARRAY[NULL, NULL]::jsonb[],
              ARRAY[NULL, NULL]::text[],
              ARRAY[now(), now()]::timestamptz[]) WITH ORDINALITY AS t(role, content, calls, call_id, at, n)
  WHERE b.n = :n
  ORDER BY t.n
  RETURNING session_id::text, id;
-- with the turn log: the session update inserts the turn's row
WITH s AS (
  UPDATE sessions s SET turn_count = s.turn_count + 1, last_active_at = t.at, updated_at = t.at
    FROM bench_turn_sessions b, unnest(ARRAY[now()]::timestamptz[]) AS t(at)
    WHERE b.n = :n AND s.space_id = b.space_id AND s.id = b.session_id
    RETURNING s.space_id, s.id, s.turn_count),
logged AS (
  INSERT INTO turns (id, space_id, session_id, state, input, idempotency_key, final_content,
      tool_round_count, tool_calls_executed, raw_response, error_code, error_message, created_at, finished_at)
    SELECT l.id, s.space_id, s.id, l.state, l.input, l.key, l.final, l.rounds, l.calls, l.raw, l.code, l.message, l.created, l.finished
    FROM unnest(ARRAY[encode(set_byte(overlay(uuid_send(gen_random_uuid())
               PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3) FROM 1 FOR 6),
             6, 112 + get_byte(uuid_send(gen_random_uuid()), 6) % 16), 'hex')::uuid],
           (SELECT array_agg(session_id) FROM bench_turn_sessions WHERE n = :n),
           ARRAY['completed'], ARRAY['load test input'], ARRAY[NULL]::text[], ARRAY['Echo: load test input'],
           ARRAY[0], ARRAY[0],
           ARRAY['{"content": "Echo: load test input", "model": "fake", "usage": {"InputTokens": 17, "OutputTokens": 4}}'],
           ARRAY[NULL]::text[], ARRAY[NULL]::text[], ARRAY[now()], ARRAY[now()])
      AS l(id, sess, state, input, key, final, rounds, calls, raw, code, message, created, finished)
    JOIN s ON s.id = l.sess)
SELECT s.id::text, s.turn_count FROM s;
-- without the turn log (`stello serve --turn-log=false`): the update alone
WITH s AS (
  UPDATE sessions s SET turn_count = s.turn_count + 1, last_active_at = t.at, updated_at = t.at
    FROM bench_turn_sessions b, unnest(ARRAY[now()]::timestamptz[]) AS t(at)
    WHERE b.n = :n AND s.space_id = b.space_id AND s.id = b.session_id
    RETURNING s.space_id, s.id, s.turn_count)
SELECT s.id::text, s.turn_count FROM s;
\endpipeline
