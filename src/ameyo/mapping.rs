//! SCIM user -> Ameyo user: a pure function of the stored resource and the tenant's
//! mapping settings. No I/O; the worker decides which call carries the result.

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::config::{MappingSettings, OnDeactivate, OnDelete, UserIdTransform};
use crate::scim::schema::{
    self, AMEYO_LOGIN_POLICIES, AMEYO_USER, AMEYO_USER_TYPES, AttrDef, AttrRef,
};

/// The Ameyo fields of one user, without its password. Also the record of what was
/// last pushed, so an unchanged user costs no call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmeyoUser {
    pub user_id: String,
    pub user_name: String,
    pub user_type: String,
    pub system_user_type: String,
    pub contact_center_id: i64,
    pub default_ready: bool,
    pub login_policy: Option<String>,
    pub max_allowed_logins: Option<i64>,
    pub mapping_user_id: Option<String>,
    pub description: Option<String>,
}

/// Why a user cannot be mapped: permanent until the IdP or the operator changes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MappingError(pub String);

/// Where a value comes from in a SCIM resource.
#[derive(Debug, Clone)]
enum Source {
    /// The primary work e-mail (else the first work e-mail).
    WorkEmail,
    Attr(AttrRef, Option<&'static AttrDef>),
}

impl Source {
    fn parse(path: &str) -> Result<Self, String> {
        if path.eq_ignore_ascii_case("emails") {
            return Ok(Source::WorkEmail);
        }
        let (attr, sub) =
            schema::resolve(path).ok_or_else(|| format!("unknown SCIM attribute '{path}'"))?;
        if attr.attr.ty == schema::AttrType::Complex && sub.is_none() && !attr.attr.multi_valued {
            return Err(format!(
                "'{path}' is complex: name one of its sub-attributes"
            ));
        }
        Ok(Source::Attr(attr, sub))
    }

    /// The value as text, if present and not empty.
    fn get(&self, resource: &Map<String, Value>) -> Option<String> {
        match self {
            Source::WorkEmail => work_email(resource),
            Source::Attr(attr, sub) => {
                let container = attr.container.object(resource)?;
                let v = container.get(attr.attr.name)?;
                let v = match (v, sub) {
                    (Value::Array(items), sub) => {
                        let pick = items
                            .iter()
                            .find(|i| i.get("primary") == Some(&Value::Bool(true)))
                            .or_else(|| items.first())?;
                        match sub {
                            Some(s) => pick.get(s.name)?,
                            None => pick.get("value").unwrap_or(pick),
                        }
                    }
                    (v, Some(s)) => v.get(s.name)?,
                    (v, None) => v,
                };
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return None,
                };
                (!text.trim().is_empty()).then_some(text)
            }
        }
    }
}

fn work_email(resource: &Map<String, Value>) -> Option<String> {
    let emails = resource.get("emails")?.as_array()?;
    let is_work = |e: &&Value| {
        e.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.eq_ignore_ascii_case("work"))
    };
    let primary = |e: &&Value| e.get("primary") == Some(&Value::Bool(true));
    emails
        .iter()
        .filter(is_work)
        .find(primary)
        .or_else(|| emails.iter().find(is_work))
        .and_then(|e| e.get("value")?.as_str())
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string)
}

#[derive(Debug)]
struct Rule {
    source: Source,
    matches: Regex,
    user_type: Option<String>,
    login_policy: Option<String>,
    max_allowed_logins: Option<i64>,
    default_ready: Option<bool>,
    contact_center_id: Option<i64>,
}

/// A tenant's compiled mapping.
#[derive(Debug)]
pub struct Mapper {
    user_id: Source,
    transforms: Vec<UserIdTransform>,
    user_id_max_length: usize,
    description: Option<Source>,
    default_user_type: String,
    default_login_policy: Option<String>,
    default_max_allowed_logins: Option<i64>,
    default_ready: bool,
    contact_center_id: i64,
    rules: Vec<Rule>,
    pub on_deactivate: OnDeactivate,
    pub on_delete: OnDelete,
}

fn canonical(value: &str, allowed: &[&str], what: &str) -> Result<String, String> {
    allowed
        .iter()
        .find(|a| a.eq_ignore_ascii_case(value))
        .map(|a| a.to_string())
        .ok_or_else(|| format!("{what} '{value}' is not one of: {}", allowed.join(", ")))
}

