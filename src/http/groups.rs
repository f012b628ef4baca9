//! `/Groups`: create, read, list and search, replace, patch, delete. Members are users
//! of the same tenant; a membership change re-delivers the users whose Ameyo fields
//! the tenant's group rules make depend on it (see [`crate::store::groups`]).

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::error::ApiResult;
use super::users::{ListRequest, Params, if_match, list_page, list_query, search_request};
use super::{AppState, ScimBody, TenantExt, scim_json};
use crate::scim::filter;
use crate::scim::group::{self, GroupChange, StoredGroup};
use crate::scim::{ScimError, schema};

/// `attributes` / `excludedAttributes` over a group's few attributes: top-level names,
/// case-insensitively, with or without the Group schema's URN.
#[derive(Debug, Default)]
pub(super) struct GroupProjection {
    include: Option<Vec<String>>,
    exclude: Vec<String>,
    /// A member's `display` (the user's displayName, else its userName) is returned when
    /// asked for by name (`attributes=members.display`): RFC 7643's Group schema gives
    /// members `value`, `$ref` and `type`, and clients compare what they read back with
    /// what they sent.
    display: bool,
}

impl GroupProjection {
    /// The names of a list without the Group schema's URN, lower case.
    fn full_names(list: &[String]) -> Vec<String> {
        list.iter()
            .filter_map(|n| {
                let n = n.trim();
                let n = match n.get(..schema::GROUP.len()) {
                    Some(p) if p.eq_ignore_ascii_case(schema::GROUP) => {
                        n[schema::GROUP.len()..].trim_start_matches(':')
                    }
                    _ => n,
                };
                (!n.is_empty()).then(|| n.to_ascii_lowercase())
            })
            .collect()
    }

    fn names(list: &[String]) -> Vec<String> {
        Self::full_names(list)
            .into_iter()
            .map(|n| n.split('.').next().unwrap_or("").to_string())
            .filter(|n| !n.is_empty())
            .collect()
    }

    pub(super) fn new(attributes: &[String], excluded: &[String]) -> Self {
        let include = Self::names(attributes);
        Self {
            include: (!include.is_empty()).then_some(include),
            exclude: Self::names(excluded),
            display: Self::full_names(attributes)
                .iter()
                .any(|n| n == "members.display"),
        }
    }

    fn from_params(p: &Params) -> Self {
        let split = |s: &Option<String>| -> Vec<String> {
            s.as_deref()
                .map(|s| s.split(',').map(str::to_string).collect())
                .unwrap_or_default()
        };
        Self::new(&split(&p.attributes), &split(&p.excluded))
    }

    /// Whether `attributes` names `members`.
    pub(super) fn names_members(&self) -> bool {
        self.include
            .as_ref()
            .is_some_and(|names| names.iter().any(|n| n == "members"))
    }

    /// Whether the members must be read: asked for, or returned by default.
    pub(super) fn members(&self, by_default: bool) -> bool {
        match &self.include {
            Some(names) => names.iter().any(|n| n == "members"),
            None => by_default && !self.exclude.iter().any(|n| n == "members"),
        }
    }

    pub(super) fn apply(&self, mut full: Map<String, Value>) -> Map<String, Value> {
        if !self.display
            && let Some(Value::Array(members)) = full.get_mut("members")
        {
            for m in members.iter_mut().filter_map(Value::as_object_mut) {
                m.remove("display");
            }
        }
        full.retain(|k, _| {
            let k = k.to_ascii_lowercase();
            if k == "id" || k == "schemas" {
                return true;
            }
            match &self.include {
                Some(names) => names.contains(&k),
                None => !self.exclude.contains(&k),
            }
        });
        full
    }
}

/// Most members a PATCH answer carries unless `attributes` asks for them: a larger
/// group's answer leaves them out.
pub const PATCH_MEMBERS_SHOWN: usize = 1000;

fn group_id(id: &str) -> Result<Uuid, ScimError> {
    Uuid::parse_str(id).map_err(|_| ScimError::not_found("no group with that id"))
}

