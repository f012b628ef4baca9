//! `POST /.search` at the root (RFC 7644 §3.4.2.1, §3.4.3): a query over every resource
//! of the tenant, Users and Groups, subject to filtering.
//!
//! - The filter applies to each resource type whose schema has every attribute it
//!   names: `userName eq "x"` finds users only, `members[value eq "id"]` groups only,
//!   `displayName`, `externalId`, `id` and `meta.*` look at both. A filter that names
//!   an attribute neither has is refused (`invalidFilter`).
//! - One list: the users, then the groups. `totalResults` counts both; `startIndex`
//!   and `count` page over that list. `sortBy` orders each type that has the attribute
//!   (a type without it keeps its default, stable order).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::Value;

use super::error::ApiResult;
use super::groups::GroupProjection;
use super::users::{ListRequest, list_bounds, list_page, search_request};
use super::{AppState, ScimBody, TenantExt};
use crate::scim::filter::{self, AttrPath, Filter};
use crate::scim::projection::Projection;
use crate::scim::{ScimError, group, resource, schema};
use crate::store::ListQuery;

/// What the root query asks of one resource type: `None` when its filter names an
/// attribute the type does not have (none of its resources match).
struct TypeQuery {
    filter: Option<Filter>,
    sort_by: Option<AttrPath>,
}

/// The filter and sort of a root query for users and for groups.
fn split_query(req: &ListRequest) -> Result<(Option<TypeQuery>, Option<TypeQuery>), ScimError> {
    let (users_filter, groups_filter) = match req.filter.as_deref() {
        None => (Some(None), Some(None)),
        Some(f) => match (filter::parse(f), filter::parse_group(f)) {
            (Err(e), Err(_)) => return Err(e),
            (u, g) => (u.ok().map(Some), g.ok().map(Some)),
        },
    };
    let (users_sort, groups_sort) = match req.sort_by.as_deref() {
        None => (None, None),
        Some(name) => {
            let u = schema::resolve(name).map(|(attr, sub)| AttrPath { attr, sub });
            let g = schema::resolve_group(name).map(|(attr, sub)| AttrPath { attr, sub });
            if u.is_none() && g.is_none() {
                return Err(ScimError::invalid_value(format!(
                    "cannot sort by unknown attribute '{name}'"
                )));
            }
            (u, g)
        }
    };
    Ok((
        users_filter.map(|filter| TypeQuery {
            filter,
            sort_by: users_sort,
        }),
        groups_filter.map(|filter| TypeQuery {
            filter,
            sort_by: groups_sort,
        }),
    ))
}

/// Where the groups' part of a page starts, and how many it holds: the page covers
/// positions `start..start + count` of the users-then-groups list.
fn groups_window(start: u64, count: u64, users_total: u64, users_listed: u64) -> (u64, u64) {
    let start = if start > users_total {
        start - users_total
    } else {
        1
    };
    (start, count.saturating_sub(users_listed))
}

pub async fn search(
    State(state): State<AppState>,
    tenant: TenantExt,
    headers: HeaderMap,
    ScimBody(body): ScimBody,
) -> ApiResult<Response> {
    let (req, attributes, excluded) = search_request(body)?;
    let user_projection = Projection::from_lists(&attributes, &excluded)?;
    let group_projection = GroupProjection::new(&attributes, &excluded);
    let (users, groups) = split_query(&req)?;
    let (descending, start_index, count) = list_bounds(&state, &req)?;
    let base = state.base_url(&headers);
    let mut resources = Vec::new();

    let mut users_total = 0;
    if let Some(q) = users {
        let query = ListQuery {
            filter: q.filter,
            sort_by: q.sort_by,
            descending,
            start_index,
            count,
        };
        let page = state.store().list(tenant.id(), &query).await?;
        users_total = page.total;
        resources.extend(
            page.users
                .iter()
                .map(|u| Value::Object(user_projection.apply(resource::render(u, &base)))),
        );
    }

    let mut groups_total = 0;
    if let Some(q) = groups {
        let (start, count) = groups_window(start_index, count, users_total, resources.len() as u64);
        let query = ListQuery {
            filter: q.filter,
            sort_by: q.sort_by,
            descending,
            start_index: start,
            count,
        };
        let page = state
            .groups()
            .list_groups(tenant.id(), &query, group_projection.members(true))
            .await?;
        groups_total = page.total;
        resources.extend(
            page.groups
                .iter()
                .map(|g| Value::Object(group_projection.apply(group::render(g, &base)))),
        );
    }

    Ok(list_page(
        users_total + groups_total,
        start_index,
        resources,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(filter: Option<&str>, sort_by: Option<&str>) -> ListRequest {
        ListRequest {
            filter: filter.map(str::to_string),
            start_index: None,
            count: None,
            sort_by: sort_by.map(str::to_string),
            sort_order: None,
        }
    }

    #[test]
    fn a_filter_applies_to_the_types_that_have_its_attributes() {
        let (u, g) = split_query(&req(None, None)).unwrap();
        assert!(u.unwrap().filter.is_none() && g.unwrap().filter.is_none());
        let (u, g) = split_query(&req(Some("userName eq \"a\""), None)).unwrap();
        assert!(u.unwrap().filter.is_some());
        assert!(g.is_none());
        let (u, g) = split_query(&req(Some("members[value eq \"x\"]"), None)).unwrap();
        assert!(u.is_none());
        assert!(g.unwrap().filter.is_some());
        let (u, g) = split_query(&req(Some("meta.resourceType eq \"Group\""), None)).unwrap();
        assert!(u.is_some() && g.is_some());
        let e = split_query(&req(Some("nosuch eq \"a\""), None))
            .err()
            .unwrap();
        assert_eq!(e.status, 400);
        assert_eq!(
            e.scim_type,
            Some(crate::scim::error::ScimType::InvalidFilter)
        );
    }

    #[test]
    fn sort_applies_to_the_types_that_have_the_attribute() {
        let (u, g) = split_query(&req(None, Some("userName"))).unwrap();
        assert!(u.unwrap().sort_by.is_some());
        assert!(g.unwrap().sort_by.is_none());
        let (u, g) = split_query(&req(None, Some("displayName"))).unwrap();
        assert!(u.unwrap().sort_by.is_some() && g.unwrap().sort_by.is_some());
        assert!(split_query(&req(None, Some("nosuch"))).is_err());
    }

    #[test]
    fn pages_run_over_users_then_groups() {
        // 5 users, page 1..3: users only, groups asked for their total only.
        assert_eq!(groups_window(1, 3, 5, 3), (1, 0));
        // Page 4..7 holds users 4 and 5, then groups 1 and 2.
        assert_eq!(groups_window(4, 4, 5, 2), (1, 2));
        // Page 7..8 is past the users: groups 2 and 3.
        assert_eq!(groups_window(7, 2, 5, 0), (2, 2));
        // No user matched.
        assert_eq!(groups_window(1, 10, 0, 0), (1, 10));
        // count=0: totals only.
        assert_eq!(groups_window(1, 0, 5, 0), (1, 0));
    }
}
