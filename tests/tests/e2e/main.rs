//! weft's end-to-end tests, one binary. Each module is a part of the
//! product exercised through its real interfaces:
//!
//! - `browser`: the script tag in real headless Chromium against a real
//!   collector.
//! - `cross_origin`: the script tag on a site of another origin than the
//!   collector (CORS for the SDK's files and the ingest endpoints).
//! - `consent`: server-side consent enforcement and the consent audit log.
//! - `dashboard`: every view in real Chromium (token, overview, profile
//!   with its identity graph, live within 2 s), screenshots in
//!   `target/screenshots/`; the stats and live endpoints.
//! - `destinations`: webhooks, GA4 and files against real local receivers:
//!   outages, retries, dead letters, replay, 410, isolation, consent,
//!   audiences, erasure, and the NDJSON export.
//! - `dist`: the deployable binary alone in an empty directory, as the
//!   README's Deploy section runs it: SDK cross-origin, demo, dashboard,
//!   probes, `X-Forwarded-For` from trusted proxies only, the systemd unit.
//! - `first_party`: the SDK and batches at paths the operator picks.
//! - `identity`: profiles from devices, logins and aliases, over HTTP.
//! - `ingest`: the collector's HTTP API with a real store on disk.
//! - `python_clients`: RudderStack's and Segment's own Python SDKs sending to
//!   a real collector (identify traits in `traits` and `context.traits`).
//! - `segment_client`: Segment's own Node SDK sending to a real collector.
//! - `segments`: real-time audiences: rules refused with a path, membership
//!   with the event's 200, sliding windows, merges, consent, erasure,
//!   recomputes (10,000 profiles; one interrupted by a restart).
//! - `server_cookie`: the collector's first-party device cookie in
//!   Chromium on a subdomain of the site: set with consent, a wiped browser
//!   kept on its profile, gone with a withdrawal, a reset or an erasure.
//! - `serving`: the SDK files and the demo site as the collector serves them.

mod browser;
mod consent;
mod consent_browser;
mod cross_origin;
mod csp;
mod dashboard;
mod destinations;
mod dist;
mod first_party;
mod identity;
mod ingest;
mod python_clients;
mod sdk;
mod segment_client;
mod segments;
mod server_cookie;
mod serving;
