//! The test harness: a real server on 127.0.0.1:0 over a fresh database per test, SQLite
//! or PostgreSQL, and helpers that talk to it through the generated client.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use inventory_sync::activity::{Activity, ActivitySnapshot};
use inventory_sync::auth::Authenticator;
use inventory_sync::pb;
use inventory_sync::pb::inventory_sync_client::InventorySyncClient;
use inventory_sync::server::{self, AppState, Databases};
use inventory_sync::store::{Database, DatabaseUrl};
use inventory_sync::sync::SyncLimits;
use sqlx::Connection;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const TEST_DATABASE_PREFIX: &str = "inventory_sync_test_";

/// How a test server is set up.
pub struct Config {
    pub limits: SyncLimits,
    pub max_message_bytes: usize,
    /// Check bearer tokens (off by default: most tests are about other things).
    pub authenticated: bool,
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    pub database_check_interval: std::time::Duration,
    pub claim_ttl: std::time::Duration,
    /// Connections of the pool for every call but syncs.
    pub request_connections: u32,
    pub token_recheck_interval: std::time::Duration,
}

impl Config {
    /// The default set-up with these sync limits.
    pub fn limited(limits: SyncLimits) -> Self {
        Config {
            limits,
            ..Config::default()
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: SyncLimits::default(),
            max_message_bytes: 4 * 1024 * 1024,
            authenticated: false,
            tls: None,
            database_check_interval: std::time::Duration::from_secs(5),
            claim_ttl: inventory_sync::matching::DEFAULT_CLAIM_TTL,
            request_connections: 8,
            token_recheck_interval: inventory_sync::auth::DEFAULT_TOKEN_RECHECK_INTERVAL,
        }
    }
}

/// A test's connection holding what a merge must lock; rolled back when dropped.
pub enum MergeLockHolder {
    Sqlite { _connection: sqlx::SqliteConnection },
    Postgres { _connection: sqlx::PgConnection },
}

/// How long a test waits for the server to reach a state before it fails.
const ACTIVITY_DEADLINE: Duration = Duration::from_secs(60);

/// A running server and the database it owns; both go away when it is dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub activity: Activity,
    /// The server's database, for setting up what clients cannot (tokens).
    pub database: Database,
    /// Where that database is, for a test's own connection to it.
    pub url: DatabaseUrl,
    shutdown: Option<oneshot::Sender<()>>,
    serving: Option<JoinHandle<Result<(), server::ServeError>>>,
    _sqlite_dir: Option<tempfile::TempDir>,
    postgres_database: Option<(String, String)>,
}

impl TestServer {
    /// Starts a server with default limits. `None` only when PostgreSQL is unreachable
    /// outside CI (in CI that is a failure).
    pub async fn start(backend: Backend) -> Option<TestServer> {
        Self::start_with(backend, SyncLimits::default()).await
    }

    pub async fn start_with(backend: Backend, limits: SyncLimits) -> Option<TestServer> {
        Self::start_configured(
            backend,
            Config {
                limits,
                ..Config::default()
            },
        )
        .await
    }

    /// Starts a server that authenticates every call.
    pub async fn start_secured(backend: Backend) -> Option<TestServer> {
        Self::start_configured(
            backend,
            Config {
                authenticated: true,
                ..Config::default()
            },
        )
        .await
    }

