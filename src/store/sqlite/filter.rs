//! SCIM filters and sort keys as SQLite SQL over the `users` table (alias `u`): the same
//! answers [`crate::store::filter_sql`] gives on PostgreSQL for the same data.
//!
//! SQLite's lower() and LIKE fold ASCII letters only, so no case folding happens in SQL.
//! The store keeps a comparison copy of every resource in `u.search`
//! ([`search_document`]): each string of a caseExact=false attribute folded by
//! [`fold_case`] (what PostgreSQL's lower() does), each dateTime in the users' time
//! format; `u.user_name_key` is the folded userName. A literal is folded the same way
//! before it is bound, and the comparison is then binary: code-point order, which is
//! PostgreSQL's under the C and C.UTF-8 collations. Attribute names come only from the
//! static schema and are inlined as literals; every value the client sent is bound.

use chrono::Utc;
use serde_json::{Map, Value};
use sqlx::{QueryBuilder, Sqlite};
use uuid::Uuid;

use super::users::format_micros;
use crate::scim::ScimError;
use crate::scim::filter::{AttrPath, CompValue, CompareOp, Filter};
use crate::scim::schema::{self, AttrDef, AttrRef, AttrType, Container};

/// Lower-case as PostgreSQL's lower() does under a UTF-8 libc locale: character by
/// character, each to its simple lower-case mapping ("ÅNGSTRÖM" -> "ångström", "ẞ" ->
/// "ß", "İ" -> "i", no final-sigma rule).
pub fn fold_case(s: &str) -> String {
    // The full mapping of a character is longer than one character only for 'İ'
    // (U+0130, "i̇"), whose simple mapping is its first character.
    s.chars()
        .map(|c| c.to_lowercase().next().unwrap_or(c))
        .collect()
}

/// The comparison copy of a canonical resource that filters and sorts read (`u.search`):
/// the same document, with every string of a caseExact=false attribute folded and every
/// dateTime in the users' time format. Attributes of no schema stay as they are.
pub fn search_document(resource: &Map<String, Value>) -> Map<String, Value> {
    resource
        .iter()
        .map(|(k, v)| {
            let v = match schema::extension(k) {
                Some(ext) => match v {
                    Value::Object(m) => Value::Object(fold_object(ext.attributes, m)),
                    other => other.clone(),
                },
                None => match schema::find(schema::USER_ATTRS, k)
                    .or_else(|| schema::find(schema::COMMON_ATTRS, k))
                {
                    Some(def) => fold_value(def, v),
                    None => v.clone(),
                },
            };
            (k.clone(), v)
        })
        .collect()
}

