//! Ameyo: the REST client and the SCIM-to-Ameyo mapping. The in-memory emulator of
//! the Ameyo API is the `ameyo-emulator` crate (crates/ameyo-emulator).

pub mod client;
pub mod mapping;
