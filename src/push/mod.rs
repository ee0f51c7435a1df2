//! `inventory-sync push`: streams a POS export (CSV or JSON Lines) to a server as one sync.
//!
//! The file is read twice and never held in memory: once to check every row (bad rows are
//! reported with their line numbers before anything is sent), then again to send it. A
//! connection that breaks is retried with backoff under one idempotency key, so a retry never
//! applies twice: if the first attempt committed, the retry is answered with its result.

mod rows;

pub use rows::{Row, RowError};

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

use crate::config::PushArgs;
use crate::pb;
use crate::pb::inventory_sync_client::InventorySyncClient;
use crate::sync::{FieldLimits, ProductChange, SyncKey};

/// Products per message, as the contract recommends.
const PRODUCTS_PER_MESSAGE: usize = 1_000;
/// Bad rows listed before giving up; all are counted.
const MAX_LISTED_BAD_ROWS: usize = 20;
/// Attempts at a sync whose connection breaks, and the wait before the first retry
/// (doubled after each).
const MAX_ATTEMPTS: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// Exit code when the file has bad rows (nothing was sent).
const EXIT_BAD_INPUT: u8 = 2;

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{count} bad rows; nothing was sent")]
    BadRows { count: u64 },
    #[error("invalid --server {0:?}: {1}")]
    Server(String, String),
    #[error("the sync failed: {:?}: {}", .0.code(), .0.message())]
    Refused(Status),
}

/// Runs the command; exit code 0 only when the sync committed (or a dry run passed).
pub async fn run(args: PushArgs) -> ExitCode {
    match push(&args).await {
        Ok(response) => {
            print_response(&response);
            ExitCode::SUCCESS
        }
        Err(PushError::BadRows { count }) => {
            eprintln!("{count} bad rows; nothing was sent");
            ExitCode::from(EXIT_BAD_INPUT)
        }
        Err(error) => {
            eprintln!("push failed: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn push(args: &PushArgs) -> Result<pb::SyncResponse, PushError> {
    // Standard input is read twice too, so it is spooled to a temporary file first.
    let spooled;
    let path = if args.file == Path::new("-") {
        spooled = spool_stdin().map_err(|source| PushError::Read {
            path: args.file.clone(),
            source,
        })?;
        spooled.path().to_path_buf()
    } else {
        args.file.clone()
    };
    let key = if args.barcode_key() {
        SyncKey::Barcode
    } else {
        SyncKey::ExternalId
    };
    let total = check_rows(&path, key)?;

    let idempotency_key = args
        .idempotency_key
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let header = pb::SyncHeader {
        store_id: args.store,
        clear: args.clear,
        key: match key {
            SyncKey::ExternalId => pb::KeyField::ExternalId as i32,
            SyncKey::Barcode => pb::KeyField::Barcode as i32,
        },
        idempotency_key: idempotency_key.clone(),
        dry_run: args.dry_run,
        allow_mass_clear: args.allow_mass_clear,
        expected_count: Some(total),
        ..pb::SyncHeader::default()
    };
    let endpoint = endpoint(args)?;
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=MAX_ATTEMPTS {
        let progress = Progress::new(total);
        let result = send(&endpoint, args.token.as_deref(), &header, &path, &progress).await;
        progress.finish();
        match result {
            Ok(response) => return Ok(response),
            Err(status) if retryable(&status) && attempt < MAX_ATTEMPTS => {
                eprintln!(
                    "attempt {attempt} failed ({:?}: {}); retrying in {backoff:?} with idempotency key {idempotency_key}",
                    status.code(),
                    status.message()
                );
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(status) => return Err(PushError::Refused(status)),
        }
    }
    unreachable!("the last attempt returns")
}

/// Checks every row as the server would (with its default limits), listing the first bad
/// ones; returns how many products the file has.
fn check_rows(path: &Path, key: SyncKey) -> Result<u64, PushError> {
    let rows = rows::open(path).map_err(|source| PushError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let limits = FieldLimits::default();
    let (mut total, mut bad) = (0u64, 0u64);
    for row in rows {
        total += 1;
        let problem = match row {
            Ok(row) => match ProductChange::from_wire(row.product, key, &limits) {
                Ok(_) => continue,
                Err(errors) => RowError {
                    line: row.line,
                    message: errors
                        .into_iter()
                        .map(|error| error.description)
                        .collect::<Vec<_>>()
                        .join("; "),
                },
            },
            Err(error) => error,
        };
        bad += 1;
        if bad as usize <= MAX_LISTED_BAD_ROWS {
            eprintln!("line {}: {}", problem.line, problem.message);
        }
    }
    if bad > 0 {
        return Err(PushError::BadRows { count: bad });
    }
    Ok(total)
}

fn spool_stdin() -> std::io::Result<tempfile::NamedTempFile> {
    let mut file = tempfile::NamedTempFile::new()?;
    std::io::copy(&mut std::io::stdin().lock(), &mut file)?;
    Ok(file)
}

fn endpoint(args: &PushArgs) -> Result<Endpoint, PushError> {
    let invalid =
        |error: &dyn std::fmt::Display| PushError::Server(args.server.clone(), error.to_string());
    let mut endpoint =
        Channel::from_shared(args.server.clone()).map_err(|error| invalid(&error))?;
    if let Some(ca) = &args.tls_ca {
        let pem = std::fs::read(ca).map_err(|source| PushError::Read {
            path: ca.clone(),
            source,
        })?;
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
        endpoint = endpoint.tls_config(tls).map_err(|error| invalid(&error))?;
    }
    Ok(endpoint.connect_timeout(Duration::from_secs(10)))
}

/// One attempt: streams the file as it reads it.
async fn send(
    endpoint: &Endpoint,
    token: Option<&str>,
    header: &pb::SyncHeader,
    path: &Path,
    progress: &Progress,
) -> Result<pb::SyncResponse, Status> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| Status::unavailable(format!("cannot connect: {error}")))?;
    let mut client = InventorySyncClient::new(channel);
    let (messages, stream) = mpsc::channel::<pb::SyncRequest>(4);
    let reader = {
        let (path, header, progress) = (path.to_path_buf(), header.clone(), progress.clone());
        tokio::task::spawn_blocking(move || read_messages(&path, header, &messages, &progress))
    };
    let mut request = Request::new(ReceiverStream::new(stream));
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::invalid_argument("the token holds characters a header cannot"))?;
        request.metadata_mut().insert("authorization", value);
    }
    let response = client.sync(request).await;
    // The reader stops by itself once the stream is gone.
    let _ = reader.await;
    Ok(response?.into_inner())
}

/// Sends the file as sync messages: the header first, then products in messages of
/// [`PRODUCTS_PER_MESSAGE`]. Stops early if the call ended.
fn read_messages(
    path: &Path,
    header: pb::SyncHeader,
    messages: &mpsc::Sender<pb::SyncRequest>,
    progress: &Progress,
) -> std::io::Result<()> {
    let first = pb::SyncRequest {
        header: Some(header),
        products: Vec::new(),
    };
    if messages.blocking_send(first).is_err() {
        return Ok(());
    }
    let mut batch = Vec::with_capacity(PRODUCTS_PER_MESSAGE);
    // Rows were checked already; a row that fails now (the file changed) is left to the
    // server's own checks and the expected count.
    for row in rows::open(path)?.flatten() {
        batch.push(row.product);
        if batch.len() == PRODUCTS_PER_MESSAGE {
            let sent = batch.len() as u64;
            let products = std::mem::replace(&mut batch, Vec::with_capacity(PRODUCTS_PER_MESSAGE));
            if messages
                .blocking_send(pb::SyncRequest {
                    header: None,
                    products,
                })
                .is_err()
            {
                return Ok(());
            }
            progress.sent(sent);
        }
    }
    if !batch.is_empty() {
        let sent = batch.len() as u64;
        if messages
            .blocking_send(pb::SyncRequest {
                header: None,
                products: batch,
            })
            .is_ok()
        {
            progress.sent(sent);
        }
    }
    Ok(())
}

/// Whether an attempt failed on the way rather than being refused: worth retrying.
fn retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::Cancelled | Code::Unknown => true,
        // A connection that broke mid-call surfaces as an internal h2 or transport error.
        Code::Internal => {
            let message = status.message();
            message.contains("h2 protocol error") || message.contains("transport error")
        }
        _ => false,
    }
}