impl Mapper {
    /// Compile the settings; the message says what is wrong.
    pub fn new(s: &MappingSettings, contact_center_id: i64) -> Result<Self, String> {
        let user_id =
            Source::parse(&s.user_id_attribute).map_err(|e| format!("user_id_attribute: {e}"))?;
        let description = s
            .description_attribute
            .as_deref()
            .map(Source::parse)
            .transpose()
            .map_err(|e| format!("description_attribute: {e}"))?;
        if !(1..=256).contains(&s.user_id_max_length) {
            return Err("user_id_max_length must be between 1 and 256".into());
        }
        let default_user_type =
            canonical(&s.default_user_type, AMEYO_USER_TYPES, "default_user_type")?;
        let default_login_policy = s
            .default_login_policy
            .as_deref()
            .map(|p| canonical(p, AMEYO_LOGIN_POLICIES, "default_login_policy"))
            .transpose()?;
        if s.default_max_allowed_logins.is_some_and(|n| n < 1) {
            return Err("default_max_allowed_logins must be at least 1".into());
        }
        let mut rules = Vec::with_capacity(s.rules.len());
        for (i, r) in s.rules.iter().enumerate() {
            let ctx = |e: String| format!("rules[{i}]: {e}");
            rules.push(Rule {
                source: Source::parse(&r.attribute).map_err(ctx)?,
                matches: Regex::new(&r.matches).map_err(|e| ctx(format!("matches: {e}")))?,
                user_type: r
                    .user_type
                    .as_deref()
                    .map(|t| canonical(t, AMEYO_USER_TYPES, "user_type"))
                    .transpose()
                    .map_err(ctx)?,
                login_policy: r
                    .login_policy
                    .as_deref()
                    .map(|p| canonical(p, AMEYO_LOGIN_POLICIES, "login_policy"))
                    .transpose()
                    .map_err(ctx)?,
                max_allowed_logins: r.max_allowed_logins,
                default_ready: r.default_ready,
                contact_center_id: r.contact_center_id,
            });
        }
        Ok(Self {
            user_id,
            transforms: s.user_id_transforms.clone(),
            user_id_max_length: s.user_id_max_length,
            description,
            default_user_type,
            default_login_policy,
            default_max_allowed_logins: s.default_max_allowed_logins,
            default_ready: s.default_ready,
            contact_center_id,
            rules,
            on_deactivate: s.on_deactivate,
            on_delete: s.on_delete,
        })
    }

    /// The Ameyo userId this resource maps to (before the user exists in Ameyo).
    pub fn user_id(&self, resource: &Map<String, Value>) -> Result<String, MappingError> {
        let mut id = self.user_id.get(resource).ok_or_else(|| {
            MappingError("the attribute Ameyo's userId comes from is empty".into())
        })?;
        for t in &self.transforms {
            id = match t {
                UserIdTransform::Lowercase => id.to_lowercase(),
                UserIdTransform::EmailLocalPart => match id.split_once('@') {
                    Some((local, _)) => local.to_string(),
                    None => id,
                },
            };
        }
        if id.is_empty() {
            return Err(MappingError("the userId for Ameyo is empty".into()));
        }
        if id.chars().count() > self.user_id_max_length {
            return Err(MappingError(format!(
                "the userId for Ameyo is longer than {} characters",
                self.user_id_max_length
            )));
        }
        if id
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
        {
            return Err(MappingError(
                "the userId for Ameyo contains spaces, control characters or '/'".into(),
            ));
        }
        Ok(id)
    }

