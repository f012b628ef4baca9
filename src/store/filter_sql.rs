//! SCIM filters and sort keys as SQL over the `users` table (alias `u`). Attribute names
//! come only from the static schema, so they are inlined as literals; every value the
//! client sent is a bind parameter.

use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use crate::scim::ScimError;
use crate::scim::filter::{AttrPath, CompValue, CompareOp, Filter};
use crate::scim::schema::{AttrDef, AttrRef, AttrType, Container};

/// Where a scalar lives in SQL.
enum Source {
    /// A real column, with the type it has.
    Column(&'static str, ColumnKind),
    /// `(<jsonb object expression>) -> 'key'`.
    Json { object: String, key: &'static str },
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

/// The jsonb expression of an attribute's container.
fn container_expr(c: Container) -> String {
    match c {
        Container::Core => "u.resource".into(),
        Container::Extension(e) => format!("(u.resource -> {})", lit(e.id)),
    }
}

/// Where a singular top-level attribute (or a singular complex attribute's
/// sub-attribute) lives.
fn singular_source(attr: AttrRef, sub: Option<&'static AttrDef>) -> Result<Source, ScimError> {
    if attr.container == Container::Core {
        match (attr.attr.name, sub.map(|s| s.name)) {
            ("id", None) => return Ok(Source::Column("u.id", ColumnKind::Uuid)),
            ("userName", None) => return Ok(Source::Column("u.user_name", ColumnKind::Text)),
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
                return Ok(Source::Column("'User'::text", ColumnKind::Text));
            }
            ("meta", _) => {
                return Err(ScimError::invalid_filter(
                    "meta.location cannot be used in a filter or sort",
                ));
            }
            _ => {}
        }
    }
    let base = container_expr(attr.container);
    Ok(match sub {
        None => Source::Json {
            object: base,
            key: attr.attr.name,
        },
        Some(s) => Source::Json {
            object: format!("({base} -> {})", lit(attr.attr.name)),
            key: s.name,
        },
    })
}

/// Translates one filter into a boolean SQL expression appended to `qb`.
pub fn push_filter(qb: &mut QueryBuilder<Postgres>, f: &Filter) -> Result<(), ScimError> {
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
            push_email_prefilter(qb, *attr, inner);
            qb.push("EXISTS (SELECT 1 FROM jsonb_array_elements(coalesce(");
            qb.push(container_expr(attr.container));
            qb.push(format!(
                " -> {}, '[]'::jsonb)) AS e(v) WHERE ",
                lit(attr.attr.name)
            ));
            push_element(qb, inner)?;
            qb.push(")");
        }
    }
    Ok(())
}

/// The GIN index on `scim_email_values(resource)` answers e-mail equality; the exact
/// test still follows, so this only narrows the rows the planner has to look at.
fn push_email_prefilter(qb: &mut QueryBuilder<Postgres>, attr: AttrRef, inner: &Filter) {
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
        qb.push("scim_email_values(u.resource) @> ARRAY[lower(");
        qb.push_bind(v.to_string());
        qb.push(")] AND ");
    }
}

