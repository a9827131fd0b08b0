-- sessions_space_idx (space_id) duplicates the leading column of the unique
-- index on (space_id, id), which serves every lookup by space (loading a
-- space, the cascade from spaces) as well. Each session insert, a space's
-- root among them, kept both up to date.
DROP INDEX sessions_space_idx;
