//! The read benchmark: `GetProduct` by external id from many concurrent callers, against
//! the fastest a gRPC server can answer on this machine, measured in the same run: a tonic
//! server (this benchmark's own binary, as a separate process) that answers every call with
//! one constant product. Then the latency of reads while another store's big sync runs.
//!
//! `cargo bench --bench reads [-- --backend sqlite|postgres] [-- --products N]`
//!
//! Prints calls per second and latency percentiles per case, and the ratios the targets are
//! stated in: the service at >= 50% of the constant server's rate, p99 <= 10 ms.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use inventory_sync::pb;
use inventory_sync::pb::inventory_sync_client::InventorySyncClient;
use inventory_sync::pb::inventory_sync_server::{InventorySync, InventorySyncServer};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use support::{Backend, Server, fresh_database};

/// Callers at once, as in the measurement.
const CALLERS: usize = 64;
/// Connections the callers share.
const CONNECTIONS: usize = 8;
/// How long each read case runs.
const READ_TIME: Duration = Duration::from_secs(3);
/// Rounds of (constant server, service) measured back to back. Other programs' load on
/// the machine drifts over seconds: a ratio of two neighbouring measurements cancels most
/// of it, and the median of the rounds' ratios drops a round that a burst disturbed.
const ROUNDS: usize = 5;
/// Products of the store read from.
const STORE_PRODUCTS: usize = 10_000;
const READ_STORE: i64 = 1;
const BIG_STORE: i64 = 2;
/// Callers reading while the big sync runs.
const CALLERS_DURING_SYNC: usize = 4;
/// Set in the environment of this binary re-run as the constant server.
const CONSTANT_SERVER: &str = "READS_BENCH_CONSTANT_SERVER";

/// The constant-answer server: every `GetProduct` gets the same product.
struct ConstantServer {
    product: pb::Product,
}

#[tonic::async_trait]
impl InventorySync for ConstantServer {
    async fn sync(
        &self,
        _: Request<Streaming<pb::SyncRequest>>,
    ) -> Result<Response<pb::SyncResponse>, Status> {
        Err(Status::unimplemented("constant server"))
    }

    async fn get_product(
        &self,
        _: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::Product>, Status> {
        Ok(Response::new(self.product.clone()))
    }

    type ListProductsStream = tokio_stream::Empty<Result<pb::Product, Status>>;

    async fn list_products(
        &self,
        _: Request<pb::ListProductsRequest>,
    ) -> Result<Response<Self::ListProductsStream>, Status> {
        Err(Status::unimplemented("constant server"))
    }

    async fn list_sync_runs(
        &self,
        _: Request<pb::ListSyncRunsRequest>,
    ) -> Result<Response<pb::ListSyncRunsResponse>, Status> {
        Err(Status::unimplemented("constant server"))
    }
}

/// Runs the constant server until killed; prints `listen=ADDR` as the service does.
async fn serve_constant() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    eprintln!("constant server listen={}", listener.local_addr().unwrap());
    let product = pb::Product {
        id: 42,
        store_id: READ_STORE,
        external_id: "p42".into(),
        barcodes: vec!["0000000000042".into()],
        in_stock: Some(7),
        price: Some("12.99".into()),
        name: Some("Product number 42".into()),
        unit_size: Some("750ML".into()),
        category: pb::Category::Wine as i32,
        match_status: pb::MatchStatus::Pending as i32,
        created_at: Some(prost_types::Timestamp::default()),
        updated_at: Some(prost_types::Timestamp::default()),
        ..pb::Product::default()
    };
    tonic::transport::Server::builder()
        .add_service(InventorySyncServer::new(ConstantServer { product }))
        // As the service's own listener: no Nagle's delay.
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        )
        .await
        .unwrap();
}

/// What one read case measured.
struct Reads {
    calls: usize,
    seconds: f64,
    /// Latencies, sorted.
    latencies: Vec<Duration>,
}

