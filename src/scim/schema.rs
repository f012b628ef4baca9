//! The SCIM schemas this service speaks: the core User schema (RFC 7643 §4.1), the
//! enterprise extension (§4.3) and our Ameyo extension, as static data. Validation,
//! filters, PATCH paths, projection and the `/Schemas` document are all driven by it.

use serde_json::{Map, Value};

/// The core User schema URN.
pub const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
/// The enterprise User extension URN.
pub const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const ENTERPRISE_USER: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
/// Our extension with the Ameyo fields an IdP may set per user.
pub const AMEYO_USER: &str = "urn:ietf:params:scim:schemas:extension:ameyo:2.0:User";
pub const LIST_RESPONSE: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
pub const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
pub const SEARCH_REQUEST: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";
pub const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
pub const SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Schema";
pub const RESOURCE_TYPE: &str = "urn:ietf:params:scim:schemas:core:2.0:ResourceType";
pub const SERVICE_PROVIDER_CONFIG: &str =
    "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrType {
    String,
    Boolean,
    Decimal,
    Integer,
    DateTime,
    Reference,
    Complex,
    Binary,
}

impl AttrType {
    pub fn as_str(self) -> &'static str {
        match self {
            AttrType::String => "string",
            AttrType::Boolean => "boolean",
            AttrType::Decimal => "decimal",
            AttrType::Integer => "integer",
            AttrType::DateTime => "dateTime",
            AttrType::Reference => "reference",
            AttrType::Complex => "complex",
            AttrType::Binary => "binary",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutability {
    ReadOnly,
    ReadWrite,
    Immutable,
    WriteOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned {
    Always,
    Never,
    Default,
    Request,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uniqueness {
    None,
    Server,
    Global,
}

/// One attribute definition (RFC 7643 §7).
#[derive(Debug)]
pub struct AttrDef {
    pub name: &'static str,
    pub ty: AttrType,
    pub multi_valued: bool,
    pub required: bool,
    pub case_exact: bool,
    pub mutability: Mutability,
    pub returned: Returned,
    pub uniqueness: Uniqueness,
    pub description: &'static str,
    pub canonical_values: &'static [&'static str],
    pub reference_types: &'static [&'static str],
    pub sub_attributes: &'static [AttrDef],
}

const fn attr(name: &'static str, ty: AttrType, description: &'static str) -> AttrDef {
    AttrDef {
        name,
        ty,
        multi_valued: false,
        required: false,
        case_exact: false,
        mutability: Mutability::ReadWrite,
        returned: Returned::Default,
        uniqueness: Uniqueness::None,
        description,
        canonical_values: &[],
        reference_types: &[],
        sub_attributes: &[],
    }
}

const fn string(name: &'static str, description: &'static str) -> AttrDef {
    attr(name, AttrType::String, description)
}

impl AttrDef {
    const fn multi(mut self) -> Self {
        self.multi_valued = true;
        self
    }
    const fn required(mut self) -> Self {
        self.required = true;
        self
    }
    const fn case_exact(mut self) -> Self {
        self.case_exact = true;
        self
    }
    const fn read_only(mut self) -> Self {
        self.mutability = Mutability::ReadOnly;
        self
    }
    const fn write_only(mut self) -> Self {
        self.mutability = Mutability::WriteOnly;
        self.returned = Returned::Never;
        self
    }
    const fn always(mut self) -> Self {
        self.returned = Returned::Always;
        self
    }
    const fn server_unique(mut self) -> Self {
        self.uniqueness = Uniqueness::Server;
        self
    }
    const fn canonical(mut self, values: &'static [&'static str]) -> Self {
        self.canonical_values = values;
        self
    }
    const fn refs(mut self, types: &'static [&'static str]) -> Self {
        self.reference_types = types;
        self
    }
    const fn sub(mut self, subs: &'static [AttrDef]) -> Self {
        self.sub_attributes = subs;
        self
    }

    /// A sub-attribute by name, compared case-insensitively as RFC 7643 §2.1 requires.
    pub fn sub_attr(&self, name: &str) -> Option<&'static AttrDef> {
        find(self.sub_attributes, name)
    }
}

