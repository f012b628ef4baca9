//! SCIM Groups (RFC 7643 §4.2): request bodies and PATCH requests read into changes the
//! store applies as set operations on member rows, and the representation of a stored
//! group. Members are Users of the same tenant, named by id.
//!
//! Every PATCH shape Okta and Entra ID send is understood, case-insensitively: a
//! path-less `replace` of displayName (with the group's `id`, which is ignored), `add`
//! of `members` with a value array, `remove` of `members[value eq "..."]`, Entra's
//! `remove` of `members` with a value array (only the listed members go), a `replace`
//! of all members. The operations of one request fold into one net change: a new
//! member list, or the members to add and to remove.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::error::{Result, ScimError};
use super::filter::{self, CompValue, CompareOp, Filter, PatchPath};
use super::patch::{OpKind, parse_request_ops};
use super::resource::{etag, format_time};
use super::schema::GROUP;

/// Longest displayName or externalId accepted.
pub const MAX_NAME_LEN: usize = 256;

/// A group to create, or the whole new state of one (PUT).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupInput {
    pub display_name: String,
    pub external_id: Option<String>,
    /// Distinct user ids, in the order first named.
    pub members: Vec<Uuid>,
}

/// What happens to a group's members.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Members {
    #[default]
    Keep,
    /// The members become exactly these.
    Replace(Vec<Uuid>),
    /// These join (if not members yet) and these leave (if members); never both.
    Delta { add: Vec<Uuid>, remove: Vec<Uuid> },
}

/// A change to a group: PUT and PATCH both come to this.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GroupChange {
    pub display_name: Option<String>,
    /// `Some(None)` removes the externalId.
    pub external_id: Option<Option<String>>,
    pub members: Members,
}

impl GroupChange {
    /// The user ids that must exist in the tenant for this change to apply.
    pub fn joining(&self) -> &[Uuid] {
        match &self.members {
            Members::Keep => &[],
            Members::Replace(ids) => ids,
            Members::Delta { add, .. } => add,
        }
    }
}

impl From<GroupInput> for GroupChange {
    fn from(g: GroupInput) -> Self {
        GroupChange {
            display_name: Some(g.display_name),
            external_id: Some(g.external_id),
            members: Members::Replace(g.members),
        }
    }
}

/// One member as a group lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: Uuid,
    /// The user's displayName, else its userName.
    pub display: Option<String>,
}

/// A stored group, as the store hands it back. `members` is `None` when they were not
/// read (a request that leaves them out never reads them).
#[derive(Debug, Clone)]
pub struct StoredGroup {
    pub id: Uuid,
    pub display_name: String,
    pub external_id: Option<String>,
    pub version: i64,
    pub created: DateTime<Utc>,
    pub last_modified: DateTime<Utc>,
    pub members: Option<Vec<Member>>,
}

impl StoredGroup {
    pub fn etag(&self) -> String {
        etag(self.version)
    }
}

/// The SCIM representation. `base` is the URL `/Groups` hangs off.
pub fn render(g: &StoredGroup, base: &str) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("schemas".into(), json!([GROUP]));
    out.insert("id".into(), Value::String(g.id.to_string()));
    if let Some(e) = &g.external_id {
        out.insert("externalId".into(), Value::String(e.clone()));
    }
    out.insert("displayName".into(), Value::String(g.display_name.clone()));
    if let Some(members) = &g.members {
        let list = members
            .iter()
            .map(|m| {
                let mut v = json!({
                    "value": m.id.to_string(),
                    "$ref": format!("{base}/Users/{}", m.id),
                    "type": "User",
                });
                if let Some(d) = &m.display {
                    v["display"] = Value::String(d.clone());
                }
                v
            })
            .collect();
        out.insert("members".into(), Value::Array(list));
    }
    out.insert(
        "meta".into(),
        json!({
            "resourceType": "Group",
            "created": format_time(&g.created),
            "lastModified": format_time(&g.last_modified),
            "location": format!("{base}/Groups/{}", g.id),
            "version": g.etag(),
        }),
    );
    out
}