impl Reads {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.seconds
    }

    fn percentile(&self, fraction: f64) -> Duration {
        let last = self.latencies.len().saturating_sub(1);
        self.latencies
            .get((last as f64 * fraction).round() as usize)
            .copied()
            .unwrap_or_default()
    }

    fn print(&self, case: &str) {
        println!(
            "{case:<52} {:>9.0} calls/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
            self.rate(),
            self.percentile(0.5).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3,
            self.percentile(1.0).as_secs_f64() * 1e3,
        );
    }
}

/// `callers` callers over [`CONNECTIONS`] connections call `GetProduct` for products of
/// [`READ_STORE`] until `until` resolves.
async fn read_load(
    endpoint: &str,
    token: Option<&str>,
    callers: usize,
    until: impl std::future::Future<Output = ()>,
) -> Reads {
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS.min(callers) {
        let channel = Channel::from_shared(endpoint.to_owned())
            .unwrap()
            .connect()
            .await
            .expect("connect");
        channels.push(channel);
    }
    let authorization: Option<MetadataValue<Ascii>> =
        token.map(|token| format!("Bearer {token}").parse().unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let mut client = InventorySyncClient::new(channels[caller % channels.len()].clone());
        let (stop, authorization) = (stop.clone(), authorization.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = caller;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n = (n + 7_919) % STORE_PRODUCTS;
                let key = pb::get_product_request::Key::ExternalId(format!("p{n}"));
                let mut request = Request::new(pb::GetProductRequest {
                    store_id: READ_STORE,
                    key: Some(key),
                });
                if let Some(value) = &authorization {
                    request
                        .metadata_mut()
                        .insert("authorization", value.clone());
                }
                let call = Instant::now();
                client
                    .get_product(request)
                    .await
                    .expect("the read succeeds");
                latencies.push(call.elapsed());
            }
            latencies
        }));
    }
    until.await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort();
    Reads {
        calls: latencies.len(),
        seconds,
        latencies,
    }
}

fn products(store_products: usize) -> Vec<pb::SyncRequest> {
    let mut messages = vec![pb::SyncRequest {
        header: Some(pb::SyncHeader {
            store_id: READ_STORE,
            ..Default::default()
        }),
        products: Vec::new(),
    }];
    let all: Vec<_> = (0..store_products)
        .map(|n| pb::ProductUpdate {
            external_id: format!("p{n}"),
            barcodes: vec![format!("{n:013}")],
            in_stock: Some((n % 50) as i64),
            price: Some(format!("{}.99", 5 + n % 90)),
            name: Some(format!("Product number {n}")),
            unit_size: Some("750ML".into()),
            category: pb::Category::Wine as i32,
            ..Default::default()
        })
        .collect();
    for chunk in all.chunks(1_000) {
        messages.push(pb::SyncRequest {
            header: None,
            products: chunk.to_vec(),
        });
    }
    messages
}

/// A big sync of another store, as the stream of its messages.
fn big_sync(count: usize) -> impl tokio_stream::Stream<Item = pb::SyncRequest> {
    let header = pb::SyncRequest {
        header: Some(pb::SyncHeader {
            store_id: BIG_STORE,
            ..Default::default()
        }),
        products: Vec::new(),
    };
    let batches = (0..count.div_ceil(1_000)).map(move |batch| pb::SyncRequest {
        header: None,
        products: (batch * 1_000..((batch + 1) * 1_000).min(count))
            .map(|n| pb::ProductUpdate {
                external_id: format!("b{n}"),
                in_stock: Some(1),
                price: Some("9.99".into()),
                ..Default::default()
            })
            .collect(),
    });
    tokio_stream::iter(std::iter::once(header).chain(batches))
}

/// An admin token made on `url` with the command line, before the server starts.
fn admin_token(url: &str) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_inventory-sync"))
        .args([
            "tokens",
            "create",
            "--admin",
            "--name",
            "bench",
            "--database-url",
            url,
        ])
        .output()
        .expect("run tokens create");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    stdout.lines().last().unwrap().to_owned()
}

