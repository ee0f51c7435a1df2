//! Assembles the gRPC services (InventorySync, MatchQueue, health, reflection) and serves them until
//! the injected shutdown future completes. Shutdown is graceful: the listener closes and
//! requests in flight finish; a sync whose stream is cut commits nothing.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::activity::Activity;
use crate::auth::Authenticator;
use crate::grpc::{InventoryService, MatchQueueService};
use crate::metrics::Metrics;
use crate::pb;
use crate::pb::inventory_sync_server::InventorySyncServer;
use crate::pb::match_queue_server::MatchQueueServer;
use crate::replicas::ReplicaReads;
use crate::store::{Database, DatabaseUrl, PoolSettings, StoreError};
use crate::sync::{SyncEngine, SyncLimits, reap_silent_runs};

/// The server's two pools of connections to one database. Syncs hold a connection for as
/// long as they upload; every other call (reads, the matching queue, token checks) has a
/// pool of its own, so that syncs holding all of theirs never keep it waiting.
#[derive(Debug, Clone)]
pub struct Databases {
    /// Syncs: their staging connections, lookups and history.
    pub syncs: Database,
    /// Every other call.
    pub requests: Database,
    /// Read replicas, for the reads that may lag (see `replicas.rs`).
    pub replicas: Vec<Database>,
}

/// How often expired claims are made pending for every reader; the queue's own calls
/// expire them first whenever they run.
const CLAIM_EXPIRY_INTERVAL: Duration = Duration::from_secs(60);

/// How much of an upload one HTTP/2 stream may send ahead of the server's reading: twice
/// HTTP/2's default. hyper's adaptive windows grow with the rate the server reads at, up
/// to 16 MiB a stream, so a client that sends faster than the database takes its products
/// could make the server hold that much per running sync; with them, the peak RSS of a
/// million-product create on PostgreSQL came out 1.19 to 1.49 times that of a 100,000 one
/// over three runs of `cargo bench --bench sync`, 1.16 and 1.19 with these. At 128 KiB a
/// stream still carries 2.6 MB/s over a 50 ms path: a million products in half a minute.
const STREAM_WINDOW_BYTES: u32 = 128 * 1024;
/// What all the streams of one connection may send ahead together.
const CONNECTION_WINDOW_BYTES: u32 = 1024 * 1024;

/// Connections a sync pool keeps beyond those of the running syncs' staging and one more
/// per running sync (its heartbeat, its token's check before the merge): for the history
/// rows of syncs waiting for their turn, and the reaper. On SQLite each of these may wait
/// out another sync's merge while it holds its connection.
const SYNC_POOL_HEADROOM: u32 = 2;

impl Databases {
    /// Opens both pools on `url` and runs the migrations once: the sync pool sized for
    /// `limits.max_concurrent_syncs`, the request pool with `request_connections`; and a
    /// pool of `request_connections` for each read replica, which connects when first used.
    pub async fn open(
        url: &DatabaseUrl,
        replica_urls: &[DatabaseUrl],
        limits: &SyncLimits,
        request_connections: u32,
    ) -> Result<Self, StoreError> {
        let running = u32::try_from(limits.max_concurrent_syncs).unwrap_or(u32::MAX);
        let syncs = Database::connect_with(
            url,
            PoolSettings {
                max_connections: running
                    .saturating_mul(url.connections_per_sync() + 1)
                    .saturating_add(SYNC_POOL_HEADROOM),
                run_migrations: true,
                connect_lazily: false,
            },
        )
        .await?;
        let mut replicas = Vec::with_capacity(replica_urls.len());
        for replica_url in replica_urls {
            replicas.push(
                Database::connect_with(
                    replica_url,
                    PoolSettings {
                        max_connections: request_connections.max(1),
                        run_migrations: false,
                        connect_lazily: true,
                    },
                )
                .await?,
            );
        }
        // An in-memory database exists once per pool: both pools must be the same one.
        if url.is_in_memory() {
            return Ok(Databases {
                requests: syncs.clone(),
                syncs,
                replicas,
            });
        }
        let requests = Database::connect_with(
            url,
            PoolSettings {
                max_connections: request_connections.max(1),
                run_migrations: false,
                connect_lazily: false,
            },
        )
        .await?;
        Ok(Databases {
            syncs,
            requests,
            replicas,
        })
    }

    /// Closes every connection of every pool.
    pub async fn close(&self) {
        self.syncs.close().await;
        self.requests.close().await;
        for replica in &self.replicas {
            replica.close().await;
        }
    }
}

