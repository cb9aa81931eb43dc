//! weft's end-to-end tests, one binary. Each module is a part of the
//! product exercised through its real interfaces:
//!
//! - `browser`: the script tag in real headless Chromium against a real
//!   collector.
//! - `consent`: server-side consent enforcement and the consent audit log.
//! - `identity`: profiles from devices, logins and aliases, over HTTP.
//! - `ingest`: the collector's HTTP API with a real store on disk.
//! - `segment_client`: Segment's own Node SDK sending to a real collector.
//! - `serving`: the SDK files and the demo site as the collector serves them.

mod browser;
mod consent;
mod consent_browser;
mod csp;
mod identity;
mod ingest;
mod sdk;
mod segment_client;
mod serving;
