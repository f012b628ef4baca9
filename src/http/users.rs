//! `/Users`: create, read, list and search, replace, patch, delete.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::error::ApiResult;
use super::{AppState, ScimBody, TenantExt, scim_json};
use crate::scim::filter::{self, AttrPath};
use crate::scim::projection::Projection;
use crate::scim::resource::{self, StoredUser, parse_user};
use crate::scim::{ScimError, patch as scim_patch, schema};
use crate::store::{Change, IfMatch, ListQuery};

/// The query parameters SCIM defines, by name, case-insensitively.
#[derive(Default)]
pub(super) struct Params {
    pub filter: Option<String>,
    pub start_index: Option<String>,
    pub count: Option<String>,
    pub sort_by: Option<String>,
    pub sort_order: Option<String>,
    pub attributes: Option<String>,
    pub excluded: Option<String>,
}

impl Params {
    pub fn parse(raw: Option<&str>) -> Self {
        let mut p = Params::default();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let slot = match k.to_ascii_lowercase().as_str() {
                "filter" => &mut p.filter,
                "startindex" => &mut p.start_index,
                "count" => &mut p.count,
                "sortby" => &mut p.sort_by,
                "sortorder" => &mut p.sort_order,
                "attributes" => &mut p.attributes,
                "excludedattributes" => &mut p.excluded,
                _ => continue,
            };
            *slot = Some(v.into_owned());
        }
        p
    }

    fn projection(&self) -> Result<Projection, ScimError> {
        Projection::from_query(self.attributes.as_deref(), self.excluded.as_deref())
    }
}

fn user_response(
    status: StatusCode,
    user: &StoredUser,
    base: &str,
    projection: &Projection,
) -> Response {
    let body = projection.apply(resource::render(user, base));
    let mut resp = scim_json(status, &Value::Object(body));
    if let Ok(etag) = HeaderValue::from_str(&user.etag()) {
        resp.headers_mut().insert(header::ETAG, etag);
    }
    if status == StatusCode::CREATED
        && let Ok(loc) = HeaderValue::from_str(&format!("{base}/Users/{}", user.id))
    {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    resp
}

pub(super) fn if_match(headers: &HeaderMap) -> Option<IfMatch> {
    headers
        .get(header::IF_MATCH)
        .and_then(|h| h.to_str().ok())
        .map(IfMatch::parse)
}

/// Our ids are UUIDs; anything else names no user.
fn user_id(id: &str) -> Result<Uuid, ScimError> {
    Uuid::parse_str(id).map_err(|_| ScimError::not_found("no user with that id"))
}

pub async fn create(
    State(state): State<AppState>,
    tenant: TenantExt,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ScimBody(body): ScimBody,
) -> ApiResult<Response> {
    let projection = Params::parse(query.as_deref()).projection()?;
    let input = parse_user(body)?;
    let user = state.store().create(tenant.id(), input).await?;
    tracing::info!(tenant = tenant.id(), user_id = %user.id, "user created");
    Ok(user_response(
        StatusCode::CREATED,
        &user,
        &state.base_url(&headers),
        &projection,
    ))
}

pub async fn get_one(
    State(state): State<AppState>,
    tenant: TenantExt,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let projection = Params::parse(query.as_deref()).projection()?;
    let id = user_id(&id)?;
    let user = state
        .store()
        .get(tenant.id(), id)
        .await?
        .ok_or_else(|| ScimError::not_found("no user with that id"))?;
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|h| h.to_str().ok())
        && IfMatch::parse(inm).matches(user.version)
    {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(etag) = HeaderValue::from_str(&user.etag()) {
            resp.headers_mut().insert(header::ETAG, etag);
        }
        return Ok(resp);
    }
    Ok(user_response(
        StatusCode::OK,
        &user,
        &state.base_url(&headers),
        &projection,
    ))
}

/// The list request shared by `GET` of a collection and `POST .../.search`.
pub(super) struct ListRequest {
    pub filter: Option<String>,
    pub start_index: Option<i64>,
    pub count: Option<i64>,
    pub sort_by: Option<String>,
    pub sort_order: Option<String>,
}

