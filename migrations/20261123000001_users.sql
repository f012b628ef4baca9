-- SCIM users, their outbox rows and the delivery attempt log (docs/delivery.md).

-- Lower-cased e-mail values of a SCIM resource, for the GIN index that serves
-- `emails.value eq "..."` and `emails[type eq "work"].value eq "..."` lookups.
CREATE FUNCTION scim_email_values(resource jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(lower(e ->> 'value')), '{}')
    FROM jsonb_array_elements(
        CASE WHEN jsonb_typeof(resource -> 'emails') = 'array'
             THEN resource -> 'emails' ELSE '[]'::jsonb END) AS e
    WHERE e ->> 'value' IS NOT NULL
$$;

CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    tenant_id     text        NOT NULL,
    user_name     text        NOT NULL,
    external_id   text,
    active        boolean     NOT NULL,
    -- The canonical SCIM resource without id, meta, schemas and password.
    resource      jsonb       NOT NULL,
    -- The ETag; bumped by every write.
    version       bigint      NOT NULL,
    created       timestamptz NOT NULL,
    last_modified timestamptz NOT NULL,
    -- Set by SCIM DELETE: the user is gone for SCIM at once; the row stays as a
    -- tombstone until the Ameyo side has been removed too.
    deleted_at    timestamptz
);

-- userName is unique per tenant, case-insensitively (RFC 7643 §4.1.1). The pattern
-- operator class lets the same index serve `eq` and `sw`.
CREATE UNIQUE INDEX users_tenant_user_name_key
    ON users (tenant_id, lower(user_name) text_pattern_ops) WHERE deleted_at IS NULL;
-- Postgres keeps no statistics for expressions of partial indexes: without these it
-- guesses 0.5% of the users match `lower(user_name) = ...` and, at a million users,
-- walks the whole created-order index instead (1.2 s instead of 0.06 ms).
CREATE STATISTICS users_lower_user_name ON (lower(user_name)) FROM users;
CREATE INDEX users_tenant_external_id
    ON users (tenant_id, external_id) WHERE deleted_at IS NULL;
CREATE INDEX users_tenant_created
    ON users (tenant_id, created, id) WHERE deleted_at IS NULL;
-- fastupdate off: lookups must not scan a pending list that grows between vacuums
-- (7 ms instead of 0.1 ms per lookup at 100k users); IdP write rates are low.
CREATE INDEX users_emails
    ON users USING gin (scim_email_values(resource)) WITH (fastupdate = off)
    WHERE deleted_at IS NULL;

-- The outbox: one row per user, level-triggered. A SCIM write sets desired_version in
-- the same transaction; the worker records synced_version once Ameyo has that state.
CREATE TABLE sync_state (
    user_id          uuid        PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    tenant_id        text        NOT NULL,
    desired_version  bigint      NOT NULL,
    synced_version   bigint      NOT NULL DEFAULT 0,
    state            text        NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'leased', 'done', 'dead')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    -- When the oldest change not yet in Ameyo was made (NULL when done or dead).
    pending_since    timestamptz DEFAULT now(),
    -- The claim: who holds it, until when, and the token that fences its completion.
    lease_owner      text,
    lease_until      timestamptz,
    lease_token      uuid,
    last_error       text,
    -- A password waiting for delivery: AES-256-GCM, erased once Ameyo has it.
    pending_password bytea,
    password_version bigint,
    -- The Ameyo side: the link, whether a create was ever sent (so an unknown outcome
    -- is looked up before any second create), whether the user is locked, and the
    -- fields last pushed (no password).
    ameyo_user_id    text,
    cc_user_id       bigint,
    create_attempted boolean     NOT NULL DEFAULT false,
    -- The userId that create was for (the user may be renamed before it is confirmed).
    intended_user_id text,
    ameyo_locked     boolean     NOT NULL DEFAULT false,
    last_pushed      jsonb,
    -- An operator asked for the full state to be pushed again.
    resync_requested boolean     NOT NULL DEFAULT false,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX sync_state_due ON sync_state (next_attempt_at) WHERE state = 'pending';
CREATE INDEX sync_state_lease ON sync_state (lease_until) WHERE state = 'leased';
CREATE INDEX sync_state_tenant_state ON sync_state (tenant_id, state);
CREATE INDEX sync_state_ameyo_user ON sync_state (tenant_id, ameyo_user_id);
CREATE INDEX sync_state_intended_user ON sync_state (tenant_id, intended_user_id)
    WHERE intended_user_id IS NOT NULL;

-- Every Ameyo call the worker made, for operators. Pruned after sync.attempt_retention_days.
CREATE TABLE sync_attempts (
    id          bigserial   PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    tenant_id   text        NOT NULL,
    user_id     uuid        NOT NULL,
    version     bigint      NOT NULL,
    -- The worker (host-pid-nonce) that made the call.
    worker      text        NOT NULL,
    call        text        NOT NULL,
    outcome     text        NOT NULL,
    http_status integer,
    duration_ms integer     NOT NULL,
    error       text
);

CREATE INDEX sync_attempts_user ON sync_attempts (user_id, at);
CREATE INDEX sync_attempts_at ON sync_attempts (at);

-- The Ameyo session each tenant's workers share, across processes: logging in with
-- forceLogin ends the admin user's other sessions, so replicas must not each log in.
-- One process at a time holds the login lease; the others adopt what it publishes.
CREATE TABLE ameyo_sessions (
    tenant_id   text        PRIMARY KEY,
    sealed      bytea,
    generation  bigint      NOT NULL DEFAULT 0,
    login_owner text,
    login_until timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
