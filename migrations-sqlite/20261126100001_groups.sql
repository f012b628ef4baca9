-- SCIM groups and their members, as in PostgreSQL (docs/groups.md): members are rows,
-- one per (group, user), so a PATCH of a thousand members into a group of a hundred
-- thousand touches a thousand rows, never the whole list. Times are in the users'
-- format (microseconds, fixed width: see the users table).

CREATE TABLE groups (
    id               TEXT    PRIMARY KEY,
    tenant_id        TEXT    NOT NULL,
    display_name     TEXT    NOT NULL,
    -- display_name folded to lower case by the store (Unicode-aware, like PostgreSQL's
    -- lower()), for the uniqueness rule, filters and the displayName sort.
    display_name_key TEXT    NOT NULL,
    external_id      TEXT,
    -- The ETag; bumped by every write of the group (its name or its members).
    version          INTEGER NOT NULL,
    created          TEXT    NOT NULL,
    last_modified    TEXT    NOT NULL
);

-- displayName is unique per tenant, case-insensitively: Entra ID finds groups by it.
CREATE UNIQUE INDEX groups_tenant_display_name_key ON groups (tenant_id, display_name_key);
CREATE INDEX groups_tenant_external_id ON groups (tenant_id, external_id);
CREATE INDEX groups_tenant_created ON groups (tenant_id, created, id);

CREATE TABLE group_members (
    group_id TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    -- A live user of the group's tenant: SCIM DELETE of the user removes its rows in
    -- the same transaction; the tombstone's final removal cascades.
    user_id  TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, user_id)
) WITHOUT ROWID;

-- A user's groups (its `groups` attribute, the mapping rules, user deletion).
CREATE INDEX group_members_user ON group_members (user_id, group_id);

-- What the planner assumes until an ANALYZE measures these tables (see the users'
-- statistics in the first migration): many groups per tenant, one per id, name or
-- externalId; many members per group, a few groups per user.
ANALYZE groups;
ANALYZE group_members;
DELETE FROM sqlite_stat1 WHERE tbl IN ('groups', 'group_members');
INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES
    ('groups', 'sqlite_autoindex_groups_1', '1000 1'),
    ('groups', 'groups_tenant_display_name_key', '1000 100 1'),
    ('groups', 'groups_tenant_external_id', '1000 100 1'),
    ('groups', 'groups_tenant_created', '1000 100 1 1'),
    ('group_members', 'group_members', '100000 1000 1'),
    ('group_members', 'group_members_user', '100000 5 1');
ANALYZE sqlite_schema;
