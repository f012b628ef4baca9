//! User resources: turning what a client sent into the canonical form we store
//! (attribute names in schema case, values type-checked, read-only and unknown
//! attributes dropped, the password taken out), and rendering a stored user back.

use chrono::{DateTime, SecondsFormat, Utc};
use secrecy::SecretString;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::error::{Result, ScimError};
use super::schema::{
    self, AMEYO_LOGIN_POLICIES, AMEYO_USER, AMEYO_USER_TYPES, AttrDef, AttrType, Container,
    Mutability, USER, USER_ATTRS,
};

/// A validated User, ready to store.
#[derive(Debug, Clone)]
pub struct UserInput {
    /// Canonical attributes: core and common ones at the top level, each extension's in
    /// an object under its URN. Never `id`, `meta`, `schemas` or `password`.
    pub resource: Map<String, Value>,
    pub password: Option<SecretString>,
    pub user_name: String,
    pub external_id: Option<String>,
    pub active: bool,
}

impl UserInput {
    /// For PUT: a representation that leaves `active` unassigned (absent or null) keeps
    /// the user's current state. The POST default (true) would reactivate a user the IdP
    /// switched off; false would switch off one whose IdP does not manage `active`.
    pub fn keep_active_of(&mut self, current_active: bool) {
        if !self.resource.contains_key("active") {
            self.active = current_active;
        }
    }
}

/// Validate a full User representation, as sent with POST or PUT.
pub fn parse_user(body: Value) -> Result<UserInput> {
    let Value::Object(obj) = body else {
        return Err(ScimError::invalid_syntax(
            "the request body must be a JSON object",
        ));
    };
    let (resource, password) = normalize_resource(obj)?;
    finish(resource, password)
}

/// Validate a resource that is already canonical but may have been changed (by PATCH).
pub fn revalidate(
    resource: Map<String, Value>,
    password: Option<SecretString>,
) -> Result<UserInput> {
    let (resource, extra_password) = normalize_resource(resource)?;
    finish(resource, password.or(extra_password))
}

fn finish(mut resource: Map<String, Value>, password: Option<SecretString>) -> Result<UserInput> {
    let user_name = match resource.get("userName") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => {
            return Err(ScimError::invalid_value(
                "userName is required and must not be empty",
            ));
        }
    };
    if user_name.chars().count() > 256 {
        return Err(ScimError::invalid_value(
            "userName is longer than 256 characters",
        ));
    }
    let external_id = resource
        .get("externalId")
        .and_then(Value::as_str)
        .map(str::to_string);
    // A user the IdP says nothing about is active; the resource stays as sent. PUT
    // keeps the current state instead (`UserInput::keep_active_of`), and PATCH never
    // leaves `active` unassigned: removing it stores false.
    let active = resource
        .get("active")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    if let Some(Value::Object(ext)) = resource.get_mut(AMEYO_USER) {
        validate_ameyo(ext)?;
    }
    Ok(UserInput {
        resource,
        password,
        user_name,
        external_id,
        active,
    })
}

/// Walk a resource's top level: canonical names, checked values, extensions in place.
fn normalize_resource(
    obj: Map<String, Value>,
) -> Result<(Map<String, Value>, Option<SecretString>)> {
    let mut out = Map::new();
    let mut password = None;
    for (key, value) in obj {
        if key.eq_ignore_ascii_case("schemas") {
            check_schemas(&value)?;
            continue;
        }
        if key.eq_ignore_ascii_case("password") {
            password = match value {
                Value::Null => None,
                Value::String(s) => Some(SecretString::from(s)),
                _ => return Err(ScimError::invalid_value("password must be a string")),
            };
            continue;
        }
        if let Some(ext) = schema::extension(&key) {
            let value = match value {
                Value::Null => continue,
                Value::Object(m) => m,
                _ => {
                    return Err(ScimError::invalid_value(format!(
                        "'{}' must be an object",
                        ext.id
                    )));
                }
            };
            for (k, v) in value {
                if let Some(def) = schema::find(ext.attributes, &k) {
                    put(&mut out, Container::Extension(ext), def, v)?;
                }
            }
            continue;
        }
        if key.len() > 4 && key[..4].eq_ignore_ascii_case("urn:") {
            let Some((attr, None)) = schema::resolve(&key) else {
                return Err(ScimError::invalid_syntax(format!(
                    "unknown schema or attribute '{}'",
                    truncate(&key)
                )));
            };
            if attr.attr.name == "password" {
                password = value.as_str().map(|s| SecretString::from(s.to_string()));
                continue;
            }
            put(&mut out, attr.container, attr.attr, value)?;
            continue;
        }
        let def =
            schema::find(USER_ATTRS, &key).or_else(|| schema::find(schema::COMMON_ATTRS, &key));
        if let Some(def) = def {
            put(&mut out, Container::Core, def, value)?;
        }
        // Attributes of no schema of ours are not kept: they could never be returned.
    }
    Ok((out, password))
}

