//! Ameyo: the REST client, the SCIM-to-Ameyo mapping, and an in-memory emulator of
//! the Ameyo API for tests, benchmarks and trying the service out.

pub mod client;
pub mod emulator;
pub mod mapping;