/// An attribute by name in a list, case-insensitively.
pub fn find(attrs: &'static [AttrDef], name: &str) -> Option<&'static AttrDef> {
    attrs.iter().find(|a| a.name.eq_ignore_ascii_case(name))
}

/// The shape shared by emails, phoneNumbers, ims, photos, entitlements, roles, x509Certificates.
const fn typed_multi(
    name: &'static str,
    description: &'static str,
    subs: &'static [AttrDef],
) -> AttrDef {
    attr(name, AttrType::Complex, description).multi().sub(subs)
}

macro_rules! value_subs {
    ($value:expr, $types:expr) => {
        &[
            $value,
            string(
                "display",
                "A human-readable name, primarily used for display purposes.",
            ),
            string("type", "A label indicating the attribute's function.").canonical($types),
            attr(
                "primary",
                AttrType::Boolean,
                "A Boolean value indicating the 'primary' or preferred attribute value.",
            ),
        ]
    };
}

const NAME_SUBS: &[AttrDef] = &[
    string(
        "formatted",
        "The full name, including all middle names, titles, and suffixes.",
    ),
    string("familyName", "The family name of the User."),
    string("givenName", "The given name of the User."),
    string("middleName", "The middle name(s) of the User."),
    string("honorificPrefix", "The honorific prefix(es) of the User."),
    string("honorificSuffix", "The honorific suffix(es) of the User."),
];

const ADDRESS_SUBS: &[AttrDef] = &[
    string(
        "formatted",
        "The full mailing address, formatted for display.",
    ),
    string("streetAddress", "The full street address component."),
    string("locality", "The city or locality component."),
    string("region", "The state or region component."),
    string("postalCode", "The zip code or postal code component."),
    string("country", "The country name component."),
    string("type", "A label indicating the attribute's function.")
        .canonical(&["work", "home", "other"]),
    attr(
        "primary",
        AttrType::Boolean,
        "A Boolean value indicating the primary address.",
    ),
];

const GROUP_SUBS: &[AttrDef] = &[
    string("value", "The identifier of the User's group.").read_only(),
    attr(
        "$ref",
        AttrType::Reference,
        "The URI of the corresponding 'Group' resource.",
    )
    .refs(&["User", "Group"])
    .read_only(),
    string(
        "display",
        "A human-readable name, primarily used for display purposes.",
    )
    .read_only(),
    string("type", "A label indicating the attribute's function.")
        .canonical(&["direct", "indirect"])
        .read_only(),
];

const MEMBER_SUBS: &[AttrDef] = &[
    string("value", "Identifier of the member of this Group.").required(),
    attr(
        "$ref",
        AttrType::Reference,
        "The URI corresponding to a SCIM resource that is a member of this Group.",
    )
    .refs(&["User"]),
    string(
        "display",
        "A human-readable name, primarily used for display purposes.",
    )
    .read_only(),
    string(
        "type",
        "A label indicating the type of resource, e.g., 'User'.",
    )
    .canonical(&["User"])
    .read_only(),
];

/// The core Group schema (RFC 7643 §4.2, §8.7.1). Members are Users only.
pub const GROUP_ATTRS: &[AttrDef] = &[
    string("displayName", "A human-readable name for the Group.")
        .required()
        .server_unique(),
    attr(
        "members",
        AttrType::Complex,
        "A list of members of the Group.",
    )
    .multi()
    .sub(MEMBER_SUBS),
];

/// The core User schema (RFC 7643 §4.1, §8.7.1).
pub const USER_ATTRS: &[AttrDef] = &[
    string(
        "userName",
        "Unique identifier for the User, used to authenticate to the service provider.",
    )
    .required()
    .server_unique(),
    attr(
        "name",
        AttrType::Complex,
        "The components of the user's real name.",
    )
    .sub(NAME_SUBS),
    string(
        "displayName",
        "The name of the User, suitable for display to end-users.",
    ),
    string(
        "nickName",
        "The casual way to address the user in real life.",
    ),
    attr(
        "profileUrl",
        AttrType::Reference,
        "A fully qualified URL pointing to a page representing the User's online profile.",
    )
    .refs(&["external"]),
    string("title", "The user's title, such as \"Vice President\"."),
    string(
        "userType",
        "Used to identify the relationship between the organization and the user.",
    ),
    string(
        "preferredLanguage",
        "Indicates the User's preferred written or spoken language.",
    ),
    string(
        "locale",
        "Used to indicate the User's default location for purposes of localizing items.",
    ),
    string(
        "timezone",
        "The User's time zone in the 'Olson' time zone database format.",
    ),
    attr(
        "active",
        AttrType::Boolean,
        "A Boolean value indicating the User's administrative status.",
    ),
    string(
        "password",
        "The User's cleartext password. Never returned; delivered to Ameyo and then forgotten.",
    )
    .case_exact()
    .write_only(),
    typed_multi(
        "emails",
        "Email addresses for the user.",
        value_subs!(
            string("value", "Email address for the User."),
            &["work", "home", "other"]
        ),
    ),
    typed_multi(
        "phoneNumbers",
        "Phone numbers for the User.",
        value_subs!(
            string("value", "Phone number of the User."),
            &["work", "home", "mobile", "fax", "pager", "other"]
        ),
    ),
    typed_multi(
        "ims",
        "Instant messaging addresses for the User.",
        value_subs!(
            string("value", "Instant messaging address for the User."),
            &["aim", "gtalk", "icq", "xmpp", "msn", "skype", "qq", "yahoo"]
        ),
    ),
    typed_multi(
        "photos",
        "URLs of photos of the User.",
        value_subs!(
            attr("value", AttrType::Reference, "URL of a photo of the User.").refs(&["external"]),
            &["photo", "thumbnail"]
        ),
    ),
    attr(
        "addresses",
        AttrType::Complex,
        "A physical mailing address for this User.",
    )
    .multi()
    .sub(ADDRESS_SUBS),
    attr(
        "groups",
        AttrType::Complex,
        "A list of groups to which the user belongs.",
    )
    .multi()
    .read_only()
    .sub(GROUP_SUBS),
    typed_multi(
        "entitlements",
        "A list of entitlements for the User.",
        value_subs!(string("value", "The value of an entitlement."), &[]),
    ),
    typed_multi(
        "roles",
        "A list of roles for the User.",
        value_subs!(string("value", "The value of a role."), &[]),
    ),
    typed_multi(
        "x509Certificates",
        "A list of certificates issued to the User.",
        value_subs!(
            attr(
                "value",
                AttrType::Binary,
                "The value of an X.509 certificate."
            ),
            &[]
        ),
    ),
];

const MANAGER_SUBS: &[AttrDef] = &[
    string(
        "value",
        "The id of the SCIM resource representing the User's manager.",
    ),
    attr(
        "$ref",
        AttrType::Reference,
        "The URI of the SCIM resource representing the User's manager.",
    )
    .refs(&["User"]),
    string("displayName", "The displayName of the User's manager.").read_only(),
];

/// The enterprise User extension (RFC 7643 §4.3).
pub const ENTERPRISE_ATTRS: &[AttrDef] = &[
    string(
        "employeeNumber",
        "Numeric or alphanumeric identifier assigned to a person.",
    ),
    string("costCenter", "Identifies the name of a cost center."),
    string("organization", "Identifies the name of an organization."),
    string("division", "Identifies the name of a division."),
    string("department", "Identifies the name of a department."),
    attr("manager", AttrType::Complex, "The User's manager.").sub(MANAGER_SUBS),
];

/// Ameyo user types known from the vendor documents.
pub const AMEYO_USER_TYPES: &[&str] = &[
    "Agent",
    "Supervisor",
    "Executive",
    "Professional Agent",
    "Analyst",
    "Administrator",
];
/// Ameyo login policies known from the vendor documents.
pub const AMEYO_LOGIN_POLICIES: &[&str] = &["disallow.after.limit", "verify.before.force.login"];

/// Our Ameyo extension: the per-user Ameyo settings an IdP may send.
pub const AMEYO_ATTRS: &[AttrDef] = &[
    string("userType", "Ameyo user type (role).")
        .case_exact()
        .canonical(AMEYO_USER_TYPES),
    attr(
        "contactCenterId",
        AttrType::Integer,
        "The Ameyo contact center to create the user in.",
    ),
    string("loginPolicy", "Ameyo login policy.")
        .case_exact()
        .canonical(AMEYO_LOGIN_POLICIES),
    attr(
        "maxAllowedLogins",
        AttrType::Integer,
        "Maximum concurrent Ameyo logins for the user.",
    ),
    attr(
        "defaultReady",
        AttrType::Boolean,
        "Whether the agent logs in as Ready.",
    ),
];

const META_SUBS: &[AttrDef] = &[
    string(
        "resourceType",
        "The name of the resource type of the resource.",
    )
    .case_exact()
    .read_only(),
    attr(
        "created",
        AttrType::DateTime,
        "The DateTime that the resource was added.",
    )
    .read_only(),
    attr(
        "lastModified",
        AttrType::DateTime,
        "The most recent DateTime that the details of this resource were updated.",
    )
    .read_only(),
    attr(
        "location",
        AttrType::Reference,
        "The URI of the resource being returned.",
    )
    .case_exact()
    .read_only(),
    string("version", "The version of the resource being returned.")
        .case_exact()
        .read_only(),
];

/// The attributes every resource has (RFC 7643 §3.1); not part of any published schema.
pub const COMMON_ATTRS: &[AttrDef] = &[
    string(
        "id",
        "A unique identifier for a SCIM resource as defined by the service provider.",
    )
    .case_exact()
    .read_only()
    .always()
    .server_unique(),
    string(
        "externalId",
        "A String that is an identifier for the resource as defined by the provisioning client.",
    )
    .case_exact(),
    attr(
        "meta",
        AttrType::Complex,
        "A complex attribute containing resource metadata.",
    )
    .read_only()
    .sub(META_SUBS),
];

/// A schema: its URN, names and attributes.
#[derive(Debug)]
pub struct SchemaDef {
    pub id: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    pub attributes: &'static [AttrDef],
}

pub static USER_SCHEMA: SchemaDef = SchemaDef {
    id: USER,
    name: "User",
    description: "User Account",
    attributes: USER_ATTRS,
};
pub static ENTERPRISE_SCHEMA: SchemaDef = SchemaDef {
    id: ENTERPRISE_USER,
    name: "EnterpriseUser",
    description: "Enterprise User",
    attributes: ENTERPRISE_ATTRS,
};
pub static AMEYO_SCHEMA: SchemaDef = SchemaDef {
    id: AMEYO_USER,
    name: "AmeyoUser",
    description: "Ameyo contact-center settings for a User",
    attributes: AMEYO_ATTRS,
};
pub static GROUP_SCHEMA: SchemaDef = SchemaDef {
    id: GROUP,
    name: "Group",
    description: "Group",
    attributes: GROUP_ATTRS,
};
pub static COMMON_SCHEMA: SchemaDef = SchemaDef {
    id: "",
    name: "Common",
    description: "Attributes common to every resource",
    attributes: COMMON_ATTRS,
};

/// The User schema extensions, in the order they are listed in `schemas`.
pub static EXTENSIONS: [&SchemaDef; 2] = [&ENTERPRISE_SCHEMA, &AMEYO_SCHEMA];
/// Every published schema.
pub static PUBLISHED: [&SchemaDef; 4] = [
    &USER_SCHEMA,
    &GROUP_SCHEMA,
    &ENTERPRISE_SCHEMA,
    &AMEYO_SCHEMA,
];

/// An extension schema by URN, case-insensitively.
pub fn extension(urn: &str) -> Option<&'static SchemaDef> {
    EXTENSIONS
        .iter()
        .copied()
        .find(|s| s.id.eq_ignore_ascii_case(urn))
}

