//! SCIM user -> Ameyo user: a pure function of the stored resource and the tenant's
//! mapping settings. No I/O; the worker decides which call carries the result.

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::config::{
    AmeyoSettings, MappingSettings, OnDeactivate, OnDelete, UserIdTransform,
    default_allowed_contact_center_ids, default_allowed_user_types,
};
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

impl Source {
    /// Every value a rule can match: each element of a multi-valued attribute (a
    /// sub-attribute of it, or its `value`), else the one value. Entra ID may send a
    /// role as a JSON-encoded object; its `value` and `displayName` count too.
    fn values(&self, resource: &Map<String, Value>) -> Vec<String> {
        let Source::Attr(attr, sub) = self else {
            return self.get(resource).into_iter().collect();
        };
        let Some(Value::Array(items)) = attr
            .container
            .object(resource)
            .and_then(|c| c.get(attr.attr.name))
        else {
            return self.get(resource).into_iter().collect();
        };
        let mut out = Vec::new();
        for item in items {
            let v = match sub {
                Some(s) => item.get(s.name),
                None => item.get("value").or(Some(item)),
            };
            let Some(text) = v.and_then(scalar_text) else {
                continue;
            };
            if let Ok(Value::Object(inner)) = serde_json::from_str::<Value>(&text) {
                for key in ["value", "displayName", "display"] {
                    if let Some(t) = inner.get(key).and_then(scalar_text) {
                        out.push(t);
                    }
                }
            }
            out.push(text);
        }
        out
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    (!text.trim().is_empty()).then_some(text)
}

/// A group a user is a direct member of, as the mapping rules see it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupKey {
    pub display_name: String,
    pub external_id: Option<String>,
}

impl GroupKey {
    fn is(&self, name_lower: &str) -> bool {
        self.display_name.to_lowercase() == name_lower
            || self
                .external_id
                .as_deref()
                .is_some_and(|e| e.to_lowercase() == name_lower)
    }
}

/// Which setting gave an Ameyo field its value, for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The user's own Ameyo extension attribute.
    Extension,
    /// `rules[i]`, with what it matched on.
    Rule(usize, String),
    /// The tenant's default.
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Extension => f.write_str("the user's Ameyo extension"),
            Origin::Rule(i, what) => write!(f, "rules[{i}] ({what})"),
            Origin::Default => f.write_str("default"),
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

/// What a rule matches on.
#[derive(Debug)]
enum When {
    /// Any value of the attribute matches the expression.
    Attr(Source, Regex, String),
    /// A group the user is a member of has this displayName or externalId (lower case).
    Group(String),
}

impl When {
    fn holds(&self, resource: &Map<String, Value>, groups: &[GroupKey]) -> bool {
        match self {
            When::Attr(source, re, _) => source.values(resource).iter().any(|v| re.is_match(v)),
            When::Group(name) => groups.iter().any(|g| g.is(name)),
        }
    }

    fn describe(&self) -> String {
        match self {
            When::Attr(_, re, attr) => format!("{attr} matches {:?}", re.as_str()),
            When::Group(name) => format!("member of group {name:?}"),
        }
    }
}

#[derive(Debug)]
struct Rule {
    when: When,
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
    bounds: Bounds,
    pub on_deactivate: OnDeactivate,
    pub on_delete: OnDelete,
}

/// What the IdP may make of a user in this tenant, whatever it sends: the safety net
/// against an IdP (or a rule) asking for an administrator or a foreign contact center.
#[derive(Debug)]
struct Bounds {
    /// Canonical spellings, from `AMEYO_USER_TYPES`.
    user_types: Vec<String>,
    contact_center_ids: Vec<i64>,
}

impl Bounds {
    fn user_type_allowed(&self, t: &str) -> bool {
        self.user_types.iter().any(|a| a.eq_ignore_ascii_case(t))
    }

    fn user_types_text(&self) -> String {
        self.user_types.join(", ")
    }

    fn contact_center_ids_text(&self) -> String {
        let ids: Vec<String> = self.contact_center_ids.iter().map(i64::to_string).collect();
        ids.join(", ")
    }
}

fn canonical(value: &str, allowed: &[&str], what: &str) -> Result<String, String> {
    allowed
        .iter()
        .find(|a| a.eq_ignore_ascii_case(value))
        .map(|a| a.to_string())
        .ok_or_else(|| format!("{what} '{value}' is not one of: {}", allowed.join(", ")))
}

