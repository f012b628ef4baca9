//! PATCH (RFC 7644 §3.5.2): parsing a PatchOp request into operations on resolved
//! paths, accepting every shape Okta and Entra ID send, and applying them to a
//! canonical resource. The result is validated again as a whole before it is stored.

use std::cmp::Ordering;

use secrecy::SecretString;
use serde_json::{Map, Value};

use super::error::{Result, ScimError};
use super::filter::{self, CompValue, CompareOp, Filter, PatchPath};
use super::resource::{self, enforce_single_primary, normalize_value};
use super::schema::{self, AttrDef, AttrRef, AttrType, Container, Mutability, PATCH_OP};

/// Most operations accepted in one PATCH request. Okta sends up to 1,000 membership
/// changes (one operation each) plus a rename in one group PATCH; the body limit
/// (`scim.max_body_bytes`) bounds a request's size as well.
pub const MAX_OPERATIONS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Add,
    Replace,
    Remove,
}

/// One operation with its path resolved. Path-less add and replace are expanded into
/// one operation per attribute when the request is parsed.
#[derive(Debug, Clone)]
pub struct PatchOp {
    pub kind: OpKind,
    pub path: PatchPath,
    pub value: Option<Value>,
}

/// Parse a PatchOp request body.
pub fn parse_request(body: Value) -> Result<Vec<PatchOp>> {
    let ops = envelope(body)?;
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        parse_op(op, &mut out)?;
    }
    Ok(out)
}

/// One operation as sent: its kind, its path unparsed, its value.
#[derive(Debug, Clone)]
pub struct RawOp {
    pub kind: OpKind,
    pub path: Option<String>,
    pub value: Option<Value>,
}

/// Parse a PatchOp request body whose paths the caller resolves (a Group's).
pub fn parse_request_ops(body: Value) -> Result<Vec<RawOp>> {
    envelope(body)?
        .into_iter()
        .map(|op| {
            let Value::Object(mut op) = op else {
                return Err(ScimError::invalid_syntax(
                    "each operation must be an object",
                ));
            };
            let kind = op_kind(&mut op)?;
            let path = match field(&mut op, "path") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.trim().is_empty() => None,
                Some(Value::String(s)) => Some(s),
                Some(_) => return Err(ScimError::invalid_path("path must be a string")),
            };
            Ok(RawOp {
                kind,
                path,
                value: field(&mut op, "value"),
            })
        })
        .collect()
}

/// The operations of a PatchOp request, checked for the envelope's rules.
fn envelope(body: Value) -> Result<Vec<Value>> {
    let Value::Object(mut obj) = body else {
        return Err(ScimError::invalid_syntax(
            "the request body must be a JSON object",
        ));
    };
    if let Some(schemas) = obj.get("schemas") {
        let ok = schemas.as_array().is_some_and(|l| {
            l.iter()
                .any(|s| s.as_str().is_some_and(|s| s.eq_ignore_ascii_case(PATCH_OP)))
        });
        if !ok {
            return Err(ScimError::invalid_syntax(format!(
                "schemas must be [\"{PATCH_OP}\"]"
            )));
        }
    }
    let ops = obj
        .iter_mut()
        .find(|(k, _)| k.eq_ignore_ascii_case("Operations"))
        .map(|(_, v)| v.take());
    let Some(Value::Array(ops)) = ops else {
        return Err(ScimError::invalid_syntax(
            "Operations must be an array of operations",
        ));
    };
    if ops.is_empty() {
        return Err(ScimError::invalid_syntax("Operations is empty"));
    }
    if ops.len() > MAX_OPERATIONS {
        return Err(ScimError::new(
            400,
            Some(super::error::ScimType::TooMany),
            format!("a PATCH request may hold at most {MAX_OPERATIONS} operations"),
        ));
    }
    Ok(ops)
}

fn field(obj: &mut Map<String, Value>, name: &str) -> Option<Value> {
    let key = obj.keys().find(|k| k.eq_ignore_ascii_case(name))?.clone();
    obj.remove(&key)
}

