//! A real collector for a test: `TestCollector::start().await` binds
//! `127.0.0.1:0`, opens a fresh data directory and serves the demo site and
//! the built SDK.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::sync::Arc;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use std::time::Duration;
use weft_collector::clock::{Clock, SystemClock};
use weft_collector::metrics::WriterStats;
use weft_collector::store::embedded::{EmbeddedStore, StoreOptions};
use weft_collector::{Config, Source};

use crate::http::{Request, Response};

/// The write key test collectors accept.
pub const WRITE_KEY: &str = "wk_test";
/// The admin token of test collectors.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// The built SDK (`WEFT_SDK_DIR`, else `target/sdk`). Panics with the fix
/// when it has not been built: a browser test must never pass without it.
pub fn sdk_dir() -> PathBuf {
    let dir = std::env::var_os("WEFT_SDK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/sdk"));
    assert!(
        dir.join("weft.js").is_file() && dir.join("weft.wasm").is_file(),
        "the SDK is not built in {dir:?}: run `cargo xtask test` (or `cargo xtask sdk` first)"
    );
    dir
}

/// The demo site.
pub fn www_dir() -> PathBuf {
    workspace_root().join("www")
}

/// A running collector with its own data directory.
pub struct TestCollector {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its data directory (removed when the collector is dropped).
    pub data_dir: TempDir,
    /// Its store, shared with the server.
    pub store: Arc<EmbeddedStore>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestCollector {
    /// A collector with key [`WRITE_KEY`] for any origin, token
    /// [`ADMIN_TOKEN`], the demo site and the built SDK.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Like [`TestCollector::start`], after `edit` adjusts the config.
    pub async fn start_with(edit: impl FnOnce(&mut Config)) -> Self {
        Self::start_with_clock(edit, Arc::new(SystemClock)).await
    }

    /// Like [`TestCollector::start_with`], reading time from `clock`.
    pub async fn start_with_clock(edit: impl FnOnce(&mut Config), clock: Arc<dyn Clock>) -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::new(
            data_dir.path(),
            vec![Source::any_origin(WRITE_KEY)],
            ADMIN_TOKEN.to_owned(),
        );
        config.www_dir = Some(www_dir());
        config.sdk_dir = Some(sdk_dir());
        edit(&mut config);
        Self::spawn(config, data_dir, clock).await
    }

    /// A collector with exactly `config` (its data_dir should be inside
    /// `data_dir`).
    pub async fn start_config(config: Config, data_dir: TempDir) -> Self {
        Self::spawn(config, data_dir, Arc::new(SystemClock)).await
    }

    async fn spawn(config: Config, data_dir: TempDir, clock: Arc<dyn Clock>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let stats = Arc::new(WriterStats::default());
        let store = Arc::new(
            EmbeddedStore::open(
                &config.data_dir,
                StoreOptions {
                    clock: clock.clone(),
                    ..StoreOptions::for_config(&config)
                },
                stats.clone(),
            )
            .expect("open the store"),
        );
        let served = store.clone();
        let task = tokio::spawn(async move {
            weft_collector::serve_store(
                config,
                listener,
                async {
                    let _ = rx.await;
                },
                clock,
                served,
                stats,
            )
            .await
            .expect("collector runs");
        });
        TestCollector {
            addr,
            data_dir,
            store,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends a request to this collector.
    pub async fn send(&self, request: Request) -> Response {
        request.send(self.addr).await
    }

    /// `POST /v1/batch` of `messages` with [`WRITE_KEY`]; asserts a 200
    /// with nothing rejected.
    pub async fn send_batch(&self, messages: serde_json::Value) {
        let body = serde_json::json!({"writeKey": WRITE_KEY, "batch": messages});
        let r = self
            .send(Request::post("/v1/batch", body.to_string()))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.json());
        assert_eq!(r.json()["rejected"], 0, "{:?}", r.json());
    }

    /// `GET /v1/profiles/{id}` with the admin token.
    pub async fn profile(&self, id: &str) -> Response {
        self.send(Request::get(&format!("/v1/profiles/{id}")).bearer(ADMIN_TOKEN))
            .await
    }

    /// A read-only connection to the index, to check what is really on
    /// disk, once the index has applied everything acknowledged so far (as
    /// an admin read would).
    pub fn db(&self) -> rusqlite::Connection {
        self.store
            .wait_indexed(Duration::from_secs(20))
            .expect("the index catches up with the log");
        rusqlite::Connection::open_with_flags(
            self.data_dir.path().join("weft.sqlite"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open store read-only")
    }

    /// Every stored event, in the order the collector stored them: read
    /// from the event log, the system of record.
    pub fn rows(&self) -> Vec<StoredEvent> {
        logged_events(self.data_dir.path())
    }

    /// Stops the collector gracefully, waits until it has, and hands back
    /// its data directory for inspection.
    pub async fn stop(mut self) -> TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("collector task");
        }
        let placeholder = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.data_dir, placeholder)
    }
}

/// The events in the event log of the data directory `data_dir`, in log
/// order, read with the collector's own log reader.
pub fn logged_events(data_dir: &std::path::Path) -> Vec<StoredEvent> {
    use weft_collector::record::{self, Record};
    let mut events = Vec::new();
    weft_collector::log::scan(&data_dir.join("log"), 0, u64::MAX, |_, payload| {
        if let Ok(Record::Event { event: e, .. }) = record::decode(payload) {
            events.push(StoredEvent {
                kind: e.kind.as_str().to_owned(),
                event: e.event,
                anonymous_id: e.anonymous_id,
                user_id: e.user_id,
                message_id: e.message_id,
                timestamp: e.timestamp,
                received_at: e.received_at,
                body: serde_json::from_str(&e.body).expect("stored bodies are JSON"),
                raw: e.body,
            });
        }
        true
    })
    .expect("read the event log");
    events
}

/// One stored event, as the event log holds it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// `page`, `track`, `identify`...
    pub kind: String,
    /// The event name of a `track`.
    pub event: Option<String>,
    /// `anonymousId`.
    pub anonymous_id: Option<String>,
    /// `userId`.
    pub user_id: Option<String>,
    /// `messageId`.
    pub message_id: String,
    /// The corrected event time the collector stored.
    pub timestamp: String,
    /// When the collector received it.
    pub received_at: String,
    /// The stored body, parsed.
    pub body: serde_json::Value,
    /// The stored body as text, exactly as on disk.
    pub raw: String,
}

impl StoredEvent {
    /// `true` for a `track` called `name`.
    pub fn is_track(&self, name: &str) -> bool {
        self.kind == "track" && self.event.as_deref() == Some(name)
    }
}

impl Drop for TestCollector {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