fn print_response(response: &pb::SyncResponse) {
    let what = if response.dry_run {
        "checked (dry run; nothing committed)"
    } else if response.replayed {
        "committed (by an earlier attempt with the same idempotency key)"
    } else {
        "committed"
    };
    println!("sync {} {what}", response.sync_id);
    println!(
        "received {}  created {}  updated {}  unchanged {}  cleared {}  linked {}  rejected {}",
        response.received,
        response.created,
        response.updated,
        response.unchanged,
        response.cleared,
        response.linked,
        response.rejected_total
    );
}

/// Products sent so far: a bar on a terminal, otherwise a line every few seconds.
#[derive(Clone)]
struct Progress {
    bar: ProgressBar,
    plain: Option<std::sync::Arc<std::sync::Mutex<PlainProgress>>>,
}

struct PlainProgress {
    total: u64,
    sent: u64,
    started: Instant,
    last_line: Instant,
}

/// How often plain progress lines are printed.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    fn new(total: u64) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} products  {per_sec}  ETA {eta}")
                    .expect("the template is valid"),
            );
            Progress { bar, plain: None }
        } else {
            let now = Instant::now();
            let plain = PlainProgress {
                total,
                sent: 0,
                started: now,
                last_line: now,
            };
            Progress {
                bar: ProgressBar::hidden(),
                plain: Some(std::sync::Arc::new(std::sync::Mutex::new(plain))),
            }
        }
    }

    fn sent(&self, products: u64) {
        self.bar.inc(products);
        if let Some(plain) = &self.plain {
            let mut plain = plain.lock().expect("the lock is never poisoned");
            plain.sent += products;
            if plain.last_line.elapsed() >= PLAIN_PROGRESS_EVERY || plain.sent == plain.total {
                plain.last_line = Instant::now();
                let rate = plain.sent as f64 / plain.started.elapsed().as_secs_f64().max(1e-3);
                eprintln!(
                    "sent {} of {} products ({rate:.0}/s)",
                    plain.sent, plain.total
                );
            }
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
