//! The SCIM 2.0 protocol (RFC 7643, RFC 7644) as pure functions over data: schemas,
//! resource validation, filters, PATCH, projection and discovery. No I/O here.

pub mod discovery;
pub mod error;
pub mod filter;
pub mod group;
pub mod patch;
pub mod projection;
pub mod resource;
pub mod schema;

pub use error::{ScimError, ScimType};