    pub async fn start_configured(backend: Backend, config: Config) -> Option<TestServer> {
        let (url, sqlite_dir, postgres_database) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("create a temporary directory");
                let path = dir.path().join("inventory-sync.db");
                let url: DatabaseUrl = path.to_str().expect("UTF-8 path").parse().unwrap();
                (url, Some(dir), None)
            }
            Backend::Postgres => {
                let (admin_url, name, url) = create_postgres_database().await?;
                (DatabaseUrl::Postgres(url), None, Some((admin_url, name)))
            }
        };
        Some(Self::start_on(url, config, sqlite_dir, postgres_database).await)
    }

    /// Starts a server on the database at `url`; `sqlite_dir` and `postgres_database` (admin
    /// URL and name) are removed when it is dropped.
    pub async fn start_on(
        url: DatabaseUrl,
        config: Config,
        sqlite_dir: Option<tempfile::TempDir>,
        postgres_database: Option<(String, String)>,
    ) -> TestServer {
        let databases = Databases::open(&url, &[], &config.limits, config.request_connections)
            .await
            .expect("connect to the test database");
        let database = databases.requests.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let activity = Activity::default();
        let auth = if config.authenticated {
            Authenticator::new(database.clone(), config.token_recheck_interval)
        } else {
            Authenticator::disabled()
        };
        let state = AppState {
            databases,
            activity: activity.clone(),
            limits: config.limits,
            max_message_bytes: config.max_message_bytes,
            auth,
            tls: config.tls,
            metrics: inventory_sync::metrics::Metrics::default(),
            database_check_interval: config.database_check_interval,
            claim_ttl: config.claim_ttl,
        };
        let (shutdown, stop) = oneshot::channel::<()>();
        let serving = tokio::spawn(server::run(listener, state, async {
            let _ = stop.await;
        }));
        TestServer {
            addr,
            activity,
            database,
            url,
            shutdown: Some(shutdown),
            serving: Some(serving),
            _sqlite_dir: sqlite_dir,
            postgres_database,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint())
            .unwrap()
            .connect()
            .await
            .expect("connect to the test server")
    }

    pub async fn client(&self) -> InventorySyncClient<Channel> {
        InventorySyncClient::new(self.channel().await)
    }

    /// Waits until the server's activity satisfies `condition`; a minute without it fails
    /// the test that waits, naming what the server was doing.
    pub async fn wait_until(&self, condition: impl FnMut(&ActivitySnapshot) -> bool) {
        if let Err(last) = self.activity.wait_until(ACTIVITY_DEADLINE, condition).await {
            panic!(
                "the server's activity never reached the awaited state in {ACTIVITY_DEADLINE:?}; last seen: {last:?}"
            );
        }
    }

    /// Holds the lock a merge of `store_id` needs until the holder is dropped: on SQLite the
    /// database's write lock, on PostgreSQL the store's row. The store must have synced once.
    pub async fn hold_merge_lock(&self, store_id: i64) -> MergeLockHolder {
        match &self.url {
            DatabaseUrl::Sqlite(url) => {
                let mut connection = sqlx::SqliteConnection::connect(url).await.unwrap();
                sqlx::raw_sql("BEGIN IMMEDIATE")
                    .execute(&mut connection)
                    .await
                    .unwrap();
                MergeLockHolder::Sqlite {
                    _connection: connection,
                }
            }
            DatabaseUrl::Postgres(url) => {
                let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
                sqlx::raw_sql("BEGIN")
                    .execute(&mut connection)
                    .await
                    .unwrap();
                let locked = sqlx::query("SELECT id FROM stores WHERE id = $1 FOR UPDATE")
                    .bind(store_id)
                    .fetch_optional(&mut connection)
                    .await
                    .unwrap();
                assert!(locked.is_some(), "store {store_id} has no row to lock yet");
                MergeLockHolder::Postgres {
                    _connection: connection,
                }
            }
        }
    }

    /// Starts a graceful shutdown; `stopped` waits for it to complete.
    pub fn begin_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Waits until the server has stopped serving.
    pub async fn stopped(&mut self) {
        if let Some(serving) = self.serving.take() {
            serving
                .await
                .expect("the server task panicked")
                .expect("the server failed");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.begin_shutdown();
        if let Some(serving) = self.serving.take() {
            serving.abort();
        }
        // The pool is not closed here: closing waits for connections that tasks of the
        // test's runtime may still be returning, and this thread blocks that runtime. A
        // SQLite file goes with its temporary directory; a PostgreSQL database is dropped
        // with its connections, from a thread of its own.
        if let Some((admin_url, name)) = self.postgres_database.take() {
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(drop_postgres_database(&admin_url, &name));
            })
            .join()
            .expect("drop the test database");
        }
    }
}

