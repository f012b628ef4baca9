//! One data set, two stores: the embedded SQLite store answers every list query (filter,
//! sort, page, total) of users and of groups exactly as the PostgreSQL store does.

mod common;

use std::path::PathBuf;

use ameyo_scim::scim::filter;
use ameyo_scim::scim::group::{GroupChange, GroupInput, Members};
use ameyo_scim::scim::resource::{StoredUser, UserInput, parse_user, revalidate};
use ameyo_scim::scim::schema::{self, ENTERPRISE_USER, USER};
use ameyo_scim::store::groups::{GroupPage, GroupStore, PgGroupStore};
use ameyo_scim::store::password::PasswordCipher;
use ameyo_scim::store::sqlite::groups::SqliteGroupStore;
use ameyo_scim::store::sqlite::{self, SqliteStore};
use ameyo_scim::store::{ListQuery, Page, PgStore, StoreError, UserStore};
use serde_json::{Value, json};
use uuid::Uuid;

const AMEYO: &str = "urn:ietf:params:scim:schemas:extension:ameyo:2.0:User";

/// A database file in the temp directory, removed (with its WAL) when dropped.
struct TempDb(PathBuf);

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Users whose names and values exercise case folding beyond ASCII, missing
/// attributes, several e-mails, both extensions and characters LIKE would treat as
/// wildcards.
fn hand_made() -> Vec<Value> {
    vec![
        json!({"userName": "Ångström", "name": {"givenName": "Anders", "familyName": "Ångström"},
               "displayName": "Anders Ångström", "externalId": "EXT-001",
               "emails": [{"value": "Anders@Ångström.SE", "type": "work", "primary": true}]}),
        json!({"userName": "ÉMILE", "name": {"givenName": "Émile", "familyName": "Zola"},
               "externalId": "ext-001", "title": "Écrivain",
               "emails": [{"value": "EMILE@Example.com", "type": "work"},
                          {"value": "emile@home.net", "type": "home", "primary": true}]}),
        json!({"userName": "straße", "name": {"familyName": "Straße"}, "active": false,
               "emails": [{"value": "strasse@example.org", "type": "work", "primary": true}]}),
        json!({"userName": "STRASSE", "name": {"familyName": "STRASSE"},
               "displayName": "50% off_sale"}),
        json!({"userName": "İpek", "name": {"familyName": "Yılmaz", "givenName": "İpek"},
               "displayName": "500 offXsale"}),
        json!({"userName": "ΟΔΟΣ", "name": {"familyName": "Παπαδόπουλος"}, "displayName": ""}),
        json!({"userName": "zoë", "name": {"givenName": "Zoë", "familyName": "Brontë"},
               "emails": [{"value": "zoe@example.com"}, {"value": "z@example.org"}]}),
        json!({"userName": "Zoe", "nickName": "ZZ",
               "emails": [{"value": "zoe2@example.com", "type": "other", "primary": false},
                          {"value": "a-zoe2@example.com"}, {"type": "work", "display": "none yet"}]}),
        json!({"userName": "adam", "userType": "Employee", "title": "CEO"}),
        json!({"userName": "Bob", "userType": "Employee", "active": false, "title": "Intern"}),
        json!({"userName": "bob.smith@example.com", "userType": "Contractor",
               "externalId": "EXT-010",
               ENTERPRISE_USER: {"department": "Sales", "employeeNumber": "E010",
                                 "manager": {"value": "M-1"}},
               AMEYO: {"userType": "Agent", "maxAllowedLogins": 3, "defaultReady": true}}),
        json!({"userName": "carol", ENTERPRISE_USER: {"department": "SALES", "employeeNumber": "E002"},
               AMEYO: {"userType": "Supervisor", "maxAllowedLogins": 1, "defaultReady": false}}),
        json!({"userName": "dave", ENTERPRISE_USER: {"department": "Vertrieb", "manager": {"value": "m-1"}},
               "phoneNumbers": [{"value": "+49 30 1234", "type": "mobile"}]}),
        json!({"userName": "Eve_", "displayName": "eve%", "title": "Back\\slash",
               "addresses": [{"country": "DE", "locality": "München", "type": "work"}]}),
        json!({"userName": "grace", "emails": [{"value": "z-grace@x.org", "primary": false},
                                               {"value": "a-grace@x.org", "primary": true}]}),
        json!({"userName": "frank", "emails": [{"value": "FRANK@EXAMPLE.COM", "type": "work", "primary": true},
                                               {"value": "frank@example.com", "type": "home"}]}),
    ]
}

