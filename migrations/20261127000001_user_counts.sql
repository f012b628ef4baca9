-- The number of live users of each tenant, kept by the database in the transaction of
-- every write that changes it, so an unfiltered list answers `totalResults` without
-- counting the tenant's users. Each tenant has up to 16 slots (rows), and a statement
-- adds to the slot of its connection (backend pid modulo 16): concurrent creates on
-- different connections rarely wait for one another's row. A tenant's figures are the
-- sums over its slots.
--
-- `shifts` counts the users that left the live set (SCIM delete, removal of a live row)
-- or joined it anywhere but at its end (an insert whose `created` is not the inserting
-- transaction's now(), an undelete): the changes that move the position of a user
-- already listed. While it stays the same, a user keeps its position in the
-- (created, id) order, which lets a page walk go on from where the last page ended.
CREATE TABLE user_counts (
    tenant_id text     NOT NULL,
    slot      smallint NOT NULL,
    live      bigint   NOT NULL DEFAULT 0,
    shifts    bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, slot)
);

-- No write may slip between the backfill and the triggers.
LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE;

INSERT INTO user_counts (tenant_id, slot, live)
SELECT tenant_id, 0, count(*) FILTER (WHERE deleted_at IS NULL)
FROM users GROUP BY tenant_id;

-- Adds per-tenant deltas to this connection's slots, tenants in order (so two
-- statements that touch several tenants take their rows in one order).
CREATE FUNCTION user_counts_add(deltas jsonb) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO user_counts AS c (tenant_id, slot, live, shifts)
    SELECT d.tenant_id, (pg_backend_pid() % 16)::smallint, d.live, d.shifts
    FROM jsonb_to_recordset(deltas) AS d(tenant_id text, live bigint, shifts bigint)
    WHERE d.live <> 0 OR d.shifts <> 0
    ORDER BY d.tenant_id
    ON CONFLICT (tenant_id, slot) DO UPDATE
        SET live = c.live + EXCLUDED.live, shifts = c.shifts + EXCLUDED.shifts
$$;

CREATE FUNCTION user_counts_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM user_counts_add(coalesce(jsonb_agg(d), '[]'))
    FROM (SELECT tenant_id, count(*) AS live,
                 count(*) FILTER (WHERE created <> now()) AS shifts
          FROM new_rows WHERE deleted_at IS NULL GROUP BY tenant_id) AS d;
    RETURN NULL;
END $$;

CREATE FUNCTION user_counts_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM user_counts_add(coalesce(jsonb_agg(d), '[]'))
    FROM (SELECT tenant_id, -count(*) AS live, count(*) AS shifts
          FROM old_rows WHERE deleted_at IS NULL GROUP BY tenant_id) AS d;
    RETURN NULL;
END $$;

-- An update moves a user when it leaves or joins the live set, or changes tenant or
-- creation time while live: each side of such a change is a shift.
CREATE FUNCTION user_counts_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM user_counts_add(coalesce(jsonb_agg(d), '[]'))
    FROM (SELECT tenant_id, sum(live) AS live, sum(shifts) AS shifts
          FROM (SELECT o.tenant_id, -1 AS live, 1 AS shifts
                FROM old_rows o
                WHERE o.deleted_at IS NULL AND NOT EXISTS (
                    SELECT 1 FROM new_rows n
                    WHERE n.id = o.id AND n.tenant_id = o.tenant_id
                      AND n.created = o.created AND n.deleted_at IS NULL)
                UNION ALL
                SELECT n.tenant_id, 1, 1
                FROM new_rows n
                WHERE n.deleted_at IS NULL AND NOT EXISTS (
                    SELECT 1 FROM old_rows o
                    WHERE o.id = n.id AND o.tenant_id = n.tenant_id
                      AND o.created = n.created AND o.deleted_at IS NULL)) AS m
          GROUP BY tenant_id) AS d;
    RETURN NULL;
END $$;

CREATE TRIGGER users_count_insert AFTER INSERT ON users
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION user_counts_insert();
CREATE TRIGGER users_count_update AFTER UPDATE ON users
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION user_counts_update();
CREATE TRIGGER users_count_delete AFTER DELETE ON users
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION user_counts_delete();

-- TRUNCATE removes every user: every count is zero and every position has moved.
CREATE FUNCTION user_counts_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE user_counts SET live = 0, shifts = shifts + 1;
    RETURN NULL;
END $$;

CREATE TRIGGER users_count_truncate AFTER TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION user_counts_truncate();