/// Where an attribute lives in a User resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// Top level: core User attributes and the common ones (`id`, `externalId`, `meta`).
    Core,
    /// Inside the object keyed by this extension's URN.
    Extension(&'static SchemaDef),
}

impl Container {
    /// This container's object within a resource, if present.
    pub fn object(self, resource: &Map<String, Value>) -> Option<&Map<String, Value>> {
        match self {
            Container::Core => Some(resource),
            Container::Extension(e) => resource.get(e.id).and_then(Value::as_object),
        }
    }

    /// This container's object within a resource, created empty first if `create`.
    pub fn object_mut(
        self,
        resource: &mut Map<String, Value>,
        create: bool,
    ) -> Option<&mut Map<String, Value>> {
        match self {
            Container::Core => Some(resource),
            Container::Extension(e) => {
                if create && !resource.contains_key(e.id) {
                    resource.insert(e.id.to_string(), Value::Object(Map::new()));
                }
                resource.get_mut(e.id).and_then(Value::as_object_mut)
            }
        }
    }
}

impl PartialEq for SchemaDef {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}
impl Eq for SchemaDef {}

/// A resolved top-level attribute of a User: where it lives and its definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttrRef {
    pub container: Container,
    pub attr: &'static AttrDef,
}

impl PartialEq for AttrDef {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}
impl Eq for AttrDef {}

