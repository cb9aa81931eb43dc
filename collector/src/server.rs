//! The accept loop: one hyper HTTP/1.1 connection task per client, bounded
//! in number and in how long a client may take to send its headers, and a
//! graceful shutdown that drains connections and then the store's writer.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::app::App;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::metrics::WriterStats;
use crate::ratelimit::RateLimiter;
use crate::routes;
use crate::store::embedded::{EmbeddedStore, StoreOptions};
use crate::store::{EventStore, StoreError};

/// How long shutdown waits for open connections before closing them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers) accepted.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Why the collector could not start or stopped with an error.
#[derive(Debug)]
pub enum ServeError {
    /// The store could not be opened.
    Store(StoreError),
    /// The OS gives no randomness (for server-made messageIds).
    NoRandomness,
    /// The destinations could not be opened.
    Destinations(crate::destinations::DestinationError),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Store(e) => write!(f, "cannot open the store: {e}"),
            ServeError::NoRandomness => f.write_str("the OS gives no randomness"),
            ServeError::Destinations(e) => write!(f, "cannot open the destinations: {e}"),
        }
    }
}

impl std::error::Error for ServeError {}

/// Runs a collector on `listener` until `shutdown` resolves, with the
/// embedded store in `config.data_dir` and the system clock.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    serve_announced(config, listener, shutdown, None).await
}

/// Called once the store and destinations are open, right before the
/// first connection is accepted (the binary prints its banner then, so
/// "listening" is never said by a collector about to refuse its data).
pub type OnReady = Box<dyn FnOnce() + Send>;

/// [`serve`], calling `ready` once it is about to accept connections.
pub async fn serve_announced(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    ready: Option<OnReady>,
) -> Result<(), ServeError> {
    serve_opened(config, listener, shutdown, Arc::new(SystemClock), ready).await
}

/// Opens the embedded store for `config`, then serves it.
async fn serve_opened(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    clock: Arc<dyn Clock>,
    ready: Option<OnReady>,
) -> Result<(), ServeError> {
    let stats = Arc::new(WriterStats::default());
    let store = open_store(&config, clock.clone(), stats.clone())?;
    serve_store_announced(config, listener, shutdown, clock, store, stats, ready).await
}

fn open_store(
    config: &Config,
    clock: Arc<dyn Clock>,
    stats: Arc<WriterStats>,
) -> Result<Arc<dyn EventStore>, ServeError> {
    let store = EmbeddedStore::open(
        &config.data_dir,
        StoreOptions {
            clock,
            ..StoreOptions::for_config(config)
        },
        stats,
    )
    .map_err(ServeError::Store)?;
    Ok(Arc::new(store))
}

/// [`serve`] with a chosen clock.
pub async fn serve_with_clock(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    clock: Arc<dyn Clock>,
) -> Result<(), ServeError> {
    serve_opened(config, listener, shutdown, clock, None).await
}

/// [`serve`] with a chosen clock and store (`stats` are the store's writer
/// statistics, for `/metrics`). The store is closed when serving ends.
pub async fn serve_store(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    clock: Arc<dyn Clock>,
    store: Arc<dyn EventStore>,
    stats: Arc<WriterStats>,
) -> Result<(), ServeError> {
    serve_store_announced(config, listener, shutdown, clock, store, stats, None).await
}

/// [`serve_store`], calling `ready` once it is about to accept connections.
pub async fn serve_store_announced(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    clock: Arc<dyn Clock>,
    store: Arc<dyn EventStore>,
    stats: Arc<WriterStats>,
    ready: Option<OnReady>,
) -> Result<(), ServeError> {
    if crate::admission::server_message_id().is_none() {
        return Err(ServeError::NoRandomness);
    }
    let metrics = Metrics {
        writer: stats,
        ..Metrics::default()
    };
    let destinations = crate::destinations::Destinations::open(
        &config.data_dir,
        store.clone(),
        &config.sources,
        &config.destinations,
    )
    .map_err(ServeError::Destinations)?;
    let stats = Arc::new(crate::stats::Stats::default());
    let following_stats = store
        .follow(
            "stats",
            Box::new(crate::stats::StatsConsumer {
                stats: stats.clone(),
                position: 0,
            }),
            crate::stats::PACE,
        )
        .map_err(ServeError::Store)?;
    store.listen(Arc::new(crate::stats::ForgetOnErasure(Arc::downgrade(
        &stats,
    ))));
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(MAX_HEADER_BYTES.max(8192));
    let app = Arc::new(App {
        config,
        store: store.clone(),
        clock,
        metrics,
        limiter: RateLimiter::default(),
        destinations: destinations.clone(),
        stats,
    });
    let graceful = GracefulShutdown::new();
    let sweeper = app
        .config
        .retention
        .map(|keep| tokio::spawn(retention_sweeper(app.clone(), keep)));
    let ticker = tokio::spawn(segment_ticker(app.clone()));
    tokio::pin!(shutdown);
    if let Some(ready) = ready {
        ready();
    }

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!("connection limit reached; closing new connection");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, std::convert::Infallible>(routes::handle(app, req, peer).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                log_connection_error(peer, &e);
            }
            drop(permit);
        });
    }

    drop(listener);
    if let Some(s) = sweeper {
        s.abort();
    }
    ticker.abort();
    tracing::info!("shutting down: draining connections");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
    // Destinations first: they follow the log the store is about to close.
    tokio::task::spawn_blocking(move || {
        destinations.close();
        drop(following_stats);
        store.close();
    })
    .await
    .ok();
    tracing::info!("stopped");
    Ok(())
}

/// Every `config.segment_tick`: memberships whose `within` windows moved
/// on are evaluated again.
async fn segment_ticker(app: Arc<App>) {
    let mut tick = tokio::time::interval(app.config.segment_tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let store = app.store.clone();
        match tokio::task::spawn_blocking(move || store.tick_segments()).await {
            Ok(Ok(())) => {}
            Ok(Err(crate::store::StoreError::Closed)) | Err(_) => return,
            Ok(Err(e)) => tracing::warn!(error = %e, "segment windows: check failed"),
        }
    }
}

/// Deletes events older than `keep`, now and every
/// `config.retention_sweep_every`, in batches so ingest is never held up
/// for long.
async fn retention_sweeper(app: Arc<App>, keep: Duration) {
    const BATCH: usize = 10_000;
    let mut tick = tokio::time::interval(app.config.retention_sweep_every);
    loop {
        tick.tick().await;
        let Ok(keep) = time::Duration::try_from(keep) else {
            return;
        };
        let before = crate::clock::format_utc_millis(app.clock.now() - keep);
        loop {
            let store = app.store.clone();
            let cutoff = before.clone();
            match tokio::task::spawn_blocking(move || store.expire(&cutoff, BATCH)).await {
                Ok(Ok(n)) => {
                    Metrics::add(&app.metrics.events_expired, n as u64);
                    if n < BATCH {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "retention sweep failed");
                    break;
                }
                Err(_) => return,
            }
        }
    }
}

fn log_connection_error(_peer: SocketAddr, e: &hyper::Error) {
    // The peer address is not logged: it is personal data.
    if e.is_timeout() {
        tracing::debug!("connection closed: header timeout");
    } else {
        tracing::debug!(error = %e, "connection error");
    }
}
