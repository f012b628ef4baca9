//! ameyo-scim: a SCIM 2.0 service that provisions users from identity providers (Okta,
//! Microsoft Entra ID, any SCIM client) into Ameyo contact centers.
//!
//! Data flows `http` -> `scim` (pure protocol logic) -> `store` (Postgres, one
//! transaction per write, with a pending outbox row for delivery to Ameyo).
//!
//! The Ameyo emulator behind the `emulator` subcommand is the `ameyo_emulator` crate.

pub mod admin;
pub mod ameyo;
pub mod cli;
pub mod config;
pub mod http;
pub mod scim;
pub mod server;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod tenants;