impl ListRequest {
    pub fn from_params(p: Params) -> Result<Self, ScimError> {
        Ok(ListRequest {
            start_index: parse_int("startIndex", p.start_index.as_deref())?,
            count: parse_int("count", p.count.as_deref())?,
            filter: p.filter,
            sort_by: p.sort_by,
            sort_order: p.sort_order,
        })
    }
}

fn parse_int(name: &str, v: Option<&str>) -> Result<Option<i64>, ScimError> {
    v.map(|s| {
        s.trim()
            .parse::<i64>()
            .map_err(|_| ScimError::invalid_value(format!("{name} must be an integer")))
    })
    .transpose()
}

pub async fn list(
    State(state): State<AppState>,
    tenant: TenantExt,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let p = Params::parse(query.as_deref());
    let projection = p.projection()?;
    let req = ListRequest::from_params(p)?;
    run_list(&state, &tenant, &headers, req, projection).await
}

/// A SearchRequest body (RFC 7644 §3.4.3): the list request and the attribute lists.
pub(super) fn search_request(
    body: Value,
) -> Result<(ListRequest, Vec<String>, Vec<String>), ScimError> {
    let Value::Object(mut obj) = body else {
        return Err(ScimError::invalid_syntax(
            "the request body must be a JSON object",
        ));
    };
    let mut take = |name: &str| -> Option<Value> {
        let key = obj.keys().find(|k| k.eq_ignore_ascii_case(name))?.clone();
        obj.remove(&key).filter(|v| !v.is_null())
    };
    let string = |name: &str, v: Option<Value>| -> Result<Option<String>, ScimError> {
        match v {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ScimError::invalid_value(format!("{name} must be a string"))),
        }
    };
    let int = |name: &str, v: Option<Value>| -> Result<Option<i64>, ScimError> {
        match v {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| ScimError::invalid_value(format!("{name} must be an integer"))),
            Some(Value::String(s)) => parse_int(name, Some(&s)),
            Some(_) => Err(ScimError::invalid_value(format!(
                "{name} must be an integer"
            ))),
        }
    };
    let names = |name: &str, v: Option<Value>| -> Result<Vec<String>, ScimError> {
        match v {
            None => Ok(vec![]),
            Some(Value::String(s)) => Ok(s.split(',').map(str::to_string).collect()),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|i| match i {
                    Value::String(s) => Ok(s),
                    _ => Err(ScimError::invalid_value(format!(
                        "{name} must list strings"
                    ))),
                })
                .collect(),
            Some(_) => Err(ScimError::invalid_value(format!(
                "{name} must be an array of strings"
            ))),
        }
    };
    let attributes = names("attributes", take("attributes"))?;
    let excluded = names("excludedAttributes", take("excludedAttributes"))?;
    let req = ListRequest {
        filter: string("filter", take("filter"))?,
        start_index: int("startIndex", take("startIndex"))?,
        count: int("count", take("count"))?,
        sort_by: string("sortBy", take("sortBy"))?,
        sort_order: string("sortOrder", take("sortOrder"))?,
    };
    Ok((req, attributes, excluded))
}

pub async fn search(
    State(state): State<AppState>,
    tenant: TenantExt,
    headers: HeaderMap,
    ScimBody(body): ScimBody,
) -> ApiResult<Response> {
    let (req, attributes, excluded) = search_request(body)?;
    let projection = Projection::from_lists(&attributes, &excluded)?;
    run_list(&state, &tenant, &headers, req, projection).await
}

/// Sort order, startIndex and count of a list request, within the configured bounds.
pub(super) fn list_bounds(
    state: &AppState,
    req: &ListRequest,
) -> Result<(bool, u64, u64), ScimError> {
    let settings = &state.inner.scim;
    let descending = match req
        .sort_order
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("ascending") => false,
        Some("descending") => true,
        Some(_) => {
            return Err(ScimError::invalid_value(
                "sortOrder must be ascending or descending",
            ));
        }
    };
    // RFC 7644 §3.4.2.4: startIndex below 1 means 1; a negative count means 0.
    let start_index = req.start_index.unwrap_or(1).max(1) as u64;
    let count = req
        .count
        .unwrap_or(settings.default_page_size as i64)
        .clamp(0, settings.max_page_size as i64) as u64;
    Ok((descending, start_index, count))
}

