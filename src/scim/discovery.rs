//! The discovery documents (RFC 7644 §4): ServiceProviderConfig, ResourceTypes and
//! Schemas, generated from the static schema definitions so they cannot drift.

use serde_json::{Value, json};

use super::schema::{
    self, AttrDef, Mutability, PUBLISHED, RESOURCE_TYPE, Returned, SCHEMA, SERVICE_PROVIDER_CONFIG,
    SchemaDef, Uniqueness,
};

fn attr_json(a: &AttrDef) -> Value {
    let mut v = json!({
        "name": a.name,
        "type": a.ty.as_str(),
        "multiValued": a.multi_valued,
        "description": a.description,
        "required": a.required,
        "caseExact": a.case_exact,
        "mutability": match a.mutability {
            Mutability::ReadOnly => "readOnly",
            Mutability::ReadWrite => "readWrite",
            Mutability::Immutable => "immutable",
            Mutability::WriteOnly => "writeOnly",
        },
        "returned": match a.returned {
            Returned::Always => "always",
            Returned::Never => "never",
            Returned::Default => "default",
            Returned::Request => "request",
        },
        "uniqueness": match a.uniqueness {
            Uniqueness::None => "none",
            Uniqueness::Server => "server",
            Uniqueness::Global => "global",
        },
    });
    if !a.canonical_values.is_empty() {
        v["canonicalValues"] = json!(a.canonical_values);
    }
    if !a.reference_types.is_empty() {
        v["referenceTypes"] = json!(a.reference_types);
    }
    if !a.sub_attributes.is_empty() {
        v["subAttributes"] = a.sub_attributes.iter().map(attr_json).collect();
    }
    v
}

/// One Schema resource.
pub fn schema_resource(s: &SchemaDef, base: &str) -> Value {
    json!({
        "schemas": [SCHEMA],
        "id": s.id,
        "name": s.name,
        "description": s.description,
        "attributes": s.attributes.iter().map(attr_json).collect::<Vec<_>>(),
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{}", s.id)},
    })
}

/// A published schema by URN.
pub fn find_schema(id: &str) -> Option<&'static SchemaDef> {
    PUBLISHED
        .iter()
        .copied()
        .find(|s| s.id.eq_ignore_ascii_case(id))
}

pub fn schemas(base: &str) -> Vec<Value> {
    PUBLISHED.iter().map(|s| schema_resource(s, base)).collect()
}

/// The User resource type.
pub fn user_resource_type(base: &str) -> Value {
    json!({
        "schemas": [RESOURCE_TYPE],
        "id": "User",
        "name": "User",
        "endpoint": "/Users",
        "description": "User Account",
        "schema": schema::USER,
        "schemaExtensions": schema::EXTENSIONS.iter().map(|e| json!({"schema": e.id, "required": false})).collect::<Vec<_>>(),
        "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/User")},
    })
}

/// The Group resource type.
pub fn group_resource_type(base: &str) -> Value {
    json!({
        "schemas": [RESOURCE_TYPE],
        "id": "Group",
        "name": "Group",
        "endpoint": "/Groups",
        "description": "Group",
        "schema": schema::GROUP,
        "schemaExtensions": [],
        "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/Group")},
    })
}

/// ServiceProviderConfig (RFC 7643 §5).
pub fn service_provider_config(base: &str, max_results: usize) -> Value {
    json!({
        "schemas": [SERVICE_PROVIDER_CONFIG],
        "patch": {"supported": true},
        "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": true, "maxResults": max_results},
        "changePassword": {"supported": true},
        "sort": {"supported": true},
        "etag": {"supported": true},
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "OAuth Bearer Token",
            "description": "A static bearer token, or a JWT from the tenant's issuer, in the Authorization header.",
            "primary": true,
        }],
        "meta": {"resourceType": "ServiceProviderConfig", "location": format!("{base}/ServiceProviderConfig")},
    })
}
