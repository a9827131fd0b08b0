-- The statements one Stello turn commits (pgstore.CommitTurn): the user
-- input and the assistant reply appended to the session's records, its turn
-- count and last-active time bumped, and the turn's row in the turn log,
-- sent as one pipeline with one sync, which PostgreSQL runs as one implicit
-- transaction (exactly how pgx sends the batch: one round trip). Each
-- pgbench client writes to its own session, listed in bench_turn_sessions
-- by `stello bench`. The sizes are those of the in-process fake model's
-- turn on the input "load test input".
\set n :client_id
\startpipeline
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
UPDATE sessions SET turn_count = turn_count + 1, last_active_at = now(), updated_at = now()
  WHERE (space_id, id) = (SELECT space_id, session_id FROM bench_turn_sessions WHERE n = :n)
  RETURNING turn_count;
-- turn log (absent with `stello serve --turn-log=false`)
INSERT INTO turns (id, space_id, session_id, state, input, idempotency_key, final_content,
    tool_round_count, tool_calls_executed, raw_response, error_code, error_message, created_at, finished_at)
  SELECT gen_random_uuid(), b.space_id, b.session_id, 'completed', 'load test input', NULL, 'Echo: load test input',
    0, 0, '{"content": "Echo: load test input", "model": "fake", "usage": {"InputTokens": 17, "OutputTokens": 4}}',
    NULL, NULL, now(), now()
  FROM bench_turn_sessions b WHERE b.n = :n
  ON CONFLICT (space_id, session_id, id) DO NOTHING;
\endpipeline