impl Mapper {
    /// Compile the settings with the default bounds: every known user type but
    /// `Administrator`, and `contact_center_id` plus the contact centers the rules name.
    /// The message says what is wrong.
    pub fn new(s: &MappingSettings, contact_center_id: i64) -> Result<Self, String> {
        let bounds = Bounds {
            user_types: default_allowed_user_types(),
            contact_center_ids: default_allowed_contact_center_ids(contact_center_id, s),
        };
        Self::compile(s, contact_center_id, bounds)
    }

    /// Compile a tenant's mapping with its bounds (`allowed_user_types`,
    /// `allowed_contact_center_ids`). The message starts with the key under
    /// `[tenants.ameyo]` it concerns: `mapping: ...`, `allowed_user_types: ...`,
    /// `allowed_contact_center_ids: ...` or `contact_center_id: ...`.
    pub fn from_ameyo(a: &AmeyoSettings) -> Result<Self, String> {
        let mut user_types = Vec::with_capacity(a.allowed_user_types.len());
        for t in &a.allowed_user_types {
            let t = canonical(t, AMEYO_USER_TYPES, "user type")
                .map_err(|e| format!("allowed_user_types: {e}"))?;
            if !user_types.contains(&t) {
                user_types.push(t);
            }
        }
        let contact_center_ids = a
            .allowed_contact_center_ids
            .clone()
            .unwrap_or_else(|| default_allowed_contact_center_ids(a.contact_center_id, &a.mapping));
        if contact_center_ids.iter().any(|id| *id < 1) {
            return Err(
                "allowed_contact_center_ids: every entry must be a positive integer".into(),
            );
        }
        let bounds = Bounds {
            user_types,
            contact_center_ids,
        };
        if !bounds.contact_center_ids.contains(&a.contact_center_id) {
            return Err(format!(
                "contact_center_id: {} is not in allowed_contact_center_ids ({})",
                a.contact_center_id,
                bounds.contact_center_ids_text()
            ));
        }
        Self::compile(&a.mapping, a.contact_center_id, bounds).map_err(|e| format!("mapping: {e}"))
    }

    fn compile(
        s: &MappingSettings,
        contact_center_id: i64,
        bounds: Bounds,
    ) -> Result<Self, String> {
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
        if !bounds.user_type_allowed(&default_user_type) {
            return Err(format!(
                "default_user_type '{default_user_type}' is not in allowed_user_types ({})",
                bounds.user_types_text()
            ));
        }
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
            let user_type = r
                .user_type
                .as_deref()
                .map(|t| canonical(t, AMEYO_USER_TYPES, "user_type"))
                .transpose()
                .map_err(ctx)?;
            if let Some(t) = user_type
                .as_deref()
                .filter(|t| !bounds.user_type_allowed(t))
            {
                return Err(ctx(format!(
                    "user_type '{t}' is not in allowed_user_types ({})",
                    bounds.user_types_text()
                )));
            }
            if let Some(id) = r.contact_center_id {
                if id < 1 {
                    return Err(ctx("contact_center_id must be a positive integer".into()));
                }
                if !bounds.contact_center_ids.contains(&id) {
                    return Err(ctx(format!(
                        "contact_center_id {id} is not in allowed_contact_center_ids ({})",
                        bounds.contact_center_ids_text()
                    )));
                }
            }
            let when = match (&r.attribute, &r.matches, &r.group) {
                (Some(a), Some(m), None) => When::Attr(
                    Source::parse(a).map_err(ctx)?,
                    Regex::new(m).map_err(|e| ctx(format!("matches: {e}")))?,
                    a.clone(),
                ),
                (None, None, Some(g)) if !g.trim().is_empty() => When::Group(g.to_lowercase()),
                (None, None, Some(_)) => return Err(ctx("group is empty".into())),
                (Some(_), None, None) => return Err(ctx("attribute needs matches".into())),
                (None, Some(_), None) => return Err(ctx("matches needs attribute".into())),
                (None, None, None) => {
                    return Err(ctx("name either attribute and matches, or group".into()));
                }
                _ => {
                    return Err(ctx(
                        "name either attribute and matches, or group, not both".into()
                    ));
                }
            };
            if r.user_type.is_none()
                && r.login_policy.is_none()
                && r.max_allowed_logins.is_none()
                && r.default_ready.is_none()
                && r.contact_center_id.is_none()
            {
                return Err(ctx(
                    "sets no field (user_type, login_policy, max_allowed_logins, default_ready, contact_center_id)".into(),
                ));
            }
            if r.max_allowed_logins.is_some_and(|n| n < 1) {
                return Err(ctx("max_allowed_logins must be at least 1".into()));
            }
            rules.push(Rule {
                when,
                user_type,
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
            bounds,
            on_deactivate: s.on_deactivate,
            on_delete: s.on_delete,
        })
    }

