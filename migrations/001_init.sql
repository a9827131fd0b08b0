-- Users and their API keys. Keys are stored as SHA-256 hashes only.
CREATE TABLE users (
    id         uuid PRIMARY KEY,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key_hash   bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX api_keys_user_idx ON api_keys (user_id);

-- A space is one agent with one session tree.
CREATE TABLE spaces (
    id                 uuid PRIMARY KEY,
    user_id            uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    label              text NOT NULL,
    system_prompt      text,
    consolidate_prompt text,
    integrate_prompt   text,
    config             jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL
);
CREATE INDEX spaces_user_created_idx ON spaces (user_id, created_at, id);

-- Sessions form a tree inside one space. The composite foreign key on
-- (space_id, parent_id) makes a parent in another space impossible.
CREATE TABLE sessions (
    id                uuid NOT NULL,
    space_id          uuid NOT NULL REFERENCES spaces (id) ON DELETE CASCADE,
    parent_id         uuid,
    source_session_id uuid,
    label             text NOT NULL,
    role              text NOT NULL CHECK (role IN ('main', 'standard')),
    status            text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'archived')),
    scope             text,
    depth             integer NOT NULL DEFAULT 0,
    idx               integer NOT NULL DEFAULT 0,
    turn_count        integer NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    last_active_at    timestamptz NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (space_id, id),
    FOREIGN KEY (space_id, parent_id) REFERENCES sessions (space_id, id) ON DELETE CASCADE
);
CREATE INDEX sessions_space_idx ON sessions (space_id);
CREATE INDEX sessions_parent_idx ON sessions (space_id, parent_id);
CREATE UNIQUE INDEX sessions_one_root_idx ON sessions (space_id) WHERE role = 'main';

-- Per-session data slots. memory_version increases with every memory write
-- so that background memory work can detect a concurrent change;
-- consolidated_through is the last record id a consolidation covered.
CREATE TABLE session_data (
    session_id           uuid PRIMARY KEY,
    space_id             uuid NOT NULL,
    system_prompt        text,
    memory               text,
    insight              text,
    consolidate_prompt   text,
    integrate_prompt     text,
    memory_version       bigint NOT NULL DEFAULT 0,
    consolidated_through bigint NOT NULL DEFAULT 0,
    summary              text,
    summary_through      bigint NOT NULL DEFAULT 0,
    FOREIGN KEY (space_id, session_id) REFERENCES sessions (space_id, id) ON DELETE CASCADE
);

-- Conversation records (messages), in commit order.
CREATE TABLE records (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    space_id     uuid NOT NULL,
    session_id   uuid NOT NULL,
    role         text NOT NULL CHECK (role IN ('user', 'assistant', 'tool', 'system')),
    content      text NOT NULL DEFAULT '',
    tool_calls   jsonb,
    tool_call_id text,
    created_at   timestamptz NOT NULL,
    FOREIGN KEY (space_id, session_id) REFERENCES sessions (space_id, id) ON DELETE CASCADE
);
CREATE INDEX records_session_idx ON records (space_id, session_id, id);

-- Space-level key/values.
CREATE TABLE space_kv (
    space_id   uuid NOT NULL REFERENCES spaces (id) ON DELETE CASCADE,
    key        text NOT NULL,
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (space_id, key)
);