/// Creates a fresh PostgreSQL database for one test: (admin URL, its name, its URL).
pub async fn create_postgres_database() -> Option<(String, String, String)> {
    let admin_url =
        std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_owned());
    let connect = tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::PgConnection::connect(&admin_url),
    )
    .await;
    let mut admin = match connect {
        Ok(Ok(connection)) => connection,
        failure => {
            let reason = match failure {
                Ok(Err(error)) => error.to_string(),
                _ => "timed out".to_owned(),
            };
            if std::env::var("CI").is_ok_and(|ci| ci == "true") {
                panic!("PostgreSQL at {admin_url} is unreachable in CI: {reason}");
            }
            eprintln!("skipping: PostgreSQL at {admin_url} is unreachable: {reason}");
            return None;
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let name = format!(
        "{TEST_DATABASE_PREFIX}{now}_{}",
        uuid::Uuid::new_v4().simple()
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create a test database");
    let _ = admin.close().await;
    let mut url = url::Url::parse(&admin_url).expect("TEST_DATABASE_URL is a URL");
    url.set_path(&name);
    let url = url.to_string();
    if std::env::var("TEST_POSTGRES_LAYOUT").is_ok_and(|layout| layout == "partitioned") {
        partition_by_store(&url).await;
    }
    Some((admin_url, name, url))
}

/// Migrates the fresh database `url` and hash-partitions its tables of store data by store,
/// as `scripts/partition_postgres_by_store.sql` tells an operator to.
async fn partition_by_store(url: &str) {
    let parsed: inventory_sync::store::DatabaseUrl = url.parse().expect("a PostgreSQL URL");
    inventory_sync::store::Database::connect(&parsed)
        .await
        .expect("migrate the test database")
        .close()
        .await;
    let script = include_str!("../../scripts/partition_postgres_by_store.sql");
    let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(script)
        .execute(&mut connection)
        .await
        .expect("partition the test database by store");
    let _ = connection.close().await;
}

pub async fn drop_postgres_database(admin_url: &str, name: &str) {
    if let Ok(mut admin) = sqlx::PgConnection::connect(admin_url).await {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await;
        let _ = admin.close().await;
    }
}

/// Generates each test twice: `sqlite::name` and `postgres::name`, each on a fresh server
/// (started by `TestServer::start`, or by the constructor named in `start = …;`).
macro_rules! backend_tests {
    (start = $start:ident; $(async fn $name:ident($server:ident) $body:block)*) => {
        mod sqlite {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    #[allow(unused_mut)]
                    let Some(mut $server) =
                        $crate::support::TestServer::$start($crate::support::Backend::Sqlite).await
                    else {
                        return;
                    };
                    $body
                }
            )*
        }
        mod postgres {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    #[allow(unused_mut)]
                    let Some(mut $server) =
                        $crate::support::TestServer::$start($crate::support::Backend::Postgres).await
                    else {
                        return;
                    };
                    $body
                }
            )*
        }
    };
    ($(async fn $name:ident($server:ident) $body:block)*) => {
        backend_tests! { start = start; $(async fn $name($server) $body)* }
    };
}
pub(crate) use backend_tests;

/// Runs `test` against a server of each backend started with `config()`.
pub async fn each_backend(config: impl Fn() -> Config, test: impl AsyncFn(TestServer)) {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        if let Some(server) = TestServer::start_configured(backend, config()).await {
            test(server).await;
        }
    }
}

// ---- building requests ----

/// A product update with only its external id set.
pub fn item(external_id: &str) -> pb::ProductUpdate {
    pb::ProductUpdate {
        external_id: external_id.to_owned(),
        ..pb::ProductUpdate::default()
    }
}

