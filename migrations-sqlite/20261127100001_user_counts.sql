-- The number of live users of each tenant, kept by triggers in the transaction of
-- every write that changes it, so an unfiltered list answers `totalResults` without
-- counting the tenant's users. SQLite has one writer at a time: one row per tenant.
--
-- `shifts` counts the users that left the live set (SCIM delete, removal of a live row)
-- or joined it anywhere but at its end (a live user inserted before another live one in
-- the (created, id) order, an undelete): the changes that move the position of a user
-- already listed. While it stays the same, a user keeps its position in that order,
-- which lets a page walk go on from where the last page ended.
CREATE TABLE user_counts (
    tenant_id TEXT    PRIMARY KEY,
    live      INTEGER NOT NULL DEFAULT 0,
    shifts    INTEGER NOT NULL DEFAULT 0
);

INSERT INTO user_counts (tenant_id, live)
SELECT tenant_id, count(*) FROM users WHERE deleted_at IS NULL GROUP BY tenant_id;

CREATE TRIGGER users_count_insert AFTER INSERT ON users
WHEN NEW.deleted_at IS NULL
BEGIN
    INSERT OR IGNORE INTO user_counts (tenant_id) VALUES (NEW.tenant_id);
    UPDATE user_counts
    SET live = live + 1,
        shifts = shifts + EXISTS (
            SELECT 1 FROM users x
            WHERE x.tenant_id = NEW.tenant_id AND x.deleted_at IS NULL
              AND (x.created, x.id) > (NEW.created, NEW.id))
    WHERE tenant_id = NEW.tenant_id;
END;

CREATE TRIGGER users_count_delete AFTER DELETE ON users
WHEN OLD.deleted_at IS NULL
BEGIN
    UPDATE user_counts SET live = live - 1, shifts = shifts + 1
    WHERE tenant_id = OLD.tenant_id;
END;

-- An update moves a user when it leaves or joins the live set, or changes tenant or
-- creation time while live: each side of such a change is a shift.
CREATE TRIGGER users_count_update AFTER UPDATE OF tenant_id, created, deleted_at ON users
WHEN (OLD.deleted_at IS NULL OR NEW.deleted_at IS NULL)
 AND NOT (OLD.deleted_at IS NULL AND NEW.deleted_at IS NULL
          AND OLD.tenant_id = NEW.tenant_id AND OLD.created = NEW.created)
BEGIN
    UPDATE user_counts SET live = live - 1, shifts = shifts + 1
    WHERE tenant_id = OLD.tenant_id AND OLD.deleted_at IS NULL;
    INSERT OR IGNORE INTO user_counts (tenant_id)
    SELECT NEW.tenant_id WHERE NEW.deleted_at IS NULL;
    UPDATE user_counts SET live = live + 1, shifts = shifts + 1
    WHERE tenant_id = NEW.tenant_id AND NEW.deleted_at IS NULL;
END;
