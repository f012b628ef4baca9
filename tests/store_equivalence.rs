//! One data set, two stores: the embedded SQLite store answers every list query (filter,
//! sort, page, total) exactly as the PostgreSQL store does.

mod common;

use std::path::PathBuf;

use ameyo_scim::scim::filter;
use ameyo_scim::scim::resource::{StoredUser, UserInput, parse_user, revalidate};
use ameyo_scim::scim::schema::{self, ENTERPRISE_USER, USER};
use ameyo_scim::store::password::PasswordCipher;
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
