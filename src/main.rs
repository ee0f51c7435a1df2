//! The `inventory-sync` binary: parses the command line, starts logging, runs a subcommand.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use clap::Parser;
use inventory_sync::activity::Activity;
use inventory_sync::auth::{self, Authenticator, FirstToken, Role};
use inventory_sync::config::{
    Cli, Command, CreateTokenArgs, DatabaseArgs, LogFormat, ServeArgs, TokensCommand,
};
use inventory_sync::metrics::{self, Metrics};
use inventory_sync::server::{self, AppState, Databases};
use inventory_sync::store::{Database, DatabaseUrl};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tracing_subscriber::EnvFilter;

type Failure = Box<dyn std::error::Error>;

/// How often `serve` probes the database for its health status.
const DATABASE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Rust's allocations go to mimalloc. A sync moves every product through several threads
/// (decoded on one, bound on another, freed on the connection's), and glibc's malloc makes
/// those threads either take turns on one arena's lock or, with an arena each, keep what
/// each has freed, so that the footprint grows with the largest sync run. mimalloc frees
/// across threads without a shared lock and keeps the footprint flat; it halves the time
/// of an unchanged re-sync on SQLite (see README, Performance). Built with `no_thp`:
/// otherwise it asks for transparent huge pages on its arena, and wherever THP is on
/// `madvise` each touched 2 MiB counts whole: 18 MiB resident in an idle server, 176 MiB
/// instead of 113 MiB with 100 syncs at once (`cargo bench --bench sync`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    use_one_malloc_arena();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the async runtime starts");
    runtime.block_on(run())
}

/// SQLite still allocates with glibc's malloc, on the connections' threads. glibc would give
/// each of those threads an arena of its own and keep what is freed in it; one arena keeps
/// that memory flat, and SQLite's own soft heap limit (store/sqlite.rs) bounds it. Called
/// before any thread starts.
fn use_one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before other threads
    // exist, so nothing allocates concurrently.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }

    let result = match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Tokens(TokensCommand::Create(args)) => create_token(args).await,
        Command::Tokens(TokensCommand::List(args)) => list_tokens(args).await,
        Command::Tokens(TokensCommand::Revoke(args)) => revoke_token(args.id, &args.database).await,
        Command::Push(args) => return inventory_sync::push::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

async fn open(database: &DatabaseArgs) -> Result<Database, Failure> {
    Database::connect(&database.database_url)
        .await
        .map_err(|error| {
            format!(
                "cannot open the database {}: {error}",
                database.database_url
            )
            .into()
        })
}

async fn serve(args: ServeArgs) -> Result<(), Failure> {
    let limits = args.limits.sync_limits();
    let on_postgres = |url: &DatabaseUrl| matches!(url, DatabaseUrl::Postgres(_));
    let replicas_of_postgres = args.read_database_urls.is_empty()
        || (on_postgres(&args.database.database_url)
            && args.read_database_urls.iter().all(on_postgres));
    if !replicas_of_postgres {
        return Err(
            "--read-database-url takes replicas of a PostgreSQL --database-url, \
                    each a postgres:// URL"
                .into(),
        );
    }
    let databases = Databases::open(
        &args.database.database_url,
        &args.read_database_urls,
        &limits,
        args.request_connections,
    )
    .await
    .map_err(|error| {
        format!(
            "cannot open the database {}: {error}",
            args.database.database_url
        )
    })?;
    let database = databases.requests.clone();
    let auth = if args.insecure_no_auth {
        tracing::warn!(
            "authentication is OFF (--insecure-no-auth): anyone who reaches the port may read \
             and rewrite every store"
        );
        Authenticator::disabled()
    } else {
        create_first_admin_token(&database, &args).await?;
        Authenticator::new(database.clone(), args.token_recheck_interval)
    };
    let tls = tls_config(&args)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", args.listen))?;
    let metrics_listener = match args.metrics_listen {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .map_err(|error| format!("cannot listen on {address} for metrics: {error}"))?,
        ),
        None => None,
    };
    let metrics_address = match &metrics_listener {
        Some(listener) => listener.local_addr()?.to_string(),
        None => "off".to_owned(),
    };
    tracing::info!(
        listen = %listener.local_addr()?,
        database = %args.database.database_url,
        tls = tls.is_some(),
        metrics = %metrics_address,
        read_replicas = args.read_database_urls.len(),
        "inventory-sync is serving"
    );
    let state = AppState {
        databases: databases.clone(),
        activity: Activity::default(),
        limits,
        max_message_bytes: args.max_message_bytes,
        auth,
        tls,
        metrics: Metrics::default(),
        database_check_interval: DATABASE_CHECK_INTERVAL,
        claim_ttl: args.claim_ttl,
    };
    let metrics_server = metrics_listener.map(|listener| {
        let serve = metrics::serve(
            listener,
            state.metrics.clone(),
            state.activity.clone(),
            databases.clone(),
            std::future::pending(),
        );
        tokio::spawn(async move {
            if let Err(error) = serve.await {
                tracing::error!(%error, "the metrics endpoint failed");
            }
        })
    });
    let served = server::run(listener, state, shutdown_signal()).await;
    if let Some(metrics_server) = metrics_server {
        metrics_server.abort();
    }
    served?;
    databases.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Secure by default, usable at once: a database that never had tokens gets an admin