/// A product update with its external id and stock set.
pub fn stocked(external_id: &str, in_stock: i64) -> pb::ProductUpdate {
    pb::ProductUpdate {
        in_stock: Some(in_stock),
        ..item(external_id)
    }
}

pub fn header(store_id: i64) -> pb::SyncHeader {
    pb::SyncHeader {
        store_id,
        ..pb::SyncHeader::default()
    }
}

/// The messages of a sync: the header alone, then the products in messages of `per_message`.
pub fn messages(
    header: pb::SyncHeader,
    products: Vec<pb::ProductUpdate>,
    per_message: usize,
) -> Vec<pb::SyncRequest> {
    let mut messages = vec![pb::SyncRequest {
        header: Some(header),
        products: Vec::new(),
    }];
    for chunk in products.chunks(per_message.max(1)) {
        messages.push(pb::SyncRequest {
            header: None,
            products: chunk.to_vec(),
        });
    }
    messages
}

/// Runs a sync with the products in messages of 100.
pub async fn sync(
    client: &mut InventorySyncClient<Channel>,
    header: pb::SyncHeader,
    products: Vec<pb::ProductUpdate>,
) -> Result<pb::SyncResponse, tonic::Status> {
    send(client, messages(header, products, 100)).await
}

/// Runs a sync made of exactly these messages.
pub async fn send(
    client: &mut InventorySyncClient<Channel>,
    messages: Vec<pb::SyncRequest>,
) -> Result<pb::SyncResponse, tonic::Status> {
    client
        .sync(tokio_stream::iter(messages))
        .await
        .map(tonic::Response::into_inner)
}

/// Every product of a store, in the order the server lists them.
pub async fn list(client: &mut InventorySyncClient<Channel>, store_id: i64) -> Vec<pb::Product> {
    list_filtered(
        client,
        pb::ListProductsRequest {
            store_id,
            ..pb::ListProductsRequest::default()
        },
    )
    .await
}

pub async fn list_filtered(
    client: &mut InventorySyncClient<Channel>,
    request: pb::ListProductsRequest,
) -> Vec<pb::Product> {
    let mut stream = client.list_products(request).await.unwrap().into_inner();
    let mut products = Vec::new();
    while let Some(product) = stream.message().await.unwrap() {
        products.push(product);
    }
    products
}

/// One product by external id.
pub async fn get(
    client: &mut InventorySyncClient<Channel>,
    store_id: i64,
    external_id: &str,
) -> Result<pb::Product, tonic::Status> {
    let key = pb::get_product_request::Key::ExternalId(external_id.to_owned());
    get_by_key(client, store_id, key).await
}

/// One product by barcode.
pub async fn get_by_barcode(
    client: &mut InventorySyncClient<Channel>,
    store_id: i64,
    barcode: &str,
) -> Result<pb::Product, tonic::Status> {
    let key = pb::get_product_request::Key::Barcode(barcode.to_owned());
    get_by_key(client, store_id, key).await
}

async fn get_by_key(
    client: &mut InventorySyncClient<Channel>,
    store_id: i64,
    key: pb::get_product_request::Key,
) -> Result<pb::Product, tonic::Status> {
    let request = pb::GetProductRequest {
        store_id,
        key: Some(key),
    };
    client
        .get_product(request)
        .await
        .map(tonic::Response::into_inner)
}

/// The field paths of the `BadRequest` detail of an `INVALID_ARGUMENT` status.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "expected INVALID_ARGUMENT, got {status:?}"
    );
    let bad_request = status
        .get_details_bad_request()
        .expect("INVALID_ARGUMENT carries a BadRequest detail");
    bad_request
        .field_violations
        .into_iter()
        .map(|violation| violation.field)
        .collect()
}

/// Checks that `status` has `code` and a message that says `says`.
pub fn assert_refused(status: &tonic::Status, code: tonic::Code, says: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(says), "{}", status.message());
}