fn group_response(
    status: StatusCode,
    g: &StoredGroup,
    base: &str,
    projection: &GroupProjection,
) -> Response {
    let body = projection.apply(group::render(g, base));
    let mut resp = scim_json(status, &Value::Object(body));
    if let Ok(etag) = HeaderValue::from_str(&g.etag()) {
        resp.headers_mut().insert(header::ETAG, etag);
    }
    if status == StatusCode::CREATED
        && let Ok(loc) = HeaderValue::from_str(&format!("{base}/Groups/{}", g.id))
    {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    resp
}

pub async fn create(
    State(state): State<AppState>,
    tenant: TenantExt,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ScimBody(body): ScimBody,
) -> ApiResult<Response> {
    let projection = GroupProjection::from_params(&Params::parse(query.as_deref()));
    let input = group::parse_group(body)?;
    let watched = state.watched(tenant.id());
    let members = input.members.len();
    let g = state
        .groups()
        .create_group(tenant.id(), input, &watched, projection.members(true))
        .await?;
    tracing::info!(tenant = tenant.id(), group_id = %g.id, members, "group created");
    Ok(group_response(
        StatusCode::CREATED,
        &g,
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
    let projection = GroupProjection::from_params(&Params::parse(query.as_deref()));
    let id = group_id(&id)?;
    let g = state
        .groups()
        .get_group(tenant.id(), id, projection.members(true))
        .await?
        .ok_or_else(|| ScimError::not_found("no group with that id"))?;
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|h| h.to_str().ok())
        && crate::store::IfMatch::parse(inm).matches(g.version)
    {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(etag) = HeaderValue::from_str(&g.etag()) {
            resp.headers_mut().insert(header::ETAG, etag);
        }
        return Ok(resp);
    }
    Ok(group_response(
        StatusCode::OK,
        &g,
        &state.base_url(&headers),
        &projection,
    ))
}

pub async fn list(
    State(state): State<AppState>,
    tenant: TenantExt,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let p = Params::parse(query.as_deref());
    let projection = GroupProjection::from_params(&p);
    let req = ListRequest::from_params(p)?;
    run_list(&state, &tenant, &headers, req, projection).await
}

pub async fn search(
    State(state): State<AppState>,
    tenant: TenantExt,
    headers: HeaderMap,
    ScimBody(body): ScimBody,
) -> ApiResult<Response> {
    let (req, attributes, excluded) = search_request(body)?;
    let projection = GroupProjection::new(&attributes, &excluded);
    run_list(&state, &tenant, &headers, req, projection).await
}

async fn run_list(
    state: &AppState,
    tenant: &TenantExt,
    headers: &HeaderMap,
    req: ListRequest,
    projection: GroupProjection,
) -> ApiResult<Response> {
    let query = list_query(state, &req, filter::parse_group, schema::resolve_group)?;
    let start_index = query.start_index;
    let page = state
        .groups()
        .list_groups(tenant.id(), &query, projection.members(true))
        .await?;
    let base = state.base_url(headers);
    let resources: Vec<Value> = page
        .groups
        .iter()
        .map(|g| Value::Object(projection.apply(group::render(g, &base))))
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
    let projection = GroupProjection::from_params(&Params::parse(query.as_deref()));
    let change = GroupChange::from(group::parse_group(body)?);
    // A PUT sent the whole member list: the answer carries it back.
    let members = projection.members(true).then_some(usize::MAX);
    write(
        &state,
        &tenant,
        &headers,
        &id,
        change,
        members,
        &projection,
        "group replaced",
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
    let params = Params::parse(query.as_deref());
    // RFC 7644 §3.5.2: 200 and the resource (subject to `attributes` and
    // `excludedAttributes`), or 204; scim-sanity and most clients expect 200. The
    // resource holds every member, and a group of 100,000 members is not sent back on
    // every membership change: by default the answer carries the members when there are
    // at most PATCH_MEMBERS_SHOWN of them, and leaves them out of a larger group; a
    // request naming `members` in `attributes` gets them all.
    let projection = GroupProjection::from_params(&params);
    let change = group::parse_patch(body)?;
    let members = if projection.names_members() {
        Some(usize::MAX)
    } else if projection.members(true) {
        Some(PATCH_MEMBERS_SHOWN)
    } else {
        None
    };
    write(
        &state,
        &tenant,
        &headers,
        &id,
        change,
        members,
        &projection,
        "group patched",
    )
    .await
}

/// PUT and PATCH: apply `change` atomically, honouring If-Match; `members`: read the
/// member list for the answer unless the group has more than that many; answer 200
/// with the group as `projection` shapes it.
#[allow(clippy::too_many_arguments)]
async fn write(
    state: &AppState,
    tenant: &TenantExt,
    headers: &HeaderMap,
    id: &str,
    change: GroupChange,
    members: Option<usize>,
    projection: &GroupProjection,
    what: &'static str,
) -> ApiResult<Response> {
    let id = group_id(id)?;
    let watched = state.watched(tenant.id());
    let g = state
        .groups()
        .change_group(
            tenant.id(),
            id,
            if_match(headers).as_ref(),
            &change,
            &watched,
            members,
        )
        .await?;
    tracing::info!(tenant = tenant.id(), group_id = %id, version = g.version, "{what}");
    Ok(group_response(
        StatusCode::OK,
        &g,
        &state.base_url(headers),
        projection,
    ))
}

pub async fn delete(
    State(state): State<AppState>,
    tenant: TenantExt,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = group_id(&id)?;
    let watched = state.watched(tenant.id());
    state
        .groups()
        .delete_group(tenant.id(), id, if_match(&headers).as_ref(), &watched)
        .await?;
    tracing::info!(tenant = tenant.id(), group_id = %id, "group deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}