fn op_kind(op: &mut Map<String, Value>) -> Result<OpKind> {
    match field(op, "op") {
        Some(Value::String(s)) if s.eq_ignore_ascii_case("add") => Ok(OpKind::Add),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("replace") => Ok(OpKind::Replace),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("remove") => Ok(OpKind::Remove),
        Some(other) => Err(ScimError::invalid_syntax(format!(
            "unknown op {}: expected add, replace or remove",
            other.to_string().chars().take(64).collect::<String>()
        ))),
        None => Err(ScimError::invalid_syntax("an operation has no 'op'")),
    }
}

fn parse_op(op: Value, out: &mut Vec<PatchOp>) -> Result<()> {
    let Value::Object(mut op) = op else {
        return Err(ScimError::invalid_syntax(
            "each operation must be an object",
        ));
    };
    let kind = op_kind(&mut op)?;
    let path = match field(&mut op, "path") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(filter::parse_patch_path(&s)?),
        Some(_) => return Err(ScimError::invalid_path("path must be a string")),
    };
    let value = field(&mut op, "value");
    match (kind, path) {
        (OpKind::Remove, None) => Err(ScimError::no_target("remove needs a path")),
        (_, Some(path)) => {
            if kind != OpKind::Remove && value.is_none() {
                return Err(ScimError::invalid_value("add and replace need a value"));
            }
            out.push(PatchOp { kind, path, value });
            Ok(())
        }
        (_, None) => {
            // No path: the value is an object of attributes, possibly with dotted,
            // URN-qualified or value-filter keys (Entra ID) or extension objects.
            let Some(Value::Object(attrs)) = value else {
                return Err(ScimError::invalid_value(
                    "add or replace without a path needs an object value",
                ));
            };
            for (key, v) in attrs {
                if ["schemas", "id", "meta"]
                    .iter()
                    .any(|k| k.eq_ignore_ascii_case(&key))
                {
                    continue;
                }
                match filter::parse_patch_path(&key) {
                    Ok(path) => out.push(PatchOp {
                        kind,
                        path,
                        value: Some(v),
                    }),
                    // As with POST and PUT, attributes of no schema of ours are ignored.
                    Err(_) if schema::resolve(key.split('[').next().unwrap_or("")).is_none() => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
    }
}

/// A resource being patched, with the password kept apart.
pub struct Patched {
    pub resource: Map<String, Value>,
    pub password: Option<SecretString>,
    /// The operations left `active` unassigned (removed, or set to null).
    pub active_unassigned: bool,
}

/// Apply operations in order. The caller validates the result with
/// [`resource::revalidate`].
pub fn apply(resource: Map<String, Value>, ops: Vec<PatchOp>) -> Result<Patched> {
    let mut p = Patched {
        resource,
        password: None,
        active_unassigned: false,
    };
    for op in ops {
        apply_one(&mut p, op)?;
    }
    Ok(p)
}

/// Apply a patch and validate the result; `None` if nothing changed at all.
/// `current_active` is the user's stored state, which an unassigned `active` keeps
/// unless these operations unassigned it (then the user is switched off).
pub fn patch_user(
    current: &Map<String, Value>,
    current_active: bool,
    ops: Vec<PatchOp>,
) -> Result<Option<resource::UserInput>> {
    let patched = apply(current.clone(), ops)?;
    let unassigned = patched.active_unassigned;
    let mut input = resource::revalidate(patched.resource, patched.password)?;
    if !input.resource.contains_key("active") {
        input.active = !unassigned && current_active;
    }
    if input.password.is_none() && &input.resource == current && input.active == current_active {
        return Ok(None);
    }
    Ok(Some(input))
}

/// Drop an extension object that an operation emptied.
fn tidy(resource: &mut Map<String, Value>, container: Container) {
    if let Container::Extension(ext) = container
        && resource
            .get(ext.id)
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
    {
        resource.remove(ext.id);
    }
}

fn apply_one(p: &mut Patched, op: PatchOp) -> Result<()> {
    match op.path {
        PatchPath::Extension(ext) => {
            let container = Container::Extension(ext);
            match op.kind {
                OpKind::Remove => {
                    p.resource.remove(ext.id);
                }
                kind => {
                    let Some(Value::Object(attrs)) = op.value else {
                        return Err(ScimError::invalid_value(format!(
                            "'{}' needs an object value",
                            ext.id
                        )));
                    };
                    // Like a complex attribute, an extension named by a replace keeps the
                    // sub-attributes the value does not mention (RFC 7644 §3.5.2.3).
                    for (k, v) in attrs {
                        if let Some(def) = schema::find(ext.attributes, &k) {
                            let attr = AttrRef {
                                container,
                                attr: def,
                            };
                            apply_attr(p, kind, attr, Some(v), None)?;
                        }
                    }
                }
            }
            tidy(&mut p.resource, container);
            Ok(())
        }
        PatchPath::Attr { attr, filter, sub } => {
            check_writable(attr.attr, sub)?;
            match filter {
                None => apply_attr(p, op.kind, attr, op.value, sub)?,
                Some(f) => apply_filtered(p, op.kind, attr, &f, sub, op.value)?,
            }
            tidy(&mut p.resource, attr.container);
            Ok(())
        }
    }
}

fn check_writable(attr: &AttrDef, sub: Option<&AttrDef>) -> Result<()> {
    for def in std::iter::once(attr).chain(sub) {
        if matches!(def.mutability, Mutability::ReadOnly | Mutability::Immutable) {
            return Err(ScimError::mutability(format!(
                "'{}' is read-only",
                def.name
            )));
        }
    }
    Ok(())
}

/// add / replace / remove on `attr` or `attr.sub`, without a value filter.
fn apply_attr(
    p: &mut Patched,
    kind: OpKind,
    attr: AttrRef,
    value: Option<Value>,
    sub: Option<&'static AttrDef>,
) -> Result<()> {
    let def = attr.attr;
    if def.name == "password" && attr.container == Container::Core {
        if kind != OpKind::Remove {
            match value {
                Some(Value::String(s)) => p.password = Some(SecretString::from(s)),
                _ => return Err(ScimError::invalid_value("password must be a string")),
            }
        }
        return Ok(());
    }
    if def.name == "active" && attr.container == Container::Core && sub.is_none() {
        // Removing `active` or setting it to null unassigns it: the attribute goes, as
        // RFC 7644 says, and the user is switched off (see `patch_user`). Read as the
        // POST default instead, it would reactivate a user the IdP has switched off.
        let new = match (kind, value) {
            (OpKind::Remove, _) | (_, None) => None,
            (_, Some(v)) => normalize_value(def, v, def.name)?,
        };
        match new {
            Some(v) => {
                p.resource.insert(def.name.into(), v);
                p.active_unassigned = false;
            }
            None => {
                p.resource.remove(def.name);
                p.active_unassigned = true;
            }
        }
        return Ok(());
    }
    let Some(container) = attr
        .container
        .object_mut(&mut p.resource, kind != OpKind::Remove)
    else {
        return Ok(());
    };
    let name = def.name;
    if let Some(sub) = sub {
        let qualified = format!("{name}.{}", sub.name);
        let new = match (kind, value) {
            (OpKind::Remove, _) => None,
            (_, Some(v)) => normalize_value(sub, v, &qualified)?,
            (_, None) => None,
        };
        if def.multi_valued {
            // `emails.value` without a filter addresses every element.
            let items = container
                .entry(name)
                .or_insert_with(|| Value::Array(vec![]));
            if let Value::Array(items) = items {
                if items.is_empty()
                    && let Some(v) = new.clone()
                {
                    let mut m = Map::new();
                    m.insert(sub.name.into(), v);
                    items.push(Value::Object(m));
                } else {
                    for item in items.iter_mut() {
                        set_sub(item, sub.name, new.clone());
                    }
                    items.retain(|i| i.as_object().is_some_and(|m| !m.is_empty()));
                }
                if items.is_empty() {
                    container.remove(name);
                }
            }
        } else {
            let slot = container
                .entry(name)
                .or_insert_with(|| Value::Object(Map::new()));
            set_sub(slot, sub.name, new);
            if slot.as_object().is_some_and(Map::is_empty) {
                container.remove(name);
            }
        }
        return Ok(());
    }
    match kind {
        OpKind::Remove => {
            match (def.multi_valued, value) {
                // Remove listed elements only (RFC 7644 §3.5.2.2 with a value).
                (true, Some(v)) if !v.is_null() => {
                    let gone = normalize_value(def, v, name)?.unwrap_or(Value::Array(vec![]));
                    if let (Some(Value::Array(items)), Value::Array(gone)) =
                        (container.get_mut(name), gone)
                    {
                        items.retain(|i| !gone.iter().any(|g| same_element(i, g)));
                        if items.is_empty() {
                            container.remove(name);
                        }
                    }
                }
                _ => {
                    container.remove(name);
                }
            }
        }
        OpKind::Add | OpKind::Replace => {
            let new = match value {
                Some(v) => normalize_value(def, v, name)?,
                None => None,
            };
            let Some(new) = new else {
                // An empty value (null, "", [], {}) unassigns a singular attribute (Entra
                // ID clears the manager with `Add ""`); adding nothing to a list is a no-op.
                if kind == OpKind::Replace || !def.multi_valued {
                    container.remove(name);
                }
                return Ok(());
            };
            match (kind, def.multi_valued, def.ty) {
                (OpKind::Add, true, _) => {
                    let items = container
                        .entry(name)
                        .or_insert_with(|| Value::Array(vec![]));
                    if let (Value::Array(items), Value::Array(new)) = (items, new) {
                        for n in new {
                            if let Some(existing) = items.iter_mut().find(|i| same_element(i, &n)) {
                                *existing = n;
                            } else {
                                items.push(n);
                            }
                        }
                        enforce_single_primary(items);
                    }
                }
                // A complex value merges into the existing one, for add and replace alike
                // (RFC 7644 §3.5.2.1 and §3.5.2.3).
                (_, false, AttrType::Complex) => match container.get_mut(name) {
                    Some(Value::Object(existing)) => {
                        if let Value::Object(new) = new {
                            existing.extend(new);
                        }
                    }
                    _ => {
                        container.insert(name.to_string(), new);
                    }
                },
                _ => {
                    container.insert(name.to_string(), new);
                }
            }
        }
    }
    Ok(())
}

fn set_sub(item: &mut Value, sub: &str, value: Option<Value>) {
    if let Value::Object(m) = item {
        match value {
            Some(v) => {
                m.insert(sub.to_string(), v);
            }
            None => {
                m.remove(sub);
            }
        }
    }
}

/// Two elements of a multi-valued attribute are the same when their `value` (and
/// `type`, where present) are equal.
fn same_element(a: &Value, b: &Value) -> bool {
    match (a.get("value"), b.get("value")) {
        (Some(x), Some(y)) => x == y && a.get("type") == b.get("type"),
        _ => a == b,
    }
}

/// Operations on `attr[filter]` and `attr[filter].sub`.
fn apply_filtered(
    p: &mut Patched,
    kind: OpKind,
    attr: AttrRef,
    filter: &Filter,
    sub: Option<&'static AttrDef>,
    value: Option<Value>,
) -> Result<()> {
    let name = attr.attr.name;
    let new_sub = match (sub, kind, value.clone()) {
        (Some(s), OpKind::Add | OpKind::Replace, Some(v)) => {
            normalize_value(s, v, &format!("{name}.{}", s.name))?
        }
        _ => None,
    };
    let new_elem = match (sub, kind, value) {
        (None, OpKind::Add | OpKind::Replace, Some(v)) => {
            match normalize_value(attr.attr, v, name)? {
                Some(Value::Array(mut items)) if items.len() == 1 => items.pop(),
                Some(Value::Array(_)) => {
                    return Err(ScimError::invalid_value(format!(
                        "'{name}[...]' takes one element as its value"
                    )));
                }
                other => other,
            }
        }
        _ => None,
    };
    let Some(container) = attr
        .container
        .object_mut(&mut p.resource, kind != OpKind::Remove)
    else {
        return Ok(());
    };
    let items = match container.get_mut(name) {
        Some(Value::Array(items)) => items,
        _ => {
            container.insert(name.to_string(), Value::Array(vec![]));
            match container.get_mut(name) {
                Some(Value::Array(items)) => items,
                _ => unreachable!("just inserted an array"),
            }
        }
    };
    let matched: Vec<usize> = items
        .iter()
        .enumerate()
        .filter(|(_, v)| v.as_object().is_some_and(|m| element_matches(filter, m)))
        .map(|(i, _)| i)
        .collect();

    match kind {
        OpKind::Remove => {
            let mut idx = 0;
            items.retain_mut(|item| {
                let hit = matched.contains(&idx);
                idx += 1;
                match (hit, sub) {
                    (false, _) => true,
                    (true, None) => false,
                    (true, Some(s)) => {
                        set_sub(item, s.name, None);
                        item.as_object().is_some_and(|m| !m.is_empty())
                    }
                }
            });
        }
        OpKind::Add | OpKind::Replace if matched.is_empty() => {
            // Entra ID adds `emails[type eq "work"].value` to a user with no work
            // e-mail: create the element the filter describes, when it is plain equality.
            let Some(mut seed) = equality_seed(filter) else {
                return Err(ScimError::no_target(format!(
                    "no value of '{name}' matches the filter"
                )));
            };
            match (sub, new_sub, new_elem) {
                (Some(s), Some(v), _) => {
                    seed.insert(s.name.to_string(), v);
                }
                (None, _, Some(Value::Object(m))) => seed.extend(m),
                _ => return Ok(()),
            }
            items.push(Value::Object(seed));
        }
        OpKind::Add | OpKind::Replace => {
            for &i in &matched {
                match sub {
                    Some(s) => set_sub(&mut items[i], s.name, new_sub.clone()),
                    None => match (&mut items[i], &new_elem) {
                        (Value::Object(existing), Some(Value::Object(n)))
                            if kind == OpKind::Add =>
                        {
                            existing.extend(n.clone());
                        }
                        (slot, Some(n)) => *slot = n.clone(),
                        (slot, None) => *slot = Value::Object(Map::new()),
                    },
                }
            }
            items.retain(|i| i.as_object().is_some_and(|m| !m.is_empty()));
        }
    }
    enforce_single_primary(items);
    if items.is_empty() {
        container.remove(name);
    }
    Ok(())
}

/// The element a filter of `eq` comparisons joined by `and` describes, if it is one.
fn equality_seed(filter: &Filter) -> Option<Map<String, Value>> {
    let mut seed = Map::new();
    fn walk(f: &Filter, seed: &mut Map<String, Value>) -> bool {
        match f {
            Filter::And(a, b) => walk(a, seed) && walk(b, seed),
            Filter::Compare(path, CompareOp::Eq, v) => {
                let Some(sub) = path.sub else { return false };
                let v = match v {
                    CompValue::Str(s) => Value::String(s.clone()),
                    CompValue::Num(n) => Value::Number(n.clone()),
                    CompValue::Bool(b) => Value::Bool(*b),
                    CompValue::Null => return false,
                };
                seed.insert(sub.name.to_string(), v);
                true
            }
            _ => false,
        }
    }
    walk(filter, &mut seed).then_some(seed)
}

/// Evaluate a value filter against one element of a multi-valued attribute.
pub fn element_matches(filter: &Filter, element: &Map<String, Value>) -> bool {
    match filter {
        Filter::And(a, b) => element_matches(a, element) && element_matches(b, element),
        Filter::Or(a, b) => element_matches(a, element) || element_matches(b, element),
        Filter::Not(a) => !element_matches(a, element),
        Filter::ValuePath(..) => false,
        Filter::Present(path) => {
            let v = path.sub.and_then(|s| element.get(s.name));
            !matches!(v, None | Some(Value::Null)) && v != Some(&Value::String(String::new()))
        }
        Filter::Compare(path, op, want) => {
            let Some(sub) = path.sub else { return false };
            compare(sub, element.get(sub.name), *op, want)
        }
    }
}

fn compare(def: &AttrDef, have: Option<&Value>, op: CompareOp, want: &CompValue) -> bool {
    let have = have.filter(|v| !v.is_null());
    if let CompValue::Null = want {
        return match op {
            CompareOp::Eq => have.is_none(),
            _ => have.is_some(),
        };
    }
    let Some(have) = have else {
        return op == CompareOp::Ne;
    };
    let ord = match (have, want) {
        (Value::String(h), CompValue::Str(w)) => {
            if def.ty == AttrType::DateTime {
                match (
                    chrono::DateTime::parse_from_rfc3339(h),
                    chrono::DateTime::parse_from_rfc3339(w),
                ) {
                    (Ok(a), Ok(b)) => Some((a.cmp(&b), h.clone(), w.clone())),
                    _ => None,
                }
            } else if def.case_exact {
                Some((h.as_str().cmp(w.as_str()), h.clone(), w.clone()))
            } else {
                let (h, w) = (h.to_lowercase(), w.to_lowercase());
                Some((h.cmp(&w), h, w))
            }
        }
        (Value::Bool(h), CompValue::Bool(w)) => Some((h.cmp(w), String::new(), String::new())),
        (Value::Number(h), CompValue::Num(w)) => h
            .as_f64()
            .zip(w.as_f64())
            .and_then(|(a, b)| a.partial_cmp(&b))
            .map(|o| (o, String::new(), String::new())),
        _ => None,
    };
    let Some((ord, h, w)) = ord else {
        return op == CompareOp::Ne;
    };
    match op {
        CompareOp::Eq => ord == Ordering::Equal,
        CompareOp::Ne => ord != Ordering::Equal,
        CompareOp::Co => h.contains(&w),
        CompareOp::Sw => h.starts_with(&w),
        CompareOp::Ew => h.ends_with(&w),
        CompareOp::Gt => ord == Ordering::Greater,
        CompareOp::Ge => ord != Ordering::Less,
        CompareOp::Lt => ord == Ordering::Less,
        CompareOp::Le => ord != Ordering::Greater,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::error::ScimType;
    use crate::scim::resource::parse_user;
    use crate::scim::schema::{ENTERPRISE_USER, USER};
    use secrecy::ExposeSecret;
    use serde_json::json;

    fn base() -> Map<String, Value> {
        parse_user(json!({
            "schemas": [USER],
            "userName": "ann@example.com",
            "name": {"givenName": "Ann", "familyName": "Lee"},
            "emails": [{"value": "ann@example.com", "type": "work", "primary": true}],
            "active": true
        }))
        .unwrap()
        .resource
    }

    fn patch(ops: Value) -> Result<Option<resource::UserInput>> {
        let body = json!({"schemas": [PATCH_OP], "Operations": ops});
        patch_user(&base(), true, parse_request(body)?)
    }

    fn patched(ops: Value) -> Value {
        Value::Object(patch(ops).unwrap().expect("changed").resource)
    }

    #[test]
    fn okta_deactivate_and_password() {
        let r = patch(json!([{"op": "replace", "value": {"active": false}}]))
            .unwrap()
            .unwrap();
        assert!(!r.active);
        let r = patch(json!([{"op": "replace", "value": {"password": "n3w!"}}]))
            .unwrap()
            .unwrap();
        assert_eq!(r.password.unwrap().expose_secret(), "n3w!");
        assert_eq!(
            r.resource,
            base(),
            "a password change leaves the resource as it was"
        );
    }

    #[test]
    fn unassigning_active_deactivates() {
        let inactive = patch(json!([{"op": "replace", "path": "active", "value": false}]))
            .unwrap()
            .unwrap()
            .resource;
        let mut unassigned = base();
        unassigned.remove("active");
        let no_active = parse_user(json!({"schemas": [USER], "userName": "bo@example.com"}))
            .unwrap()
            .resource;
        for ops in [
            json!([{"op": "remove", "path": "active"}]),
            json!([{"op": "replace", "path": "active", "value": null}]),
            json!([{"op": "add", "path": "active", "value": null}]),
            json!([{"op": "replace", "value": {"active": null}}]),
            json!([{"op": "Replace", "value": {"urn:ietf:params:scim:schemas:core:2.0:User:active": null}}]),
            json!([{"op": "remove", "path": "urn:ietf:params:scim:schemas:core:2.0:User:active"}]),
        ] {
            let body = json!({"schemas": [PATCH_OP], "Operations": ops});
            // An active user is switched off.
            let r = patch_user(&base(), true, parse_request(body.clone()).unwrap())
                .unwrap()
                .expect("changed");
            assert!(!r.active, "{ops}");
            assert!(
                !r.resource.contains_key("active"),
                "removed, as RFC 7644 says: {ops}"
            );
            // One already unassigned and off stays so: nothing changes.
            assert!(
                patch_user(&unassigned, false, parse_request(body.clone()).unwrap())
                    .unwrap()
                    .is_none(),
                "{ops}"
            );
            // A user created without `active` (so active) is switched off too.
            let r = patch_user(&no_active, true, parse_request(body).unwrap())
                .unwrap()
                .expect("changed");
            assert!(!r.active, "{ops}");
        }
        // Other operations leave `active` alone, assigned or not: a user whose `active`
        // was unassigned stays off through later changes.
        for (current, stored) in [(&inactive, false), (&unassigned, false), (&no_active, true)] {
            let r = patch_user(
                current,
                stored,
                parse_request(
                    json!({"Operations": [{"op": "replace", "path": "displayName", "value": "X"}]}),
                )
                .unwrap(),
            )
            .unwrap()
            .expect("changed");
            assert_eq!(r.active, stored);
        }
    }

    #[test]
    fn entra_without_the_compliance_flag() {
        let r = patched(json!([
            {"op": "Replace", "path": "active", "value": "False"},
            {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "new@example.com"},
            {"op": "Add", "path": "phoneNumbers[type eq \"mobile\"].value", "value": "+1 555"},
            {"op": "Replace", "path": "name.givenName", "value": "Anne"},
            {"op": "Add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber", "value": "42"},
            {"op": "Add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager", "value": [{"$ref": null, "value": "mgr-1"}]}
        ]));
        assert_eq!(r["active"], json!(false));
        assert_eq!(
            r["emails"],
            json!([{"value": "new@example.com", "type": "work", "primary": true}])
        );
        assert_eq!(
            r["phoneNumbers"],
            json!([{"type": "mobile", "value": "+1 555"}])
        );
        assert_eq!(r["name"]["givenName"], json!("Anne"));
        assert_eq!(
            r[ENTERPRISE_USER],
            json!({"employeeNumber": "42", "manager": {"value": "mgr-1"}})
        );

        let r = patched(json!([{"op": "Add", "path": "manager", "value": "mgr-2"}]));
        assert_eq!(r[ENTERPRISE_USER]["manager"], json!({"value": "mgr-2"}));
        let r = patch_user(
            &Value::Object(r.as_object().unwrap().clone())
                .as_object()
                .unwrap()
                .clone(),
            true,
            parse_request(
                json!({"Operations": [{"op": "Replace", "path": "manager", "value": ""}]}),
            )
            .unwrap(),
        )
        .unwrap()
        .unwrap();
        assert!(
            r.resource.get(ENTERPRISE_USER).is_none(),
            "clearing the manager drops the empty extension"
        );
    }

    #[test]
    fn entra_with_the_compliance_flag() {
        let r = patched(json!([{"op": "replace", "value": {
            "name.givenName": "Ann-Marie",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department": "Sales",
            "active": false,
            "emails[type eq \"work\"].value": "am@example.com"
        }}]));
        assert_eq!(
            r["name"],
            json!({"givenName": "Ann-Marie", "familyName": "Lee"})
        );
        assert_eq!(r[ENTERPRISE_USER]["department"], json!("Sales"));
        assert_eq!(r["active"], json!(false));
        assert_eq!(r["emails"][0]["value"], json!("am@example.com"));
    }

    #[test]
    fn add_replace_remove_semantics() {
        // add to a multi-valued attribute appends; primary moves to the new one
        let r = patched(
            json!([{"op": "add", "path": "emails", "value": [{"value": "b@x", "primary": true}]}]),
        );
        assert_eq!(r["emails"].as_array().unwrap().len(), 2);
        assert_eq!(r["emails"][0]["primary"], json!(false));
        // replace a multi-valued attribute replaces it whole
        let r = patched(json!([{"op": "replace", "path": "emails", "value": [{"value": "c@x"}]}]));
        assert_eq!(r["emails"], json!([{"value": "c@x"}]));
        // replace a complex attribute merges its sub-attributes
        let r = patched(json!([{"op": "replace", "path": "name", "value": {"familyName": "Li"}}]));
        assert_eq!(r["name"], json!({"givenName": "Ann", "familyName": "Li"}));
        // remove by filter, by sub-attribute, whole attribute
        let r = patched(json!([{"op": "remove", "path": "emails[type eq \"work\"]"}]));
        assert!(r.get("emails").is_none());
        let r = patched(json!([{"op": "remove", "path": "name.givenName"}]));
        assert_eq!(r["name"], json!({"familyName": "Lee"}));
        let r = patched(json!([{"op": "remove", "path": "name"}]));
        assert!(r.get("name").is_none());
        // path-less add of an extension object
        let r = patched(json!([{"op": "add", "value": {ENTERPRISE_USER: {"department": "Ops"}}}]));
        assert_eq!(r[ENTERPRISE_USER], json!({"department": "Ops"}));
        // replace of an extension keeps what the value does not mention
        let with_ext = patch_user(
            &base(),
            true,
            parse_request(json!({"Operations": [{"op": "add", "value": {ENTERPRISE_USER: {"department": "Ops", "employeeNumber": "7"}}}]})).unwrap(),
        )
        .unwrap()
        .unwrap()
        .resource;
        let r = patch_user(
            &with_ext,
            true,
            parse_request(json!({"Operations": [{"op": "replace", "value": {ENTERPRISE_USER: {"department": "Sales"}}}]})).unwrap(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            Value::Object(r.resource)[ENTERPRISE_USER],
            json!({"department": "Sales", "employeeNumber": "7"})
        );
        // an unchanged result is reported as no change
        assert!(
            patch(json!([{"op": "replace", "path": "active", "value": true}]))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn errors() {
        let e = |ops: Value| patch(ops).expect_err("should fail");
        assert_eq!(
            e(json!([{"op": "remove"}])).scim_type,
            Some(ScimType::NoTarget)
        );
        assert_eq!(
            e(json!([{"op": "replace", "path": "id", "value": "x"}])).scim_type,
            Some(ScimType::Mutability)
        );
        assert_eq!(
            e(json!([{"op": "replace", "path": "meta.created", "value": "x"}])).scim_type,
            Some(ScimType::Mutability)
        );
        assert_eq!(
            e(json!([{"op": "replace", "path": "nosuch", "value": 1}])).scim_type,
            Some(ScimType::InvalidPath)
        );
        assert_eq!(
            e(json!([{"op": "replace", "path": "emails[type eq", "value": 1}])).scim_type,
            Some(ScimType::InvalidPath)
        );
        assert_eq!(
            e(json!([{"op": "move", "path": "userName", "value": "x"}])).scim_type,
            Some(ScimType::InvalidSyntax)
        );
        assert_eq!(
            e(json!([{"op": "replace", "path": "active", "value": "maybe"}])).scim_type,
            Some(ScimType::InvalidValue)
        );
        assert_eq!(e(json!([{"op": "replace", "path": "emails[type co \"w\"].value", "value": "x"}, {"op": "replace", "path": "emails[value eq \"none\" or type eq \"x\"].value", "value": "y"}])).scim_type, Some(ScimType::NoTarget));
        assert_eq!(
            e(json!([{"op": "remove", "path": "userName"}])).scim_type,
            Some(ScimType::InvalidValue)
        );
        assert_eq!(
            e(json!([{"op": "replace", "value": "notanobject"}])).scim_type,
            Some(ScimType::InvalidValue)
        );
        assert!(parse_request(json!({"Operations": []})).is_err());
        assert!(parse_request(json!({"schemas": ["urn:x"], "Operations": [{"op": "add", "path": "title", "value": "x"}]})).is_err());
        let many: Vec<Value> = (0..=MAX_OPERATIONS)
            .map(|_| json!({"op": "add", "path": "title", "value": "x"}))
            .collect();
        assert_eq!(
            parse_request(json!({"Operations": many}))
                .unwrap_err()
                .scim_type,
            Some(ScimType::TooMany)
        );
    }
}
