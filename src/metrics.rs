//! Prometheus metrics, served as text on `/metrics` by `serve --metrics-listen ADDR`: syncs
//! by outcome, products by kind of change, sync durations, what is in flight, the
//! database connection pools, and serialization retries.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::activity::Activity;
use crate::server::Databases;
use crate::sync::SyncCounts;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabel {
    change: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabel {
    /// `syncs` or `requests` (see [`Databases`]).
    pool: &'static str,
    state: &'static str,
}

/// The service's metrics; cheap to clone (one registry behind an `Arc`).
#[derive(Debug, Clone)]
pub struct Metrics(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    registry: Registry,
    syncs: Family<OutcomeLabel, Counter>,
    products: Family<ChangeLabel, Counter>,
    sync_seconds: Histogram,
    syncs_in_flight: Gauge,
    products_in_flight: Gauge,
    connections: Family<ConnectionLabel, Gauge>,
    serialization_retries: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("inventory_sync");
        let syncs = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "syncs",
            "Syncs by how they ended: committed, dry_run, replayed, rejected, aborted, timed_out",
            syncs.clone(),
        );
        let products = Family::<ChangeLabel, Counter>::default();
        registry.register(
            "products",
            "Products of committed syncs by kind of change: created, updated, unchanged, cleared, rejected",
            products.clone(),
        );
        // 10 ms to about 3 minutes.
        let sync_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 15));
        registry.register(
            "sync_duration_seconds",
            "Time from a sync's first message to its answer",
            sync_seconds.clone(),
        );
        let syncs_in_flight = Gauge::default();
        registry.register(
            "syncs_in_flight",
            "Syncs uploading or merging now",
            syncs_in_flight.clone(),
        );
        let products_in_flight = Gauge::default();
        registry.register(
            "products_in_flight",
            "Products received by syncs that have not ended yet",
            products_in_flight.clone(),
        );
        let connections = Family::<ConnectionLabel, Gauge>::default();
        registry.register(
            "database_connections",
            "Connections of the database pools (syncs, requests), by state: in_use, idle",
            connections.clone(),
        );
        let serialization_retries = Counter::default();
        registry.register(
            "serialization_retries",
            "Transactions and statements run again after the database aborted them to keep concurrent work serializable (SQLSTATE 40001, 40P01)",
            serialization_retries.clone(),
        );
        Metrics(Arc::new(Inner {
            registry,
            serialization_retries,
            syncs,
            products,
            sync_seconds,
            syncs_in_flight,
            products_in_flight,
            connections,
        }))
    }
}

impl Metrics {
    /// Counts a sync that ended with `outcome`, its products when it wrote (or would have
    /// written) any, and how long it took.
    pub fn sync_ended(&self, outcome: &'static str, counts: Option<&SyncCounts>, took: Duration) {
        self.0.syncs.get_or_create(&OutcomeLabel { outcome }).inc();
        self.0.sync_seconds.observe(took.as_secs_f64());
        if let (Some(counts), "committed") = (counts, outcome) {
            for (change, count) in [
                ("created", counts.created),
                ("updated", counts.updated),
                ("unchanged", counts.unchanged),
                ("cleared", counts.cleared),
                ("rejected", counts.rejected),
            ] {
                self.0
                    .products
                    .get_or_create(&ChangeLabel { change })
                    .inc_by(count);
            }
        }
    }

    /// The metrics in the Prometheus text format, with the gauges read now.
    pub fn render(&self, activity: &Activity, databases: &Databases) -> String {
        let now = activity.snapshot();
        self.0.syncs_in_flight.set(now.syncs_in_flight as i64);
        self.0.products_in_flight.set(now.products_in_flight as i64);
        for (pool, database) in [
            ("syncs", &databases.syncs),
            ("requests", &databases.requests),
        ] {
            let (size, idle) = database.pool_connections();
            let gauge = |state| {
                self.0
                    .connections
                    .get_or_create(&ConnectionLabel { pool, state })
            };
            gauge("in_use").set(i64::from(size.saturating_sub(idle)));
            gauge("idle").set(i64::from(idle));
        }
        // The store counts them; the counter catches up.
        let retries = &self.0.serialization_retries;
        retries.inc_by(crate::store::serialization_retries().saturating_sub(retries.get()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.0.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Serves `/metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    activity: Activity,
    databases: Databases,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let render = move || {
        let text = metrics.render(&activity, &databases);
        async move {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                text,
            )
        }
    };
    let app = axum::Router::new().route("/metrics", axum::routing::get(render));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
