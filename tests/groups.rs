//! `/Groups` as Okta and Entra ID use it, on every store backend: every PATCH shape they
//! send, members as users of the tenant only, tenant isolation, the users' `groups`
//! attribute, and group membership driving the Ameyo role through the mapping rules.

mod common;

use std::time::Duration;

use ameyo_scim::config::MappingRule;
use common::*;
use serde_json::{Value, json};

const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const MS_GROUP: &str = "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group";
const LIMIT: Duration = Duration::from_secs(30);

fn patch(ops: Value) -> Value {
    json!({"schemas": [PATCH_OP], "Operations": ops})
}

async fn users(app: &TestApp, names: &[&str]) -> Vec<String> {
    let mut ids = Vec::new();
    for n in names {
        ids.push(app.create_named(n).await);
    }
    ids
}

async fn member_ids(app: &TestApp, gid: &str) -> Vec<String> {
    let r = app
        .get(&format!("/scim/v2/Groups/{gid}?attributes=members"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut ids: Vec<String> = r.body["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| m["value"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

fn sorted(ids: &[&String]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

both_backends!(
    entra_group_provisioning,
    okta_group_push,
    bad_members_are_refused_and_nothing_changes,
    groups_of_another_tenant_are_invisible,
    display_name_is_unique_per_tenant,
    deleting_users_and_groups_keeps_both_sides_consistent,
    group_etags_and_preconditions,
    group_lists_filters_and_paging,
    membership_drives_the_ameyo_role,
    conflicting_groups_resolve_by_rule_order,
    entra_app_roles_on_the_user_drive_the_role,
    a_thousand_members_in_one_patch,
    concurrent_membership_changes_neither_deadlock_nor_orphan,
    patch_answers_200_with_the_group_as_asked,
    root_search_finds_users_and_groups,
);

async fn entra_group_provisioning(db: TestDb) {
    let app = app(&db).await;
    let ids = users(&app, &["e1@x.test", "e2@x.test", "e3@x.test"]).await;
    let lookup = format!(
        "/scim/v2/Groups?excludedAttributes=members&filter={}",
        enc("displayName eq \"CC Agents\"")
    );
    let r = app.get(&lookup).await;
    assert_eq!(r.body["totalResults"], json!(0), "{}", r.text);

    // Create with the objectId as externalId, Microsoft's schema, no members.
    let r = app
        .post(
            "/scim/v2/Groups",
            json!({"schemas": [GROUP, MS_GROUP], "externalId": "0f1e2d3c", "displayName": "CC Agents"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let gid = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(
        r.header("location").unwrap(),
        format!("https://scim.example.test/scim/v2/Groups/{gid}")
    );
    assert_eq!(r.body["externalId"], json!("0f1e2d3c"));
    assert_eq!(r.body["meta"]["resourceType"], json!("Group"));

    let r = app.get(&lookup).await;
    assert_eq!(r.body["totalResults"], json!(1));
    assert!(
        r.body["Resources"][0].get("members").is_none(),
        "{}",
        r.text
    );
    let r = app
        .get(&format!("/scim/v2/Groups/{gid}?excludedAttributes=members"))
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body.get("members").is_none());

    // Add, several in one PATCH, `$ref` null, op capitalised.
    let uri = format!("/scim/v2/Groups/{gid}");
    let add: Vec<Value> = ids
        .iter()
        .map(|id| json!({"$ref": null, "value": id}))
        .collect();
    let r = app
        .patch(
            &uri,
            patch(json!([{"op": "Add", "path": "members", "value": add}])),
        )
        .await;
    // 200 with the group; a small group's members come along.
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["members"].as_array().unwrap().len(), 3, "{}", r.text);
    assert!(r.body["members"][0].get("display").is_none(), "{}", r.text);
    assert!(r.header("etag").is_some());
    assert_eq!(member_ids(&app, &gid).await.len(), 3);

    // Without aadOptscim062020: remove with a value removes only the listed member.
    let r = app
        .patch(
            &uri,
            patch(json!([{"op": "Remove", "path": "members", "value": [{"value": ids[0]}]}])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(member_ids(&app, &gid).await, sorted(&[&ids[1], &ids[2]]));

    // With the flag: a filtered path.
    let r = app
        .patch(
            &uri,
            patch(json!([{"op": "remove", "path": format!("members[value eq \"{}\"]", ids[1])}])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(member_ids(&app, &gid).await, vec![ids[2].clone()]);

    // Rename; PATCH with `attributes=members` returns them.
    let r = app
        .patch(
            &format!("{uri}?attributes=members,displayName"),
            patch(json!([{"op": "Replace", "path": "displayName", "value": "CC Agents EU"}])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["displayName"], json!("CC Agents EU"));
    assert_eq!(r.body["members"][0]["value"], json!(ids[2]));

    // The user's read-only `groups`, with the new name.
    let u = app.get(&format!("/scim/v2/Users/{}", ids[2])).await;
    assert_eq!(
        u.body["groups"],
        json!([{
            "value": gid,
            "$ref": format!("https://scim.example.test/scim/v2/Groups/{gid}"),
            "display": "CC Agents EU",
            "type": "direct",
        }]),
        "{}",
        u.text
    );
    let other = app.get(&format!("/scim/v2/Users/{}", ids[0])).await;
    assert!(other.body.get("groups").is_none(), "{}", other.text);
    for f in [
        format!("groups[value eq \"{gid}\"]"),
        format!("groups.value eq \"{gid}\""),
        format!("groups eq \"{gid}\""),
    ] {
        let r = app.get(&format!("/scim/v2/Users?filter={}", enc(&f))).await;
        assert_eq!(r.status, 200, "{f}: {}", r.text);
        assert_eq!(r.body["totalResults"], json!(1), "{f}");
        assert_eq!(r.body["Resources"][0]["id"], json!(ids[2]), "{f}");
    }
    let f = format!("not (groups[value eq \"{gid}\"])");
    let r = app.get(&format!("/scim/v2/Users?filter={}", enc(&f))).await;
    assert_eq!(r.body["totalResults"], json!(2), "{f}: {}", r.text);

    // A user's `groups` cannot be written through the user.
    let r = app
        .patch(
            &format!("/scim/v2/Users/{}", ids[0]),
            patch(json!([{"op": "add", "path": "groups", "value": [{"value": gid}]}])),
        )
        .await;
    assert!(r.status == 400 || r.status == 200, "{}", r.text);
    assert_eq!(member_ids(&app, &gid).await, vec![ids[2].clone()]);

    let r = app.delete(&uri).await;
    assert_eq!(r.status, 204);
    assert_eq!(app.get(&uri).await.status, 404);
    let u = app.get(&format!("/scim/v2/Users/{}", ids[2])).await;
    assert!(u.body.get("groups").is_none(), "{}", u.text);
}

async fn okta_group_push(db: TestDb) {
    let app = app(&db).await;
    let ids = users(&app, &["o1@x.test", "o2@x.test", "o3@x.test", "o4@x.test"]).await;
    let r = app
        .post(
            "/scim/v2/Groups",
            json!({"schemas": [GROUP], "displayName": "CC Supervisors", "members": []}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["members"], json!([]));
    let gid = r.body["id"].as_str().unwrap().to_string();
    let uri = format!("/scim/v2/Groups/{gid}");

    // Okta's membership update: a path-less rename (with the id) and add/remove.
    let r = app
        .patch(
            &uri,
            patch(json!([
                {"op": "replace", "value": {"id": gid, "displayName": "CC Supervisors"}},
                {"op": "add", "path": "members", "value": [
                    {"value": ids[0], "display": "o1@x.test"},
                    {"value": ids[1], "display": "o2@x.test"},
                ]},
            ])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app
        .patch(
            &uri,
            patch(json!([
                {"op": "replace", "value": {"id": gid, "displayName": "Supervisors"}},
                {"op": "remove", "path": format!("members[value eq \"{}\"]", ids[0])},
                {"op": "add", "path": "members", "value": [{"value": ids[2], "display": "o3@x.test"}]},
            ])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        app.get(&uri).await.body["displayName"],
        json!("Supervisors")
    );
    assert_eq!(member_ids(&app, &gid).await, sorted(&[&ids[1], &ids[2]]));

    // A full replace of members.
    let r = app
        .patch(
            &uri,
            patch(json!([{"op": "replace", "path": "members", "value": [{"value": ids[3]}, {"value": ids[0]}]}])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(member_ids(&app, &gid).await, sorted(&[&ids[0], &ids[3]]));

    // Wizard apps: PUT with the whole member list; the answer carries the members.
    let r = app
        .put(
            &uri,
            json!({"schemas": [GROUP], "id": gid, "displayName": "Supervisors",
                   "members": [{"value": ids[1]}, {"value": ids[2]}, {"value": ids[3]}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["members"].as_array().unwrap().len(), 3);
    assert_eq!(
        member_ids(&app, &gid).await,
        sorted(&[&ids[1], &ids[2], &ids[3]])
    );
    let displayed = app
        .get(&format!("{uri}?attributes=members.display"))
        .await
        .body["members"][0]["display"]
        .clone();
    assert!(
        displayed.as_str().unwrap().ends_with("@x.test"),
        "{displayed}"
    );

    // Removing every member.
    let r = app
        .patch(&uri, patch(json!([{"op": "remove", "path": "members"}])))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(member_ids(&app, &gid).await.is_empty());

    // Import: paging by 100 with integers.
    for i in 0..4 {
        let r = app
            .post(
                "/scim/v2/Groups",
                json!({"schemas": [GROUP], "displayName": format!("Team {i}")}),
            )
            .await;
        assert_eq!(r.status, 201);
    }
    let r = app.get("/scim/v2/Groups?startIndex=1&count=100").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["totalResults"], json!(5));
    assert_eq!(r.body["itemsPerPage"], json!(5));
    assert_eq!(r.body["startIndex"], json!(1));
    let r = app.get("/scim/v2/Groups?startIndex=3&count=2").await;
    assert_eq!(r.body["totalResults"], json!(5));
    assert_eq!(r.body["Resources"].as_array().unwrap().len(), 2);
}

async fn bad_members_are_refused_and_nothing_changes(db: TestDb) {
    let app = app(&db).await;
    let ids = users(&app, &["b1@x.test", "b2@x.test"]).await;
    let gone = app.create_named("gone@x.test").await;
    assert_eq!(
        app.delete(&format!("/scim/v2/Users/{gone}")).await.status,
        204
    );
    let r = app
        .post(
            "/scim/v2/Groups",
            json!({"displayName": "G", "members": [{"value": ids[0]}]}),
        )
        .await;
    let gid = r.body["id"].as_str().unwrap().to_string();
    let uri = format!("/scim/v2/Groups/{gid}");
    let version = app.get(&uri).await.body["meta"]["version"].clone();
    let before = app.snapshot().await;

    // An id of another tenant's user is no user here.
    let theirs = app
        .call(
            axum::http::Method::POST,
            "/scim/v2/Users",
            Some(TOKEN_B),
            Some(json!({"userName": "theirs@x.test"})),
        )
        .await;
    let theirs = theirs.body["id"].as_str().unwrap().to_string();
    let missing = uuid::Uuid::new_v4().to_string();
    for bad in [&missing, &gone, &theirs, &"not-a-user-id".to_string()] {
        let r = app
            .patch(
                &uri,
                patch(json!([
                    {"op": "remove", "path": format!("members[value eq \"{}\"]", ids[0])},
                    {"op": "add", "path": "members", "value": [{"value": ids[1]}, {"value": bad}]},
                ])),
            )
            .await;
        r.assert_error(400, Some("invalidValue"));
        assert!(
            r.body["detail"].as_str().unwrap().contains(bad.as_str()),
            "{}",
            r.text
        );
    }
    assert_eq!(member_ids(&app, &gid).await, vec![ids[0].clone()]);
    assert_eq!(app.get(&uri).await.body["meta"]["version"], version);

    // A create or a PUT with a bad member writes nothing either.
    let r = app
        .post(
            "/scim/v2/Groups",
            json!({"displayName": "H", "members": [{"value": missing}]}),
        )
        .await;
    r.assert_error(400, Some("invalidValue"));
    let r = app
        .put(
            &uri,
            json!({"displayName": "Renamed", "members": [{"value": missing}]}),
        )
        .await;
    r.assert_error(400, Some("invalidValue"));
    assert_eq!(app.get(&uri).await.body["displayName"], json!("G"));
    let r = app
        .get(&format!(
            "/scim/v2/Groups?filter={}",
            enc("displayName eq \"H\"")
        ))
        .await;
    assert_eq!(r.body["totalResults"], json!(0));

    // Members of another type, and nonsense, are refused too.
    let r = app
        .patch(
            &uri,
            patch(json!([{"op": "add", "path": "members", "value": [{"value": gid, "type": "Group"}]}])),
        )
        .await;
    r.assert_error(400, Some("invalidValue"));
    let r = app
        .patch(
            &uri,
            patch(json!([{"op": "add", "path": "members", "value": "x"}])),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = app
        .patch(
            &uri,
            patch(json!([{"op": "remove", "path": "displayName"}])),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = app
        .patch(
            &uri,
            patch(
                json!([{"op": "replace", "path": "members[value eq \"x\"].display", "value": "d"}]),
            ),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);

    // Nothing was written by any of it but tenant b's user and its outbox row.
    let mut after = app.snapshot().await;
    for table in ["users", "sync"] {
        after[table]
            .as_array_mut()
            .unwrap()
            .retain(|r| r["tenant_id"] != json!("b"));
    }
    assert_eq!(before, after);
}

async fn groups_of_another_tenant_are_invisible(db: TestDb) {
    let app = app(&db).await;
    let a_user = app.create_named("iso@x.test").await;
    let r = app
        .post(
            "/scim/v2/Groups",
            json!({"displayName": "Shared Name", "members": [{"value": a_user}]}),
        )
        .await;
    let gid = r.body["id"].as_str().unwrap().to_string();
    let uri = format!("/scim/v2/Groups/{gid}");
    let b = Some(TOKEN_B);
    use axum::http::Method;
    assert_eq!(app.call(Method::GET, &uri, b, None).await.status, 404);
    let r = app
        .call(
            Method::PATCH,
            &uri,
            b,
            Some(patch(
                json!([{"op": "replace", "path": "displayName", "value": "Mine"}]),
            )),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    let r = app
        .call(Method::PUT, &uri, b, Some(json!({"displayName": "Mine"})))
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(app.call(Method::DELETE, &uri, b, None).await.status, 404);
    let r = app.call(Method::GET, "/scim/v2/Groups", b, None).await;
    assert_eq!(r.body["totalResults"], json!(0), "{}", r.text);
    let f = format!(
        "/scim/v2/Users?filter={}",
        enc(&format!("groups.value eq \"{gid}\""))
    );
    assert_eq!(
        app.call(Method::GET, &f, b, None).await.body["totalResults"],
        json!(0)
    );
    // Tenant b may use the same name, and cannot put a's user in its group.
    let r = app
        .call(
            Method::POST,
            "/scim/v2/Groups",
            b,
            Some(json!({"displayName": "Shared Name", "members": [{"value": a_user}]})),
        )
        .await;
    r.assert_error(400, Some("invalidValue"));
    let r = app
        .call(
            Method::POST,
            "/scim/v2/Groups",
            b,
            Some(json!({"displayName": "Shared Name"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    // a's group is untouched.
    assert_eq!(
        app.get(&uri).await.body["displayName"],
        json!("Shared Name")
    );
    assert_eq!(member_ids(&app, &gid).await, vec![a_user]);
}

async fn display_name_is_unique_per_tenant(db: TestDb) {
    let app = app(&db).await;
    let r = app
        .post(
            "/scim/v2/Groups",
            json!({"displayName": "Quality Analysts"}),
        )
        .await;
    assert_eq!(r.status, 201);
    let r = app
        .post(
            "/scim/v2/Groups",
            json!({"displayName": "quality analysts"}),
        )
        .await;
    r.assert_error(409, Some("uniqueness"));
    let other = app
        .post("/scim/v2/Groups", json!({"displayName": "Other"}))
        .await;
    let uri = format!("/scim/v2/Groups/{}", other.body["id"].as_str().unwrap());
    let r = app
        .patch(
            &uri,
            patch(json!([{"op": "replace", "path": "displayName", "value": "QUALITY ANALYSTS"}])),
        )
        .await;
    r.assert_error(409, Some("uniqueness"));
    assert_eq!(app.get(&uri).await.body["displayName"], json!("Other"));
    let r = app
        .get(&format!(
            "/scim/v2/Groups?filter={}",
            enc("displayName eq \"QUALITY analysts\"")
        ))
        .await;
    assert_eq!(r.body["totalResults"], json!(1), "case-insensitive lookup");
}

async fn deleting_users_and_groups_keeps_both_sides_consistent(db: TestDb) {
    let app = app(&db).await;
    let ids = users(&app, &["d1@x.test", "d2@x.test"]).await;
    let mut gids = Vec::new();
    for name in ["One", "Two"] {
        let r = app
            .post(
                "/scim/v2/Groups",
                json!({"displayName": name, "members": [{"value": ids[0]}, {"value": ids[1]}]}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        gids.push(r.body["id"].as_str().unwrap().to_string());
    }
    let u = app.get(&format!("/scim/v2/Users/{}", ids[0])).await;
    assert_eq!(u.body["groups"].as_array().unwrap().len(), 2);
    assert_eq!(
        app.delete(&format!("/scim/v2/Users/{}", ids[0]))
            .await
            .status,
        204
    );
    for gid in &gids {
        assert_eq!(member_ids(&app, gid).await, vec![ids[1].clone()]);
    }
    assert_eq!(
        app.delete(&format!("/scim/v2/Groups/{}", gids[0]))
            .await
            .status,
        204
    );
    let u = app.get(&format!("/scim/v2/Users/{}", ids[1])).await;
    assert_eq!(u.body["groups"][0]["value"], json!(gids[1]), "{}", u.text);
    assert_eq!(u.body["groups"].as_array().unwrap().len(), 1);
}

async fn group_etags_and_preconditions(db: TestDb) {
    let app = app(&db).await;
    let id = app.create_named("et@x.test").await;
    let r = app
        .post("/scim/v2/Groups", json!({"displayName": "E"}))
        .await;
    let uri = format!("/scim/v2/Groups/{}", r.body["id"].as_str().unwrap());
    let v1 = r.header("etag").unwrap().to_string();
    assert_eq!(r.body["meta"]["version"], json!(v1));
    let user_v1 = app.get(&format!("/scim/v2/Users/{id}")).await.body["meta"]["version"].clone();
    use axum::http::Method;
    let add = patch(json!([{"op": "add", "path": "members", "value": [{"value": id}]}]));
    let t = Some(TOKEN_A);
    let r = app
        .call_with(
            Method::PATCH,
            &uri,
            t,
            Some(add.clone()),
            &[("if-match", "W/\"999\"")],
        )
        .await;
    r.assert_error(412, None);
    let r = app
        .call_with(
            Method::PATCH,
            &uri,
            t,
            Some(add.clone()),
            &[("if-match", &v1)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v2 = r.header("etag").unwrap().to_string();
    assert_ne!(v1, v2);
    // The member's version moved too: its `groups` changed.
    let user_v2 = app.get(&format!("/scim/v2/Users/{id}")).await.body["meta"]["version"].clone();
    assert_ne!(user_v1, user_v2);
    // A PATCH that changes nothing keeps the version.
    let r = app.patch(&uri, add).await;
    assert_eq!(r.header("etag").unwrap(), v2);
    // Deleting a member changes the group: a new version.
    let other = app.create_named("et2@x.test").await;
    let r = app
        .patch(
            &uri,
            patch(json!([{"op": "add", "path": "members", "value": [{"value": other}]}])),
        )
        .await;
    let v3 = r.header("etag").unwrap().to_string();
    assert_eq!(
        app.delete(&format!("/scim/v2/Users/{other}")).await.status,
        204
    );
    let r = app.get(&uri).await;
    assert_ne!(r.header("etag").unwrap(), v3);
    let v2 = r.header("etag").unwrap().to_string();
    let r = app
        .call_with(Method::GET, &uri, t, None, &[("if-none-match", &v2)])
        .await;
    assert_eq!(r.status, 304);
    let r = app
        .call_with(Method::DELETE, &uri, t, None, &[("if-match", &v1)])
        .await;
    r.assert_error(412, None);
    let r = app
        .call_with(Method::DELETE, &uri, t, None, &[("if-match", &v2)])
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(app.get("/scim/v2/Groups/not-a-uuid").await.status, 404);
}

async fn group_lists_filters_and_paging(db: TestDb) {
    let app = app(&db).await;
    let id = app.create_named("lf@x.test").await;
    for (name, ext) in [("Alpha", "ext-a"), ("Beta", "ext-b"), ("Gamma", "ext-c")] {
        let mut body = json!({"displayName": name, "externalId": ext});
        if name == "Beta" {
            body["members"] = json!([{"value": id}]);
        }
        assert_eq!(app.post("/scim/v2/Groups", body).await.status, 201);
    }
    let count = |f: &str| {
        let f = f.to_string();
        let app = &app;
        async move {
            let r = app
                .get(&format!("/scim/v2/Groups?filter={}", enc(&f)))
                .await;
            assert_eq!(r.status, 200, "{f}: {}", r.text);
            r.body["totalResults"].as_u64().unwrap()
        }
    };
    assert_eq!(count("displayName sw \"a\"").await, 1);
    assert_eq!(count("displayName co \"MM\"").await, 1);
    assert_eq!(count("externalId eq \"ext-b\"").await, 1);
    assert_eq!(
        count("externalId eq \"EXT-B\"").await,
        0,
        "externalId is caseExact"
    );
    assert_eq!(count(&format!("members[value eq \"{id}\"]")).await, 1);
    assert_eq!(count(&format!("members.value eq \"{id}\"")).await, 1);
    assert_eq!(count("members pr").await, 1);
    assert_eq!(
        count("displayName eq \"Alpha\" or displayName eq \"Gamma\"").await,
        2
    );
    assert_eq!(count("not (displayName eq \"Alpha\")").await, 2);
    assert_eq!(count("meta.created gt \"2000-01-01T00:00:00Z\"").await, 3);
    let r = app
        .get(&format!(
            "/scim/v2/Groups?filter={}",
            enc("userName eq \"x\"")
        ))
        .await;
    r.assert_error(400, Some("invalidFilter"));
    let r = app
        .get("/scim/v2/Groups?sortBy=displayName&sortOrder=descending&attributes=displayName")
        .await;
    let names: Vec<&str> = r.body["Resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["displayName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Gamma", "Beta", "Alpha"]);
    assert!(r.body["Resources"][0].get("externalId").is_none());
    assert!(r.body["Resources"][0].get("id").is_some());
    let r = app
        .post(
            "/scim/v2/Groups/.search",
            json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                   "filter": "displayName eq \"Beta\"", "excludedAttributes": ["members"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["totalResults"], json!(1));
    assert!(r.body["Resources"][0].get("members").is_none());
    let r = app.get("/scim/v2/Groups?count=0").await;
    assert_eq!(r.body["totalResults"], json!(3));
    assert_eq!(r.body["Resources"], json!([]));
}

/// Tenant `a` maps members of "CC Supervisors" to Supervisor with two logins, and
/// members of "Quality" (by externalId) to Analyst.
fn group_rules(settings: &mut ameyo_scim::config::Settings) {
    settings.tenants[0].ameyo.mapping.rules = vec![
        MappingRule {
            group: Some("CC Supervisors".into()),
            user_type: Some("Supervisor".into()),
            max_allowed_logins: Some(2),
            ..Default::default()
        },
        MappingRule {
            group: Some("quality-ext-id".into()),
            user_type: Some("Analyst".into()),
            default_ready: Some(true),
            ..Default::default()
        },
    ];
}

async fn membership_drives_the_ameyo_role(db: TestDb) {
    let s = sync_app_with(&db, Default::default(), group_rules).await;
    let ids = users(&s.app, &["sup@x.test", "agent@x.test"]).await;
    s.drain(LIMIT).await;
    assert_eq!(
        s.ameyo_user("sup@x.test").unwrap()["userType"],
        json!("Agent")
    );
    let requests_before = s.emulator.requests().len();

    // A group no rule looks at: members change, Ameyo hears nothing.
    let r = s
        .app
        .post(
            "/scim/v2/Groups",
            json!({"displayName": "Everyone", "members": [{"value": ids[0]}, {"value": ids[1]}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    s.drain(LIMIT).await;
    assert_eq!(
        s.emulator.requests().len(),
        requests_before,
        "no call for an unwatched group"
    );

    let r = s
        .app
        .post("/scim/v2/Groups", json!({"displayName": "CC Supervisors"}))
        .await;
    let gid = r.body["id"].as_str().unwrap().to_string();
    let uri = format!("/scim/v2/Groups/{gid}");
    let r = s
        .app
        .patch(
            &uri,
            patch(json!([{"op": "add", "path": "members", "value": [{"value": ids[0]}]}])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Durable before the answer: the outbox row is pending in the same transaction.
    assert_eq!(s.sync_row(&ids[0]).await.0, "pending");
    assert_eq!(
        s.sync_row(&ids[1]).await.0,
        "done",
        "only the member is re-delivered"
    );
    s.drain(LIMIT).await;
    let sup = s.ameyo_user("sup@x.test").unwrap();
    assert_eq!(sup["userType"], json!("Supervisor"), "{sup}");
    assert_eq!(sup["systemUserType"], json!("Supervisor"));
    assert_eq!(
        s.ameyo_user("agent@x.test").unwrap()["userType"],
        json!("Agent")
    );

    // Renaming the group away from the rule's name: its members become Agents again.
    let r = s
        .app
        .patch(&uri, patch(json!([{"op": "replace", "value": {"id": gid, "displayName": "Former Supervisors"}}])))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    s.drain(LIMIT).await;
    assert_eq!(
        s.ameyo_user("sup@x.test").unwrap()["userType"],
        json!("Agent")
    );
    // And back.
    let r = s
        .app
        .patch(
            &uri,
            patch(json!([{"op": "replace", "path": "displayName", "value": "CC Supervisors"}])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    s.drain(LIMIT).await;
    assert_eq!(
        s.ameyo_user("sup@x.test").unwrap()["userType"],
        json!("Supervisor")
    );

    // Removed from the group: an Agent again.
    let r = s
        .app
        .patch(
            &uri,
            patch(json!([{"op": "remove", "path": format!("members[value eq \"{}\"]", ids[0])}])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    s.drain(LIMIT).await;
    assert_eq!(
        s.ameyo_user("sup@x.test").unwrap()["userType"],
        json!("Agent")
    );

    // Deleting a watched group re-delivers its members.
    let r = s
        .app
        .patch(
            &uri,
            patch(json!([{"op": "add", "path": "members", "value": [{"value": ids[1]}]}])),
        )
        .await;
    assert_eq!(r.status, 200);
    s.drain(LIMIT).await;
    assert_eq!(
        s.ameyo_user("agent@x.test").unwrap()["userType"],
        json!("Supervisor")
    );
    assert_eq!(s.app.delete(&uri).await.status, 204);
    s.drain(LIMIT).await;
    assert_eq!(
        s.ameyo_user("agent@x.test").unwrap()["userType"],
        json!("Agent")
    );
}

async fn conflicting_groups_resolve_by_rule_order(db: TestDb) {
    let s = sync_app_with(&db, Default::default(), group_rules).await;
    let id = s.app.create_named("both@x.test").await;
    let quality = s
        .app
        .post(
            "/scim/v2/Groups",
            json!({"displayName": "Quality Analysts", "externalId": "quality-ext-id", "members": [{"value": id}]}),
        )
        .await;
    assert_eq!(quality.status, 201, "{}", quality.text);
    s.drain(LIMIT).await;
    let u = s.ameyo_user("both@x.test").unwrap();
    assert_eq!(
        u["userType"],
        json!("Analyst"),
        "matched by externalId: {u}"
    );
    assert_eq!(u["defaultReady"], json!(true));

    let sup = s
        .app
        .post(
            "/scim/v2/Groups",
            json!({"displayName": "cc supervisors", "members": [{"value": id}]}),
        )
        .await;
    assert_eq!(sup.status, 201);
    s.drain(LIMIT).await;
    let u = s.ameyo_user("both@x.test").unwrap();
    // rules[0] comes first for userType; defaultReady only rules[1] sets.
    assert_eq!(u["userType"], json!("Supervisor"), "{u}");
    assert_eq!(u["defaultReady"], json!(true), "{u}");

    // The user's own Ameyo extension beats every rule.
    let r = s
        .app
        .patch(
            &format!("/scim/v2/Users/{id}"),
            patch(
                json!([{"op": "add", "path": format!("{AMEYO}:userType"), "value": "Executive"}]),
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    s.drain(LIMIT).await;
    assert_eq!(
        s.ameyo_user("both@x.test").unwrap()["userType"],
        json!("Executive")
    );
}

async fn entra_app_roles_on_the_user_drive_the_role(db: TestDb) {
    let s = sync_app_with(&db, Default::default(), |settings| {
        settings.tenants[0].ameyo.mapping.rules = vec![MappingRule {
            attribute: Some("roles".into()),
            matches: Some("^(?i)supervisor$".into()),
            user_type: Some("Supervisor".into()),
            ..Default::default()
        }];
    })
    .await;
    let id = s.app.create_named("role@x.test").await;
    s.drain(LIMIT).await;
    // SingleAppRoleAssignment: `roles[primary eq "True"].value`.
    let r = s
        .app
        .patch(
            &format!("/scim/v2/Users/{id}"),
            patch(json!([{"op": "Add", "path": "roles[primary eq \"True\"].value", "value": "Supervisor"}])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.body["roles"],
        json!([{"primary": true, "value": "Supervisor"}]),
        "{}",
        r.text
    );
    s.drain(LIMIT).await;
    assert_eq!(
        s.ameyo_user("role@x.test").unwrap()["userType"],
        json!("Supervisor")
    );
    // Replacing it the same way keeps one primary role.
    let r = s
        .app
        .patch(
            &format!("/scim/v2/Users/{id}"),
            patch(json!([{"op": "Replace", "path": "roles[primary eq \"True\"].value", "value": "Agent"}])),
        )
        .await;
    assert_eq!(
        r.body["roles"],
        json!([{"primary": true, "value": "Agent"}]),
        "{}",
        r.text
    );
    s.drain(LIMIT).await;
    assert_eq!(
        s.ameyo_user("role@x.test").unwrap()["userType"],
        json!("Agent")
    );
    // AppRoleAssignmentsComplex: role objects whose value is JSON-encoded.
    let r = s
        .app
        .patch(
            &format!("/scim/v2/Users/{id}"),
            patch(json!([{"op": "add", "path": "roles", "value": [
                {"primary": false, "type": "WindowsAzureActiveDirectoryRole", "display": "Supervisor",
                 "value": "{\"id\":\"5c1a\",\"value\":\"Supervisor\",\"displayName\":\"Supervisor\"}"}
            ]}])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    s.drain(LIMIT).await;
    assert_eq!(
        s.ameyo_user("role@x.test").unwrap()["userType"],
        json!("Supervisor")
    );
    let f = format!("/scim/v2/Users?filter={}", enc("roles.value eq \"Agent\""));
    assert_eq!(s.app.get(&f).await.body["totalResults"], json!(1));
}

async fn a_thousand_members_in_one_patch(db: TestDb) {
    let app = app(&db).await;
    let mut ids = Vec::new();
    for i in 0..1001 {
        ids.push(app.create_named(&format!("m{i:04}@x.test")).await);
    }
    let r = app
        .post("/scim/v2/Groups", json!({"displayName": "Big"}))
        .await;
    let gid = r.body["id"].as_str().unwrap().to_string();
    let uri = format!("/scim/v2/Groups/{gid}");
    let add: Vec<Value> = ids[..1000].iter().map(|id| json!({"value": id})).collect();
    let r = app
        .patch(
            &uri,
            patch(json!([{"op": "add", "path": "members", "value": add}])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.body["members"].as_array().unwrap().len(),
        1000,
        "at most 1,000: shown"
    );
    assert_eq!(member_ids(&app, &gid).await.len(), 1000);
    // A larger group's members are left out of a PATCH answer unless asked for.
    let one = patch(json!([{"op": "add", "path": "members", "value": [{"value": ids[1000]}]}]));
    let r = app.patch(&uri, one.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.body.get("members").is_none(),
        "1,001 members are not sent back"
    );
    assert_eq!(r.body["displayName"], json!("Big"));
    let r = app
        .patch(&format!("{uri}?attributes=members,displayName"), one)
        .await;
    assert_eq!(r.body["members"].as_array().unwrap().len(), 1001);
    let r = app
        .patch(
            &uri,
            patch(
                json!([{"op": "remove", "path": format!("members[value eq \"{}\"]", ids[1000])}]),
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let remove: Vec<Value> = ids[..500]
        .iter()
        .map(|id| json!({"op": "remove", "path": format!("members[value eq \"{id}\"]")}))
        .collect();
    let r = app.patch(&uri, patch(Value::Array(remove))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(member_ids(&app, &gid).await.len(), 500);
    let f = format!(
        "/scim/v2/Users?count=1&filter={}",
        enc(&format!("groups[value eq \"{gid}\"]"))
    );
    assert_eq!(app.get(&f).await.body["totalResults"], json!(500));
}

async fn concurrent_membership_changes_neither_deadlock_nor_orphan(db: TestDb) {
    let app = std::sync::Arc::new(app(&db).await);
    let mut ids = Vec::new();
    for i in 0..120 {
        ids.push(app.create_named(&format!("c{i:03}@x.test")).await);
    }
    let mut gids = Vec::new();
    for g in 0..6 {
        let r = app
            .post(
                "/scim/v2/Groups",
                json!({"displayName": format!("Overlap {g}")}),
            )
            .await;
        gids.push(r.body["id"].as_str().unwrap().to_string());
    }
    // Six groups, each getting the same users in a different order, while a third of
    // those users are deleted: every request succeeds or is refused for a member that
    // no longer exists; none fails.
    let mut tasks = tokio::task::JoinSet::new();
    for (g, gid) in gids.iter().enumerate() {
        let (app, gid) = (app.clone(), gid.clone());
        let mut order = ids.clone();
        order.rotate_left(g * 17);
        if g % 2 == 1 {
            order.reverse();
        }
        tasks.spawn(async move {
            let mut statuses = Vec::new();
            for chunk in order.chunks(30) {
                let add: Vec<Value> = chunk.iter().map(|id| json!({"value": id})).collect();
                let r = app
                    .patch(
                        &format!("/scim/v2/Groups/{gid}"),
                        patch(json!([{"op": "add", "path": "members", "value": add}])),
                    )
                    .await;
                statuses.push((r.status.as_u16(), r.text));
            }
            statuses
        });
    }
    for id in ids.iter().step_by(3) {
        let (app, id) = (app.clone(), id.clone());
        tasks.spawn(async move {
            let r = app.delete(&format!("/scim/v2/Users/{id}")).await;
            vec![(r.status.as_u16(), r.text)]
        });
    }
    while let Some(done) = tasks.join_next().await {
        for (status, text) in done.unwrap() {
            assert!(
                status == 200
                    || status == 204
                    || (status == 400 && text.contains("no user with id")),
                "{status}: {text}"
            );
        }
    }
    // No deleted user is left in a group, by any way of asking.
    let deleted: std::collections::HashSet<&String> = ids.iter().step_by(3).collect();
    for gid in &gids {
        for m in member_ids(&app, gid).await {
            assert!(!deleted.contains(&m), "deleted user {m} still listed");
        }
    }
    for id in &deleted {
        let f = format!(
            "/scim/v2/Groups?filter={}",
            enc(&format!("members[value eq \"{id}\"]"))
        );
        assert_eq!(app.get(&f).await.body["totalResults"], json!(0), "{id}");
    }
    let left = app.db.int("SELECT count(*) FROM group_members", &[]).await;
    let listed: usize = {
        let mut n = 0;
        for gid in &gids {
            n += member_ids(&app, gid).await.len();
        }
        n
    };
    assert_eq!(
        left as usize, listed,
        "no member row of a deleted user is left"
    );
}

/// RFC 7644 §3.5.2: 200 with the resource, subject to `attributes` and
/// `excludedAttributes`. A member's `display` only when asked for by name.
async fn patch_answers_200_with_the_group_as_asked(db: TestDb) {
    let app = app(&db).await;
    let ids = users(&app, &["p1@x.test", "p2@x.test"]).await;
    let r = app
        .post(
            "/scim/v2/Groups",
            json!({"displayName": "P", "externalId": "ext-p"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let uri = format!("/scim/v2/Groups/{}", r.body["id"].as_str().unwrap());
    let add = |id: &str| patch(json!([{"op": "add", "path": "members", "value": [{"value": id}]}]));

    let r = app.patch(&uri, add(&ids[0])).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["members"][0]["value"], json!(ids[0]), "{}", r.text);
    assert_eq!(r.body["members"][0]["type"], json!("User"));
    assert!(r.body["members"][0].get("display").is_none());
    assert_eq!(r.body["meta"]["version"], json!(r.header("etag").unwrap()));
    let etag = r.header("etag").unwrap().to_string();
    let shown = app
        .get(&format!("{uri}?attributes=members.display,displayName"))
        .await;
    assert_eq!(
        shown.body["members"][0]["display"],
        json!("p1@x.test"),
        "{}",
        shown.text
    );
    let current = app.get(&uri).await;
    assert_eq!(current.header("etag").unwrap(), etag);
    assert_eq!(current.body["meta"]["version"], json!(etag));

    // The projection parameters shape the answer as for a GET.
    let r = app
        .patch(
            &format!("{uri}?excludedAttributes=externalId"),
            add(&ids[1]),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body.get("externalId").is_none(), "{}", r.text);
    assert_eq!(r.body["displayName"], json!("P"));
    let mut members: Vec<&str> = r.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"].as_str().unwrap())
        .collect();
    members.sort();
    let mut want = vec![ids[0].as_str(), ids[1].as_str()];
    want.sort();
    assert_eq!(members, want);
    assert_ne!(r.header("etag").unwrap(), etag);

    let rename = patch(json!([{"op": "replace", "path": "displayName", "value": "P2"}]));
    let r = app
        .patch(&format!("{uri}?attributes=displayName"), rename.clone())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["displayName"], json!("P2"));
    assert!(r.body.get("id").is_some());
    assert!(r.body.get("members").is_none() && r.body.get("externalId").is_none());
    let r = app
        .patch(&format!("{uri}?excludedAttributes=members"), rename)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body.get("members").is_none(), "{}", r.text);
    assert_eq!(r.body["externalId"], json!("ext-p"));

    // A refused PATCH is still a SCIM error.
    let r = app
        .patch(
            &uri,
            patch(json!([{"op": "remove", "path": "displayName"}])),
        )
        .await;
    r.assert_error(400, Some("invalidValue"));
}

/// RFC 7644 §3.4.2.1: a query at the root covers every resource of the tenant. Users
/// come first, then groups; a filter applies to the types that have its attributes.
async fn root_search_finds_users_and_groups(db: TestDb) {
    let app = app(&db).await;
    let ids = users(&app, &["r1@x.test", "r2@x.test", "r3@x.test"]).await;
    for (name, members) in [
        ("Root A", json!([{"value": ids[0]}])),
        ("Root B", json!([])),
    ] {
        let r = app
            .post(
                "/scim/v2/Groups",
                json!({"displayName": name, "members": members}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    // Another tenant's resources stay out.
    let r = app
        .call(
            axum::http::Method::POST,
            "/scim/v2/Groups",
            Some(TOKEN_B),
            Some(json!({"displayName": "Theirs"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);

    let search = |body: Value| {
        let app = &app;
        async move {
            let r = app.post("/scim/v2/.search", body.clone()).await;
            assert_eq!(r.status, 200, "{body}: {}", r.text);
            r
        }
    };
    let types = |r: &Resp| -> Vec<String> {
        r.body["Resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["meta"]["resourceType"].as_str().unwrap().to_string())
            .collect()
    };

    let r = search(json!({"count": 100})).await;
    assert_eq!(r.body["totalResults"], json!(5));
    assert_eq!(types(&r), ["User", "User", "User", "Group", "Group"]);
    assert_eq!(r.body["Resources"][3]["members"][0]["value"], json!(ids[0]));

    // Pages run over users, then groups.
    let r = search(json!({"startIndex": 3, "count": 2})).await;
    assert_eq!(r.body["totalResults"], json!(5));
    assert_eq!(r.body["startIndex"], json!(3));
    assert_eq!(r.body["itemsPerPage"], json!(2));
    assert_eq!(types(&r), ["User", "Group"]);
    let r = search(json!({"startIndex": 5, "count": 10})).await;
    assert_eq!(types(&r), ["Group"]);
    let r = search(json!({"startIndex": 9})).await;
    assert_eq!(r.body["totalResults"], json!(5));
    assert!(types(&r).is_empty());
    let r = search(json!({"count": 0})).await;
    assert_eq!(r.body["totalResults"], json!(5));
    assert!(types(&r).is_empty());
    let r = search(json!({"sortBy": "displayName", "sortOrder": "descending", "count": 100})).await;
    let groups: Vec<&Value> = r.body["Resources"].as_array().unwrap()[3..]
        .iter()
        .collect();
    assert_eq!(groups[0]["displayName"], json!("Root B"));
    assert_eq!(groups[1]["displayName"], json!("Root A"));

    // Filters.
    let r = search(json!({"filter": "meta.resourceType eq \"Group\""})).await;
    assert_eq!(types(&r), ["Group", "Group"]);
    let r = search(json!({"filter": "userName sw \"r2\""})).await;
    assert_eq!(types(&r), ["User"]);
    assert_eq!(r.body["Resources"][0]["id"], json!(ids[1]));
    let r = search(json!({"filter": format!("members[value eq \"{}\"]", ids[0])})).await;
    assert_eq!(types(&r), ["Group"]);
    assert_eq!(r.body["Resources"][0]["displayName"], json!("Root A"));
    let r = search(json!({"filter": "displayName sw \"Root\""})).await;
    assert_eq!(r.body["totalResults"], json!(2));
    let r = app
        .post("/scim/v2/.search", json!({"filter": "nosuch eq \"x\""}))
        .await;
    r.assert_error(400, Some("invalidFilter"));
    let r = app
        .post("/scim/v2/.search", json!({"sortBy": "nosuch"}))
        .await;
    r.assert_error(400, Some("invalidValue"));

    // Projection, for each type.
    let r = search(json!({"attributes": ["displayName", "userName"], "count": 100})).await;
    let all = r.body["Resources"].as_array().unwrap();
    assert_eq!(all[0]["userName"], json!("r1@x.test"));
    assert!(all[0].get("emails").is_none() && all[0].get("meta").is_none());
    assert_eq!(all[3]["displayName"], json!("Root A"));
    assert!(all[3].get("members").is_none() && all[3].get("meta").is_none());
    let r = search(
        json!({"excludedAttributes": ["members"], "filter": "meta.resourceType eq \"Group\""}),
    )
    .await;
    assert!(
        r.body["Resources"][0].get("members").is_none(),
        "{}",
        r.text
    );
}