fn fold_object(attrs: &'static [AttrDef], m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .map(|(k, v)| {
            let v = match schema::find(attrs, k) {
                Some(def) => fold_value(def, v),
                None => v.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

fn fold_value(def: &'static AttrDef, v: &Value) -> Value {
    match v {
        Value::Array(items) if def.multi_valued => {
            Value::Array(items.iter().map(|i| fold_single(def, i)).collect())
        }
        _ => fold_single(def, v),
    }
}

fn fold_single(def: &'static AttrDef, v: &Value) -> Value {
    match v {
        Value::Object(m) if def.ty == AttrType::Complex => {
            Value::Object(fold_object(def.sub_attributes, m))
        }
        // PostgreSQL compares dateTimes as timestamptz; a fixed-width UTC text sorts so.
        Value::String(s) if def.ty == AttrType::DateTime => {
            match chrono::DateTime::parse_from_rfc3339(s) {
                Ok(t) => Value::String(format_micros(t.with_timezone(&Utc))),
                Err(_) => v.clone(),
            }
        }
        Value::String(s) if !def.case_exact => Value::String(fold_case(s)),
        other => other.clone(),
    }
}

/// Where a scalar lives in SQL.
enum Source {
    /// A real column (or an expression over columns), with the type it has.
    Column(&'static str, ColumnKind),
    /// `json_extract(<doc>, '<path>')`: in the comparison document `u.search`, or in the
    /// element `e.value` of a multi-valued attribute being searched.
    Json { doc: &'static str, path: String },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ColumnKind {
    Text,
    Bool,
    Time,
    Uuid,
}

fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The JSON path of an attribute's container.
fn container_path(c: Container) -> String {
    match c {
        Container::Core => "$".into(),
        Container::Extension(e) => member("$", e.id),
    }
}

/// `path."name"`: quoted, because schema URNs hold ':' and '.'.
fn member(path: &str, name: &str) -> String {
    format!("{path}.\"{name}\"")
}

/// The JSON path of a top-level attribute.
fn attr_path(attr: AttrRef) -> String {
    member(&container_path(attr.container), attr.attr.name)
}

/// Where a singular top-level attribute (or a singular complex attribute's
/// sub-attribute) lives.
fn singular_source(attr: AttrRef, sub: Option<&'static AttrDef>) -> Result<Source, ScimError> {
    if attr.container == Container::Core {
        match (attr.attr.name, sub.map(|s| s.name)) {
            ("id", None) => return Ok(Source::Column("u.id", ColumnKind::Uuid)),
            // userName is caseExact=false: its column for comparisons is the folded one.
            ("userName", None) => {
                return Ok(Source::Column("u.user_name_key", ColumnKind::Text));
            }
            ("externalId", None) => return Ok(Source::Column("u.external_id", ColumnKind::Text)),
            ("active", None) => return Ok(Source::Column("u.active", ColumnKind::Bool)),
            ("meta", Some("created")) => return Ok(Source::Column("u.created", ColumnKind::Time)),
            ("meta", Some("lastModified")) => {
                return Ok(Source::Column("u.last_modified", ColumnKind::Time));
            }
            ("meta", Some("version")) => {
                return Ok(Source::Column(
                    "('W/\"' || u.version || '\"')",
                    ColumnKind::Text,
                ));
            }
            ("meta", Some("resourceType")) => {
                return Ok(Source::Column("'User'", ColumnKind::Text));
            }
            ("meta", _) => {
                return Err(ScimError::invalid_filter(
                    "meta.location cannot be used in a filter or sort",
                ));
            }
            _ => {}
        }
    }
    let path = attr_path(attr);
    Ok(Source::Json {
        doc: "u.search",
        path: match sub {
            None => path,
            Some(s) => member(&path, s.name),
        },
    })
}

/// Translates one filter into a boolean SQL expression appended to `qb`.
pub fn push_filter(qb: &mut QueryBuilder<Sqlite>, f: &Filter) -> Result<(), ScimError> {
    match f {
        Filter::And(a, b) | Filter::Or(a, b) => {
            qb.push("(");
            push_filter(qb, a)?;
            qb.push(if matches!(f, Filter::And(..)) {
                " AND "
            } else {
                " OR "
            });
            push_filter(qb, b)?;
            qb.push(")");
        }
        Filter::Not(a) => {
            // NULL (an absent attribute) is "no match"; IS NOT TRUE keeps it so under NOT.
            qb.push("((");
            push_filter(qb, a)?;
            qb.push(") IS NOT TRUE)");
        }
        Filter::Present(path) => push_top(qb, path, None)?,
        Filter::Compare(path, op, v) => push_top(qb, path, Some((*op, v)))?,
        Filter::ValuePath(attr, inner) => {
            qb.push("(");
            push_email_prefilter(qb, *attr, inner);
            qb.push(format!(
                "EXISTS (SELECT 1 FROM json_each(u.search, {}) AS e WHERE ",
                lit(&attr_path(*attr))
            ));
            push_element(qb, inner)?;
            qb.push("))");
        }
    }
    Ok(())
}

/// `user_emails` (the folded e-mail values of live users) answers e-mail equality from
/// its index; the exact test still follows, so this only narrows the rows SQLite looks
/// at, like the GIN index on PostgreSQL.
fn push_email_key(qb: &mut QueryBuilder<Sqlite>, value: &str) {
    qb.push("u.id IN (SELECT user_id FROM user_emails WHERE value_key = ");
    qb.push_bind(fold_case(value));
    qb.push(")");
}

/// The e-mail equalities that must all hold inside a value path, each as a prefilter.
fn push_email_prefilter(qb: &mut QueryBuilder<Sqlite>, attr: AttrRef, inner: &Filter) {
    fn eq_values<'f>(f: &'f Filter, out: &mut Vec<&'f str>) {
        match f {
            Filter::And(a, b) => {
                eq_values(a, out);
                eq_values(b, out);
            }
            Filter::Compare(p, CompareOp::Eq, CompValue::Str(s))
                if p.sub.is_some_and(|s| s.name == "value") =>
            {
                out.push(s)
            }
            _ => {}
        }
    }
    if attr.container != Container::Core || attr.attr.name != "emails" {
        return;
    }
    let mut values = Vec::new();
    eq_values(inner, &mut values);
    for v in values {
        push_email_key(qb, v);
        qb.push(" AND ");
    }
}

/// A comparison (or presence test when `cmp` is `None`) on a top-level path.
fn push_top(
    qb: &mut QueryBuilder<Sqlite>,
    path: &AttrPath,
    cmp: Option<(CompareOp, &CompValue)>,
) -> Result<(), ScimError> {
    let attr = path.attr;
    if !attr.attr.multi_valued {
        let source = singular_source(attr, path.sub)?;
        return push_scalar(qb, &source, path.leaf(), cmp);
    }
    // Multi-valued: `emails pr`, or a test on some element (`emails.value`, or `emails`
    // meaning its `value`).
    let elem_attr = match (path.sub, attr.attr.ty) {
        (Some(s), _) => Some(s),
        (None, AttrType::Complex) => attr.attr.sub_attr("value"),
        (None, _) => None,
    };
    if cmp.is_none() && path.sub.is_none() {
        // The key is there, whatever it holds (PostgreSQL's `?`).
        qb.push(format!(
            "(json_type(u.search, {}) IS NOT NULL)",
            lit(&attr_path(attr))
        ));
        return Ok(());
    }
    let Some(elem_attr) = elem_attr else {
        return Err(ScimError::invalid_filter(format!(
            "'{}' cannot be compared",
            path.display()
        )));
    };
    // `ne` on a multi-valued attribute: no element equals the value.
    let (negate, cmp) = match cmp {
        Some((CompareOp::Ne, v)) if !matches!(v, CompValue::Null) => {
            (true, Some((CompareOp::Eq, v)))
        }
        other => (false, other),
    };
    if let Some((CompareOp::Eq, CompValue::Str(s))) = cmp
        && !negate
        && attr.container == Container::Core
        && attr.attr.name == "emails"
        && elem_attr.name == "value"
    {
        qb.push("(");
        push_email_key(qb, s);
        qb.push(" AND ");
        push_exists(qb, attr, elem_attr, cmp)?;
        qb.push(")");
        return Ok(());
    }
    if negate {
        qb.push("(NOT ");
    }
    // EXISTS is never NULL, so a plain NOT is right here.
    push_exists(qb, attr, elem_attr, cmp)?;
    if negate {
        qb.push(")");
    }
    Ok(())
}

fn push_exists(
    qb: &mut QueryBuilder<Sqlite>,
    attr: AttrRef,
    elem_attr: &'static AttrDef,
    cmp: Option<(CompareOp, &CompValue)>,
) -> Result<(), ScimError> {
    qb.push(format!(
        "EXISTS (SELECT 1 FROM json_each(u.search, {}) AS e WHERE ",
        lit(&attr_path(attr))
    ));
    let source = Source::Json {
        doc: "e.value",
        path: member("$", elem_attr.name),
    };
    push_scalar(qb, &source, elem_attr, cmp)?;
    qb.push(")");
    Ok(())
}

/// The inner filter of a value path, over the element `e.value`.
fn push_element(qb: &mut QueryBuilder<Sqlite>, f: &Filter) -> Result<(), ScimError> {
    match f {
        Filter::And(a, b) | Filter::Or(a, b) => {
            qb.push("(");
            push_element(qb, a)?;
            qb.push(if matches!(f, Filter::And(..)) {
                " AND "
            } else {
                " OR "
            });
            push_element(qb, b)?;
            qb.push(")");
        }
        Filter::Not(a) => {
            qb.push("((");
            push_element(qb, a)?;
            qb.push(") IS NOT TRUE)");
        }
        Filter::Present(p) | Filter::Compare(p, ..) => {
            let Some(sub) = p.sub else {
                return Err(ScimError::invalid_filter(
                    "a value filter must name sub-attributes",
                ));
            };
            let source = Source::Json {
                doc: "e.value",
                path: member("$", sub.name),
            };
            let cmp = match f {
                Filter::Compare(_, op, v) => Some((*op, v)),
                _ => None,
            };
            push_scalar(qb, &source, sub, cmp)?;
        }
        Filter::ValuePath(..) => {
            return Err(ScimError::invalid_filter("value filters cannot be nested"));
        }
    }
    Ok(())
}

/// A presence test or comparison on one scalar. A comparison with an absent value is
/// NULL, which WHERE treats as no match; `not` and `ne` use `IS NOT TRUE` so that it
/// stays two-valued. Presence tests are never NULL.
fn push_scalar(
    qb: &mut QueryBuilder<Sqlite>,
    source: &Source,
    def: &'static AttrDef,
    cmp: Option<(CompareOp, &CompValue)>,
) -> Result<(), ScimError> {
    let (expr, kind) = match source {
        Source::Column(sql, kind) => (sql.to_string(), Some(*kind)),
        Source::Json { doc, path } => (format!("json_extract({doc}, {})", lit(path)), None),
    };
    // As PostgreSQL's `->>` sees it: present is neither missing, nor JSON null, nor "".
    // (A JSON false or 0 comes out of json_extract as the integer 0, which is not ''.)
    let present = match source {
        Source::Column(sql, ColumnKind::Text) => format!("coalesce({sql}, '') <> ''"),
        Source::Column(sql, _) => format!("{sql} IS NOT NULL"),
        Source::Json { .. } if def.ty == AttrType::Complex || def.multi_valued => {
            format!("{expr} IS NOT NULL")
        }
        Source::Json { .. } => format!("coalesce({expr}, '') <> ''"),
    };
    let Some((op, value)) = cmp else {
        qb.push(format!("({present})"));
        return Ok(());
    };
    match value {
        CompValue::Null => {
            // `eq null`: not present; `ne null`: present.
            if op == CompareOp::Eq {
                qb.push(format!("(NOT ({present}))"));
            } else {
                qb.push(format!("({present})"));
            }
            return Ok(());
        }
        CompValue::Str(s) if kind == Some(ColumnKind::Uuid) => {
            // Ids are stored as lower-case hyphenated UUIDs, as PostgreSQL prints them;
            // a value that is no UUID equals none.
            match (op, Uuid::parse_str(s)) {
                (CompareOp::Eq, Ok(id)) => {
                    qb.push("(u.id = ");
                    qb.push_bind(id.to_string());
                    qb.push(")");
                }
                (CompareOp::Eq, Err(_)) => {
                    qb.push("FALSE");
                }
                (CompareOp::Ne, Ok(id)) => {
                    qb.push("(u.id <> ");
                    qb.push_bind(id.to_string());
                    qb.push(")");
                }
                (CompareOp::Ne, Err(_)) => {
                    qb.push("TRUE");
                }
                _ => push_text_cmp(qb, "u.id", true, op, s),
            }
            return Ok(());
        }
        _ => {}
    }
    let op_sql = match op {
        CompareOp::Eq => "=",
        CompareOp::Ne => "=", // negated below
        CompareOp::Gt => ">",
        CompareOp::Ge => ">=",
        CompareOp::Lt => "<",
        CompareOp::Le => "<=",
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew => "",
    };
    if op == CompareOp::Ne {
        qb.push("((");
    }
    match (def.ty, value) {
        // JSON true and false come out of json_extract as 1 and 0, as sqlx binds a bool.
        (AttrType::Boolean, CompValue::Bool(b)) => {
            qb.push(format!("({expr} {op_sql} "));
            qb.push_bind(*b);
            qb.push(")");
        }
        (AttrType::Integer | AttrType::Decimal, CompValue::Num(n)) => {
            qb.push(format!("({expr} {op_sql} "));
            match n.as_i64() {
                Some(i) => qb.push_bind(i),
                // Beyond i64 SQLite holds numbers as doubles, its JSON ones included.
                None => qb.push_bind(n.as_f64().unwrap_or(f64::NAN)),
            };
            qb.push(")");
        }
        (AttrType::DateTime, CompValue::Str(s)) => {
            let t = chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|_| ScimError::invalid_filter("expected an RFC 3339 date-time"))?
                .with_timezone(&Utc);
            // Stored times have microseconds, as PostgreSQL's timestamptz does, and the
            // literal is cut to microseconds as sqlx binds it there.
            qb.push(format!("({expr} {op_sql} "));
            qb.push_bind(format_micros(t));
            qb.push(")");
        }
        (_, CompValue::Str(s)) => {
            let op = if op == CompareOp::Ne {
                CompareOp::Eq
            } else {
                op
            };
            let key_prefix = op == CompareOp::Sw && expr == "u.user_name_key" && !s.is_empty();
            if key_prefix {
                qb.push("(");
                push_key_prefix_range(qb, &fold_case(s));
            }
            push_text_cmp(qb, &expr, def.case_exact, op, s);
            if key_prefix {
                qb.push(")");
            }
        }
        _ => {
            return Err(ScimError::invalid_filter(format!(
                "'{}' cannot be compared with that value",
                def.name
            )));
        }
    }
    if op == CompareOp::Ne {
        qb.push(") IS NOT TRUE)");
    }
    Ok(())
}

/// `userName sw "..."` also as a range of `user_name_key`, so the unique index answers
/// it (PostgreSQL's text_pattern_ops index does); the exact test follows.
fn push_key_prefix_range(qb: &mut QueryBuilder<Sqlite>, prefix: &str) {
    qb.push("u.user_name_key >= ");
    qb.push_bind(prefix.to_string());
    if let Some(upper) = prefix_upper_bound(prefix) {
        qb.push(" AND u.user_name_key < ");
        qb.push_bind(upper);
    }
    qb.push(" AND ");
}

/// The least string above every string that starts with `prefix`, in code-point order
/// (which is SQLite's binary order of UTF-8): `prefix` with its last character raised
/// by one. `None` when no such string exists (every character is U+10FFFF).
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(c as u32 + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// A text comparison. The expression is folded already when the attribute is
/// caseExact=false; the literal is folded here. Binary comparison, with instr/substr
/// rather than LIKE, which would also fold ASCII for caseExact attributes.
fn push_text_cmp(
    qb: &mut QueryBuilder<Sqlite>,
    expr: &str,
    case_exact: bool,
    op: CompareOp,
    s: &str,
) {
    let value = if case_exact {
        s.to_string()
    } else {
        fold_case(s)
    };
    let chars = value.chars().count() as i64;
    match op {
        CompareOp::Co => {
            qb.push(format!("(instr({expr}, "));
            qb.push_bind(value);
            qb.push(") > 0)");
        }
        CompareOp::Sw => {
            qb.push(format!("(substr({expr}, 1, "));
            qb.push_bind(chars);
            qb.push(") = ");
            qb.push_bind(value);
            qb.push(")");
        }
        CompareOp::Ew => {
            // A start at or before the first character gives a shorter string than the
            // value, so a too-short text never matches.
            qb.push(format!("(substr({expr}, length({expr}) - "));
            qb.push_bind(chars);
            qb.push(" + 1) = ");
            qb.push_bind(value);
            qb.push(")");
        }
        CompareOp::Gt | CompareOp::Ge | CompareOp::Lt | CompareOp::Le => {
            let op_sql = match op {
                CompareOp::Gt => ">",
                CompareOp::Ge => ">=",
                CompareOp::Lt => "<",
                _ => "<=",
            };
            qb.push(format!("({expr} {op_sql} "));
            qb.push_bind(value);
            qb.push(")");
        }
        CompareOp::Eq | CompareOp::Ne => {
            qb.push(format!("({expr} = "));
            qb.push_bind(value);
            qb.push(")");
        }
    }
}

/// The ORDER BY expression for `sortBy`: NULL when the user has no value.
pub fn sort_expr(path: &AttrPath) -> Result<String, ScimError> {
    let attr = path.attr;
    let leaf = path.leaf();
    if attr.attr.multi_valued {
        let elem = match path.sub {
            Some(s) => s,
            None => attr.attr.sub_attr("value").ok_or_else(|| {
                ScimError::invalid_value(format!("cannot sort by '{}'", path.display()))
            })?,
        };
        // RFC 7644 §3.4.2.3: a multi-valued attribute sorts by its primary value; with
        // none marked primary, by the first one (before those marked not primary:
        // PostgreSQL's order, true, false, then unset).
        return Ok(format!(
            "(SELECT json_extract(e.value, {}) FROM json_each(u.search, {}) AS e \
             ORDER BY CASE json_type(e.value, '$.primary') WHEN 'true' THEN 0 \
             WHEN 'false' THEN 1 END NULLS LAST, e.key LIMIT 1)",
            lit(&member("$", elem.name)),
            lit(&attr_path(attr))
        ));
    }
    if leaf.ty == AttrType::Complex {
        return Err(ScimError::invalid_value(format!(
            "cannot sort by the complex attribute '{}'",
            path.display()
        )));
    }
    let source = singular_source(attr, path.sub).map_err(|e| ScimError::invalid_value(e.detail))?;
    Ok(match source {
        Source::Column(sql, _) => sql.to_string(),
        Source::Json { doc, path } => format!("json_extract({doc}, {})", lit(&path)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::filter::parse;
    use serde_json::json;

    fn sql(f: &str) -> String {
        let mut qb = QueryBuilder::<Sqlite>::new("");
        push_filter(&mut qb, &parse(f).unwrap()).unwrap();
        qb.sql().as_str().to_string()
    }

    #[test]
    fn folds_like_postgres_lower() {
        // Each pair as PostgreSQL 15's lower() gives it in a C.UTF-8 database.
        for (s, lower) in [
            ("ÅNGSTRÖM", "ångström"),
            ("ÉMILE", "émile"),
            ("STRASSE ẞ straße", "strasse ß straße"),
            ("İSTANBUL", "istanbul"),
            ("ΟΔΟΣ", "οδοσ"),
            ("ǅ", "ǆ"),
            ("MiXeD 123 @", "mixed 123 @"),
        ] {
            assert_eq!(fold_case(s), lower, "{s}");
        }
    }

    #[test]
    fn values_are_bound_never_inlined() {
        let s = sql(r#"userName eq "x'; DROP TABLE users; --""#);
        assert!(!s.contains("DROP"), "{s}");
        assert!(s.contains("(u.user_name_key = ?)"), "{s}");
        let s = sql(r#"name.familyName co "50%_off'""#);
        assert!(!s.contains("50"), "{s}");
        assert!(
            s.contains(r#"instr(json_extract(u.search, '$."name"."familyName"'), ?)"#),
            "{s}"
        );
    }

    #[test]
    fn uses_columns_the_email_index_and_extension_paths() {
        assert!(sql(r#"externalId eq "E1""#).contains("(u.external_id = ?)"));
        assert_eq!(sql(r#"id eq "not-a-uuid""#), "FALSE");
        for f in [
            r#"emails[type eq "work"].value eq "A@B.C""#,
            r#"emails.value eq "a@b.c""#,
            r#"emails eq "a@b.c""#,
        ] {
            let s = sql(f);
            assert!(
                s.contains("u.id IN (SELECT user_id FROM user_emails WHERE value_key = ?)"),
                "{f}: {s}"
            );
        }
        // Only equality that must hold narrows by the index.
        for f in [
            r#"emails[type eq "work" or value eq "a@b.c"]"#,
            r#"emails.value ne "a@b.c""#,
            r#"emails.value co "a@b.c""#,
        ] {
            assert!(!sql(f).contains("user_emails"), "{f}");
        }
        let s = sql(
            r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq "Sales""#,
        );
        assert!(
            s.contains(
                r#"json_extract(u.search, '$."urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"."department"')"#
            ),
            "{s}"
        );
        let s = sql(r#"userName sw "Ann""#);
        assert!(
            s.starts_with("(u.user_name_key >= ? AND u.user_name_key < ? AND (substr("),
            "{s}"
        );
    }

    #[test]
    fn prefix_bounds() {
        assert_eq!(prefix_upper_bound("ann").as_deref(), Some("ano"));
        assert_eq!(
            prefix_upper_bound("a\u{D7FF}").as_deref(),
            Some("a\u{E000}")
        );
        assert_eq!(
            prefix_upper_bound("a\u{10FFFF}\u{10FFFF}").as_deref(),
            Some("b")
        );
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
    }

    #[test]
    fn the_search_document_folds_what_compares_case_insensitively() {
        let resource = json!({
            "userName": "ÅSA",
            "externalId": "Ext-ÅÄ",
            "active": true,
            "name": {"familyName": "ÉMILE", "givenName": "Zoë"},
            "emails": [{"value": "A@X.COM", "type": "Work", "primary": true}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {
                "department": "VERTRIEB", "manager": {"value": "MGR-1"}
            },
            "urn:ietf:params:scim:schemas:extension:ameyo:2.0:User": {
                "userType": "Agent", "maxAllowedLogins": 2
            },
            "notInAnySchema": "KEPT"
        });
        let Value::Object(resource) = resource else {
            unreachable!()
        };
        let doc = Value::Object(search_document(&resource));
        assert_eq!(
            doc,
            json!({
                "userName": "åsa",
                "externalId": "Ext-ÅÄ",
                "active": true,
                "name": {"familyName": "émile", "givenName": "zoë"},
                "emails": [{"value": "a@x.com", "type": "work", "primary": true}],
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {
                    "department": "vertrieb", "manager": {"value": "mgr-1"}
                },
                "urn:ietf:params:scim:schemas:extension:ameyo:2.0:User": {
                    "userType": "Agent", "maxAllowedLogins": 2
                },
                "notInAnySchema": "KEPT"
            })
        );
    }

    #[test]
    fn sort_keys() {
        let path = |name: &str| {
            let (attr, sub) = schema::resolve(name).unwrap();
            AttrPath { attr, sub }
        };
        assert_eq!(sort_expr(&path("userName")).unwrap(), "u.user_name_key");
        assert_eq!(
            sort_expr(&path("name.familyName")).unwrap(),
            r#"json_extract(u.search, '$."name"."familyName"')"#
        );
        assert!(
            sort_expr(&path("emails"))
                .unwrap()
                .contains(r#"json_each(u.search, '$."emails"')"#)
        );
        assert!(sort_expr(&path("name")).is_err());
        assert!(sort_expr(&path("meta.location")).is_err());
    }
}
