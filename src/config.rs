//! The command line. Every flag also reads an environment variable, so the same binary is
//! configured by flags on a laptop and by the environment in a container.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::store::DatabaseUrl;
use crate::sync::{FieldLimits, SyncLimits};

/// Keeps a retail store's inventory in step with a central product catalog.
#[derive(Debug, Parser)]
#[command(name = "inventory-sync", version, about, long_about = None)]
pub struct Cli {
    /// How log lines are written to stderr: text for people, json (one object per line,
    /// with every span field such as store_id and sync_id) for log collectors.
    #[arg(
        long,
        global = true,
        env = "LOG_FORMAT",
        default_value = "text",
        value_enum
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// See [`Cli::log_format`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The subcommands of `inventory-sync`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gRPC API (InventorySync, MatchQueue, health, reflection) until SIGTERM or
    /// SIGINT.
    Serve(Box<ServeArgs>),
    /// Create, list and revoke the bearer tokens that callers authenticate with.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Stream a POS export (CSV or JSON Lines, or - for standard input) to a server as one
    /// sync, and print its counts. Exits 0 only when the sync committed (or a dry run
    /// passed), 2 when the file has bad rows (nothing is sent).
    Push(PushArgs),
}

/// Options of `inventory-sync push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The store whose inventory the file holds.
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    pub store: i64,
    /// Sync with clear: products of the store not in the file are set out of stock.
    #[arg(long)]
    pub clear: bool,
    /// Let the clear set more of the store out of stock than the server's mass-clear guard
    /// allows.
    #[arg(long, requires = "clear")]
    pub allow_mass_clear: bool,
    /// Check and count everything, commit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How products are identified: external_id (the default) or barcode (the legacy sync).
    #[arg(long, value_name = "FIELD", default_value = "external_id", value_parser = ["external_id", "barcode"])]
    pub key: String,
    /// The sync's idempotency key; one is generated when not given. Every retry of this
    /// push reuses it, so the sync applies at most once.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// The server's URL.
    #[arg(
        long,
        env = "INVENTORY_SYNC_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// A bearer token (see `tokens create`).
    #[arg(long, env = "INVENTORY_SYNC_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA that signed the server's certificate, for an https:// server.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// The export: CSV with a header row of field names (barcodes separated by |), or JSON
    /// Lines of ProductUpdate in the proto JSON mapping; - reads standard input.
    pub file: PathBuf,
}

impl PushArgs {
    pub fn barcode_key(&self) -> bool {
        self.key == "barcode"
    }
}

/// `inventory-sync tokens …`
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token and print it (alone, on the last line of stdout). It is shown once.
    Create(CreateTokenArgs),
    /// List the tokens: id, name, role, stores, created, last used (never the token itself).
    List(DatabaseArgs),
    /// Revoke a token: every server refuses it with UNAUTHENTICATED within --token-recheck-interval
    /// (1s by default), and no sync sent with it commits from then on.
    Revoke(RevokeTokenArgs),
}

/// Where the data lives.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// A SQLite file (a path or `sqlite://PATH`, created if missing) or a PostgreSQL server
    /// (`postgres://USER@HOST/DB`).
    #[arg(long, env = "DATABASE_URL", default_value = "inventory-sync.db")]
    pub database_url: DatabaseUrl,
}

