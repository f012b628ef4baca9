-- SCIM groups and their members (docs/groups.md). Members are rows, one per
-- (group, user), so a PATCH of a thousand members into a group of a hundred thousand
-- touches a thousand rows, never the whole list.

CREATE TABLE groups (
    id            uuid        PRIMARY KEY,
    tenant_id     text        NOT NULL,
    display_name  text        NOT NULL,
    external_id   text,
    -- The ETag; bumped by every write of the group (its name or its members).
    version       bigint      NOT NULL,
    created       timestamptz NOT NULL,
    last_modified timestamptz NOT NULL
);

-- displayName is unique per tenant, case-insensitively: Entra ID finds groups by it.
CREATE UNIQUE INDEX groups_tenant_display_name_key
    ON groups (tenant_id, lower(display_name) text_pattern_ops);
CREATE INDEX groups_tenant_external_id ON groups (tenant_id, external_id);
CREATE INDEX groups_tenant_created ON groups (tenant_id, created, id);

CREATE TABLE group_members (
    group_id uuid NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    -- A live user of the group's tenant: SCIM DELETE of the user removes its rows in
    -- the same statement; the tombstone's final removal cascades.
    user_id  uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, user_id)
);

-- A user's groups (its `groups` attribute, the mapping rules, user deletion).
CREATE INDEX group_members_user ON group_members (user_id, group_id);