impl AttrRef {
    /// The fully qualified name, for messages.
    pub fn qualified(&self) -> String {
        match self.container {
            Container::Core => self.attr.name.to_string(),
            Container::Extension(s) => format!("{}:{}", s.id, self.attr.name),
        }
    }
}

/// Resolve an attribute name as written by a client (`userName`, `name.givenName`,
/// `urn:...:enterprise:2.0:User:manager.value`, any case) to its definition and an
/// optional sub-attribute name. Unqualified names are looked up in the core schema, then
/// the common attributes, then the extensions. Returns `None` for unknown names.
pub fn resolve(path: &str) -> Option<(AttrRef, Option<&'static AttrDef>)> {
    let (container, rest) = split_urn(path)?;
    let (name, sub) = match rest.split_once('.') {
        Some((n, s)) => (n, Some(s)),
        None => (rest, None),
    };
    let attr_ref = match container {
        Some(c) => AttrRef {
            container: c,
            attr: match c {
                Container::Core => find(USER_ATTRS, name).or_else(|| find(COMMON_ATTRS, name))?,
                Container::Extension(s) => find(s.attributes, name)?,
            },
        },
        None => lookup_unqualified(name)?,
    };
    let sub = match sub {
        Some(s) => Some(attr_ref.attr.sub_attr(s)?),
        None => None,
    };
    Some((attr_ref, sub))
}