/// Options of `inventory-sync tokens create`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("role").required(true).args(["store", "matcher", "admin"])))]
pub struct CreateTokenArgs {
    /// A store token for this store (repeat for several stores).
    #[arg(long = "store", value_name = "ID", value_parser = clap::value_parser!(i64).range(1..))]
    pub store: Vec<i64>,
    /// A matcher token: the matching queue, and reading any store.
    #[arg(long)]
    pub matcher: bool,
    /// An admin token: everything.
    #[arg(long)]
    pub admin: bool,
    /// A name to tell the token by in lists and logs.
    #[arg(long, default_value = "")]
    pub name: String,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// Options of `inventory-sync tokens revoke`.
#[derive(Debug, Args)]
pub struct RevokeTokenArgs {
    /// The token's id, as `tokens list` shows it.
    pub id: i64,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// Options of `inventory-sync serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on for gRPC.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Serve Prometheus metrics as text on http://ADDR/metrics (off when not given).
    #[arg(long, env = "METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Serve without authentication: every caller may do everything. For development only.
    #[arg(long, env = "INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Require client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long, env = "TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Largest decoded gRPC message accepted, in bytes; a larger one is refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Database connections for every call but syncs (reads, the matching queue, token
    /// checks). Syncs have a pool of their own, sized from --max-concurrent-syncs, so that
    /// syncs holding all of theirs never keep a read waiting.
    #[arg(long, env = "INVENTORY_SYNC_REQUEST_CONNECTIONS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub request_connections: u32,

    /// A read replica of the PostgreSQL database (repeat for several): GetProduct,
    /// ListProducts, ListPending and ListSyncRuns are sent to the replicas in turn (one
    /// that does not answer is left out for a while; the primary answers when none does).
    /// A replica answers what it has replayed so far: a sync committed within its lag may
    /// not show yet. Everything a sync or the queue's transitions need stays on the primary.
    #[arg(
        long = "read-database-url",
        env = "INVENTORY_SYNC_READ_DATABASE_URLS",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub read_database_urls: Vec<DatabaseUrl>,

    /// How long a token checked against the database is taken as valid before it is
    /// checked again: a revoked token is refused by every server within this time (e.g.
    /// "1s"; "0s" checks on every call). Syncs are checked again before they commit.
    #[arg(long, env = "INVENTORY_SYNC_TOKEN_RECHECK_INTERVAL", default_value = "1s",
          value_parser = humantime::parse_duration)]
    pub token_recheck_interval: Duration,

    /// A matcher's claim older than this is pending again (e.g. "30m").
    #[arg(long, env = "INVENTORY_SYNC_CLAIM_TTL", default_value = "30m",
          value_parser = humantime::parse_duration)]
    pub claim_ttl: Duration,

    /// Write the first admin token (made on the first start of a database) to this file,
    /// readable by its owner only, instead of logging it.
    #[arg(long, env = "INVENTORY_SYNC_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Use this token (isk_<id>_<64 hex digits>) as the first admin token instead of making
    /// one; best given through the environment, where other users cannot see it.
    #[arg(
        long,
        env = "INVENTORY_SYNC_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub admin_token: Option<String>,

    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Bounds on what clients may send and do; each exceeded bound is refused with a clear