/// A list page (RFC 7644 §3.4.2): `totalResults`, `startIndex`, `itemsPerPage` and the
/// resources.
pub(super) fn list_page(total: u64, start_index: u64, resources: Vec<Value>) -> Response {
    let mut body = Map::new();
    body.insert("schemas".into(), serde_json::json!([schema::LIST_RESPONSE]));
    body.insert("totalResults".into(), total.into());
    body.insert("startIndex".into(), start_index.into());
    body.insert("itemsPerPage".into(), resources.len().into());
    body.insert("Resources".into(), Value::Array(resources));
    scim_json(StatusCode::OK, &Value::Object(body))
}

/// The store's query for a list request: the filter parsed and the sort key resolved
/// against one resource type's schema, the page within the configured bounds.
pub(super) fn list_query(
    state: &AppState,
    req: &ListRequest,
    parse: fn(&str) -> Result<crate::scim::filter::Filter, ScimError>,
    resolve: crate::scim::filter::Resolver,
) -> Result<ListQuery, ScimError> {
    let filter = req.filter.as_deref().map(parse).transpose()?;
    let sort_by = req
        .sort_by
        .as_deref()
        .map(|name| {
            resolve(name)
                .map(|(attr, sub)| AttrPath { attr, sub })
                .ok_or_else(|| {
                    ScimError::invalid_value(format!("cannot sort by unknown attribute '{name}'"))
                })
        })
        .transpose()?;
    let (descending, start_index, count) = list_bounds(state, req)?;
    Ok(ListQuery {
        filter,
        sort_by,
        descending,
        start_index,
        count,
    })
}

async fn run_list(
    state: &AppState,
    tenant: &TenantExt,
    headers: &HeaderMap,
    req: ListRequest,
    projection: Projection,
) -> ApiResult<Response> {
    let query = list_query(state, &req, filter::parse, schema::resolve)?;
    let start_index = query.start_index;
    let page = state.store().list(tenant.id(), &query).await?;
    let base = state.base_url(headers);
    let resources: Vec<Value> = page
        .users
        .iter()
        .map(|u| Value::Object(projection.apply(resource::render(u, &base))))
        .collect();
    Ok(list_page(page.total, start_index, resources))
}

pub async fn replace(
    State(state): State<AppState>,
    tenant: TenantExt,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    ScimBody(body): ScimBody,
) -> ApiResult<Response> {
    let input = parse_user(body)?;
    let change = |current: &StoredUser| {
        let mut input = input.clone();
        input.keep_active_of(current.active);
        if input.password.is_none()
            && input.resource == current.resource
            && input.active == current.active
        {
            return Ok(None);
        }
        Ok(Some(input))
    };
    write(
        &state,
        &tenant,
        &headers,
        &id,
        query.as_deref(),
        "user replaced",
        &change,
    )
    .await
}

pub async fn patch(
    State(state): State<AppState>,
    tenant: TenantExt,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    ScimBody(body): ScimBody,
) -> ApiResult<Response> {
    let ops = scim_patch::parse_request(body)?;
    let change = |current: &StoredUser| {
        scim_patch::patch_user(&current.resource, current.active, ops.clone())
    };
    write(
        &state,
        &tenant,
        &headers,
        &id,
        query.as_deref(),
        "user patched",
        &change,
    )
    .await
}

/// PUT and PATCH: a read-modify-write of one user, honouring If-Match.
async fn write(
    state: &AppState,
    tenant: &TenantExt,
    headers: &HeaderMap,
    id: &str,
    query: Option<&str>,
    what: &'static str,
    change: &Change<'_>,
) -> ApiResult<Response> {
    let projection = Params::parse(query).projection()?;
    let id = user_id(id)?;
    let user = state
        .store()
        .update(tenant.id(), id, if_match(headers).as_ref(), change)
        .await?;
    tracing::info!(tenant = tenant.id(), user_id = %id, version = user.version, "{what}");
    Ok(user_response(
        StatusCode::OK,
        &user,
        &state.base_url(headers),
        &projection,
    ))
}

pub async fn delete(
    State(state): State<AppState>,
    tenant: TenantExt,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = user_id(&id)?;
    state
        .store()
        .delete(tenant.id(), id, if_match(&headers).as_ref())
        .await?;
    tracing::info!(tenant = tenant.id(), user_id = %id, "user deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}