/// Plainer users with attributes spread over them.
fn generated() -> Vec<Value> {
    let families = [
        "Müller", "MÜLLER", "Øster", "Çelik", "García", "GARCÍA", "Nguyễn", "Đặng", "Łukasz",
        "Šimek", "Ærø", "Smith", "o'brien",
    ];
    let departments = [
        Some("Sales"),
        Some("sales"),
        Some("Ventes"),
        None,
        Some("Support"),
    ];
    let types = [Some("work"), Some("home"), None, Some("other")];
    (0..45)
        .map(|i| {
            let mut u = json!({
                "userName": format!("user{i:02}@Example.com"),
                "externalId": format!("gen-{i:03}"),
                "active": i % 5 != 0,
            });
            if i % 4 != 3 {
                u["name"] = json!({"familyName": families[i % families.len()],
                                   "givenName": format!("Given{}", i % 7)});
            }
            if i % 3 != 0 {
                u["displayName"] = json!(format!("User Nº{i}"));
            }
            if i % 6 == 1 {
                u["title"] = json!(if i % 12 == 1 { "Agent" } else { "agent" });
            }
            let emails: Vec<Value> = (0..i % 3)
                .map(|k| {
                    let mut e = json!({"value": format!("u{i}.{k}@{}", if k == 0 { "Example.COM" } else { "mail.org" })});
                    if let Some(t) = types[(i + k) % types.len()] {
                        e["type"] = json!(t);
                    }
                    if k == 1 && i % 2 == 0 {
                        e["primary"] = json!(true);
                    }
                    e
                })
                .collect();
            if !emails.is_empty() {
                u["emails"] = json!(emails);
            }
            if let Some(d) = departments[i % departments.len()] {
                u[ENTERPRISE_USER] = json!({"department": d, "employeeNumber": format!("E{:03}", 100 - i)});
            }
            if i % 4 == 0 {
                u[AMEYO] = json!({"userType": "Agent", "maxAllowedLogins": i % 5,
                                  "contactCenterId": 1 + i % 2});
            }
            u
        })
        .collect()
}

fn input(mut v: Value) -> UserInput {
    v["schemas"] = json!([USER, ENTERPRISE_USER, AMEYO]);
    parse_user(v).unwrap()
}

fn retitle(current: &StoredUser) -> Result<Option<UserInput>, ameyo_scim::scim::ScimError> {
    let mut r = current.resource.clone();
    r.insert("title".into(), json!("Updated"));
    revalidate(r, None).map(Some)
}

/// Every user written to both stores in the same order, with the same updates and
/// deletes, plus users of another tenant that must never show.
async fn load(stores: [&dyn UserStore; 2]) {
    let all: Vec<Value> = hand_made().into_iter().chain(generated()).collect();
    for (n, user) in all.into_iter().enumerate() {
        for store in stores {
            let u = store.create("t1", input(user.clone())).await.unwrap();
            if n % 7 == 3 {
                store.update("t1", u.id, None, &retitle).await.unwrap();
            }
            if n >= hand_made().len() && n % 11 == 5 {
                store.delete("t1", u.id, None).await.unwrap();
            }
            if n % 9 == 0 {
                store.create("t2", input(user.clone())).await.unwrap();
            }
        }
    }
    // The same rules hold in both.
    for store in stores {
        assert!(matches!(
            store
                .create("t1", input(json!({"userName": "ångSTRÖM"})))
                .await,
            Err(StoreError::UserNameTaken)
        ));
    }
}

fn query(
    filter: Option<&str>,
    sort: Option<&str>,
    descending: bool,
    start: u64,
    count: u64,
) -> ListQuery {
    ListQuery {
        filter: filter.map(|f| filter::parse(f).unwrap_or_else(|e| panic!("{f}: {e:?}"))),
        sort_by: sort.map(|s| {
            let (attr, sub) = schema::resolve(s).unwrap();
            filter::AttrPath { attr, sub }
        }),
        descending,
        start_index: start,
        count,
    }
}

