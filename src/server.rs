//! Assembles the gRPC services (InventorySync, MatchQueue, health, reflection) and serves them until
//! the injected shutdown future completes. Shutdown is graceful: the listener closes and
//! requests in flight finish; a sync whose stream is cut commits nothing.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::server::NamedService;
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
use crate::store::Database;
use crate::sync::{SyncEngine, SyncLimits, reap_silent_runs};

/// Everything the services share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub database: Database,
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
    let engine = SyncEngine::new(
        state.database.clone(),
        state.activity.clone(),
        state.limits.clone(),
        crate::grpc::describe_sync_error,
        state.metrics.clone(),
    );
    let inventory = InventorySyncServer::new(InventoryService::new(
        engine,
        state.database.clone(),
        state.auth.clone(),
    ))
    .max_decoding_message_size(state.max_message_bytes);
    let match_queue =
        MatchQueueServer::new(MatchQueueService::new(state.database.clone(), state.auth))
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

    let mut builder = Server::builder();
    if let Some(tls) = state.tls {
        builder = builder.tls_config(tls)?;
    }
    let database_watch = tokio::spawn(watch_database(
        state.database.clone(),
        health_reporter.clone(),
        state.database_check_interval,
    ));
    // Runs of syncs whose server stopped are recorded as aborted by the servers still up
    // (a restarted one included).
    let reaper = tokio::spawn(reap_silent_runs(
        state.database.clone(),
        state.limits.heartbeat,
    ));
    let served = builder
        .add_service(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(inventory)
        .add_service(match_queue)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    reaper.abort();
    database_watch.abort();
    served?;
    Ok(())
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
