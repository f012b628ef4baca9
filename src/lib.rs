//! ameyo-scim: a SCIM 2.0 service that provisions users from identity providers (Okta,
//! Microsoft Entra ID, any SCIM client) into Ameyo contact centers.
//!
//! Two halves, joined only by the database:
//!
//! - **In**: `http` (auth selects the tenant, bounds, SCIM errors) -> `scim` (parse,
//!   validate, filter, PATCH; pure) -> `store` (one statement writes the user row and
//!   marks its outbox row pending) -> the IdP's answer, after the commit.
//! - **Out**: `sync` workers claim due outbox rows through `store::outbox` (lease,
//!   heartbeat, fencing token) -> `sync::decide` (pure: which Ameyo calls, which
//!   outcome) -> `ameyo::client` (session, calls, classification) with
//!   `ameyo::mapping` (pure: SCIM user -> Ameyo fields) -> `store::outbox` records the
//!   outcome, a retry or a dead letter.
//!
//! `tenants` builds each tenant's runtime objects once (JWT verifier, mapping, Ameyo
//! client); `config` is a leaf of settings types. The Ameyo emulator behind the
//! `emulator` subcommand is the `ameyo_emulator` crate; `bench` measures the service
//! (the `bench` subcommand).

pub mod admin;
pub mod ameyo;
pub mod bench;
pub mod cli;
pub mod config;
pub mod dev;
pub mod http;
pub mod migrate_store;
pub mod scim;
pub mod server;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod tenants;