/// Store one attribute's normalised value in its container, skipping read-only ones.
fn put(
    out: &mut Map<String, Value>,
    container: Container,
    def: &'static AttrDef,
    value: Value,
) -> Result<()> {
    if def.mutability == Mutability::ReadOnly {
        return Ok(());
    }
    let Some(v) = normalize_value(def, value, def.name)? else {
        return Ok(());
    };
    match container {
        Container::Core => {
            out.insert(def.name.to_string(), v);
        }
        Container::Extension(ext) => {
            let slot = out
                .entry(ext.id.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = slot {
                m.insert(def.name.to_string(), v);
            }
        }
    }
    Ok(())
}

fn check_schemas(value: &Value) -> Result<()> {
    let Value::Array(list) = value else {
        return Err(ScimError::invalid_syntax(
            "schemas must be an array of URNs",
        ));
    };
    let mut has_core = false;
    for item in list {
        let Some(urn) = item.as_str() else {
            return Err(ScimError::invalid_syntax(
                "schemas must be an array of URNs",
            ));
        };
        if urn.eq_ignore_ascii_case(USER) {
            has_core = true;
        } else if schema::extension(urn).is_none() {
            return Err(ScimError::invalid_syntax(format!(
                "unknown schema '{}'",
                truncate(urn)
            )));
        }
    }
    if !has_core {
        return Err(ScimError::invalid_syntax(format!(
            "schemas must include {USER}"
        )));
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(128).collect()
}

/// Normalise one attribute value against its definition. `None`: the value is absent
/// (null, an empty list or an empty object), which SCIM treats as unassigned.
pub fn normalize_value(def: &'static AttrDef, value: Value, path: &str) -> Result<Option<Value>> {
    if value.is_null() {
        return Ok(None);
    }
    if !def.multi_valued {
        return normalize_single(def, value, path);
    }
    let items = match value {
        Value::Array(items) => items,
        single => vec![single],
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        if let Some(v) = normalize_single(def, item, path)? {
            out.push(v);
        }
    }
    if out.is_empty() {
        return Ok(None);
    }
    enforce_single_primary(&mut out);
    Ok(Some(Value::Array(out)))
}

/// RFC 7643 §2.4: at most one element is primary; the one set last wins.
pub fn enforce_single_primary(items: &mut [Value]) {
    let last = items
        .iter()
        .rposition(|v| v.get("primary") == Some(&Value::Bool(true)));
    if let Some(last) = last {
        for (i, item) in items.iter_mut().enumerate() {
            if i != last
                && let Some(obj) = item.as_object_mut()
                && obj.get("primary") == Some(&Value::Bool(true))
            {
                obj.insert("primary".into(), Value::Bool(false));
            }
        }
    }
}

fn normalize_single(def: &'static AttrDef, value: Value, path: &str) -> Result<Option<Value>> {
    let wrong = |what: &str| ScimError::invalid_value(format!("'{path}' must be {what}"));
    match def.ty {
        AttrType::Complex => {
            let obj = match value {
                Value::Object(m) => m,
                Value::Null => return Ok(None),
                // Entra ID sends the manager as `[{"value": ...}]`, a bare id, or "" to clear.
                Value::Array(mut items) if !def.multi_valued && items.len() <= 1 => {
                    return match items.pop() {
                        Some(v) => normalize_single(def, v, path),
                        None => Ok(None),
                    };
                }
                Value::String(s) if !def.multi_valued && def.sub_attr("value").is_some() => {
                    if s.is_empty() {
                        return Ok(None);
                    }
                    let mut m = Map::new();
                    m.insert("value".into(), Value::String(s));
                    m
                }
                _ => return Err(wrong("an object")),
            };
            let mut out = Map::new();
            for (k, v) in obj {
                let Some(sub) = def.sub_attr(&k) else {
                    continue;
                };
                if sub.mutability == Mutability::ReadOnly {
                    continue;
                }
                if let Some(v) = normalize_value(sub, v, &format!("{path}.{}", sub.name))? {
                    out.insert(sub.name.to_string(), v);
                }
            }
            Ok((!out.is_empty()).then_some(Value::Object(out)))
        }
        AttrType::Boolean => match value {
            Value::Bool(_) => Ok(Some(value)),
            // Entra ID without its SCIM compliance flag sends "True" and "False".
            Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(Some(Value::Bool(true))),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(Some(Value::Bool(false))),
            _ => Err(wrong("a boolean")),
        },
        AttrType::Integer => match value {
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(Some(Value::Number(n))),
            Value::String(s) => s
                .trim()
                .parse::<i64>()
                .map(|n| Some(Value::from(n)))
                .map_err(|_| wrong("an integer")),
            _ => Err(wrong("an integer")),
        },
        AttrType::Decimal => match value {
            Value::Number(_) => Ok(Some(value)),
            Value::String(s) => s
                .trim()
                .parse::<serde_json::Number>()
                .map(|n| Some(Value::Number(n)))
                .map_err(|_| wrong("a number")),
            _ => Err(wrong("a number")),
        },
        AttrType::DateTime => match &value {
            Value::String(s) if DateTime::parse_from_rfc3339(s).is_ok() => Ok(Some(value)),
            _ => Err(wrong("an RFC 3339 date-time string")),
        },
        AttrType::String | AttrType::Reference | AttrType::Binary => match value {
            Value::String(_) => Ok(Some(value)),
            _ => Err(wrong("a string")),
        },
    }
}

/// The Ameyo extension's enumerations must name values Ameyo knows, or delivery would
/// fail later. Numbers go to Ameyo as sent: no public source gives their limits, and
/// Ameyo's own refusal reaches operators as a dead letter with its reason.
fn validate_ameyo(ext: &mut Map<String, Value>) -> Result<()> {
    for (key, allowed) in [
        ("userType", AMEYO_USER_TYPES),
        ("loginPolicy", AMEYO_LOGIN_POLICIES),
    ] {
        if let Some(Value::String(s)) = ext.get(key) {
            match allowed.iter().find(|a| a.eq_ignore_ascii_case(s)) {
                Some(canonical) => {
                    ext.insert(key.into(), Value::String(canonical.to_string()));
                }
                None => {
                    return Err(ScimError::invalid_value(format!(
                        "{AMEYO_USER}:{key} must be one of: {}",
                        allowed.join(", ")
                    )));
                }
            }
        }
    }
    Ok(())
}

/// A stored user, as the store hands it back.
#[derive(Debug, Clone)]
pub struct StoredUser {
    pub id: Uuid,
    pub resource: Map<String, Value>,
    /// Whether the user is active: the resource's `active`, or, when the IdP left it
    /// unassigned, the state the bridge keeps (off once the IdP removed it).
    pub active: bool,
    pub version: i64,
    pub created: DateTime<Utc>,
    pub last_modified: DateTime<Utc>,
    /// The groups the user is a direct member of (its read-only `groups` attribute).
    pub groups: Vec<UserGroup>,
}

/// One of a user's groups.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct UserGroup {
    #[serde(rename = "value")]
    pub id: Uuid,
    pub display: String,
    #[serde(rename = "externalId", default)]
    pub external_id: Option<String>,
}

impl UserGroup {
    /// Parse the JSON array a store aggregates (`value`, `display`, `externalId`),
    /// ordered by display name then id.
    pub fn parse_list(v: Value) -> Vec<UserGroup> {
        let mut groups: Vec<UserGroup> = serde_json::from_value(v).unwrap_or_default();
        groups.sort_by(|a, b| a.display.cmp(&b.display).then(a.id.cmp(&b.id)));
        groups
    }
}

impl StoredUser {
    /// The user's groups as the mapping rules see them.
    pub fn group_keys(&self) -> Vec<crate::ameyo::mapping::GroupKey> {
        self.groups
            .iter()
            .map(|g| crate::ameyo::mapping::GroupKey {
                display_name: g.display.clone(),
                external_id: g.external_id.clone(),
            })
            .collect()
    }

    /// The weak entity tag of this version.
    pub fn etag(&self) -> String {
        etag(self.version)
    }
}

pub fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The full SCIM representation of a stored user. `base` is the URL `/Users` hangs off.
pub fn render(user: &StoredUser, base: &str) -> Map<String, Value> {
    let mut out = Map::new();
    let mut schemas = vec![Value::from(USER)];
    for ext in schema::EXTENSIONS {
        if user.resource.contains_key(ext.id) {
            schemas.push(Value::from(ext.id));
        }
    }
    out.insert("schemas".into(), Value::Array(schemas));
    out.insert("id".into(), Value::String(user.id.to_string()));
    for (k, v) in &user.resource {
        out.insert(k.clone(), v.clone());
    }
    if !user.groups.is_empty() {
        let groups = user
            .groups
            .iter()
            .map(|g| {
                serde_json::json!({
                    "value": g.id.to_string(),
                    "$ref": format!("{base}/Groups/{}", g.id),
                    "display": g.display,
                    "type": "direct",
                })
            })
            .collect();
        out.insert("groups".into(), Value::Array(groups));
    }
    let location = format!("{base}/Users/{}", user.id);
    out.insert(
        "meta".into(),
        serde_json::json!({
            "resourceType": "User",
            "created": format_time(&user.created),
            "lastModified": format_time(&user.last_modified),
            "location": location,
            "version": user.etag(),
        }),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use serde_json::json;

    #[test]
    fn canonicalises_names_and_drops_read_only_and_unknown() {
        let u = parse_user(json!({
            "schemas": [USER, schema::ENTERPRISE_USER],
            "id": "client-chosen",
            "meta": {"created": "x"},
            "USERNAME": "jdoe@example.com",
            "Name": {"GivenName": "J", "familyName": "Doe", "bogus": 1},
            "groups": [{"value": "g1"}],
            "whatever": true,
            "emails": [{"value": "a@x", "primary": true, "type": "work"}, {"value": "b@x", "primary": true}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"Department": "Sales", "manager": {"value": "m1", "displayName": "ro"}},
            "password": "s3cret"
        }))
        .unwrap();
        assert_eq!(u.user_name, "jdoe@example.com");
        assert_eq!(u.password.unwrap().expose_secret(), "s3cret");
        assert!(u.active);
        let r = Value::Object(u.resource);
        assert_eq!(r["name"], json!({"givenName": "J", "familyName": "Doe"}));
        assert!(r.get("id").is_none() && r.get("meta").is_none() && r.get("groups").is_none());
        assert!(r.get("whatever").is_none() && r.get("password").is_none());
        assert_eq!(r["emails"][0]["primary"], json!(false));
        assert_eq!(r["emails"][1]["primary"], json!(true));
        assert_eq!(
            r[schema::ENTERPRISE_USER],
            json!({"department": "Sales", "manager": {"value": "m1"}})
        );
    }

    #[test]
    fn rejects_bad_input_with_the_right_scim_type() {
        use super::super::error::ScimType;
        let cases = [
            (json!({"schemas": [USER]}), ScimType::InvalidValue),
            (json!({"userName": ""}), ScimType::InvalidValue),
            (json!({"userName": 12}), ScimType::InvalidValue),
            (
                json!({"userName": "a", "active": "yes"}),
                ScimType::InvalidValue,
            ),
            (
                json!({"userName": "a", "name": "x"}),
                ScimType::InvalidValue,
            ),
            (
                json!({"userName": "a", "emails": [{"value": 1}]}),
                ScimType::InvalidValue,
            ),
            (
                json!({"schemas": ["urn:example:nope"], "userName": "a"}),
                ScimType::InvalidSyntax,
            ),
            (
                json!({"schemas": [USER, "urn:example:nope"], "userName": "a"}),
                ScimType::InvalidSyntax,
            ),
            (
                json!({"schemas": USER, "userName": "a"}),
                ScimType::InvalidSyntax,
            ),
            (
                json!({"userName": "a", "urn:example:nope:attr": 1}),
                ScimType::InvalidSyntax,
            ),
            (
                json!({"userName": "a", AMEYO_USER: {"userType": "Wizard"}}),
                ScimType::InvalidValue,
            ),
            (
                json!({"userName": "a", AMEYO_USER: {"loginPolicy": "always"}}),
                ScimType::InvalidValue,
            ),
            (
                json!({"userName": "a", AMEYO_USER: {"maxAllowedLogins": "two"}}),
                ScimType::InvalidValue,
            ),
            (json!([1, 2]), ScimType::InvalidSyntax),
        ];
        for (body, want) in cases {
            let e = parse_user(body.clone()).expect_err(&body.to_string());
            assert_eq!(e.scim_type, Some(want), "{body}: {e}");
            assert_eq!(e.status, 400);
        }
    }

    #[test]
    fn coerces_what_entra_sends() {
        let u = parse_user(json!({
            "userName": "a",
            "active": "False",
            AMEYO_USER: {"userType": "supervisor", "maxAllowedLogins": "2", "defaultReady": "true"},
            schema::ENTERPRISE_USER: {"manager": ""}
        }))
        .unwrap();
        assert!(!u.active);
        let r = Value::Object(u.resource);
        assert_eq!(
            r[AMEYO_USER],
            json!({"userType": "Supervisor", "maxAllowedLogins": 2, "defaultReady": true})
        );
        assert!(r.get(schema::ENTERPRISE_USER).is_none());
    }

    #[test]
    fn put_without_active_keeps_the_current_state() {
        for body in [
            json!({"userName": "a", "displayName": "A"}),
            json!({"userName": "a", "displayName": "A", "active": null}),
        ] {
            let mut u = parse_user(body.clone()).unwrap();
            assert!(u.active, "POST default: {body}");
            u.keep_active_of(false);
            assert!(!u.active, "{body}");
            assert!(u.resource.get("active").is_none(), "stored as sent: {body}");
        }
        // What the PUT says wins.
        let mut u = parse_user(json!({"userName": "a", "active": true})).unwrap();
        u.keep_active_of(false);
        assert!(u.active);
        assert_eq!(u.resource["active"], json!(true));
        // A user that never had `active` is active, and stays so.
        let mut u = parse_user(json!({"userName": "a"})).unwrap();
        u.keep_active_of(true);
        assert!(u.active);
        assert!(u.resource.get("active").is_none());
    }

    #[test]
    fn renders_meta_and_schemas() {
        let u = parse_user(json!({"userName": "a", AMEYO_USER: {"defaultReady": true}})).unwrap();
        let now = Utc::now();
        let stored = StoredUser {
            id: Uuid::nil(),
            active: u.active,
            resource: u.resource,
            version: 3,
            created: now,
            last_modified: now,
            groups: vec![],
        };
        let r = render(&stored, "http://h/scim/v2");
        assert_eq!(r["schemas"], json!([USER, AMEYO_USER]));
        assert_eq!(r["meta"]["version"], json!("W/\"3\""));
        assert_eq!(
            r["meta"]["location"],
            json!(format!("http://h/scim/v2/Users/{}", Uuid::nil()))
        );
    }
}