/// status and commits nothing.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Most products one sync may carry.
    #[arg(long, env = "MAX_PRODUCTS_PER_SYNC", default_value_t = SyncLimits::default().max_products)]
    pub max_products_per_sync: u64,

    /// Most barcodes one product may carry.
    #[arg(long, env = "MAX_BARCODES_PER_PRODUCT", default_value_t = FieldLimits::default().max_barcodes)]
    pub max_barcodes_per_product: usize,

    /// Longest barcode, in characters.
    #[arg(long, env = "MAX_BARCODE_CHARS", default_value_t = FieldLimits::default().max_barcode_chars)]
    pub max_barcode_chars: usize,

    /// Longest product name, in characters.
    #[arg(long, env = "MAX_NAME_CHARS", default_value_t = FieldLimits::default().max_name_chars)]
    pub max_name_chars: usize,

    /// Longest unit size, in characters.
    #[arg(long, env = "MAX_UNIT_SIZE_CHARS", default_value_t = FieldLimits::default().max_unit_size_chars)]
    pub max_unit_size_chars: usize,

    /// Mass-clear guard: a clearing sync may set at most this fraction of a store's in-stock
    /// products out of stock (when that is more than 10 products) unless the sync sets
    /// allow_mass_clear.
    #[arg(long, env = "MAX_CLEAR_FRACTION", default_value_t = SyncLimits::default().max_clear_fraction,
          value_parser = parse_fraction)]
    pub max_clear_fraction: f64,

    /// Syncs running at once; more wait for their turn. Each holds a database connection.
    #[arg(long, env = "MAX_CONCURRENT_SYNCS", default_value_t = SyncLimits::default().max_concurrent_syncs,
          value_parser = parse_sync_count)]
    pub max_concurrent_syncs: usize,

    /// Syncs of one store running or waiting at once; more are refused at once with
    /// RESOURCE_EXHAUSTED, and other stores' syncs are untouched.
    #[arg(long, env = "INVENTORY_SYNC_MAX_SYNCS_PER_STORE", default_value_t = SyncLimits::default().max_syncs_per_store,
          value_parser = parse_sync_count)]
    pub max_syncs_per_store: usize,

    /// Syncs sent with one token running or waiting at once; more are refused at once with
    /// RESOURCE_EXHAUSTED. (Not applied with --insecure-no-auth, where there are no tokens.)
    #[arg(long, env = "INVENTORY_SYNC_MAX_SYNCS_PER_TOKEN", default_value_t = SyncLimits::default().max_syncs_per_token,
          value_parser = parse_sync_count)]
    pub max_syncs_per_token: usize,

    /// A sync whose stream is still open this long after its first message is rolled back
    /// with DEADLINE_EXCEEDED, however steadily its client sends (e.g. "30m").
    #[arg(long, env = "INVENTORY_SYNC_MAX_SYNC_DURATION", default_value = "30m",
          value_parser = humantime::parse_duration)]
    pub max_sync_duration: Duration,

    /// How long a sync waits for its turn before RESOURCE_EXHAUSTED (e.g. "10s").
    #[arg(long, env = "SYNC_QUEUE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub sync_queue_timeout: Duration,

    /// A sync whose client sends nothing for this long is rolled back (e.g. "60s").
    #[arg(long, env = "STREAM_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub stream_idle_timeout: Duration,

    /// How long a committed idempotency key is honoured: a retry with it within this time
    /// replays the first answer (e.g. "7days").
    #[arg(long, env = "IDEMPOTENCY_RETENTION", default_value = "7days", value_parser = humantime::parse_duration)]
    pub idempotency_retention: Duration,

    /// How often a running sync marks its history run alive; a run silent for 3 of these is
    /// recorded as aborted (its server stopped) by any server on the database.
    #[arg(long, env = "SYNC_HEARTBEAT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub sync_heartbeat: Duration,
}

impl LimitArgs {
    /// The limits syncs are held to.
    pub fn sync_limits(&self) -> SyncLimits {
        SyncLimits {
            max_products: self.max_products_per_sync,
            fields: FieldLimits {
                max_barcodes: self.max_barcodes_per_product,
                max_barcode_chars: self.max_barcode_chars,
                max_name_chars: self.max_name_chars,
                max_unit_size_chars: self.max_unit_size_chars,
            },
            max_clear_fraction: self.max_clear_fraction,
            max_concurrent_syncs: self.max_concurrent_syncs,
            max_syncs_per_store: self.max_syncs_per_store,
            max_syncs_per_token: self.max_syncs_per_token,
            max_sync_duration: self.max_sync_duration,
            queue_timeout: self.sync_queue_timeout,
            idle_timeout: self.stream_idle_timeout,
            idempotency_retention: self.idempotency_retention,
            heartbeat: self.sync_heartbeat,
            ..SyncLimits::default()
        }
    }
}

/// Most syncs a limit may allow: each running sync holds a database connection, and
/// databases take hundreds of connections at most.
const MAX_SYNC_COUNT: usize = 256;

fn parse_sync_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(number @ 1..=MAX_SYNC_COUNT) => Ok(number),
        _ => Err(format!(
            "{text:?} is not a whole number from 1 to {MAX_SYNC_COUNT}"
        )),
    }
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    let fraction: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=1.0).contains(&fraction) {
        Ok(fraction)
    } else {
        Err(format!("{text} is not a fraction from 0 to 1"))
    }
}