/// Waits until no sync is in flight, then checks that the store has no product at all.
pub async fn assert_nothing_committed(
    server: &TestServer,
    client: &mut InventorySyncClient<Channel>,
    store_id: i64,
) {
    server.wait_until(|now| now.syncs_in_flight == 0).await;
    assert!(
        list(client, store_id).await.is_empty(),
        "nothing was committed"
    );
}

/// `(external_id, in_stock)` of every product of a store: a compact picture of its state.
pub async fn stock(
    client: &mut InventorySyncClient<Channel>,
    store_id: i64,
) -> Vec<(String, Option<i64>)> {
    list(client, store_id)
        .await
        .into_iter()
        .map(|product| (product.external_id, product.in_stock))
        .collect()
}

/// A product update with barcodes and stock, for barcode-keyed syncs.
pub fn coded(external_id: &str, barcodes: &[&str], in_stock: i64) -> pb::ProductUpdate {
    pb::ProductUpdate {
        barcodes: barcodes.iter().map(|barcode| barcode.to_string()).collect(),
        ..stocked(external_id, in_stock)
    }
}

/// The header of a barcode-keyed (legacy) sync.
pub fn barcode_header(store_id: i64) -> pb::SyncHeader {
    pb::SyncHeader {
        key: pb::KeyField::Barcode as i32,
        ..header(store_id)
    }
}

// ---- the binary as a separate process ----

/// A started server process: its address, and the admin token it printed on a first start.
pub struct Served {
    pub child: Child,
    pub endpoint: String,
    pub first_admin_token: Option<String>,
    /// The log line that says the server is serving, with its addresses.
    pub serving_line: String,
    /// The server's later log lines, as it writes them.
    pub logs: std::sync::mpsc::Receiver<String>,
}

/// Starts `inventory-sync serve` in `dir` on a free port (unless `extra` names one), with
/// `extra` arguments.
pub fn serve_in(dir: &std::path::Path, extra: &[&str]) -> Served {
    Served::when_serving(spawn_serve(dir, extra, &[]))
}

/// Starts `inventory-sync serve` in `dir` on a free port (unless `extra` names one), with
/// `extra` arguments and `environment` variables, without waiting for it.
pub fn spawn_serve(dir: &std::path::Path, extra: &[&str], environment: &[(&str, &str)]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_inventory-sync"));
    command.arg("serve");
    if !extra.contains(&"--listen") {
        command.args(["--listen", "127.0.0.1:0"]);
    }
    command
        .args(extra)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info")
        .envs(environment.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the binary")
}

impl Served {
    /// Reads the log of a started server until it says it is serving; panics with the log
    /// if it exits first.
    pub fn when_serving(mut child: Child) -> Served {
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let mut lines = stderr.lines();
        let mut first_admin_token = None;
        let mut log = Vec::new();
        let (address, serving_line) = loop {
            let Some(Ok(line)) = lines.next() else {
                panic!("the server stopped before serving:\n{}", log.join("\n"));
            };
            if let Some(token) = first_admin_token_in(&line) {
                first_admin_token = Some(token);
            }
            if let Some(rest) = line.split("listen=").nth(1) {
                break (rest.split_whitespace().next().unwrap().to_owned(), line);
            }
            if let Some(rest) = line.split("\"listen\":\"").nth(1) {
                break (rest.split('"').next().unwrap().to_owned(), line);
            }
            log.push(line);
        };
        // Keep draining the log so the server never blocks on a full pipe.
        let (sender, logs) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                // Nobody may be listening; the log is drained all the same.
                let _ = sender.send(line);
            }
        });
        Served {
            child,
            endpoint: format!("http://{address}"),
            first_admin_token,
            serving_line,
            logs,
        }
    }
}

/// The first admin token a log line reports, in text (`token=isk_…`) or JSON
/// (`"token":"isk_…"`).
pub fn first_admin_token_in(line: &str) -> Option<String> {
    let start = line
        .find("token=isk_")
        .map(|at| at + "token=".len())
        .or_else(|| {
            line.find("\"token\":\"isk_")
                .map(|at| at + "\"token\":\"".len())
        })?;
    let token: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    Some(token)
}

