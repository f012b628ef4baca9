-- The embedded (SQLite) store: the same tables as PostgreSQL's, in SQLite's types.
-- Timestamps are RFC 3339 text in UTC with milliseconds, always written in the one
-- format strftime('%Y-%m-%dT%H:%M:%fZ') gives, so they sort as text. UUIDs are
-- text, JSON is text, booleans are 0/1.

CREATE TABLE users (
    id            TEXT    PRIMARY KEY,
    tenant_id     TEXT    NOT NULL,
    user_name     TEXT    NOT NULL,
    -- user_name folded to lower case by the store (Unicode-aware, like PostgreSQL's
    -- lower()), for the uniqueness rule and case-insensitive lookups.
    user_name_key TEXT    NOT NULL,
    external_id   TEXT,
    active        INTEGER NOT NULL,
    resource      TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    created       TEXT    NOT NULL,
    last_modified TEXT    NOT NULL,
    deleted_at    TEXT
);

CREATE UNIQUE INDEX users_tenant_user_name_key
    ON users (tenant_id, user_name_key) WHERE deleted_at IS NULL;
CREATE INDEX users_tenant_external_id
    ON users (tenant_id, external_id) WHERE deleted_at IS NULL;
CREATE INDEX users_tenant_created
    ON users (tenant_id, created, id) WHERE deleted_at IS NULL;

CREATE TABLE sync_state (
    user_id          TEXT    PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    tenant_id        TEXT    NOT NULL,
    desired_version  INTEGER NOT NULL,
    synced_version   INTEGER NOT NULL DEFAULT 0,
    state            TEXT    NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'leased', 'done', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT    NOT NULL,
    pending_since    TEXT,
    lease_owner      TEXT,
    lease_until      TEXT,
    lease_token      TEXT,
    last_error       TEXT,
    pending_password BLOB,
    password_version INTEGER,
    ameyo_user_id    TEXT,
    cc_user_id       INTEGER,
    create_attempted INTEGER NOT NULL DEFAULT 0,
    intended_user_id TEXT,
    ameyo_locked     INTEGER NOT NULL DEFAULT 0,
    last_pushed      TEXT,
    resync_requested INTEGER NOT NULL DEFAULT 0,
    ameyo_server     TEXT,
    -- coalesce(ameyo_user_id, intended_user_id) in lower case, folded by the store
    -- (Unicode-aware like PostgreSQL's lower(); SQLite's lower() folds ASCII only).
    -- Written with those two columns, by the outbox only.
    owner_key        TEXT,
    updated_at       TEXT    NOT NULL
);

CREATE INDEX sync_state_due ON sync_state (next_attempt_at) WHERE state = 'pending';
CREATE INDEX sync_state_lease ON sync_state (lease_until) WHERE state = 'leased';
CREATE INDEX sync_state_tenant_state ON sync_state (tenant_id, state);
-- No two SCIM users hold one Ameyo userId on one server (see the PostgreSQL schema).
CREATE UNIQUE INDEX sync_state_ameyo_owner
    ON sync_state (ameyo_server, owner_key)
    WHERE ameyo_server IS NOT NULL AND owner_key IS NOT NULL;
CREATE INDEX sync_state_lease_owner ON sync_state (lease_owner) WHERE state = 'leased';

CREATE TABLE sync_attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          TEXT    NOT NULL,
    tenant_id   TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    worker      TEXT    NOT NULL,
    call        TEXT    NOT NULL,
    outcome     TEXT    NOT NULL,
    http_status INTEGER,
    duration_ms INTEGER NOT NULL,
    error       TEXT
);

CREATE INDEX sync_attempts_user ON sync_attempts (user_id, at);
CREATE INDEX sync_attempts_at ON sync_attempts (at);

CREATE TABLE sync_workers (
    owner        TEXT PRIMARY KEY,
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL
);

CREATE TABLE ameyo_sessions (
    tenant_id   TEXT    PRIMARY KEY,
    sealed      BLOB,
    generation  INTEGER NOT NULL DEFAULT 0,
    login_owner TEXT,
    login_until TEXT,
    updated_at  TEXT    NOT NULL
);
