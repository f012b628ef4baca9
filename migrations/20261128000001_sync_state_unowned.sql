-- Rows linked to an Ameyo userId before ownership was recorded: the few that the
-- start-up adoption (ADOPT_SERVER_SQL) looks for. Without this index it read every
-- outbox row of the tenant at each start (about a second at a million users, just as
-- the first requests arrive).
CREATE INDEX sync_state_unowned ON sync_state (tenant_id)
    WHERE ameyo_server IS NULL AND coalesce(ameyo_user_id, intended_user_id) IS NOT NULL;
