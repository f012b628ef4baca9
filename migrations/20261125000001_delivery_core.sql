-- Ownership of Ameyo accounts and liveness of workers (docs/delivery.md).

-- The Ameyo server a row's userId lives on (normalised base_url). Ameyo userIds are
-- system-wide on a server, and tenants may share one server, so ownership is scoped to
-- the server, not the tenant.
ALTER TABLE sync_state ADD COLUMN ameyo_server text;

-- No two SCIM users ever hold the same Ameyo userId on one server: the one they are
-- linked to, or the one an unconfirmed create was sent for. This index is the arbiter
-- when two users that map to one userId are delivered at the same moment.
CREATE UNIQUE INDEX sync_state_ameyo_owner
    ON sync_state (ameyo_server, lower(coalesce(ameyo_user_id, intended_user_id)))
    WHERE ameyo_server IS NOT NULL AND coalesce(ameyo_user_id, intended_user_id) IS NOT NULL;
DROP INDEX sync_state_ameyo_user;
DROP INDEX sync_state_intended_user;

-- Every running worker beats here; a leased row whose holder stopped beating is taken
-- back within seconds instead of waiting for its lease to run out.
CREATE TABLE sync_workers (
    owner        text        PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX sync_state_lease_owner ON sync_state (lease_owner) WHERE state = 'leased';