fn lookup_unqualified(name: &str) -> Option<AttrRef> {
    if let Some(a) = find(USER_ATTRS, name).or_else(|| find(COMMON_ATTRS, name)) {
        return Some(AttrRef {
            container: Container::Core,
            attr: a,
        });
    }
    EXTENSIONS.iter().find_map(|s| {
        find(s.attributes, name).map(|a| AttrRef {
            container: Container::Extension(s),
            attr: a,
        })
    })
}

/// Split a possibly URN-qualified path into its container and the rest. `Some(None, _)`:
/// not qualified. `None`: qualified with a schema we do not know.
#[allow(clippy::type_complexity)]
/// Resolve an attribute name of a Group (`displayName`, `members.value`, `externalId`,
/// `meta.created`, optionally prefixed with the Group schema's URN), any case.
pub fn resolve_group(path: &str) -> Option<(AttrRef, Option<&'static AttrDef>)> {
    let rest = match path.get(..GROUP.len()) {
        Some(p) if p.eq_ignore_ascii_case(GROUP) => path[GROUP.len()..].strip_prefix(':')?,
        _ if path
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case("urn:")) =>
        {
            return None;
        }
        _ => path,
    };
    let (name, sub) = match rest.split_once('.') {
        Some((n, s)) => (n, Some(s)),
        None => (rest, None),
    };
    let attr = find(GROUP_ATTRS, name).or_else(|| find(COMMON_ATTRS, name))?;
    let sub = match sub {
        Some(s) => Some(attr.sub_attr(s)?),
        None => None,
    };
    Some((
        AttrRef {
            container: Container::Core,
            attr,
        },
        sub,
    ))
}

fn split_urn(path: &str) -> Option<(Option<Container>, &str)> {
    if !path
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("urn:"))
    {
        return Some((None, path));
    }
    let prefixed = |urn: &str| {
        path.get(..urn.len())
            .filter(|p| p.eq_ignore_ascii_case(urn))
            .and_then(|_| path[urn.len()..].strip_prefix(':'))
    };
    if let Some(rest) = prefixed(USER) {
        return Some((Some(Container::Core), rest));
    }
    for s in EXTENSIONS {
        if let Some(rest) = prefixed(s.id) {
            return Some((Some(Container::Extension(s)), rest));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_names_case_insensitively_and_qualified() {
        let (r, sub) = resolve("USERNAME").unwrap();
        assert_eq!(r.attr.name, "userName");
        assert!(sub.is_none());
        let (r, sub) = resolve("name.GIVENNAME").unwrap();
        assert_eq!(r.attr.name, "name");
        assert_eq!(sub.unwrap().name, "givenName");
        let (r, sub) =
            resolve("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value")
                .unwrap();
        assert_eq!(r.container, Container::Extension(&ENTERPRISE_SCHEMA));
        assert_eq!(sub.unwrap().name, "value");
        let (r, _) = resolve("urn:ietf:params:scim:schemas:core:2.0:User:userName").unwrap();
        assert_eq!(r.attr.name, "userName");
        let (r, _) = resolve("employeeNumber").unwrap();
        assert_eq!(r.container, Container::Extension(&ENTERPRISE_SCHEMA));
        // core userType wins over the Ameyo extension's
        assert_eq!(resolve("userType").unwrap().0.container, Container::Core);
        assert!(resolve("urn:example:unknown:attr").is_none());
        assert!(resolve("nosuch").is_none());
        assert!(resolve("name.nosuch").is_none());
        assert_eq!(
            resolve("meta.lastModified").unwrap().1.unwrap().name,
            "lastModified"
        );
    }
}
