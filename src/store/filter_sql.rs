//! SCIM filters and sort keys as SQL over the `users` table (alias `u`), for both stores.
//! One walker over the filter AST decides what a filter means (where each attribute
//! lives, presence, `not` and `ne` kept two-valued, value paths over multi-valued
//! attributes, the e-mail index, ids); a [`Dialect`] spells its pieces in one database's
//! SQL. So PostgreSQL and SQLite give the same answers by construction, and differ only
//! where their SQL must. This module also holds the PostgreSQL dialect and its entry
//! points [`push_filter`] and [`sort_expr`]; the SQLite ones are in
//! [`crate::store::sqlite::filter`]. Attribute names come only from the static schema,
//! so they are inlined as literals; every value the client sent is a bind parameter.

use chrono::{DateTime, Utc};
use serde_json::Number;
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::ListQuery;
use crate::scim::ScimError;
use crate::scim::filter::{AttrPath, CompValue, CompareOp, Filter};
use crate::scim::schema::{AttrDef, AttrRef, AttrType, Container};

/// Where a scalar lives in SQL.
pub(crate) enum Source {
    /// A real column (or an expression over columns), with the type it has.
    Column(&'static str, ColumnKind),
    /// A value inside the resource's JSON, as the dialect extracts it: SQL NULL when the
    /// key is missing or holds JSON null.
    Json(String),
}

impl Source {
    fn expr(&self) -> &str {
        match self {
            Source::Column(sql, _) => sql,
            Source::Json(expr) => expr,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnKind {
    Text,
    Bool,
    Time,
    Uuid,
}

/// A client's literal that is not a string, checked against the attribute's type.
pub(crate) enum Literal<'v> {
    Bool(bool),
    Num(&'v Number),
    Time(DateTime<Utc>),
}

/// The SQL of one store for the pieces the walker puts together. The filter's elements
/// being searched are always the row source `e`.
pub(crate) trait Dialect {
    type Db: sqlx::Database;

    /// The column userName is compared and sorted on.
    const USER_NAME: &'static str;
    /// `meta.resourceType`, a constant of every user.
    const RESOURCE_TYPE: &'static str;
    /// The id as text, for the comparisons other than equality.
    const ID_TEXT: &'static str;
    /// The ORDER BY of the elements `e` that puts the primary one first.
    const PRIMARY_FIRST: &'static str;

    /// A singular attribute of the resource, or a sub-attribute of a singular complex one.
    fn attribute(attr: AttrRef, sub: Option<&AttrDef>) -> String;
    /// A sub-attribute of the element `e`.
    fn element(name: &str) -> String;
    /// A row source `e` over the elements of a multi-valued attribute: none when it is
    /// absent.
    fn elements(attr: AttrRef) -> String;
    /// The resource has the key of a multi-valued attribute, whatever it holds.
    fn has_key(attr: AttrRef) -> String;
    /// The value of `source` as its attribute's type, for comparing and ordering;
    /// caseExact=false strings folded.
    fn typed(source: &Source, def: &AttrDef) -> String;
    /// Binds a literal so that it compares with [`Dialect::typed`] of its attribute.
    fn push_literal(qb: &mut QueryBuilder<Self::Db>, value: Literal<'_>);
    /// Binds an id as the `u.id` column holds it.
    fn push_id(qb: &mut QueryBuilder<Self::Db>, id: Uuid);
    /// A string comparison (`ne` comes as `eq`, negated by the caller), folding both
    /// sides when `case_exact` is false.
    fn push_text_cmp(
        qb: &mut QueryBuilder<Self::Db>,
        expr: &str,
        case_exact: bool,
        op: CompareOp,
        s: &str,
    );
    /// An index-backed test for "has this e-mail value"; the exact test always follows
    /// it, so it only narrows the rows the database looks at.
    fn push_email_key(qb: &mut QueryBuilder<Self::Db>, value: &str);
    /// A row source `e` over the user's group memberships, each element an object with
    /// `value` (the group id), `display` (its displayName) and `type` ("direct").
    fn group_elements() -> String;
    /// Binds a group id as `group_members.group_id` holds it.
    fn push_group_id(qb: &mut QueryBuilder<Self::Db>, id: Uuid);
    /// Binds a text value (the tenant id).
    fn push_text(qb: &mut QueryBuilder<Self::Db>, value: String);
    /// Binds an integer (a limit or an offset).
    fn push_int(qb: &mut QueryBuilder<Self::Db>, value: i64);
}

/// `FROM ... WHERE` of a list: the tenant's live users matching the filter.
fn push_from_where<D: Dialect>(
    qb: &mut QueryBuilder<D::Db>,
    tenant: &str,
    q: &ListQuery,
) -> Result<(), ScimError> {
    qb.push(" FROM users u WHERE u.tenant_id = ");
    D::push_text(qb, tenant.to_string());
    qb.push(" AND u.deleted_at IS NULL");
    if let Some(f) = &q.filter {
        qb.push(" AND ");
        push_filter_as::<D>(qb, f)?;
    }
    Ok(())
}

/// The `totalResults` of a list, after `prefix` (`EXPLAIN ...` or nothing).
pub(crate) fn count_query_as<D: Dialect>(
    prefix: &'static str,
    tenant: &str,
    q: &ListQuery,
) -> Result<QueryBuilder<D::Db>, ScimError> {
    let mut qb = QueryBuilder::new(prefix);
    qb.push("SELECT count(*)");
    push_from_where::<D>(&mut qb, tenant, q)?;
    Ok(qb)
}

/// One page of users in a stable order: the sort key (absent values last), then
/// (created, id). `columns` are the store's user columns.
pub(crate) fn page_query_as<D: Dialect>(
    prefix: &'static str,
    columns: &'static str,
    tenant: &str,
    q: &ListQuery,
) -> Result<QueryBuilder<D::Db>, ScimError> {
    let mut qb = QueryBuilder::new(prefix);
    qb.push("SELECT ");
    qb.push(columns);
    push_from_where::<D>(&mut qb, tenant, q)?;
    let offset = i64::try_from(q.start_index.saturating_sub(1)).unwrap_or(i64::MAX);
    // SQLite reads a negative LIMIT as "no limit": keep it in range.
    let limit = i64::try_from(q.count).unwrap_or(i64::MAX);
    // In the default order a deep page starts from the key of its first row, found by
    // walking the (tenant, created, id) index alone, instead of reading and dropping
    // every earlier user whole: an IdP paging through a million users stays linear.
    let keyset = q.sort_by.is_none() && offset > 0;
    if keyset {
        qb.push(" AND (u.created, u.id) >= (SELECT u.created, u.id");
        push_from_where::<D>(&mut qb, tenant, q)?;
        qb.push(" ORDER BY u.created, u.id LIMIT 1 OFFSET ");
        D::push_int(&mut qb, offset);
        qb.push(")");
    }
    qb.push(" ORDER BY ");
    if let Some(sort) = &q.sort_by {
        qb.push(sort_expr_as::<D>(sort)?);
        qb.push(if q.descending {
            " DESC NULLS LAST, "
        } else {
            " ASC NULLS LAST, "
        });
    }
    qb.push("u.created, u.id LIMIT ");
    D::push_int(&mut qb, limit);
    if !keyset {
        qb.push(" OFFSET ");
        D::push_int(&mut qb, offset);
    }
    Ok(qb)
}

pub(crate) fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// What the leaves of a filter test: the user, or inside a value path the element `e`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Subject {
    User,
    Element,
}

/// Translates one filter into a boolean SQL expression of dialect `D` appended to `qb`.
pub(crate) fn push_filter_as<D: Dialect>(
    qb: &mut QueryBuilder<D::Db>,
    f: &Filter,
) -> Result<(), ScimError> {
    push_bool::<D>(qb, f, Subject::User)
}

/// A filter, or a value path's inner filter, as a boolean expression.
fn push_bool<D: Dialect>(
    qb: &mut QueryBuilder<D::Db>,
    f: &Filter,
    subject: Subject,
) -> Result<(), ScimError> {
    match f {
        Filter::And(a, b) | Filter::Or(a, b) => {
            qb.push("(");
            push_bool::<D>(qb, a, subject)?;
            qb.push(if matches!(f, Filter::And(..)) {
                " AND "
            } else {
                " OR "
            });
            push_bool::<D>(qb, b, subject)?;
            qb.push(")");
        }
        Filter::Not(a) => {
            // NULL (an absent attribute) is "no match"; IS NOT TRUE keeps it so under NOT.
            qb.push("((");
            push_bool::<D>(qb, a, subject)?;
            qb.push(") IS NOT TRUE)");
        }
        Filter::Present(path) | Filter::Compare(path, ..) => {
            let cmp = match f {
                Filter::Compare(_, op, v) => Some((*op, v)),
                _ => None,
            };
            match subject {
                Subject::User => push_top::<D>(qb, path, cmp)?,
                Subject::Element => {
                    let Some(sub) = path.sub else {
                        return Err(ScimError::invalid_filter(
                            "a value filter must name sub-attributes",
                        ));
                    };
                    push_scalar::<D>(qb, &Source::Json(D::element(sub.name)), sub, cmp)?;
                }
            }
        }
        Filter::ValuePath(..) if subject == Subject::Element => {
            return Err(ScimError::invalid_filter("value filters cannot be nested"));
        }
        Filter::ValuePath(attr, inner) => {
            // The prefilters and the EXISTS are one term, whatever the context.
            qb.push("(");
            push_email_prefilter::<D>(qb, *attr, inner);
            push_exists_open::<D>(qb, *attr);
            push_bool::<D>(qb, inner, Subject::Element)?;
            qb.push("))");
        }
    }
    Ok(())
}

/// The e-mail equalities that must all hold inside a value path, each as a prefilter.
fn push_email_prefilter<D: Dialect>(qb: &mut QueryBuilder<D::Db>, attr: AttrRef, inner: &Filter) {
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
    let mut values = Vec::new();
    eq_values(inner, &mut values);
    if is_groups(attr) {
        for v in values {
            push_group_key::<D>(qb, v);
            qb.push(" AND ");
        }
        return;
    }
    if !is_emails(attr) {
        return;
    }
    for v in values {
        D::push_email_key(qb, v);
        qb.push(" AND ");
    }
}

fn is_groups(attr: AttrRef) -> bool {
    attr.container == Container::Core && attr.attr.name == "groups"
}

/// An index-backed test for "is a member of this group": the user's id among the
/// group's member rows (no group when the value is not an id).
fn push_group_key<D: Dialect>(qb: &mut QueryBuilder<D::Db>, value: &str) {
    match Uuid::parse_str(value.trim()) {
        Ok(id) => {
            qb.push("u.id IN (SELECT gk.user_id FROM group_members gk WHERE gk.group_id = ");
            D::push_group_id(qb, id);
            qb.push(")");
        }
        Err(_) => {
            qb.push("FALSE");
        }
    }
}

fn is_emails(attr: AttrRef) -> bool {
    attr.container == Container::Core && attr.attr.name == "emails"
}

/// `EXISTS (SELECT 1 FROM <the elements e> WHERE `: the caller closes it.
fn push_exists_open<D: Dialect>(qb: &mut QueryBuilder<D::Db>, attr: AttrRef) {
    qb.push(format!(
        "EXISTS (SELECT 1 FROM {} WHERE ",
        if is_groups(attr) {
            D::group_elements()
        } else {
            D::elements(attr)
        }
    ));
}

/// Where a singular top-level attribute (or a singular complex attribute's
/// sub-attribute) lives.
fn singular_source<D: Dialect>(
    attr: AttrRef,
    sub: Option<&'static AttrDef>,
) -> Result<Source, ScimError> {
    if attr.container == Container::Core {
        match (attr.attr.name, sub.map(|s| s.name)) {
            ("id", None) => return Ok(Source::Column("u.id", ColumnKind::Uuid)),
            ("userName", None) => return Ok(Source::Column(D::USER_NAME, ColumnKind::Text)),
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
                return Ok(Source::Column(D::RESOURCE_TYPE, ColumnKind::Text));
            }
            ("meta", _) => {
                return Err(ScimError::invalid_filter(
                    "meta.location cannot be used in a filter or sort",
                ));
            }
            _ => {}
        }
    }
    Ok(Source::Json(D::attribute(attr, sub)))
}

/// A comparison (or presence test when `cmp` is `None`) on a top-level path.
fn push_top<D: Dialect>(
    qb: &mut QueryBuilder<D::Db>,
    path: &AttrPath,
    cmp: Option<(CompareOp, &CompValue)>,
) -> Result<(), ScimError> {
    let attr = path.attr;
    if !attr.attr.multi_valued {
        let source = singular_source::<D>(attr, path.sub)?;
        return push_scalar::<D>(qb, &source, path.leaf(), cmp);
    }
    // Multi-valued: `emails pr`, or a test on some element (`emails.value`, or `emails`
    // meaning its `value`).
    let elem_attr = match (path.sub, attr.attr.ty) {
        (Some(s), _) => Some(s),
        (None, AttrType::Complex) => attr.attr.sub_attr("value"),
        (None, _) => None,
    };
    if cmp.is_none() && path.sub.is_none() {
        if is_groups(attr) {
            qb.push(format!("EXISTS (SELECT 1 FROM {})", D::group_elements()));
        } else {
            qb.push(format!("({})", D::has_key(attr)));
        }
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
        && is_groups(attr)
        && elem_attr.name == "value"
    {
        qb.push("(");
        push_group_key::<D>(qb, s);
        qb.push(" AND ");
        push_exists::<D>(qb, attr, elem_attr, cmp)?;
        qb.push(")");
        return Ok(());
    }
    if let Some((CompareOp::Eq, CompValue::Str(s))) = cmp
        && !negate
        && is_emails(attr)
        && elem_attr.name == "value"
    {
        qb.push("(");
        D::push_email_key(qb, s);
        qb.push(" AND ");
        push_exists::<D>(qb, attr, elem_attr, cmp)?;
        qb.push(")");
        return Ok(());
    }
    if negate {
        qb.push("(NOT ");
    }
    // EXISTS is never NULL, so a plain NOT is right here.
    push_exists::<D>(qb, attr, elem_attr, cmp)?;
    if negate {
        qb.push(")");
    }
    Ok(())
}

fn push_exists<D: Dialect>(
    qb: &mut QueryBuilder<D::Db>,
    attr: AttrRef,
    elem_attr: &'static AttrDef,
    cmp: Option<(CompareOp, &CompValue)>,
) -> Result<(), ScimError> {
    push_exists_open::<D>(qb, attr);
    push_scalar::<D>(
        qb,
        &Source::Json(D::element(elem_attr.name)),
        elem_attr,
        cmp,
    )?;
    qb.push(")");
    Ok(())
}

/// A presence test or comparison on one scalar. A comparison with an absent value is
/// NULL, which WHERE treats as no match; `not` and `ne` use `IS NOT TRUE` so that it
/// stays two-valued. Presence tests are never NULL. Plain comparisons keep the indexes
/// usable.
fn push_scalar<D: Dialect>(
    qb: &mut QueryBuilder<D::Db>,
    source: &Source,
    def: &'static AttrDef,
    cmp: Option<(CompareOp, &CompValue)>,
) -> Result<(), ScimError> {
    // Present is neither missing, nor JSON null, nor "", as PostgreSQL's `->>` reads it.
    // (SQLite's json_extract gives a JSON false or 0 as the integer 0, which is not ''.)
    let present = match source {
        Source::Column(sql, ColumnKind::Text) => format!("coalesce({sql}, '') <> ''"),
        Source::Column(sql, _) => format!("{sql} IS NOT NULL"),
        Source::Json(expr) if def.ty == AttrType::Complex || def.multi_valued => {
            format!("{expr} IS NOT NULL")
        }
        Source::Json(expr) => format!("coalesce({expr}, '') <> ''"),
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
        CompValue::Str(s) if matches!(source, Source::Column(_, ColumnKind::Uuid)) => {
            // Our ids are UUIDs: equality uses the primary key; a value that is no UUID
            // equals none.
            match (op, Uuid::parse_str(s)) {
                (CompareOp::Eq | CompareOp::Ne, Ok(id)) => {
                    qb.push(if op == CompareOp::Eq {
                        "(u.id = "
                    } else {
                        "(u.id <> "
                    });
                    D::push_id(qb, id);
                    qb.push(")");
                }
                (CompareOp::Eq, Err(_)) => {
                    qb.push("FALSE");
                }
                (CompareOp::Ne, Err(_)) => {
                    qb.push("TRUE");
                }
                _ => D::push_text_cmp(qb, D::ID_TEXT, true, op, s),
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
    // Strings compare as text, which the dialect folds; the other literals as the SQL
    // type of their attribute.
    let literal = match (def.ty, value) {
        (AttrType::Boolean, CompValue::Bool(b)) => Some(Literal::Bool(*b)),
        (AttrType::Integer | AttrType::Decimal, CompValue::Num(n)) => Some(Literal::Num(n)),
        (AttrType::DateTime, CompValue::Str(s)) => Some(Literal::Time(
            DateTime::parse_from_rfc3339(s)
                .map_err(|_| ScimError::invalid_filter("expected an RFC 3339 date-time"))?
                .with_timezone(&Utc),
        )),
        (_, CompValue::Str(s)) => {
            let op = if op == CompareOp::Ne {
                CompareOp::Eq
            } else {
                op
            };
            D::push_text_cmp(qb, source.expr(), def.case_exact, op, s);
            None
        }
        _ => {
            return Err(ScimError::invalid_filter(format!(
                "'{}' cannot be compared with that value",
                def.name
            )));
        }
    };
    if let Some(literal) = literal {
        qb.push(format!("({} {op_sql} ", D::typed(source, def)));
        D::push_literal(qb, literal);
        qb.push(")");
    }
    if op == CompareOp::Ne {
        qb.push(") IS NOT TRUE)");
    }
    Ok(())
}

/// The ORDER BY expression of dialect `D` for `sortBy`: NULL when the user has no value.
pub(crate) fn sort_expr_as<D: Dialect>(path: &AttrPath) -> Result<String, ScimError> {
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
        let value = D::typed(&Source::Json(D::element(elem.name)), elem);
        return Ok(format!(
            "(SELECT {value} FROM {} ORDER BY {} LIMIT 1)",
            D::elements(attr),
            D::PRIMARY_FIRST
        ));
    }
    if leaf.ty == AttrType::Complex {
        return Err(ScimError::invalid_value(format!(
            "cannot sort by the complex attribute '{}'",
            path.display()
        )));
    }
    let source =
        singular_source::<D>(attr, path.sub).map_err(|e| ScimError::invalid_value(e.detail))?;
    Ok(D::typed(&source, leaf))
}

/// Translates one filter into a boolean PostgreSQL expression appended to `qb`.
pub fn push_filter(qb: &mut QueryBuilder<Postgres>, f: &Filter) -> Result<(), ScimError> {
    push_filter_as::<PgDialect>(qb, f)
}

/// The PostgreSQL ORDER BY expression for `sortBy`.
pub fn sort_expr(path: &AttrPath) -> Result<String, ScimError> {
    sort_expr_as::<PgDialect>(path)
}

/// The PostgreSQL `count(*)` of a list.
pub fn count_query(
    prefix: &'static str,
    tenant: &str,
    q: &ListQuery,
) -> Result<QueryBuilder<Postgres>, ScimError> {
    count_query_as::<PgDialect>(prefix, tenant, q)
}

/// One PostgreSQL page of a list.
pub fn page_query(
    prefix: &'static str,
    columns: &'static str,
    tenant: &str,
    q: &ListQuery,
) -> Result<QueryBuilder<Postgres>, ScimError> {
    page_query_as::<PgDialect>(prefix, columns, tenant, q)
}

/// PostgreSQL over the jsonb `u.resource`. A caseExact=false string compares lower()ed
/// on both sides, the form the userName index is built on.
pub(crate) struct PgDialect;

/// The jsonb expression of an attribute's container.
fn container_expr(c: Container) -> String {
    match c {
        Container::Core => "u.resource".into(),
        Container::Extension(e) => format!("(u.resource -> {})", lit(e.id)),
    }
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

impl Dialect for PgDialect {
    type Db = Postgres;

    const USER_NAME: &'static str = "u.user_name";
    const RESOURCE_TYPE: &'static str = "'User'::text";
    const ID_TEXT: &'static str = "u.id::text";
    const PRIMARY_FIRST: &'static str = "(e.v ->> 'primary') = 'true' DESC NULLS LAST";

    fn attribute(attr: AttrRef, sub: Option<&AttrDef>) -> String {
        let base = container_expr(attr.container);
        match sub {
            None => format!("({base} ->> {})", lit(attr.attr.name)),
            Some(s) => format!("(({base} -> {}) ->> {})", lit(attr.attr.name), lit(s.name)),
        }
    }

    fn element(name: &str) -> String {
        format!("(e.v ->> {})", lit(name))
    }

    fn elements(attr: AttrRef) -> String {
        format!(
            "jsonb_array_elements(coalesce({} -> {}, '[]'::jsonb)) AS e(v)",
            container_expr(attr.container),
            lit(attr.attr.name)
        )
    }

    fn has_key(attr: AttrRef) -> String {
        format!(
            "{} ? {}",
            container_expr(attr.container),
            lit(attr.attr.name)
        )
    }

    fn typed(source: &Source, def: &AttrDef) -> String {
        // Columns have their type already; `->>` gives text.
        let text = match source {
            Source::Column(sql, ColumnKind::Text) if !def.case_exact => {
                return format!("lower({sql})");
            }
            Source::Column(sql, _) => return sql.to_string(),
            Source::Json(text) => text,
        };
        match def.ty {
            AttrType::Integer | AttrType::Decimal => format!("({text})::numeric"),
            AttrType::Boolean => format!("({text})::boolean"),
            AttrType::DateTime => format!("({text})::timestamptz"),
            _ if !def.case_exact => format!("lower({text})"),
            _ => text.clone(),
        }
    }

    fn push_literal(qb: &mut QueryBuilder<Postgres>, value: Literal<'_>) {
        match value {
            Literal::Bool(b) => {
                qb.push_bind(b);
            }
            // As text, so no precision is lost on the way to numeric.
            Literal::Num(n) => {
                qb.push_bind(n.to_string());
                qb.push("::numeric");
            }
            Literal::Time(t) => {
                qb.push_bind(t);
            }
        }
    }

    fn push_id(qb: &mut QueryBuilder<Postgres>, id: Uuid) {
        qb.push_bind(id);
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

    /// The GIN index on `scim_email_values(resource)` answers e-mail equality.
    fn group_elements() -> String {
        "(SELECT jsonb_build_object('value', g.id::text, 'display', g.display_name,
                                    'type', 'direct') AS v
          FROM group_members gm JOIN groups g ON g.id = gm.group_id
          WHERE gm.user_id = u.id) AS e"
            .into()
    }

    fn push_group_id(qb: &mut QueryBuilder<Postgres>, id: Uuid) {
        qb.push_bind(id);
    }

    fn push_text(qb: &mut QueryBuilder<Postgres>, value: String) {
        qb.push_bind(value);
    }

    fn push_int(qb: &mut QueryBuilder<Postgres>, value: i64) {
        qb.push_bind(value);
    }

    fn push_email_key(qb: &mut QueryBuilder<Postgres>, value: &str) {
        qb.push("scim_email_values(u.resource) @> ARRAY[lower(");
        qb.push_bind(value.to_string());
        qb.push(")]");
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