/// The page as userNames (ids differ between the stores), and the total.
fn shown(page: &Page) -> (u64, Vec<String>) {
    let names = page
        .users
        .iter()
        .map(|u| u.resource["userName"].as_str().unwrap().to_string())
        .collect();
    (page.total, names)
}

const E: &str = ENTERPRISE_USER;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_answers_every_list_query_as_postgres_does() {
    let db = common::TestDb::postgres().await;
    let pg = PgStore::new(db.pg_pool(), PasswordCipher::new(&[7u8; 32]));
    let path = std::env::temp_dir().join(format!("ameyo-scim-equivalence-{}.db", Uuid::new_v4()));
    let _db = TempDb(path.clone());
    let lite = SqliteStore::new(
        sqlite::connect(&format!("sqlite://{}", path.display()), 4)
            .await
            .unwrap(),
        PasswordCipher::new(&[7u8; 32]),
    );
    lite.migrate().await.unwrap();
    let stores: [&dyn UserStore; 2] = [&pg, &lite];
    load(stores).await;

    let filters: Vec<String> = [
        // Case-insensitive, beyond ASCII.
        r#"userName eq "ångström""#,
        r#"userName eq "ÅNGSTRÖM""#,
        r#"userName co "STRÖ""#,
        r#"userName sw "émi""#,
        r#"userName sw "İP""#,
        r#"userName eq "οδοσ""#,
        r#"userName ew "SSE""#,
        r#"userName eq "STRASSE""#,
        r#"userName eq "STRAẞE""#,
        r#"name.familyName eq "straße""#,
        r#"name.familyName co "ÖM""#,
        r#"name.familyName eq "müller""#,
        r#"name.familyName sw "GARCÍ""#,
        r#"name.givenName sw "é""#,
        // Ordering comparisons (code-point order).
        r#"userName gt "m""#,
        r#"userName lt "zoe""#,
        r#"userName ge "ΟΔ""#,
        r#"userName le "bob""#,
        r#"name.familyName gt "z""#,
        // LIKE's wildcards are plain characters.
        r#"displayName co "50%""#,
        r#"displayName co "_""#,
        r#"userName ew "_""#,
        r#"title co "\\""#,
        r#"displayName co """#,
        r#"userName sw """#,
        r#"userName ew """#,
        // Presence, null, and caseExact attributes.
        "displayName pr",
        "name pr",
        "emails.display pr",
        "not (displayName pr)",
        "displayName eq null",
        "title ne null",
        r#"externalId eq "EXT-001""#,
        r#"externalId eq "ext-001""#,
        r#"externalId co "T-0""#,
        "externalId pr",
        "externalId eq null",
        r#"externalId ne "gen-001""#,
        r#"externalId gt "gen-040""#,
        // Booleans.
        "active eq false",
        "active ne true",
        // Multi-valued attributes and value paths.
        "emails pr",
        "emails.value pr",
        "emails.type pr",
        "emails.primary eq true",
        r#"emails eq "EMILE@example.COM""#,
        r#"emails.value eq "anders@ångström.se""#,
        r#"emails.value co "@EXAMPLE.""#,
        r#"emails.value ne "frank@example.com""#,
        r#"emails.type eq "home""#,
        "emails eq null",
        "emails ne null",
        r#"emails[type eq "work" and value co "example"]"#,
        r#"emails[type eq "work"].value eq "emile@example.com""#,
        r#"emails[type eq "home"].value eq "EMILE@EXAMPLE.COM""#,
        r#"emails[not (type eq "work")]"#,
        r#"not (emails[type eq "work"].value eq "emile@example.com")"#,
        r#"not (emails.value eq "FRANK@example.com") and emails pr"#,
        r#"emails[primary eq true and value ew ".ORG"]"#,
        r#"emails[type eq "work" or primary eq true]"#,
        r#"emails[type pr]"#,
        r#"emails[value eq "u4.0@example.com" and value eq "u4.0@EXAMPLE.com"]"#,
        r#"phoneNumbers[type eq "mobile"]"#,
        r#"addresses[locality eq "MÜNCHEN"]"#,
        r#"addresses.country eq "de""#,
        // Extensions.
        &format!(r#"{E}:department eq "sales""#),
        &format!(r#"{E}:department ne "Sales""#),
        &format!("{E}:department pr"),
        &format!("{E}:manager pr"),
        &format!(r#"{E}:manager.value eq "m-1""#),
        &format!(r#"{E}:employeeNumber gt "E090""#),
        &format!(r#"{AMEYO}:userType eq "agent""#),
        &format!(r#"{AMEYO}:userType eq "Agent""#),
        &format!("{AMEYO}:maxAllowedLogins ge 2"),
        &format!("{AMEYO}:maxAllowedLogins lt 2"),
        &format!("{AMEYO}:maxAllowedLogins ne 0"),
        &format!("{AMEYO}:defaultReady eq true"),
        &format!("{AMEYO}:defaultReady ne true"),
        // Logic: `and` binds tighter than `or`; `not` keeps absent values unmatched.
        r#"userType eq "Employee" or title pr and active eq true"#,
        r#"(userType eq "Employee" or title pr) and active eq true"#,
        r#"not (userName sw "user" or emails pr)"#,
        r#"not (title eq "Agent")"#,
        r#"not (not (title eq "agent"))"#,
        r#"title eq "agent" and not (emails pr) or displayName co "nº1""#,
        // Meta and id.
        r#"meta.resourceType eq "User""#,
        r#"meta.version eq "W/\"2\"""#,
        r#"meta.created gt "2000-01-01T00:00:00Z""#,
        r#"meta.lastModified lt "2000-01-01T00:00:00+02:00""#,
        r#"id eq "not-a-uuid""#,
        r#"id ne "not-a-uuid""#,
        r#"id eq "00000000-0000-0000-0000-000000000000""#,
        "id pr",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();

    let mut cases: Vec<(String, ListQuery)> = filters
        .iter()
        .map(|f| (f.clone(), query(Some(f), None, false, 1, 200)))
        .collect();
    // Sorting (absent values last in both directions) and paging.
    for (sort, descending) in [
        ("userName", false),
        ("userName", true),
        ("name.familyName", false),
        ("name.familyName", true),
        ("displayName", false),
        ("emails", false),
        ("emails.type", true),
        ("externalId", true),
        ("active", false),
        ("meta.created", true),
        ("meta.lastModified", false),
        ("meta.version", true),
        ("title", false),
        (&format!("{E}:department") as &str, true),
        (&format!("{AMEYO}:maxAllowedLogins") as &str, false),
    ] {
        cases.push((
            format!("sortBy={sort} descending={descending}"),
            query(None, Some(sort), descending, 1, 200),
        ));
    }
    for (label, q) in [
        ("page 1", query(None, None, false, 1, 10)),
        ("page 2", query(None, None, false, 11, 10)),
        ("last page", query(None, None, false, 55, 10)),
        ("beyond the end", query(None, None, false, 500, 10)),
        ("count 0", query(None, None, false, 1, 0)),
        (
            "count 0 filtered",
            query(Some("emails pr"), None, false, 1, 0),
        ),
        (
            "deep filtered page",
            query(Some("emails pr"), None, false, 8, 5),
        ),
        ("sorted page", query(None, Some("userName"), true, 5, 7)),
        (
            "sorted filtered page",
            query(
                Some("name.familyName pr"),
                Some("name.familyName"),
                false,
                3,
                9,
            ),
        ),
        (
            "sorted beyond the end",
            query(Some("active eq true"), Some("userName"), false, 90, 5),
        ),
    ] {
        cases.push((label.to_string(), q));
    }

    let mut matched_something = 0;
    for (label, q) in &cases {
        let expected = shown(
            &pg.list("t1", q)
                .await
                .unwrap_or_else(|e| panic!("{label}: {e}")),
        );
        let got = shown(
            &lite
                .list("t1", q)
                .await
                .unwrap_or_else(|e| panic!("{label}: {e}")),
        );
        assert_eq!(got, expected, "{label}");
        if expected.0 > 0 {
            matched_something += 1;
        }
    }
    // The data set is rich enough that most queries match someone.
    assert!(
        matched_something * 10 >= cases.len() * 8,
        "{matched_something}/{}",
        cases.len()
    );

    // The same queries are refused by both.
    for bad in [
        query(Some("meta.location pr"), None, false, 1, 10),
        query(None, Some("name"), false, 1, 10),
    ] {
        assert!(matches!(
            pg.list("t1", &bad).await,
            Err(StoreError::Rejected(_))
        ));
        assert!(matches!(
            lite.list("t1", &bad).await,
            Err(StoreError::Rejected(_))
        ));
    }
}

/// The groups of the group data set: names that fold beyond ASCII or hold LIKE's
/// wildcards, caseExact externalIds, and members by user index.
fn group_set() -> Vec<(&'static str, Option<&'static str>, Vec<usize>)> {
    vec![
        ("Sales", Some("EXT-1"), vec![0, 1, 2]),
        ("sales-eu", Some("ext-1"), vec![2, 3]),
        ("Équipe Support", None, vec![4]),
        ("STRASSE", Some("s-1"), vec![5, 6]),
        ("straße", None, vec![]),
        ("İstanbul Ops", Some("İST"), vec![7, 0]),
        ("ΟΔΟΣ", None, vec![8]),
        ("50% off_sale", Some("wild%_"), vec![9]),
        ("Zoë", None, vec![1]),
        ("zoe", Some(""), vec![]),
        ("Back\\slash", Some("b"), vec![3, 4, 5]),
        ("Gone", None, vec![6]),
    ]
}

/// One store's users and groups: ids by index, for filters that name them.
struct GroupData {
    users: Vec<Uuid>,
    groups: Vec<Uuid>,
}

/// The same users, groups and group changes in one store, in the same order.
async fn load_groups(users: &dyn UserStore, groups: &dyn GroupStore) -> GroupData {
    let names = [
        "ann", "Bob", "ÉMILE", "straße", "zoë", "İpek", "ΟΔΟΣ", "carol", "dave", "eve",
    ];
    let mut user_ids = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let mut u = json!({"userName": n});
        if i % 3 == 0 {
            u["displayName"] = json!(format!("Display {n}"));
        }
        user_ids.push(users.create("g1", input(u)).await.unwrap().id);
    }
    let unwatched = |_: &str, _: Option<&str>| false;
    let mut group_ids = Vec::new();
    for (name, ext, members) in group_set() {
        let g = groups
            .create_group(
                "g1",
                GroupInput {
                    display_name: name.into(),
                    external_id: ext.map(str::to_string),
                    members: members.iter().map(|&i| user_ids[i]).collect(),
                },
                &unwatched,
                false,
            )
            .await
            .unwrap();
        group_ids.push(g.id);
    }
    // Another tenant's group of the same name never shows.
    groups
        .create_group(
            "g2",
            GroupInput {
                display_name: "Sales".into(),
                external_id: Some("EXT-1".into()),
                members: vec![],
            },
            &unwatched,
            false,
        )
        .await
        .unwrap();
    // A rename, a member change, a deleted group, a deleted member.
    let rename = GroupChange {
        display_name: Some("Straße Nord".into()),
        external_id: Some(Some("S-1".into())),
        members: Members::Delta {
            add: vec![user_ids[8]],
            remove: vec![user_ids[5]],
        },
    };
    groups
        .change_group("g1", group_ids[3], None, &rename, &unwatched, None)
        .await
        .unwrap();
    let replace = GroupChange {
        members: Members::Replace(vec![user_ids[9], user_ids[2]]),
        ..Default::default()
    };
    groups
        .change_group("g1", group_ids[0], None, &replace, &unwatched, None)
        .await
        .unwrap();
    groups
        .delete_group("g1", group_ids[11], None, &unwatched)
        .await
        .unwrap();
    users.delete("g1", user_ids[4], None).await.unwrap();
    // The same rules hold in both.
    let taken = groups
        .create_group(
            "g1",
            GroupInput {
                display_name: "ÉQUIPE SUPPORT".into(),
                external_id: None,
                members: vec![],
            },
            &unwatched,
            false,
        )
        .await;
    assert!(
        matches!(taken, Err(StoreError::DisplayNameTaken)),
        "{taken:?}"
    );
    let refused = groups
        .create_group(
            "g1",
            GroupInput {
                display_name: "New".into(),
                external_id: None,
                members: vec![user_ids[0], user_ids[4]],
            },
            &unwatched,
            false,
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::Rejected(_))),
        "{refused:?}"
    );
    GroupData {
        users: user_ids,
        groups: group_ids,
    }
}

/// A list query on groups, parsed against the Group schema.
fn group_query(
    filter: Option<&str>,
    sort: Option<&str>,
    descending: bool,
    start: u64,
    count: u64,
) -> ListQuery {
    ListQuery {
        filter: filter.map(|f| filter::parse_group(f).unwrap_or_else(|e| panic!("{f}: {e:?}"))),
        sort_by: sort.map(|s| {
            let (attr, sub) = schema::resolve_group(s).unwrap();
            filter::AttrPath { attr, sub }
        }),
        descending,
        start_index: start,
        count,
    }
}

/// `{uN}` and `{gN}` in a filter: this store's id of user or group N (`{GN}`: in upper
/// case).
fn with_ids(template: &str, data: &GroupData) -> String {
    let mut f = template.to_string();
    for (i, id) in data.users.iter().enumerate().rev() {
        f = f.replace(&format!("{{u{i}}}"), &id.to_string());
    }
    for (i, id) in data.groups.iter().enumerate().rev() {
        f = f.replace(&format!("{{g{i}}}"), &id.to_string());
        f = f.replace(&format!("{{G{i}}}"), &id.to_string().to_uppercase());
    }
    f
}

/// A page of groups as their names and their members' names, sorted (ids differ between
/// the stores).
type ShownGroups = (u64, Vec<(String, Option<String>, Vec<Option<String>>)>);

fn shown_groups(page: &GroupPage) -> ShownGroups {
    let groups = page
        .groups
        .iter()
        .map(|g| {
            (g.display_name.clone(), g.external_id.clone(), {
                // Members come in id order, and ids differ between the stores.
                let mut members: Vec<Option<String>> = g
                    .members
                    .iter()
                    .flatten()
                    .map(|m| m.display.clone())
                    .collect();
                members.sort();
                members
            })
        })
        .collect();
    (page.total, groups)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_answers_every_group_query_as_postgres_does() {
    let db = common::TestDb::postgres().await;
    let cipher = PasswordCipher::new(&[7u8; 32]);
    let pg_users = PgStore::new(db.pg_pool(), cipher.clone());
    let pg_groups = PgGroupStore::new(db.pg_pool());
    let path = std::env::temp_dir().join(format!("ameyo-scim-equivalence-{}.db", Uuid::new_v4()));
    let _db = TempDb(path.clone());
    let pool = sqlite::connect(&format!("sqlite://{}", path.display()), 4)
        .await
        .unwrap();
    let lite_users = SqliteStore::new(pool.clone(), cipher);
    lite_users.migrate().await.unwrap();
    let lite_groups = SqliteGroupStore::new(pool);
    let pg_data = load_groups(&pg_users, &pg_groups).await;
    let lite_data = load_groups(&lite_users, &lite_groups).await;

    let group_filters = [
        r#"displayName eq "sales""#,
        r#"displayName eq "ÉQUIPE SUPPORT""#,
        r#"displayName eq "STRAẞE""#,
        r#"displayName eq "straße nord""#,
        r#"displayName co "STRA""#,
        r#"displayName co "SSE""#,
        r#"displayName sw "é""#,
        r#"displayName sw "İS""#,
        r#"displayName sw "SALES""#,
        r#"displayName ew "OPS""#,
        r#"displayName ew "οσ""#,
        r#"displayName gt "m""#,
        r#"displayName le "sales""#,
        r#"displayName co "%""#,
        r#"displayName co "_""#,
        r#"displayName co "\\""#,
        r#"displayName co """#,
        "displayName pr",
        r#"displayName ne "Sales""#,
        r#"externalId eq "EXT-1""#,
        r#"externalId eq "ext-1""#,
        r#"externalId eq "s-1""#,
        r#"externalId co "XT""#,
        r#"externalId sw "İ""#,
        r#"externalId co "%_""#,
        r#"externalId gt "a""#,
        "externalId pr",
        "externalId eq null",
        "not (externalId pr)",
        "members pr",
        "not (members pr)",
        r#"members[value eq "{u2}"]"#,
        r#"members.value eq "{u8}""#,
        r#"members eq "{u0}""#,
        r#"members[value eq "{u4}"]"#,
        r#"members[value eq "not-an-id"]"#,
        r#"not (members[value eq "{u2}"])"#,
        r#"meta.created gt "2000-01-01T00:00:00Z""#,
        r#"meta.lastModified lt "2000-01-01T00:00:00+02:00""#,
        r#"meta.resourceType eq "group""#,
        r#"meta.resourceType eq "Group""#,
        r#"id eq "{g1}""#,
        r#"id eq "{G2}""#,
        r#"id eq "not-a-uuid""#,
        r#"id ne "{g1}""#,
        "id pr",
        r#"displayName sw "s" or externalId eq "b""#,
        r#"displayName sw "s" and members pr"#,
        r#"not (displayName sw "s") and not (externalId eq "b")"#,
    ];
    // (label, filter, sort, descending, startIndex, count); filters name ids as `{uN}`.
    type Case = (String, Option<String>, Option<&'static str>, bool, u64, u64);
    let mut cases: Vec<Case> = group_filters
        .iter()
        .map(|f| (f.to_string(), Some(f.to_string()), None, false, 1, 100))
        .collect();
    for (sort, descending) in [
        ("displayName", false),
        ("displayName", true),
        ("externalId", false),
        ("externalId", true),
        ("meta.created", true),
        ("meta.lastModified", false),
    ] {
        cases.push((
            format!("sortBy={sort} descending={descending}"),
            None,
            Some(sort),
            descending,
            1,
            100,
        ));
    }
    let members = Some("members pr".to_string());
    cases.extend([
        ("page 2".into(), None, None, false, 4, 3),
        ("beyond the end".into(), None, None, false, 50, 3),
        ("count 0".into(), members.clone(), None, false, 1, 0),
        (
            "sorted filtered page".into(),
            members,
            Some("displayName"),
            true,
            2,
            3,
        ),
    ]);
    let mut matched_something = 0;
    for (label, f, sort, descending, start, count) in &cases {
        let mut answers = Vec::new();
        for (groups, data) in [
            (&pg_groups as &dyn GroupStore, &pg_data),
            (&lite_groups, &lite_data),
        ] {
            let f = f.as_deref().map(|f| with_ids(f, data));
            let q = group_query(f.as_deref(), *sort, *descending, *start, *count);
            let page = groups
                .list_groups("g1", &q, true)
                .await
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            answers.push(shown_groups(&page));
        }
        assert_eq!(answers[1], answers[0], "{label}");
        if answers[0].0 > 0 {
            matched_something += 1;
        }
    }
    assert!(
        matched_something * 10 >= cases.len() * 8,
        "{matched_something}/{}",
        cases.len()
    );

    // The users' side: filters on `groups`, and each user's groups.
    let user_filters = [
        r#"groups[value eq "{g1}"]"#,
        r#"groups.value eq "{g0}""#,
        r#"groups.value eq "{G5}""#,
        r#"groups eq "{g3}""#,
        r#"groups[value eq "{g11}"]"#,
        r#"groups[value eq "not-an-id"]"#,
        "groups pr",
        "not (groups pr)",
        r#"not (groups[value eq "{g0}"])"#,
        r#"groups.display eq "SALES""#,
        r#"groups.display eq "straße nord""#,
        r#"groups[display co "STRA"]"#,
        r#"groups.display sw "é""#,
        r#"groups.display ew "OPS""#,
        r#"groups[type eq "direct" and display sw "s"]"#,
        r#"groups.type eq "DIRECT""#,
        r#"groups[value eq "{g0}" or value eq "{g2}"]"#,
    ];
    for f in user_filters {
        let mut answers = Vec::new();
        for (users, data) in [
            (&pg_users as &dyn UserStore, &pg_data),
            (&lite_users, &lite_data),
        ] {
            let text = with_ids(f, data);
            let q = query(Some(&text), None, false, 1, 100);
            let page = users
                .list("g1", &q)
                .await
                .unwrap_or_else(|e| panic!("{f}: {e}"));
            answers.push(shown(&page));
        }
        assert_eq!(answers[1], answers[0], "{f}");
    }
    let mut users_groups = Vec::new();
    for (users, data) in [
        (&pg_users as &dyn UserStore, &pg_data),
        (&lite_users, &lite_data),
    ] {
        let mut all = Vec::new();
        for id in &data.users {
            let groups = users.get("g1", *id).await.unwrap().map(|u| {
                u.groups
                    .iter()
                    .map(|g| (g.display.clone(), g.external_id.clone()))
                    .collect::<Vec<_>>()
            });
            all.push(groups);
        }
        users_groups.push(all);
    }
    assert_eq!(users_groups[1], users_groups[0]);
    assert!(users_groups[0][2].as_ref().unwrap().len() >= 2);
}