fn field(obj: &mut Map<String, Value>, name: &str) -> Option<Value> {
    let key = obj.keys().find(|k| k.eq_ignore_ascii_case(name))?.clone();
    obj.remove(&key)
}

fn name_value(what: &str, v: Value, required: bool) -> Result<Option<String>> {
    let v = match v {
        // Some clients wrap a single value: `[{"value": "..."}]` or `{"value": "..."}`.
        Value::Array(mut items) if items.len() == 1 => items.pop().unwrap_or(Value::Null),
        other => other,
    };
    let v = match v {
        Value::Object(mut o) => field(&mut o, "value").unwrap_or(Value::Null),
        other => other,
    };
    match v {
        Value::Null if !required => Ok(None),
        Value::String(s) if s.trim().is_empty() && !required => Ok(None),
        Value::String(s) if s.trim().is_empty() => Err(ScimError::invalid_value(format!(
            "{what} must not be empty"
        ))),
        Value::String(s) if s.chars().count() > MAX_NAME_LEN => Err(ScimError::invalid_value(
            format!("{what} is longer than {MAX_NAME_LEN} characters"),
        )),
        Value::String(s) if s.chars().any(char::is_control) => Err(ScimError::invalid_value(
            format!("{what} contains control characters"),
        )),
        Value::String(s) => Ok(Some(s)),
        Value::Null => Err(ScimError::invalid_value(format!("{what} is required"))),
        _ => Err(ScimError::invalid_value(format!("{what} must be a string"))),
    }
}

/// The user ids a `members` value names: an array of member objects (or one object).
/// An id that is not a UUID names no user: it is kept as the nil UUID's stand-in by the
/// caller's existence check, so it is reported, not silently dropped.
fn member_ids(v: Value) -> Result<Vec<MemberRef>> {
    let items = match v {
        Value::Null => vec![],
        Value::Array(items) => items,
        obj @ Value::Object(_) => vec![obj],
        _ => {
            return Err(ScimError::invalid_value(
                "members must be an array of objects with a value",
            ));
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Object(mut o) = item else {
            return Err(ScimError::invalid_value(
                "each member must be an object with a value",
            ));
        };
        if let Some(Value::String(t)) = field(&mut o, "type")
            && !t.eq_ignore_ascii_case("User")
        {
            return Err(ScimError::invalid_value(format!(
                "members of type {t:?} are not supported: a group's members are users"
            )));
        }
        match field(&mut o, "value") {
            Some(Value::String(s)) => out.push(MemberRef::parse(&s)),
            _ => {
                return Err(ScimError::invalid_value(
                    "each member must have a string value (the user's id)",
                ));
            }
        }
    }
    Ok(out)
}

/// A member id as a client wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum MemberRef {
    Id(Uuid),
    /// Not an id we could have issued: no such user.
    Unknown(String),
}

impl MemberRef {
    fn parse(s: &str) -> Self {
        match Uuid::parse_str(s.trim()) {
            Ok(id) => MemberRef::Id(id),
            Err(_) => MemberRef::Unknown(s.chars().take(64).collect()),
        }
    }
}

/// Refuse ids that cannot name a user, before the store looks at the rest.
fn known(refs: Vec<MemberRef>) -> Result<Vec<Uuid>> {
    let unknown: Vec<String> = refs
        .iter()
        .filter_map(|r| match r {
            MemberRef::Unknown(s) => Some(s.clone()),
            MemberRef::Id(_) => None,
        })
        .collect();
    if !unknown.is_empty() {
        return Err(no_such_members(&unknown));
    }
    Ok(dedupe(refs.into_iter().filter_map(|r| match r {
        MemberRef::Id(id) => Some(id),
        MemberRef::Unknown(_) => None,
    })))
}

