//! `attributes` and `excludedAttributes` (RFC 7644 §3.4.2.5, §3.9): which attributes of a
//! rendered resource go into a response.

use serde_json::{Map, Value};

use super::error::{Result, ScimError};
use super::schema::{self, AttrDef, AttrRef, Container, Returned, USER};

/// One entry of an `attributes` list: a whole extension, an attribute, or a sub-attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Selector {
    Extension(&'static schema::SchemaDef),
    Attr(AttrRef, Option<&'static AttrDef>),
}

/// A parsed projection.
#[derive(Debug, Clone, Default)]
pub struct Projection {
    include: Vec<Selector>,
    exclude: Vec<Selector>,
}

/// Most names accepted in one list.
const MAX_NAMES: usize = 200;

fn parse_list<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Vec<Selector>> {
    let mut out = Vec::new();
    for name in names.into_iter().map(str::trim).filter(|n| !n.is_empty()) {
        if out.len() >= MAX_NAMES {
            return Err(ScimError::invalid_value(format!(
                "at most {MAX_NAMES} attribute names may be listed"
            )));
        }
        if let Some(ext) = schema::extension(name) {
            out.push(Selector::Extension(ext));
        } else if let Some((attr, sub)) = schema::resolve(name) {
            out.push(Selector::Attr(attr, sub));
        }
        // Unknown names select nothing, as in most SCIM servers; they are not an error.
    }
    Ok(out)
}

impl Projection {
    /// From the comma-separated query parameters.
    pub fn from_query(attributes: Option<&str>, excluded: Option<&str>) -> Result<Self> {
        Ok(Self {
            include: parse_list(attributes.unwrap_or("").split(','))?,
            exclude: parse_list(excluded.unwrap_or("").split(','))?,
        })
    }

    /// From the arrays of a `.search` request.
    pub fn from_lists(attributes: &[String], excluded: &[String]) -> Result<Self> {
        Ok(Self {
            include: parse_list(attributes.iter().map(String::as_str))?,
            exclude: parse_list(excluded.iter().map(String::as_str))?,
        })
    }

    /// Apply to a full rendered resource.
    pub fn apply(&self, full: Map<String, Value>) -> Map<String, Value> {
        let mut out = if self.include.is_empty() {
            let mut out = full;
            for sel in &self.exclude {
                remove(&mut out, *sel);
            }
            out
        } else {
            let mut out = Map::new();
            for (k, v) in &full {
                if always_returned(k) {
                    out.insert(k.clone(), v.clone());
                }
            }
            for sel in &self.include {
                copy(&full, &mut out, *sel);
            }
            drop_empty_elements(&mut out);
            for ext in schema::EXTENSIONS {
                if let Some(Value::Object(m)) = out.get_mut(ext.id) {
                    drop_empty_elements(m);
                }
            }
            out
        };
        fix_schemas(&mut out);
        out
    }
}

fn always_returned(key: &str) -> bool {
    key == "schemas"
        || schema::find(schema::COMMON_ATTRS, key)
            .or_else(|| schema::find(schema::USER_ATTRS, key))
            .is_some_and(|a| a.returned == Returned::Always)
}

fn only_sub(v: &Value, sub: &str) -> Option<Value> {
    match v {
        Value::Object(o) => o.get(sub).map(|s| {
            let mut m = Map::new();
            m.insert(sub.to_string(), s.clone());
            Value::Object(m)
        }),
        // Positions are kept (an element without the sub-attribute becomes `{}`), so a
        // second sub-attribute of the same attribute merges into the right element;
        // `drop_empty_elements` tidies up at the end.
        Value::Array(items) => Some(Value::Array(
            items
                .iter()
                .map(|i| only_sub(i, sub).unwrap_or_else(|| Value::Object(Map::new())))
                .collect(),
        )),
        _ => None,
    }
}

/// Remove the `{}` placeholders sub-attribute selection leaves in lists, and lists
/// left empty.
fn drop_empty_elements(m: &mut Map<String, Value>) {
    let is_empty_object = |v: &Value| v.as_object().is_some_and(Map::is_empty);
    m.retain(|_, v| {
        if let Value::Array(items) = v {
            items.retain(|i| !is_empty_object(i));
            return !items.is_empty();
        }
        true
    });
}

fn copy(full: &Map<String, Value>, out: &mut Map<String, Value>, sel: Selector) {
    match sel {
        Selector::Extension(ext) => {
            if let Some(v) = full.get(ext.id) {
                out.insert(ext.id.to_string(), v.clone());
            }
        }
        Selector::Attr(attr, sub) => {
            let Some(src) = attr.container.object(full) else {
                return;
            };
            let Some(v) = src.get(attr.attr.name) else {
                return;
            };
            let picked = match sub {
                None => Some(v.clone()),
                Some(s) => only_sub(v, s.name),
            };
            let Some(picked) = picked else { return };
            let dst = match attr.container {
                Container::Core => out,
                Container::Extension(e) => {
                    match out
                        .entry(e.id.to_string())
                        .or_insert_with(|| Value::Object(Map::new()))
                    {
                        Value::Object(m) => m,
                        _ => return,
                    }
                }
            };
            match (dst.get_mut(attr.attr.name), picked) {
                (Some(Value::Object(have)), Value::Object(more)) => have.extend(more),
                (_, picked) if sub.is_none() || !attr.attr.multi_valued => {
                    dst.insert(attr.attr.name.to_string(), picked);
                }
                // Two sub-attributes of one multi-valued attribute: merge element-wise.
                (Some(Value::Array(have)), Value::Array(more)) => {
                    for (h, m) in have.iter_mut().zip(more) {
                        if let (Value::Object(h), Value::Object(m)) = (h, m) {
                            h.extend(m);
                        }
                    }
                }
                (_, picked) => {
                    dst.insert(attr.attr.name.to_string(), picked);
                }
            }
        }
    }
}

fn remove(out: &mut Map<String, Value>, sel: Selector) {
    match sel {
        Selector::Extension(ext) => {
            out.remove(ext.id);
        }
        Selector::Attr(attr, sub) => {
            if attr.attr.returned == Returned::Always {
                return;
            }
            let Some(dst) = attr.container.object_mut(out, false) else {
                return;
            };
            match sub {
                None => {
                    dst.remove(attr.attr.name);
                }
                Some(s) => match dst.get_mut(attr.attr.name) {
                    Some(Value::Object(o)) => {
                        o.remove(s.name);
                    }
                    Some(Value::Array(items)) => {
                        for i in items.iter_mut() {
                            if let Value::Object(o) = i {
                                o.remove(s.name);
                            }
                        }
                    }
                    _ => {}
                },
            }
        }
    }
}

/// `schemas` lists the core schema and each extension still present.
fn fix_schemas(out: &mut Map<String, Value>) {
    if !out.contains_key("schemas") {
        return;
    }
    let mut schemas = vec![Value::from(USER)];
    for ext in schema::EXTENSIONS {
        if out
            .get(ext.id)
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
        {
            schemas.push(Value::from(ext.id));
        } else {
            out.remove(ext.id);
        }
    }
    out.insert("schemas".into(), Value::Array(schemas));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::schema::ENTERPRISE_USER;
    use serde_json::json;

    fn full() -> Map<String, Value> {
        json!({
            "schemas": [USER, ENTERPRISE_USER],
            "id": "1",
            "userName": "a",
            "name": {"givenName": "A", "familyName": "B"},
            "emails": [{"value": "a@x", "type": "work"}],
            ENTERPRISE_USER: {"department": "D", "costCenter": "C"},
            "meta": {"resourceType": "User"}
        })
        .as_object()
        .unwrap()
        .clone()
    }

    #[test]
    fn attributes_keep_only_what_was_asked_and_id() {
        let p = Projection::from_query(Some("userName,name.givenName,emails.value"), None).unwrap();
        assert_eq!(
            Value::Object(p.apply(full())),
            json!({"schemas": [USER], "id": "1", "userName": "a", "name": {"givenName": "A"}, "emails": [{"value": "a@x"}]})
        );
        let p =
            Projection::from_query(Some(&format!("{ENTERPRISE_USER}:department")), None).unwrap();
        assert_eq!(
            Value::Object(p.apply(full())),
            json!({"schemas": [USER, ENTERPRISE_USER], "id": "1", ENTERPRISE_USER: {"department": "D"}})
        );
    }

    #[test]
    fn two_sub_attributes_of_a_list_stay_aligned() {
        let mut f = full();
        f.insert(
            "emails".into(),
            json!([{"type": "home", "value": "h@x"}, {"type": "work"}, {"display": "d"}]),
        );
        for q in ["emails.value,emails.type", "emails.type,emails.value"] {
            let p = Projection::from_query(Some(q), None).unwrap();
            assert_eq!(
                p.apply(f.clone())["emails"],
                json!([{"type": "home", "value": "h@x"}, {"type": "work"}]),
                "{q}"
            );
        }
    }

    #[test]
    fn excluded_attributes_never_drop_id() {
        let p = Projection::from_query(None, Some("id,name,emails.type,meta,urn:ietf:params:scim:schemas:extension:enterprise:2.0:User")).unwrap();
        assert_eq!(
            Value::Object(p.apply(full())),
            json!({"schemas": [USER], "id": "1", "userName": "a", "emails": [{"value": "a@x"}]})
        );
    }
}