    /// Map a resource. `user_id` is the Ameyo userId, fixed once the user exists.
    pub fn map(&self, resource: &Map<String, Value>, user_id: &str) -> AmeyoUser {
        let ext = resource.get(AMEYO_USER).and_then(Value::as_object);
        let ext_str = |k: &str| {
            ext.and_then(|e| e.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let ext_i64 = |k: &str| ext.and_then(|e| e.get(k)).and_then(Value::as_i64);
        let ext_bool = |k: &str| ext.and_then(|e| e.get(k)).and_then(Value::as_bool);
        let matching: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|r| {
                r.source
                    .get(resource)
                    .is_some_and(|v| r.matches.is_match(&v))
            })
            .collect();
        // For each field: the user's own Ameyo extension, else the first matching rule
        // that sets it, else the tenant default.
        let user_type = ext_str("userType")
            .or_else(|| matching.iter().find_map(|r| r.user_type.clone()))
            .unwrap_or_else(|| self.default_user_type.clone());
        let login_policy = ext_str("loginPolicy")
            .or_else(|| matching.iter().find_map(|r| r.login_policy.clone()))
            .or_else(|| self.default_login_policy.clone());
        let max_allowed_logins = ext_i64("maxAllowedLogins")
            .or_else(|| matching.iter().find_map(|r| r.max_allowed_logins))
            .or(self.default_max_allowed_logins);
        let default_ready = ext_bool("defaultReady")
            .or_else(|| matching.iter().find_map(|r| r.default_ready))
            .unwrap_or(self.default_ready);
        let contact_center_id = ext_i64("contactCenterId")
            .or_else(|| matching.iter().find_map(|r| r.contact_center_id))
            .unwrap_or(self.contact_center_id);

        let scim_user_name = resource
            .get("userName")
            .and_then(Value::as_str)
            .unwrap_or(user_id)
            .to_string();
        let display = resource
            .get("displayName")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let name = resource.get("name");
        let part = |k: &str| {
            name.and_then(|n| n.get(k))
                .and_then(Value::as_str)
                .map(str::trim)
                .unwrap_or("")
        };
        let full = format!("{} {}", part("givenName"), part("familyName"))
            .trim()
            .to_string();
        let user_name = display
            .or_else(|| (!full.is_empty()).then_some(full))
            .unwrap_or_else(|| scim_user_name.clone());
        let mapping_user_id = work_email(resource).or(Some(scim_user_name));

        AmeyoUser {
            user_id: user_id.to_string(),
            user_name,
            system_user_type: user_type.clone(),
            user_type,
            contact_center_id,
            default_ready,
            login_policy,
            max_allowed_logins,
            mapping_user_id,
            description: self.description.as_ref().and_then(|d| d.get(resource)),
        }
    }
}

fn body(u: &AmeyoUser, user_data: Option<&str>, max_logins: Option<Value>) -> Value {
    let mut b = json!({
        "userId": u.user_id,
        "userType": u.user_type,
        "userName": u.user_name,
        "systemUserType": u.system_user_type,
        "defaultReady": u.default_ready,
        "contactCenterId": u.contact_center_id,
        "mappingUserId": u.mapping_user_id.clone().unwrap_or_default(),
    });
    if let Some(d) = user_data {
        b["userData"] = d.into();
    }
    if let Some(p) = &u.login_policy {
        b["loginPolicy"] = p.as_str().into();
    }
    if let Some(m) = max_logins {
        b["maxAllowedLogins"] = m;
    }
    if let Some(d) = &u.description {
        b["description"] = d.as_str().into();
    }
    b
}

/// `POST cc/contactCenterUsers`: `maxAllowedLogins` is a string there.
pub fn create_body(u: &AmeyoUser, user_data: &str) -> Value {
    body(
        u,
        Some(user_data),
        u.max_allowed_logins.map(|n| Value::from(n.to_string())),
    )
}

/// `PUT cc/contactCenterUsers/<id>`: `maxAllowedLogins` is a number there; `userData`
/// only when the password changes.
pub fn update_body(u: &AmeyoUser, user_data: Option<&str>) -> Value {
    body(u, user_data, u.max_allowed_logins.map(Value::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MappingRule;

    fn resource(v: Value) -> Map<String, Value> {
        crate::scim::resource::parse_user(v).unwrap().resource
    }

    fn mapper(f: impl FnOnce(&mut MappingSettings)) -> Mapper {
        let mut s = MappingSettings::default();
        f(&mut s);
        Mapper::new(&s, 7).unwrap()
    }

    #[test]
    fn defaults_follow_the_documented_fields() {
        let r = resource(json!({
            "userName": "Ann.Lee@Example.com",
            "name": {"givenName": "Ann", "familyName": "Lee"},
            "emails": [{"value": "home@x", "type": "home", "primary": true}, {"value": "ann@work.example", "type": "work"}]
        }));
        let m = mapper(|_| {});
        let id = m.user_id(&r).unwrap();
        assert_eq!(id, "Ann.Lee@Example.com");
        let u = m.map(&r, &id);
        assert_eq!(u.user_name, "Ann Lee");
        assert_eq!(u.mapping_user_id.as_deref(), Some("ann@work.example"));
        assert_eq!(u.user_type, "Agent");
        assert_eq!(u.system_user_type, "Agent");
        assert_eq!(u.contact_center_id, 7);
        assert!(!u.default_ready);
        let c = create_body(&u, "pw");
        assert_eq!(c["userData"], json!("pw"));
        assert!(c.get("maxAllowedLogins").is_none());
    }

    #[test]
    fn user_id_transforms_and_limits() {
        let r = resource(json!({"userName": "Ann.Lee@Example.com"}));
        let m = mapper(|s| {
            s.user_id_transforms = vec![UserIdTransform::Lowercase, UserIdTransform::EmailLocalPart]
        });
        assert_eq!(m.user_id(&r).unwrap(), "ann.lee");
        let m = mapper(|s| s.user_id_max_length = 5);
        assert!(m.user_id(&r).is_err());
        let m = mapper(|s| s.user_id_attribute = "externalId".into());
        assert!(m.user_id(&r).is_err(), "no externalId");
        let r2 = resource(json!({"userName": "a", "externalId": "E-1"}));
        assert_eq!(m.user_id(&r2).unwrap(), "E-1");
        let m = mapper(|s| s.user_id_attribute = "emails".into());
        let r3 = resource(json!({"userName": "a", "emails": [{"value": "w@x", "type": "work"}]}));
        assert_eq!(m.user_id(&r3).unwrap(), "w@x");
        let bad = resource(json!({"userName": "has space"}));
        assert!(mapper(|_| {}).user_id(&bad).is_err());
    }

    #[test]
    fn extension_beats_rules_beat_defaults() {
        let m = mapper(|s| {
            s.default_max_allowed_logins = Some(1);
            s.rules = vec![
                MappingRule {
                    attribute: "title".into(),
                    matches: "(?i)supervisor".into(),
                    user_type: Some("supervisor".into()),
                    login_policy: None,
                    max_allowed_logins: Some(3),
                    default_ready: None,
                    contact_center_id: None,
                },
                MappingRule {
                    attribute:
                        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department"
                            .into(),
                    matches: "^Sales$".into(),
                    user_type: Some("Executive".into()),
                    login_policy: Some("verify.before.force.login".into()),
                    max_allowed_logins: None,
                    default_ready: Some(true),
                    contact_center_id: Some(9),
                },
            ];
        });
        let r = resource(json!({
            "userName": "s", "title": "Team Supervisor", "displayName": "Sam",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "Sales"}
        }));
        let u = m.map(&r, "s");
        assert_eq!(u.user_type, "Supervisor", "first matching rule wins");
        assert_eq!(u.max_allowed_logins, Some(3));
        assert_eq!(u.login_policy.as_deref(), Some("verify.before.force.login"));
        assert!(u.default_ready);
        assert_eq!(u.contact_center_id, 9);
        assert_eq!(u.user_name, "Sam");
        assert_eq!(
            u.mapping_user_id.as_deref(),
            Some("s"),
            "no work e-mail: userName"
        );
        let r = resource(
            json!({"userName": "s", "title": "Supervisor", AMEYO_USER: {"userType": "Analyst", "maxAllowedLogins": 5}}),
        );
        let u = m.map(&r, "s");
        assert_eq!(u.user_type, "Analyst");
        assert_eq!(u.max_allowed_logins, Some(5));
        assert_eq!(update_body(&u, None)["maxAllowedLogins"], json!(5));
        assert_eq!(create_body(&u, "x")["maxAllowedLogins"], json!("5"));
        assert!(update_body(&u, None).get("userData").is_none());
    }

    #[test]
    fn bad_settings_are_refused() {
        let bad = |f: fn(&mut MappingSettings)| {
            let mut s = MappingSettings::default();
            f(&mut s);
            Mapper::new(&s, 1).unwrap_err()
        };
        assert!(bad(|s| s.user_id_attribute = "nosuch".into()).contains("user_id_attribute"));
        assert!(bad(|s| s.user_id_attribute = "name".into()).contains("complex"));
        assert!(bad(|s| s.default_user_type = "Wizard".into()).contains("default_user_type"));
        assert!(
            bad(|s| s.default_max_allowed_logins = Some(0)).contains("default_max_allowed_logins")
        );
    }
}