/// Everything the services share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub databases: Databases,
    pub activity: Activity,
    pub limits: SyncLimits,
    /// Largest decoded gRPC message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Checks the callers of every call but health and reflection.
    pub auth: Authenticator,
    /// Serve TLS (and require client certificates if it says so); plaintext when `None`.
    pub tls: Option<ServerTlsConfig>,
    pub metrics: Metrics,
    /// How often the database is probed; health says NOT_SERVING while it is unreachable.
    pub database_check_interval: Duration,
    /// How long a matcher's claim holds before the product is pending again.
    pub claim_ttl: Duration,
}

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("could not build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves on `listener` until `shutdown` completes, then waits for requests in flight.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let Databases {
        syncs,
        requests,
        replicas,
    } = state.databases.clone();
    let reads = ReplicaReads::new(requests.clone(), replicas);
    let engine = SyncEngine::new(
        syncs.clone(),
        state.activity.clone(),
        state.limits.clone(),
        crate::grpc::describe_sync_error,
        state.metrics.clone(),
    );
    let inventory = InventorySyncServer::new(InventoryService::new(
        engine,
        reads.clone(),
        state.auth.clone(),
        state.max_message_bytes,
    ))
    .max_decoding_message_size(state.max_message_bytes);
    let match_queue_service =
        MatchQueueService::new(requests.clone(), reads, state.auth.clone(), state.claim_ttl);
    let claim_expiry = tokio::spawn(
        match_queue_service
            .queue()
            .clone()
            .expire_claims_periodically(CLAIM_EXPIRY_INTERVAL),
    );
    let match_queue = MatchQueueServer::new(match_queue_service)
        .max_decoding_message_size(state.max_message_bytes);

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<InventorySyncServer<InventoryService>>()
        .await;
    health_reporter
        .set_serving::<MatchQueueServer<MatchQueueService>>()
        .await;

    // grpcurl and older tools speak only v1alpha reflection; newer ones prefer v1. The
    // google.rpc types let tools decode the BadRequest details of our errors.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };

    let mut builder = Server::builder()
        // What a client may send ahead of the server's reading is what the server holds
        // of its upload: all of it for a sync waiting for its turn, a window's worth for a
        // running one whose client sends faster than the database takes it. Fixed windows
        // bound both (see `STREAM_WINDOW_BYTES`).
        .http2_adaptive_window(Some(false))
        .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES))
        .layer(tower::util::MapResponseLayer::new(oversized_is_exhausted));
    if let Some(tls) = state.tls {
        builder = builder.tls_config(tls)?;
    }
    let database_watch = tokio::spawn(watch_database(
        requests.clone(),
        health_reporter.clone(),
        state.database_check_interval,
    ));
    // Runs of syncs whose server stopped are recorded as aborted by the servers still up
    // (a restarted one included).
    let reaper = tokio::spawn(reap_silent_runs(
        syncs.clone(),
        state.limits.heartbeat,
        crate::grpc::describe_sync_error,
    ));
    let token_uses = tokio::spawn(state.auth.clone().record_uses_periodically());
    let served = builder
        .add_service(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(inventory)
        .add_service(match_queue)
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await;
    reaper.abort();
    database_watch.abort();
    token_uses.abort();
    claim_expiry.abort();
    if let Err(error) = state.auth.record_uses().await {
        tracing::warn!(%error, "could not record when tokens were last used");
    }
    served?;
    Ok(())
}

/// The connections `listener` accepts, without Nagle's delay: a small answer goes out at
/// once instead of waiting for the client's delayed acknowledgement (up to 40 ms on Linux).
/// (tonic sets this itself only on listeners it binds.)
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// tonic answers a received message over the size limit with `OUT_OF_RANGE`; the gRPC
/// status codes say `RESOURCE_EXHAUSTED`, and clients' retry policies rely on that. (A
/// sync's own stream is answered by its handler, which also records it in the history.)
fn oversized_is_exhausted(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let headers = response.headers();
    let oversized = headers.get("grpc-status").is_some_and(|code| code == "11")
        && headers
            .get("grpc-message")
            .and_then(|message| message.to_str().ok())
            .is_some_and(|message| message.contains("decoded%20message%20length%20too%20large"));
    if oversized {
        let status = tonic::Status::resource_exhausted(
            "the request is larger than the server accepts (--max-message-bytes); send less \
             in one message",
        );
        // Replaces the headers it sets: status, message and details.
        let _ = status.add_header(response.headers_mut());
    }
    response
}

/// Probes the database every `interval` and reports the services NOT_SERVING while it
/// cannot be reached, SERVING again once it can: load balancers then route around a replica
/// cut off from the database, and back to it without a restart.
async fn watch_database(database: Database, health: HealthReporter, interval: Duration) {
    let mut reachable = true;
    let mut ticks = tokio::time::interval(interval);
    loop {
        ticks.tick().await;
        let probe = tokio::time::timeout(interval.max(Duration::from_secs(1)), database.ping());
        let now_reachable = matches!(probe.await, Ok(Ok(())));
        if now_reachable == reachable {
            continue;
        }
        reachable = now_reachable;
        let status = if reachable {
            tracing::info!("the database is reachable again; serving");
            ServingStatus::Serving
        } else {
            tracing::warn!("the database is unreachable; health reports NOT_SERVING");
            ServingStatus::NotServing
        };
        for service in [
            "",
            <InventorySyncServer<InventoryService> as NamedService>::NAME,
            <MatchQueueServer<MatchQueueService> as NamedService>::NAME,
        ] {
            health.set_service_status(service, status).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{self, Role};

    #[tokio::test]
    async fn an_in_memory_database_is_one_database_for_both_pools() {
        let url: DatabaseUrl = "sqlite::memory:".parse().unwrap();
        let databases = Databases::open(&url, &[], &SyncLimits::default(), 2)
            .await
            .unwrap();
        let token = auth::create_token(&databases.syncs, "t", &Role::Admin)
            .await
            .unwrap();
        assert!(databases.requests.token(token.id).await.unwrap().is_some());
    }
}
