-- The embedded (SQLite) store: the same tables as PostgreSQL's, in SQLite's types.
-- Timestamps are RFC 3339 text in UTC with milliseconds, always written in the one
-- format strftime('%Y-%m-%dT%H:%M:%fZ') gives, so they sort as text (the users
-- table's own times carry microseconds: see there). UUIDs are
-- text, JSON is text, booleans are 0/1.

-- SCIM users. The store writes every column in Rust; `user_name_key` and `search` are
-- derived from `user_name` and `resource`, so filters can match case-insensitively the
-- way PostgreSQL's lower() does (SQLite's lower() and LIKE fold ASCII only).
-- created, last_modified and deleted_at carry microseconds (2026-11-25T10:00:01.123456Z,
-- fixed width, so they sort as text), like PostgreSQL's timestamptz: users created
-- within one millisecond keep their creation order, the stable order of every list.
-- Compare them with times of that same format only.
CREATE TABLE users (
    id            TEXT    PRIMARY KEY,
    tenant_id     TEXT    NOT NULL,
    user_name     TEXT    NOT NULL,
    -- user_name folded to lower case by the store (Unicode-aware, like PostgreSQL's
    -- lower()), for the uniqueness rule and case-insensitive lookups.
    user_name_key TEXT    NOT NULL,
    external_id   TEXT,
    active        INTEGER NOT NULL,
    -- The canonical SCIM resource without id, meta, schemas and password (JSON).
    resource      TEXT    NOT NULL,
    -- What filters and sorts read: `resource` with every string of a case-insensitive
    -- attribute folded to lower case and every dateTime in the format above. A row
    -- written by anything but the store has '{}' and matches no attribute filter.
    search        TEXT    NOT NULL DEFAULT '{}',
    -- The ETag; bumped by every write.
    version       INTEGER NOT NULL,
    created       TEXT    NOT NULL,
    last_modified TEXT    NOT NULL,
    -- Set by SCIM DELETE: the user is gone for SCIM at once; the row stays as a
    -- tombstone until the Ameyo side has been removed too.
    deleted_at    TEXT
);

CREATE UNIQUE INDEX users_tenant_user_name_key
    ON users (tenant_id, user_name_key) WHERE deleted_at IS NULL;
CREATE INDEX users_tenant_external_id
    ON users (tenant_id, external_id) WHERE deleted_at IS NULL;
CREATE INDEX users_tenant_created
    ON users (tenant_id, created, id) WHERE deleted_at IS NULL;

-- The folded e-mail values of live users (from `search`), the index that serves
-- `emails.value eq "..."` and `emails[type eq "work"].value eq "..."` lookups, as
-- PostgreSQL's GIN index on scim_email_values() does. Kept by the triggers below.
CREATE TABLE user_emails (
    value_key TEXT NOT NULL,
    user_id   TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (value_key, user_id)
) WITHOUT ROWID;

CREATE INDEX user_emails_user ON user_emails (user_id);

CREATE TRIGGER users_emails_insert AFTER INSERT ON users
WHEN NEW.deleted_at IS NULL
BEGIN
    INSERT OR IGNORE INTO user_emails (value_key, user_id)
    SELECT json_extract(e.value, '$.value'), NEW.id
    FROM json_each(NEW.search, '$.emails') AS e
    WHERE json_type(NEW.search, '$.emails') = 'array'
      AND json_type(e.value, '$.value') = 'text';
END;

CREATE TRIGGER users_emails_update AFTER UPDATE OF search, deleted_at ON users
BEGIN
    DELETE FROM user_emails WHERE user_id = OLD.id;
    INSERT OR IGNORE INTO user_emails (value_key, user_id)
    SELECT json_extract(e.value, '$.value'), NEW.id
    FROM json_each(NEW.search, '$.emails') AS e
    WHERE NEW.deleted_at IS NULL AND json_type(NEW.search, '$.emails') = 'array'
      AND json_type(e.value, '$.value') = 'text';
END;

-- What the query planner assumes of these tables until an ANALYZE measures them (the
-- documented way to steer it: sqlite.org/lang_analyze.html). Without statistics it takes
-- `tenant_id = ?` to match ten users and prefers the created-order index, which spares
-- it a sort, to the externalId and e-mail indexes: a scan of the whole tenant per
-- lookup. These say: many users per tenant, one per id, userName, externalId or e-mail.
ANALYZE users;
ANALYZE user_emails;
DELETE FROM sqlite_stat1 WHERE tbl IN ('users', 'user_emails');
INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES
    ('users', 'sqlite_autoindex_users_1', '10000 1'),
    ('users', 'users_tenant_user_name_key', '10000 1000 1'),
    ('users', 'users_tenant_external_id', '10000 1000 1'),
    ('users', 'users_tenant_created', '10000 1000 1 1'),
    ('user_emails', 'user_emails', '10000 1 1'),
    ('user_emails', 'user_emails_user', '10000 2');
-- Make the connection that ran this load them now, as every later one will.
ANALYZE sqlite_schema;

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