/// The 400 for members that are not users of this tenant.
pub fn no_such_members(ids: &[String]) -> ScimError {
    let shown: Vec<&str> = ids.iter().take(5).map(String::as_str).collect();
    let more = if ids.len() > 5 {
        format!(" and {} more", ids.len() - 5)
    } else {
        String::new()
    };
    ScimError::invalid_value(format!(
        "no user with id {}{more}: members must be users of this tenant; nothing was changed",
        shown.join(", ")
    ))
}

fn dedupe(ids: impl IntoIterator<Item = Uuid>) -> Vec<Uuid> {
    let mut seen = HashSet::new();
    ids.into_iter().filter(|id| seen.insert(*id)).collect()
}

/// Parse a POST or PUT body.
pub fn parse_group(body: Value) -> Result<GroupInput> {
    let Value::Object(mut obj) = body else {
        return Err(ScimError::invalid_syntax(
            "the request body must be a JSON object",
        ));
    };
    if let Some(schemas) = field(&mut obj, "schemas") {
        let ok = schemas.as_array().is_some_and(|l| {
            l.iter()
                .any(|s| s.as_str().is_some_and(|s| s.eq_ignore_ascii_case(GROUP)))
        });
        if !ok {
            return Err(ScimError::invalid_syntax(format!(
                "schemas must include \"{GROUP}\""
            )));
        }
    }
    let display_name = name_value(
        "displayName",
        field(&mut obj, "displayName").unwrap_or(Value::Null),
        true,
    )?
    .unwrap_or_default();
    let external_id = name_value(
        "externalId",
        field(&mut obj, "externalId").unwrap_or(Value::Null),
        false,
    )?;
    let members = known(member_ids(
        field(&mut obj, "members").unwrap_or(Value::Null),
    )?)?;
    Ok(GroupInput {
        display_name,
        external_id,
        members,
    })
}

/// The net effect of a PATCH's member operations, folded in order.
#[derive(Default)]
struct Fold {
    base: Option<Vec<Uuid>>,
    add: Vec<Uuid>,
    remove: Vec<Uuid>,
}

impl Fold {
    fn add(&mut self, ids: Vec<Uuid>) {
        let set: HashSet<Uuid> = ids.iter().copied().collect();
        self.remove.retain(|id| !set.contains(id));
        self.add = dedupe(self.add.drain(..).chain(ids));
    }
    fn remove(&mut self, ids: Vec<Uuid>) {
        let set: HashSet<Uuid> = ids.iter().copied().collect();
        self.add.retain(|id| !set.contains(id));
        self.remove = dedupe(self.remove.drain(..).chain(ids));
    }
    fn replace(&mut self, ids: Vec<Uuid>) {
        self.base = Some(ids);
        self.add.clear();
        self.remove.clear();
    }
    fn finish(self, touched: bool) -> Members {
        if !touched {
            return Members::Keep;
        }
        match self.base {
            Some(base) => {
                let gone: HashSet<Uuid> = self.remove.into_iter().collect();
                Members::Replace(dedupe(
                    base.into_iter()
                        .chain(self.add)
                        .filter(|id| !gone.contains(id)),
                ))
            }
            None => Members::Delta {
                add: self.add,
                remove: self.remove,
            },
        }
    }
}

/// The ids a `members[...]` filter names: `value eq "..."` terms joined by `or`.
fn filter_ids(f: &Filter, out: &mut Vec<MemberRef>) -> Result<()> {
    match f {
        Filter::Or(a, b) => {
            filter_ids(a, out)?;
            filter_ids(b, out)
        }
        Filter::Compare(p, CompareOp::Eq, CompValue::Str(s))
            if p.sub.is_some_and(|s| s.name == "value") =>
        {
            out.push(MemberRef::parse(s));
            Ok(())
        }
        _ => Err(ScimError::invalid_filter(
            "a members filter may only name members by value: members[value eq \"<id>\"]",
        )),
    }
}