/// token, logged this once (or written to --admin-token-file, or taken from
/// --admin-token).
async fn create_first_admin_token(database: &Database, args: &ServeArgs) -> Result<(), Failure> {
    let source = match &args.admin_token {
        Some(seed) => FirstToken::Seeded(seed),
        None => FirstToken::Generated,
    };
    let Some(token) = auth::create_first_admin_token(database, source).await? else {
        if args.admin_token.is_some() {
            tracing::warn!(
                "the database has had tokens already; --admin-token is not used (make tokens \
                 with `inventory-sync tokens create`)"
            );
        }
        return Ok(());
    };
    if args.admin_token.is_some() {
        tracing::info!(
            id = token.id,
            "created the first admin token from --admin-token"
        );
    } else if let Some(path) = &args.admin_token_file {
        write_secret(path, &format!("{token}\n")).map_err(|error| {
            format!(
                "created the first admin token (id {}) but cannot write it to {}: {error}; \
                 revoke it and make another with `inventory-sync tokens create --admin`",
                token.id,
                path.display()
            )
        })?;
        tracing::info!(
            id = token.id,
            file = %path.display(),
            "created the first admin token and wrote it to the file"
        );
    } else {
        // A warning, so that it shows at any log level an operator would run with.
        tracing::warn!(
            id = token.id,
            token = %token,
            "created the first admin token; it will not be shown again, keep it safe. Pass it \
             as the metadata \"authorization: Bearer <token>\", and make tokens for stores \
             and matchers with `inventory-sync tokens create`"
        );
    }
    Ok(())
}

/// Writes a file only its owner may read, whether or not it existed before.
fn write_secret(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    // The mode above applies to a new file only; an old one keeps its own until told.
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(contents.as_bytes())
}

fn tls_config(args: &ServeArgs) -> Result<Option<ServerTlsConfig>, Failure> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let read = |path: &std::path::PathBuf| {
        std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))
    };
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(client_ca) = &args.tls_client_ca {
        config = config.client_ca_root(Certificate::from_pem(read(client_ca)?));
    }
    Ok(Some(config))
}

async fn create_token(args: CreateTokenArgs) -> Result<(), Failure> {
    let database = open(&args.database).await?;
    let role = if args.admin {
        Role::Admin
    } else if args.matcher {
        Role::Matcher
    } else {
        Role::Store(args.store.clone())
    };
    let token = auth::create_token(&database, &args.name, &role).await?;
    let scope = match &role {
        Role::Store(stores) => format!("store token for stores {stores:?}"),
        Role::Matcher => "matcher token".to_owned(),
        Role::Admin => "admin token".to_owned(),
    };
    println!(
        "Created {scope} {} (id {}). It is shown only now:",
        quoted(&args.name),
        token.id
    );
    println!("{token}");
    database.close().await;
    Ok(())
}

async fn list_tokens(args: DatabaseArgs) -> Result<(), Failure> {
    let database = open(&args).await?;
    println!(
        "{:>4}  {:<24} {:<8} {:<16} {:<20} {:<20}",
        "ID", "NAME", "ROLE", "STORES", "CREATED", "LAST USED"
    );
    for token in auth::list_tokens(&database).await? {
        let record = &token.record;
        let stores = token
            .stores
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let role = if record.revoked_at.is_some() {
            format!("{} (revoked)", record.role)
        } else {
            record.role.clone()
        };
        println!(
            "{:>4}  {:<24} {:<8} {:<16} {:<20} {:<20}",
            record.id,
            record.name,
            role,
            if stores.is_empty() { "-" } else { &stores },
            time(Some(record.created_at)),
            time(record.last_used_at),
        );
    }
    database.close().await;
    Ok(())
}

async fn revoke_token(id: i64, args: &DatabaseArgs) -> Result<(), Failure> {
    let database = open(args).await?;
    let revoked = auth::revoke_token(&database, id).await?;
    database.close().await;
    if revoked {
        println!("Revoked token {id}.");
        Ok(())
    } else {
        Err(format!("there is no active token {id}").into())
    }
}

fn quoted(name: &str) -> String {
    if name.is_empty() {
        String::new()
    } else {
        format!("{name:?}")
    }
}

/// Microseconds since the Unix epoch as an RFC 3339 time, to the second.
fn time(micros: Option<i64>) -> String {
    match micros.and_then(|micros| u64::try_from(micros).ok()) {
        Some(micros) => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_micros(micros))
                .to_string()
        }
        None => "never".to_owned(),
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::warn!(%error, "cannot watch SIGTERM; only SIGINT stops the server");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down: finishing requests in flight");
}