/// A comparison (or presence test when `cmp` is `None`) on a top-level path.
fn push_top(
    qb: &mut QueryBuilder<Postgres>,
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
        qb.push(format!(
            "({} ? {})",
            container_expr(attr.container),
            lit(attr.attr.name)
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
        qb.push("(scim_email_values(u.resource) @> ARRAY[lower(");
        qb.push_bind(s.clone());
        qb.push(")] AND ");
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
    qb: &mut QueryBuilder<Postgres>,
    attr: AttrRef,
    elem_attr: &'static AttrDef,
    cmp: Option<(CompareOp, &CompValue)>,
) -> Result<(), ScimError> {
    qb.push("EXISTS (SELECT 1 FROM jsonb_array_elements(coalesce(");
    qb.push(container_expr(attr.container));
    qb.push(format!(
        " -> {}, '[]'::jsonb)) AS e(v) WHERE ",
        lit(attr.attr.name)
    ));
    let source = Source::Json {
        object: "e.v".into(),
        key: elem_attr.name,
    };
    push_scalar(qb, &source, elem_attr, cmp)?;
    qb.push(")");
    Ok(())
}

/// The inner filter of a value path, over the element `e.v`.
fn push_element(qb: &mut QueryBuilder<Postgres>, f: &Filter) -> Result<(), ScimError> {
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
                object: "e.v".into(),
                key: sub.name,
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

/// Escape LIKE's wildcards so the client's text matches literally.
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A presence test or comparison on one scalar. A comparison with an absent value is
/// NULL, which WHERE treats as no match; `not` and `ne` use `IS NOT TRUE` so that it
/// stays two-valued. Plain comparisons keep the indexes usable.
fn push_scalar(
    qb: &mut QueryBuilder<Postgres>,
    source: &Source,
    def: &'static AttrDef,
    cmp: Option<(CompareOp, &CompValue)>,
) -> Result<(), ScimError> {
    let (text_expr, kind) = match source {
        Source::Column(sql, kind) => (sql.to_string(), Some(*kind)),
        Source::Json { object, key } => (format!("({object} ->> {})", lit(key)), None),
    };
    let present = match source {
        Source::Column(sql, ColumnKind::Text) => format!("coalesce({sql}, '') <> ''"),
        Source::Column(sql, _) => format!("{sql} IS NOT NULL"),
        Source::Json { .. } if def.ty == AttrType::Complex || def.multi_valued => {
            format!("{text_expr} IS NOT NULL")
        }
        Source::Json { .. } => format!("coalesce({text_expr}, '') <> ''"),
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
            // Our ids are UUIDs: equality uses the primary key; a non-UUID matches nothing.
            match (op, Uuid::parse_str(s)) {
                (CompareOp::Eq, Ok(id)) => {
                    qb.push("(u.id = ");
                    qb.push_bind(id);
                    qb.push(")");
                }
                (CompareOp::Eq, Err(_)) => {
                    qb.push("FALSE");
                }
                (CompareOp::Ne, Ok(id)) => {
                    qb.push("(u.id <> ");
                    qb.push_bind(id);
                    qb.push(")");
                }
                (CompareOp::Ne, Err(_)) => {
                    qb.push("TRUE");
                }
                _ => push_text_cmp(qb, "u.id::text", true, op, s),
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
    match (def.ty, value, kind) {
        (AttrType::Boolean, CompValue::Bool(b), _) => {
            let expr = match kind {
                Some(_) => text_expr.clone(),
                None => format!("({text_expr})::boolean"),
            };
            qb.push(format!("({expr} {op_sql} "));
            qb.push_bind(*b);
            qb.push(")");
        }
        (AttrType::Integer | AttrType::Decimal, CompValue::Num(n), _) => {
            qb.push(format!("(({text_expr})::numeric {op_sql} "));
            qb.push_bind(n.to_string());
            qb.push("::numeric)");
        }
        (AttrType::DateTime, CompValue::Str(s), _) => {
            let t = chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|_| ScimError::invalid_filter("expected an RFC 3339 date-time"))?
                .with_timezone(&chrono::Utc);
            let expr = match kind {
                Some(ColumnKind::Time) => text_expr.clone(),
                _ => format!("({text_expr})::timestamptz"),
            };
            qb.push(format!("({expr} {op_sql} "));
            qb.push_bind(t);
            qb.push(")");
        }
        (_, CompValue::Str(s), _) => {
            push_text_cmp(
                qb,
                &text_expr,
                def.case_exact,
                if op == CompareOp::Ne {
                    CompareOp::Eq
                } else {
                    op
                },
                s,
            );
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

fn push_text_cmp(
    qb: &mut QueryBuilder<Postgres>,
    expr: &str,
    case_exact: bool,
    op: CompareOp,
    s: &str,
) {
    // caseExact=false compares lower-cased; lower() leaves LIKE's escapes alone.
    let (open, close) = if case_exact {
        ("", "")
    } else {
        ("lower(", ")")
    };
    let (op_sql, bound) = match op {
        CompareOp::Co => (" LIKE ", format!("%{}%", like_escape(s))),
        CompareOp::Sw => (" LIKE ", format!("{}%", like_escape(s))),
        CompareOp::Ew => (" LIKE ", format!("%{}", like_escape(s))),
        CompareOp::Gt => (" > ", s.to_string()),
        CompareOp::Ge => (" >= ", s.to_string()),
        CompareOp::Lt => (" < ", s.to_string()),
        CompareOp::Le => (" <= ", s.to_string()),
        CompareOp::Eq | CompareOp::Ne => (" = ", s.to_string()),
    };
    qb.push(format!("({open}{expr}{close}{op_sql}{open}"));
    qb.push_bind(bound);
    qb.push(format!("{close})"));
}

/// The ORDER BY expression for `sortBy`.
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
        // RFC 7644 §3.4.2.3: a multi-valued attribute sorts by its primary value.
        let v = typed_text(&format!("(e.v ->> {})", lit(elem.name)), elem);
        return Ok(format!(
            "(SELECT {v} FROM jsonb_array_elements(coalesce({} -> {}, '[]'::jsonb)) AS e(v) \
             ORDER BY (e.v ->> 'primary') = 'true' DESC NULLS LAST LIMIT 1)",
            container_expr(attr.container),
            lit(attr.attr.name)
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
        Source::Column(sql, ColumnKind::Text) if !leaf.case_exact => format!("lower({sql})"),
        Source::Column(sql, _) => sql.to_string(),
        Source::Json { object, key } => typed_text(&format!("({object} ->> {})", lit(key)), leaf),
    })
}

fn typed_text(text: &str, def: &AttrDef) -> String {
    match def.ty {
        AttrType::Integer | AttrType::Decimal => format!("({text})::numeric"),
        AttrType::Boolean => format!("({text})::boolean"),
        AttrType::DateTime => format!("({text})::timestamptz"),
        _ if !def.case_exact => format!("lower({text})"),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::filter::parse;

    fn sql(f: &str) -> String {
        let mut qb = QueryBuilder::<Postgres>::new("");
        push_filter(&mut qb, &parse(f).unwrap()).unwrap();
        qb.sql().as_str().to_string()
    }

    #[test]
    fn values_are_bound_never_inlined() {
        let s = sql(r#"userName eq "x'; DROP TABLE users; --""#);
        assert!(!s.contains("DROP"), "{s}");
        assert!(s.contains("lower(u.user_name) = lower($1)"), "{s}");
        let s = sql(r#"name.familyName co "50%_off\\""#);
        assert!(s.contains("LIKE lower($1)"), "{s}");
        assert_eq!(like_escape(r"50%_off\"), r"50\%\_off\\");
    }

    #[test]
    fn uses_columns_and_the_email_index() {
        assert!(sql(r#"externalId eq "E1""#).contains("u.external_id = $1"));
        assert!(sql(r#"id eq "not-a-uuid""#).contains("FALSE"));
        let s = sql(r#"emails[type eq "work"].value eq "A@B.C""#);
        assert!(
            s.contains("scim_email_values(u.resource) @> ARRAY[lower($"),
            "{s}"
        );
        let s = sql(r#"emails.value eq "a@b.c""#);
        assert!(
            s.contains("scim_email_values(u.resource) @> ARRAY[lower($"),
            "{s}"
        );
        let s = sql(
            r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq "Sales""#,
        );
        assert!(
            s.contains(
                "(u.resource -> 'urn:ietf:params:scim:schemas:extension:enterprise:2.0:User')"
            ),
            "{s}"
        );
    }
}