/// Parse a PATCH request of a group.
pub fn parse_patch(body: Value) -> Result<GroupChange> {
    let mut change = GroupChange::default();
    let mut fold = Fold::default();
    let mut touched = false;
    for op in parse_request_ops(body)? {
        let path = match op.path.as_deref() {
            None => None,
            Some(p) => Some(filter::parse_group_patch_path(p)?),
        };
        let Some(path) = path else {
            if op.kind == OpKind::Remove {
                return Err(ScimError::no_target("remove needs a path"));
            }
            let Some(Value::Object(mut obj)) = op.value else {
                return Err(ScimError::invalid_value(
                    "an operation without a path needs an object as its value",
                ));
            };
            // Okta sends the group's id along with its new displayName.
            field(&mut obj, "id");
            field(&mut obj, "schemas");
            field(&mut obj, "meta");
            if let Some(v) = field(&mut obj, "displayName") {
                change.display_name = name_value("displayName", v, true)?;
            }
            if let Some(v) = field(&mut obj, "externalId") {
                change.external_id = Some(name_value("externalId", v, false)?);
            }
            if let Some(v) = field(&mut obj, "members") {
                let ids = known(member_ids(v)?)?;
                touched = true;
                match op.kind {
                    OpKind::Replace => fold.replace(ids),
                    _ => fold.add(ids),
                }
            }
            if let Some(k) = obj.keys().next() {
                return Err(ScimError::invalid_path(format!(
                    "a group has no attribute '{}'",
                    k.chars().take(64).collect::<String>()
                )));
            }
            continue;
        };
        let PatchPath::Attr { attr, filter, sub } = path else {
            return Err(ScimError::invalid_path("a group has no extensions"));
        };
        match (attr.attr.name, filter, sub) {
            ("displayName", None, None) => match op.kind {
                OpKind::Remove => {
                    return Err(ScimError::invalid_value(
                        "displayName is required and cannot be removed",
                    ));
                }
                _ => {
                    change.display_name =
                        name_value("displayName", op.value.unwrap_or(Value::Null), true)?;
                }
            },
            ("externalId", None, None) => {
                change.external_id = Some(match op.kind {
                    OpKind::Remove => None,
                    _ => name_value("externalId", op.value.unwrap_or(Value::Null), false)?,
                });
            }
            ("members", None, None) | ("members", None, Some(_)) if op.kind == OpKind::Remove => {
                touched = true;
                match op.value {
                    // Entra ID without aadOptscim062020: only the listed members go.
                    Some(v) if !v.is_null() => {
                        let ids = member_ids(v)?
                            .into_iter()
                            .filter_map(|r| match r {
                                MemberRef::Id(id) => Some(id),
                                MemberRef::Unknown(_) => None,
                            })
                            .collect();
                        fold.remove(ids);
                    }
                    _ => fold.replace(vec![]),
                }
            }
            ("members", None, None) => {
                touched = true;
                let ids = known(member_ids(op.value.unwrap_or(Value::Null))?)?;
                match op.kind {
                    OpKind::Replace => fold.replace(ids),
                    _ => fold.add(ids),
                }
            }
            ("members", Some(f), None) if op.kind == OpKind::Remove => {
                touched = true;
                let mut refs = Vec::new();
                filter_ids(&f, &mut refs)?;
                fold.remove(
                    refs.into_iter()
                        .filter_map(|r| match r {
                            MemberRef::Id(id) => Some(id),
                            MemberRef::Unknown(_) => None,
                        })
                        .collect(),
                );
            }
            ("members", _, _) => {
                return Err(ScimError::invalid_path(
                    "members are added by value and removed by value or filter; their sub-attributes are read-only",
                ));
            }
            (name, ..) => {
                return Err(ScimError::mutability(format!("'{name}' cannot be changed")));
            }
        }
    }
    change.members = fold.finish(touched);
    Ok(change)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn patch(ops: Value) -> Result<GroupChange> {
        parse_patch(json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": ops,
        }))
    }

    #[test]
    fn entra_remove_with_a_value_removes_only_the_listed_members() {
        let c = patch(
            json!([{"op": "Remove", "path": "members", "value": [{"value": id(1).to_string()}]}]),
        )
        .unwrap();
        assert_eq!(
            c.members,
            Members::Delta {
                add: vec![],
                remove: vec![id(1)]
            }
        );
        // Without a value, every member goes.
        let c = patch(json!([{"op": "remove", "path": "members"}])).unwrap();
        assert_eq!(c.members, Members::Replace(vec![]));
    }

    #[test]
    fn entra_add_and_filtered_remove() {
        let c = patch(json!([
            {"op": "Add", "path": "members", "value": [{"$ref": null, "value": id(1).to_string()}, {"$ref": null, "value": id(2).to_string()}]},
            {"op": "remove", "path": format!("members[value eq \"{}\"]", id(2))},
            {"op": "Replace", "path": "displayName", "value": "CC Agents"},
        ]))
        .unwrap();
        assert_eq!(
            c.members,
            Members::Delta {
                add: vec![id(1)],
                remove: vec![id(2)]
            }
        );
        assert_eq!(c.display_name.as_deref(), Some("CC Agents"));
    }

    #[test]
    fn okta_pathless_rename_and_mixed_membership() {
        let c = patch(json!([
            {"op": "replace", "value": {"id": "ignored", "displayName": "Supervisors"}},
            {"op": "remove", "path": format!("members[value eq \"{}\"]", id(3))},
            {"op": "add", "path": "members", "value": [{"value": id(4).to_string(), "display": "d"}]},
        ]))
        .unwrap();
        assert_eq!(c.display_name.as_deref(), Some("Supervisors"));
        assert_eq!(
            c.members,
            Members::Delta {
                add: vec![id(4)],
                remove: vec![id(3)]
            }
        );
    }

    #[test]
    fn replace_then_add_folds_into_one_list() {
        let c = patch(json!([
            {"op": "replace", "path": "members", "value": [{"value": id(1).to_string()}, {"value": id(2).to_string()}]},
            {"op": "add", "path": "members", "value": [{"value": id(3).to_string()}]},
            {"op": "remove", "path": format!("members[value eq \"{}\" or value eq \"{}\"]", id(1), id(9))},
        ]))
        .unwrap();
        assert_eq!(c.members, Members::Replace(vec![id(2), id(3)]));
        assert_eq!(c.joining(), &[id(2), id(3)]);
    }

    #[test]
    fn bad_requests_are_refused() {
        let e =
            patch(json!([{"op": "add", "path": "members", "value": [{"value": "not-a-uuid"}]}]))
                .unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.detail.contains("not-a-uuid"), "{}", e.detail);
        assert!(patch(json!([{"op": "remove", "path": "displayName"}])).is_err());
        assert!(patch(json!([{"op": "replace", "path": "id", "value": "x"}])).is_err());
        assert!(patch(json!([{"op": "remove", "path": "members[display eq \"x\"]"}])).is_err());
        assert!(patch(json!([{"op": "add", "path": "members", "value": [{"value": id(1).to_string(), "type": "Group"}]}])).is_err());
        assert!(patch(json!([{"op": "replace", "value": {"bogus": 1}}])).is_err());
        assert!(parse_group(json!({"displayName": ""})).is_err());
        assert!(parse_group(json!({"members": []})).is_err());
        assert!(parse_group(json!({"displayName": "x".repeat(MAX_NAME_LEN + 1)})).is_err());
    }

    #[test]
    fn bodies_parse_with_microsoft_schemas_and_duplicate_members() {
        let g = parse_group(json!({
            "schemas": [GROUP, "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"],
            "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159",
            "displayName": "CC Agents",
            "members": [{"value": id(1).to_string()}, {"value": id(1).to_string()}],
        }))
        .unwrap();
        assert_eq!(g.display_name, "CC Agents");
        assert_eq!(g.members, vec![id(1)]);
    }
}