    /// Refuse a mapped user this tenant may not make: a user type outside
    /// `allowed_user_types` or a contact center outside `allowed_contact_center_ids`,
    /// whether the IdP's Ameyo extension or a rule asked for it.
    pub fn check(&self, u: &AmeyoUser) -> Result<(), MappingError> {
        for (field, t) in [
            ("userType", &u.user_type),
            ("systemUserType", &u.system_user_type),
        ] {
            if !self.bounds.user_type_allowed(t) {
                return Err(MappingError(format!(
                    "{field} '{t}' is not allowed for this tenant (allowed_user_types: {})",
                    self.bounds.user_types_text()
                )));
            }
        }
        if !self
            .bounds
            .contact_center_ids
            .contains(&u.contact_center_id)
        {
            return Err(MappingError(format!(
                "contactCenterId {} is not allowed for this tenant (allowed_contact_center_ids: {})",
                u.contact_center_id,
                self.bounds.contact_center_ids_text()
            )));
        }
        Ok(())
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
    /// Whether a membership of this group can change what a user maps to: some rule
    /// names it by its displayName or its externalId.
    pub fn watches_group(&self, display_name: &str, external_id: Option<&str>) -> bool {
        let key = GroupKey {
            display_name: display_name.to_string(),
            external_id: external_id.map(str::to_string),
        };
        self.rules
            .iter()
            .any(|r| matches!(&r.when, When::Group(name) if key.is(name)))
    }

    /// What the configuration allows but an operator most likely does not mean: a field
    /// a rule sets with no default for it keeps, in Ameyo, the value the rule gave once
    /// the rule stops matching (the user left the group), since the update then leaves
    /// the field out.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            if r.max_allowed_logins.is_some() && self.default_max_allowed_logins.is_none() {
                out.push(format!(
                    "rules[{i}] sets max_allowed_logins but default_max_allowed_logins is not set: \
                     a user the rule stops matching keeps its value in Ameyo"
                ));
            }
            if r.login_policy.is_some() && self.default_login_policy.is_none() {
                out.push(format!(
                    "rules[{i}] sets login_policy but default_login_policy is not set: \
                     a user the rule stops matching keeps its value in Ameyo"
                ));
            }
        }
        out
    }

    pub fn map(
        &self,
        resource: &Map<String, Value>,
        groups: &[GroupKey],
        user_id: &str,
    ) -> AmeyoUser {
        self.explain(resource, groups, user_id).0
    }

    /// The mapped user, and for each role field which setting gave its value.
    pub fn explain(
        &self,
        resource: &Map<String, Value>,
        groups: &[GroupKey],
        user_id: &str,
    ) -> (AmeyoUser, Vec<(&'static str, Origin)>) {
        let ext = resource.get(AMEYO_USER).and_then(Value::as_object);
        let matching: Vec<(usize, &Rule)> = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.when.holds(resource, groups))
            .collect();
        let mut origins = Vec::new();
        // The user's extension, else the first matching rule that sets the field, else
        // the default.
        let mut pick = |field: &'static str,
                        own: Option<Value>,
                        rule: &dyn Fn(&Rule) -> Option<Value>|
         -> Option<Value> {
            if let Some(v) = own {
                origins.push((field, Origin::Extension));
                return Some(v);
            }
            if let Some((i, r, v)) = matching
                .iter()
                .find_map(|(i, r)| rule(r).map(|v| (*i, *r, v)))
            {
                origins.push((field, Origin::Rule(i, r.when.describe())));
                return Some(v);
            }
            origins.push((field, Origin::Default));
            None
        };
        let ext_get = |k: &str| ext.and_then(|e| e.get(k)).cloned();
        let user_type = pick(
            "userType",
            ext_get("userType").filter(Value::is_string),
            &|r| r.user_type.clone().map(Value::from),
        )
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| self.default_user_type.clone());
        let login_policy = pick(
            "loginPolicy",
            ext_get("loginPolicy").filter(Value::is_string),
            &|r| r.login_policy.clone().map(Value::from),
        )
        .and_then(|v| v.as_str().map(str::to_string))
        .or_else(|| self.default_login_policy.clone());
        let max_allowed_logins = pick(
            "maxAllowedLogins",
            ext_get("maxAllowedLogins").filter(|v| v.as_i64().is_some()),
            &|r| r.max_allowed_logins.map(Value::from),
        )
        .and_then(|v| v.as_i64())
        .or(self.default_max_allowed_logins);
        let default_ready = pick(
            "defaultReady",
            ext_get("defaultReady").filter(Value::is_boolean),
            &|r| r.default_ready.map(Value::from),
        )
        .and_then(|v| v.as_bool())
        .unwrap_or(self.default_ready);
        let contact_center_id = pick(
            "contactCenterId",
            ext_get("contactCenterId").filter(|v| v.as_i64().is_some()),
            &|r| r.contact_center_id.map(Value::from),
        )
        .and_then(|v| v.as_i64())
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

        let user = AmeyoUser {
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
        };
        (user, origins)
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
        let u = m.map(&r, &[], &id);
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
                    attribute: Some("title".into()),
                    matches: Some("(?i)supervisor".into()),
                    group: None,
                    user_type: Some("supervisor".into()),
                    login_policy: None,
                    max_allowed_logins: Some(3),
                    default_ready: None,
                    contact_center_id: None,
                },
                MappingRule {
                    attribute: Some(
                        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department"
                            .into(),
                    ),
                    matches: Some("^Sales$".into()),
                    group: None,
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
        let u = m.map(&r, &[], "s");
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
        let u = m.map(&r, &[], "s");
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

    fn rule(user_type: Option<&str>, contact_center_id: Option<i64>) -> MappingRule {
        MappingRule {
            attribute: Some("title".into()),
            matches: Some("(?i)lead".into()),
            group: None,
            user_type: user_type.map(str::to_string),
            login_policy: None,
            max_allowed_logins: None,
            default_ready: None,
            contact_center_id,
        }
    }

    /// A tenant's `[tenants.ameyo]` section, with `extra` keys.
    fn ameyo(extra: &str) -> AmeyoSettings {
        toml::from_str(&format!(
            "base_url = \"https://cc.example.com\"\ncontact_center_id = 7\n\
             login_user = \"admin\"\nlogin_password = \"pw\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn new_keeps_administrators_and_unnamed_contact_centers_out() {
        let bad = |f: fn(&mut MappingSettings)| {
            let mut s = MappingSettings::default();
            f(&mut s);
            Mapper::new(&s, 7).unwrap_err()
        };
        assert_eq!(
            bad(|s| s.default_user_type = "administrator".into()),
            "default_user_type 'Administrator' is not in allowed_user_types \
             (Agent, Supervisor, Executive, Professional Agent, Analyst)"
        );
        assert!(
            bad(|s| s.rules = vec![rule(Some("Administrator"), None)])
                .starts_with("rules[0]: user_type 'Administrator' is not in allowed_user_types")
        );
        assert_eq!(
            bad(|s| s.rules = vec![rule(None, Some(0))]),
            "rules[0]: contact_center_id must be a positive integer"
        );
        // A contact center a rule names is allowed by default, for that rule's users.
        let m = mapper(|s| s.rules = vec![rule(Some("Supervisor"), Some(9))]);
        let lead = m.map(
            &resource(json!({"userName": "l", "title": "Lead"})),
            &[],
            "l",
        );
        assert_eq!(
            (lead.user_type.as_str(), lead.contact_center_id),
            ("Supervisor", 9)
        );
        assert_eq!(m.check(&lead), Ok(()));
        let plain = m.map(&resource(json!({"userName": "p"})), &[], "p");
        assert_eq!(m.check(&plain), Ok(()));
    }

    #[test]
    fn check_refuses_what_the_tenant_does_not_allow() {
        let m = mapper(|_| {});
        let admin = m.map(
            &resource(json!({"userName": "a", AMEYO_USER: {"userType": "Administrator"}})),
            &[],
            "a",
        );
        assert_eq!(
            admin.user_type, "Administrator",
            "map itself does not judge"
        );
        assert_eq!(
            m.check(&admin).unwrap_err().0,
            "userType 'Administrator' is not allowed for this tenant \
             (allowed_user_types: Agent, Supervisor, Executive, Professional Agent, Analyst)"
        );
        let elsewhere = m.map(
            &resource(json!({"userName": "e", AMEYO_USER: {"contactCenterId": 99}})),
            &[],
            "e",
        );
        assert_eq!(
            m.check(&elsewhere).unwrap_err().0,
            "contactCenterId 99 is not allowed for this tenant (allowed_contact_center_ids: 7)"
        );
        let mut odd = m.map(&resource(json!({"userName": "o"})), &[], "o");
        assert_eq!(m.check(&odd), Ok(()));
        odd.system_user_type = "Administrator".into();
        assert!(
            m.check(&odd)
                .unwrap_err()
                .0
                .starts_with("systemUserType 'Administrator'")
        );
    }

    #[test]
    fn from_ameyo_carries_the_configured_bounds() {
        let m = Mapper::from_ameyo(&ameyo(
            "allowed_user_types = [\"agent\", \"ADMINISTRATOR\", \"Agent\"]\n\
             allowed_contact_center_ids = [7, 8]\n",
        ))
        .unwrap();
        assert_eq!(
            m.bounds.user_types,
            ["Agent", "Administrator"],
            "canonical, once each"
        );
        let admin = m.map(
            &resource(json!({"userName": "a", AMEYO_USER: {"userType": "Administrator", "contactCenterId": 8}})), &[],
            "a",
        );
        assert_eq!(m.check(&admin), Ok(()));
        let sup = m.map(
            &resource(json!({"userName": "s", AMEYO_USER: {"userType": "Supervisor"}})),
            &[],
            "s",
        );
        assert!(m.check(&sup).unwrap_err().0.contains(
            "userType 'Supervisor' is not allowed for this tenant (allowed_user_types: Agent, Administrator)"
        ));
        let nine = m.map(
            &resource(json!({"userName": "n", AMEYO_USER: {"contactCenterId": 9}})),
            &[],
            "n",
        );
        assert!(
            m.check(&nine)
                .unwrap_err()
                .0
                .contains("allowed_contact_center_ids: 7, 8")
        );

        // Without allowed_contact_center_ids (settings not loaded from a file), the
        // default is derived as in `new`.
        let m = Mapper::from_ameyo(&ameyo(
            "[[mapping.rules]]\nattribute = \"title\"\nmatches = \"x\"\ncontact_center_id = 3\n",
        ))
        .unwrap();
        assert_eq!(m.bounds.contact_center_ids, [7, 3]);
        assert!(!m.bounds.user_type_allowed("Administrator"));
    }

    #[test]
    fn from_ameyo_names_the_key_of_each_mistake() {
        let err = |extra: &str| Mapper::from_ameyo(&ameyo(extra)).unwrap_err();
        assert_eq!(
            err("allowed_user_types = [\"Agent\", \"Wizard\"]\n"),
            "allowed_user_types: user type 'Wizard' is not one of: Agent, Supervisor, \
             Executive, Professional Agent, Analyst, Administrator"
        );
        assert_eq!(
            err("allowed_contact_center_ids = [7, 0]\n"),
            "allowed_contact_center_ids: every entry must be a positive integer"
        );
        assert_eq!(
            err("allowed_contact_center_ids = [8]\n"),
            "contact_center_id: 7 is not in allowed_contact_center_ids (8)"
        );
        assert_eq!(
            err("allowed_user_types = [\"Supervisor\"]\n"),
            "mapping: default_user_type 'Agent' is not in allowed_user_types (Supervisor)"
        );
        assert_eq!(
            err(
                "[[mapping.rules]]\nattribute = \"title\"\nmatches = \"x\"\nuser_type = \"Analyst\"\n\
                 [[mapping.rules]]\nattribute = \"title\"\nmatches = \"y\"\nuser_type = \"administrator\"\n"
            ),
            "mapping: rules[1]: user_type 'Administrator' is not in allowed_user_types \
             (Agent, Supervisor, Executive, Professional Agent, Analyst)"
        );
        assert_eq!(
            err(
                "allowed_contact_center_ids = [7]\n[[mapping.rules]]\nattribute = \"title\"\n\
                 matches = \"x\"\ncontact_center_id = 9\n"
            ),
            "mapping: rules[0]: contact_center_id 9 is not in allowed_contact_center_ids (7)"
        );
        assert_eq!(
            err("[mapping]\nuser_id_attribute = \"nosuch\"\n"),
            "mapping: user_id_attribute: unknown SCIM attribute 'nosuch'"
        );
        assert!(Mapper::from_ameyo(&ameyo("")).is_ok());
    }

    fn group(name: &str, ext: Option<&str>) -> GroupKey {
        GroupKey {
            display_name: name.into(),
            external_id: ext.map(str::to_string),
        }
    }

    #[test]
    fn group_rules_match_display_name_or_external_id_and_first_wins_per_field() {
        let m = mapper(|s| {
            s.rules = vec![
                MappingRule {
                    group: Some("CC Supervisors".into()),
                    user_type: Some("Supervisor".into()),
                    max_allowed_logins: Some(2),
                    ..Default::default()
                },
                MappingRule {
                    group: Some("8c1e-quality".into()),
                    user_type: Some("Analyst".into()),
                    default_ready: Some(true),
                    ..Default::default()
                },
            ];
        });
        let r = resource(json!({"userName": "u"}));
        let plain = m.map(&r, &[], "u");
        assert_eq!(plain.user_type, "Agent");
        let quality = [group("Quality Analysts", Some("8C1E-QUALITY"))];
        assert_eq!(
            m.map(&r, &quality, "u").user_type,
            "Analyst",
            "by externalId, any case"
        );
        let both = [
            group("Quality Analysts", Some("8c1e-quality")),
            group("cc supervisors", None),
        ];
        let (u, origins) = m.explain(&r, &both, "u");
        assert_eq!(u.user_type, "Supervisor", "rules[0] wins");
        assert_eq!(u.max_allowed_logins, Some(2));
        assert!(u.default_ready, "only rules[1] sets it");
        let origin = |f: &str| origins.iter().find(|(n, _)| *n == f).unwrap().1.clone();
        assert!(matches!(origin("userType"), Origin::Rule(0, _)));
        assert!(matches!(origin("defaultReady"), Origin::Rule(1, _)));
        assert_eq!(origin("loginPolicy"), Origin::Default);
        assert!(origin("userType").to_string().contains("cc supervisors"));
        assert!(m.watches_group("CC SUPERVISORS", None));
        assert!(m.watches_group("Renamed", Some("8c1e-quality")));
        assert!(!m.watches_group("Everyone", Some("x")));
        let w = m.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("rules[0] sets max_allowed_logins"),
            "{w:?}"
        );
    }

    #[test]
    fn multi_valued_attributes_match_any_value_and_json_encoded_roles() {
        let m = mapper(|s| {
            s.rules = vec![MappingRule {
                attribute: Some("roles".into()),
                matches: Some("^Supervisor$".into()),
                user_type: Some("Supervisor".into()),
                ..Default::default()
            }];
        });
        let second = resource(json!({"userName": "u", "roles": [
            {"value": "Agent", "primary": true}, {"value": "Supervisor"}
        ]}));
        assert_eq!(m.map(&second, &[], "u").user_type, "Supervisor");
        let encoded = resource(json!({"userName": "u", "roles": [
            {"value": "{\"id\":\"1\",\"value\":\"Supervisor\",\"displayName\":\"Supervisor\"}"}
        ]}));
        assert_eq!(m.map(&encoded, &[], "u").user_type, "Supervisor");
        let none = resource(json!({"userName": "u", "roles": [{"value": "Agent"}]}));
        assert_eq!(m.map(&none, &[], "u").user_type, "Agent");
    }

    #[test]
    fn group_and_attribute_rules_are_checked() {
        let err = |r: MappingRule| {
            let s = MappingSettings {
                rules: vec![r],
                ..Default::default()
            };
            Mapper::new(&s, 1).unwrap_err()
        };
        let sets = |r: MappingRule| MappingRule {
            user_type: Some("Supervisor".into()),
            ..r
        };
        assert!(
            err(sets(MappingRule::default())).contains("either attribute and matches, or group")
        );
        assert!(
            err(sets(MappingRule {
                group: Some("g".into()),
                attribute: Some("title".into()),
                matches: Some("x".into()),
                ..Default::default()
            }))
            .contains("not both")
        );
        assert!(
            err(sets(MappingRule {
                attribute: Some("title".into()),
                ..Default::default()
            }))
            .contains("needs matches")
        );
        assert!(
            err(sets(MappingRule {
                group: Some("  ".into()),
                ..Default::default()
            }))
            .contains("empty")
        );
        assert!(
            err(MappingRule {
                group: Some("g".into()),
                ..Default::default()
            })
            .contains("sets no field")
        );
        assert!(
            err(MappingRule {
                group: Some("g".into()),
                max_allowed_logins: Some(0),
                ..Default::default()
            })
            .contains("at least 1")
        );
    }
}