async fn bench(
    backend: Backend,
    constant_endpoint: &str,
    big: usize,
    dir: &std::path::Path,
) -> Option<()> {
    let url = fresh_database(backend, dir, "reads").await?;
    let token = admin_token(&url);
    let server = Server::start_with(&url, &[]);
    let channel = Channel::from_shared(server.endpoint.clone()).unwrap();
    let channel = channel.connect().await.unwrap();
    let bearer: MetadataValue<Ascii> = format!("Bearer {token}").parse().unwrap();
    let mut client =
        InventorySyncClient::with_interceptor(channel, move |mut request: Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
            Ok(request)
        });
    client
        .sync(tokio_stream::iter(products(STORE_PRODUCTS)))
        .await
        .expect("the store's products are synced");

    let name = format!("{backend:?}");
    let mut ratios = Vec::new();
    let mut latencies = Vec::new();
    for round in 1..=ROUNDS {
        let floor = read_load(
            constant_endpoint,
            None,
            CALLERS,
            tokio::time::sleep(READ_TIME),
        )
        .await;
        floor.print(&format!(
            "round {round}: constant-answer server, {CALLERS} callers"
        ));
        let reads = read_load(
            &server.endpoint,
            Some(&token),
            CALLERS,
            tokio::time::sleep(READ_TIME),
        )
        .await;
        reads.print(&format!(
            "round {round}: {name} GetProduct, {CALLERS} callers"
        ));
        ratios.push(reads.rate() / floor.rate());
        latencies.extend(reads.latencies);
    }
    ratios.sort_by(f64::total_cmp);
    latencies.sort();
    let reads = Reads {
        calls: latencies.len(),
        seconds: READ_TIME.as_secs_f64() * ROUNDS as f64,
        latencies,
    };
    reads.print(&format!(
        "{name}: GetProduct, {CALLERS} callers, every round"
    ));
    let ratio_list: Vec<String> = ratios.iter().map(|ratio| format!("{ratio:.2}")).collect();
    println!(
        "{name}: rate / constant server's per round, sorted: {}",
        ratio_list.join(" ")
    );

    let mut writer = client.clone();
    let sync = tokio::spawn(async move { writer.sync(big_sync(big)).await });
    let started = Instant::now();
    let during = read_load(&server.endpoint, Some(&token), CALLERS_DURING_SYNC, async {
        while !sync.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let synced = started.elapsed();
    during.print(&format!(
        "{name}: GetProduct, {CALLERS_DURING_SYNC} callers, during a {big} sync"
    ));
    println!("{name}: the {big}-product sync of another store took {synced:.1?}");
    drop(server);

    println!("{name} ratios (target):");
    println!(
        "  reads / constant server rate   {:>6.2}  (>= 0.5; median of {ROUNDS} rounds)",
        ratios[ratios.len() / 2]
    );
    println!(
        "  reads p99                      {:>6.2} ms (<= 10)",
        reads.percentile(0.99).as_secs_f64() * 1e3
    );
    println!(
        "  reads p99 during a big sync    {:>6.2} ms (milliseconds)",
        during.percentile(0.99).as_secs_f64() * 1e3
    );
    Some(())
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    if std::env::var_os(CONSTANT_SERVER).is_some() {
        runtime.block_on(serve_constant());
        return;
    }
    runtime.block_on(async {
        let mut args = std::env::args().skip(1);
        let mut backends = vec![Backend::Sqlite, Backend::Postgres];
        let mut big = 1_000_000;
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--backend" => {
                    backends = match args.next().as_deref() {
                        Some("sqlite") => vec![Backend::Sqlite],
                        Some("postgres") => vec![Backend::Postgres],
                        _ => panic!("--backend takes sqlite or postgres"),
                    }
                }
                "--products" => {
                    big = args
                        .next()
                        .and_then(|n| n.parse().ok())
                        .expect("--products takes a number")
                }
                // cargo bench passes --bench; anything else is not ours.
                _ => {}
            }
        }
        let constant = support::spawn_listening(
            std::process::Command::new(std::env::current_exe().unwrap()).env(CONSTANT_SERVER, "1"),
        );
        let dir = tempfile::tempdir().expect("a temporary directory");
        for backend in backends {
            if bench(backend, &constant.endpoint, big, dir.path())
                .await
                .is_none()
            {
                println!("{backend:?}: database unreachable, skipped");
            }
        }
    });
}
