//! weft's collector: a hyper + tokio server that receives Segment-spec
//! events, stores them durably and answers profile queries.
//!
//! Layout (request path first):
//! - [`server`]: the accept loop, per-connection limits and graceful
//!   shutdown; [`serve`] is the entry point tests and the binary call.
//! - [`routes`]: method + path to handler, CORS; turns every handler's
//!   `Err` into its response.
//! - [`error`]: [`error::ApiError`], the one enum of request failures, and
//!   the one mapping from it to status codes and JSON reasons.
//! - [`ingest`]: `/v1/batch` and the single-message endpoints: body limits,
//!   gzip, write-key auth; then [`admission`]: the body parsed once,
//!   per-message validation, enrichment (receivedAt, clock-skew correction,
//!   truncated IP), batch context merged, consent checked.
//! - [`consent`]: server-side consent enforcement and consent records.
//! - [`admin`]: the bearer-token admin API (`/v1/profiles/{id}`).
//! - [`app`]: the state handlers share (config, store, clock, metrics).
//! - [`assets`]: the SDK files and the demo site, embedded in the binary by
//!   `cargo xtask dist` (or served from `--sdk-dir`/`--www-dir`).
//! - [`proxy`]: the client address behind trusted reverse proxies.
//! - [`store`]: the [`store::EventStore`] seam and the embedded store: the
//!   event log ([`log`], records in [`record`]) written with group commit
//!   on the ack path, and its SQLite index applied by a consumer thread.
//! - [`consumer`]: what reads the log into derived state (the index now;
//!   segments and destinations next), each from its own position.
//! - [`clock`]: the replaceable clock.
//! - [`hashing`]: the hash maps the indexer keys by identifiers.
//! - [`ratelimit`]: per-source token buckets (429 beyond them).
//! - [`metrics`]: counters rendered as Prometheus text.
//! - [`config`], [`config_file`] and [`cli`]: settings, `weft.toml` checked
//!   with every problem's line, and the flags/env vars and subcommands.
//! - [`backup`]: online backup and restore of a data directory;
//!   [`store::version`]: format versions, migration and refusal.
//!
//! Invariants: a request is answered 200 only after its accepted messages are
//! appended to the event log and synced; handlers return `Result<_, ApiError>` and only
//! `error` maps errors to statuses; logs never contain properties, traits or
//! full IP addresses.

pub mod admin;
pub mod admission;
pub mod app;
pub mod assets;
pub mod backup;
pub mod cli;
pub mod clock;
pub mod config;
pub mod config_file;
pub mod consent;
pub mod consumer;
pub mod destinations;
pub mod device_cookie;
pub mod error;
#[cfg(test)]
mod fuzz;
pub mod hashing;
pub mod identity;
#[cfg(test)]
mod identity_truth;
pub mod ingest;
pub mod log;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod record;
pub mod routes;
pub mod segments;
pub mod server;
pub mod stats;
pub mod store;

pub use config::{Config, Source};
pub use server::{ServeError, serve, serve_store, serve_with_clock};
