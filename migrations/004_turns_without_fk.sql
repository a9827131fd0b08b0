-- The turn log row without a foreign key. A foreign key costs every insert
-- a lookup of the session and a lock on its row, although the turn's commit
-- already updates that row in the same statement (the completed turn's row
-- is inserted from the session row the UPDATE returns; see
-- pgstore.CommitTurn) and a failed or cancelled turn's row is inserted from
-- the session row it locks (pgstore.LogTurn). What the foreign key's
-- cascade did, deleting a session's turns with it, a statement-level
-- trigger does: once per DELETE statement on sessions, which includes the
-- cascades from spaces (and so from users) and from a parent session.
ALTER TABLE turns DROP CONSTRAINT turns_space_id_session_id_fkey;

CREATE FUNCTION stello_delete_session_turns() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM turns t USING deleted_sessions d
        WHERE t.space_id = d.space_id AND t.session_id = d.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER sessions_delete_turns
    AFTER DELETE ON sessions
    REFERENCING OLD TABLE AS deleted_sessions
    FOR EACH STATEMENT EXECUTE FUNCTION stello_delete_session_turns();