/// How long a server may take to stop after SIGTERM before its test fails.
const STOP_DEADLINE: Duration = Duration::from_secs(60);

/// Sends SIGTERM and waits for the process to exit, without blocking the runtime (which
/// may still have to close the client's connection for the server to finish).
pub async fn terminate(mut child: Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let exited = tokio::task::spawn_blocking(move || child.wait().unwrap());
    match tokio::time::timeout(STOP_DEADLINE, exited).await {
        Ok(status) => status.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("the server did not stop within {STOP_DEADLINE:?} of SIGTERM");
        }
    }
}

// ---- streams a test holds open ----

/// A sync whose stream stays open until the test sends more or drops `messages`.
pub struct OpenSync {
    pub messages: tokio::sync::mpsc::Sender<pb::SyncRequest>,
    pub answer: JoinHandle<Result<pb::SyncResponse, tonic::Status>>,
}

impl OpenSync {
    /// Half-closes the stream and waits for the answer.
    pub async fn finish(self) -> Result<pb::SyncResponse, tonic::Status> {
        drop(self.messages);
        self.answer.await.expect("the sync's task panicked")
    }
}

/// Starts a sync whose first message carries `header` and `products`, and keeps its stream
/// open; `client` may carry a token.
pub async fn open_sync<T>(
    client: &InventorySyncClient<T>,
    header: pb::SyncHeader,
    products: Vec<pb::ProductUpdate>,
) -> OpenSync
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
    T::Future: Send,
{
    let (messages, stream) = tokio::sync::mpsc::channel(4);
    messages
        .send(pb::SyncRequest {
            header: Some(header),
            products,
        })
        .await
        .expect("the stream is open");
    let mut client = client.clone();
    let answer = tokio::spawn(async move {
        client
            .sync(tokio_stream::wrappers::ReceiverStream::new(stream))
            .await
            .map(tonic::Response::into_inner)
    });
    OpenSync { messages, answer }
}

// ---- callers with tokens ----

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Bearer {
    pub fn new(token: &str) -> Self {
        Bearer(format!("Bearer {token}").parse().expect("a token is ASCII"))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A channel whose calls carry a token.
pub type WithToken = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

impl TestServer {
    /// A client of the InventorySync service calling with `token`.
    pub async fn client_as(&self, token: &str) -> InventorySyncClient<WithToken> {
        InventorySyncClient::with_interceptor(self.channel().await, Bearer::new(token))
    }

    /// A client of the MatchQueue service calling with `token`.
    pub async fn queue_as(
        &self,
        token: &str,
    ) -> pb::match_queue_client::MatchQueueClient<WithToken> {
        pb::match_queue_client::MatchQueueClient::with_interceptor(
            self.channel().await,
            Bearer::new(token),
        )
    }

    /// Creates a token with `role` named `name`; returns it.
    pub async fn token(&self, name: &str, role: inventory_sync::auth::Role) -> String {
        inventory_sync::auth::create_token(&self.database, name, &role)
            .await
            .expect("create a token")
            .to_string()
    }
}

// ---- metrics ----

/// The address of a server's metrics, as its serving line names it.
pub fn metrics_address(served: &Served) -> String {
    served
        .serving_line
        .split("metrics=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the serving line names the metrics address")
        .to_owned()
}

/// The value of counter `name` on a server's metrics now.
pub async fn metric(served: &Served, name: &str) -> u64 {
    sample(&scrape(&metrics_address(served)).await, name) as u64
}

/// `GET /metrics` of the server at `address`, the body only.
pub async fn scrape(address: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut connection = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    connection.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    connection.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// The value of the sample `name` in a Prometheus text body.
pub fn sample(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in\n{body}"))
        .parse()
        .unwrap()
}
