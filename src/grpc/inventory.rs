//! The `inventory.v1.InventorySync` service.

use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::caller;
use super::convert::micros_from_timestamp;
use super::pages::{PAGE_SIZE, ProductStream, stream_pages};
use super::status::{bounded, invalid_field};
use crate::auth::Authenticator;
use crate::pb;
use crate::pb::inventory_sync_server::InventorySync;
use crate::quote::quoted;
use crate::replicas::ReplicaReads;
use crate::store::{ProductFilter, ProductKey};
use crate::sync::{
    MAX_EXTERNAL_ID_CHARS, Sender, SyncEngine, SyncError, SyncOptions, SyncSession, Violation,
    check_text,
};

/// Serves syncs and reads of one database.
#[derive(Debug, Clone)]
pub struct InventoryService {
    engine: SyncEngine,
    /// Reads go to a pool of their own, so that syncs holding every connection of theirs
    /// never keep a read waiting, or to read replicas.
    reads: ReplicaReads,
    auth: Authenticator,
    /// Largest message accepted, for the error that names it.
    max_message_bytes: usize,
}

impl InventoryService {
    pub fn new(
        engine: SyncEngine,
        reads: ReplicaReads,
        auth: Authenticator,
        max_message_bytes: usize,
    ) -> Self {
        InventoryService {
            engine,
            reads,
            auth,
            max_message_bytes,
        }
    }
}

/// Longest barcode a lookup takes; no stored barcode is longer than the field limit, which
/// an operator may raise, so this bound only keeps megabyte keys out of the database.
const MAX_LOOKUP_BARCODE_CHARS: usize = 1024;

#[tonic::async_trait]
impl InventorySync for InventoryService {
    async fn sync(
        &self,
        request: Request<Streaming<pb::SyncRequest>>,
    ) -> Result<Response<pb::SyncResponse>, Status> {
        let principal = caller(&self.auth, &request).await?;
        let mut stream = request.into_inner();
        let limits = self.engine.limits();
        let idle_timeout = limits.idle_timeout;
        let first = tokio::time::timeout(idle_timeout, stream.message())
            .await
            .map_err(|_| SyncError::Idle(idle_timeout))?
            .map_err(|status| self.refused_message(status))?;
        // The longest a sync may take counts from its first message.
        let clock = StreamClock {
            idle_timeout,
            deadline: tokio::time::Instant::now() + limits.max_sync_duration,
            max_duration: limits.max_sync_duration,
        };
        let first = first.ok_or_else(|| {
            invalid_field(
                "header",
                "the stream ended before its first message; the first message must carry the header",
            )
        })?;
        let header = first.header.ok_or_else(|| {
            invalid_field(
                "header",
                "the first message of a sync must carry the header",
            )
        })?;
        let options = SyncOptions::try_from(header)?;
        principal.may_write_store(options.store_id)?;
        let sender = Sender {
            token_name: &principal.name,
            token_id: principal.token_id,
        };
        let mut session = self.engine.begin(options, sender).await?;
        let span = session.span().clone();

        async move {
            let received = receive_all(&mut session, first.products, &mut stream, clock);
            match received.await {
                Ok(()) => Ok(Response::new(session.finish().await?.into())),
                Err(StreamEnd::Sync(error)) => Err(session.abandon(error).await.into()),
                Err(StreamEnd::Broken(status)) if is_message_too_large(&status) => {
                    let error = SyncError::MessageTooLarge {
                        limit: self.max_message_bytes,
                    };
                    Err(session.abandon(error).await.into())
                }
                Err(StreamEnd::Broken(status)) => {
                    tracing::info!(%status, "the sync's stream failed; nothing committed");
                    let error = SyncError::StreamFailed {
                        cancelled: status.code() == tonic::Code::Cancelled,
                        detail: status.message().to_owned(),
                    };
                    session.abandon(error).await;
                    Err(status)
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn list_sync_runs(
        &self,
        request: Request<pb::ListSyncRunsRequest>,
    ) -> Result<Response<pb::ListSyncRunsResponse>, Status> {
        let principal = caller(&self.auth, &request).await?;
        let request = request.into_inner();
        check_store_id(request.store_id)?;
        principal.may_read_store(request.store_id)?;
        let page_size = match request.page_size {
            0 => DEFAULT_RUNS_PAGE,
            size @ 1..=MAX_RUNS_PAGE => size,
            size => {
                return Err(invalid_field(
                    "page_size",
                    format!(
                        "page_size is {size}; it must be 0 (the default, {DEFAULT_RUNS_PAGE}) to {MAX_RUNS_PAGE}"
                    ),
                ));
            }
        };
        // The token is the id of the last run of the previous page: a UUID.
        let before = match request.page_token.as_str() {
            "" => None,
            token => match uuid::Uuid::try_parse(token) {
                Ok(id) => Some(id.to_string()),
                Err(_) => {
                    return Err(invalid_field(
                        "page_token",
                        "page_token is not one this server gave; pass next_page_token as received",
                    ));
                }
            },
        };
        let store_id = request.store_id;
        let mut runs = self
            .reads
            .read(|database| {
                let before = before.clone();
                async move {
                    database
                        .sync_runs_page(store_id, before.as_deref(), i64::from(page_size) + 1)
                        .await
                }
            })
            .await?;
        let next_page_token = if runs.len() > page_size as usize {
            runs.truncate(page_size as usize);
            runs.last().map(|run| run.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListSyncRunsResponse {
            runs: runs.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn get_product(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::Product>, Status> {
        let principal = caller(&self.auth, &request).await?;
        let request = request.into_inner();
        check_store_id(request.store_id)?;
        principal.may_read_store(request.store_id)?;
        let key = match request.key {
            Some(pb::get_product_request::Key::ExternalId(id)) if !id.is_empty() => {
                check_text("external_id", &id, MAX_EXTERNAL_ID_CHARS)
                    .map_err(|error| invalid_field("external_id", error.description))?;
                ProductKey::ExternalId(id)
            }
            Some(pb::get_product_request::Key::Barcode(code)) if !code.is_empty() => {
                check_text("barcode", &code, MAX_LOOKUP_BARCODE_CHARS)
                    .map_err(|error| invalid_field("barcode", error.description))?;
                ProductKey::Barcode(code)
            }
            _ => {
                return Err(invalid_field(
                    "key",
                    "set external_id or barcode to the product to look up",
                ));
            }
        };
        let store_id = request.store_id;
        let found = self
            .reads
            .read(|database| {
                let key = key.clone();
                async move { database.product(store_id, &key).await }
            })
            .await?;
        match found {
            Some(record) => Ok(Response::new(record.into())),
            None => {
                let (field, value) = match &key {
                    ProductKey::ExternalId(id) => ("external_id", id),
                    ProductKey::Barcode(code) => ("barcode", code),
                };
                Err(bounded(
                    tonic::Code::NotFound,
                    format!(
                        "store {} has no product with {field} {}",
                        request.store_id,
                        quoted(value)
                    ),
                ))
            }
        }
    }

    type ListProductsStream = ProductStream;

    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<Self::ListProductsStream>, Status> {
        let principal = caller(&self.auth, &request).await?;
        let request = request.into_inner();
        check_store_id(request.store_id)?;
        principal.may_read_store(request.store_id)?;
        if pb::MatchStatus::try_from(request.match_status).is_err() {
            return Err(invalid_field(
                "match_status",
                format!("match_status {} is unknown", request.match_status),
            ));
        }
        let filter = ProductFilter {
            store_id: request.store_id,
            match_status: request.match_status,
            in_stock_only: request.in_stock_only,
            updated_since: request.updated_since.as_ref().map(micros_from_timestamp),
        };

        let reads = self.reads.clone();
        let span = tracing::info_span!("list_products", store_id = request.store_id);
        Ok(Response::new(stream_pages(span, move |after_id| {
            let reads = reads.clone();
            let filter = filter.clone();
            async move {
                reads
                    .read(|database| {
                        let filter = filter.clone();
                        async move { database.products_page(&filter, after_id, PAGE_SIZE).await }
                    })
                    .await
            }
        })))
    }
}

const DEFAULT_RUNS_PAGE: i32 = 50;
const MAX_RUNS_PAGE: i32 = 500;

/// Why a sync's stream ended early.
enum StreamEnd {
    /// The sync failed (a limit, an idle client, a worker error).
    Sync(SyncError),
    /// The stream itself failed: a message too large or undecodable, a broken connection.
    Broken(Status),
}

impl From<SyncError> for StreamEnd {
    fn from(error: SyncError) -> Self {
        StreamEnd::Sync(error)
    }
}

impl InventoryService {
    /// The answer to a first message that could not be read: one over the size limit is
    /// `RESOURCE_EXHAUSTED`, as the gRPC status codes say, not tonic's `OUT_OF_RANGE`.
    fn refused_message(&self, status: Status) -> Status {
        if is_message_too_large(&status) {
            SyncError::MessageTooLarge {
                limit: self.max_message_bytes,
            }
            .into()
        } else {
            status
        }
    }
}

/// Whether tonic refused a received message for its size.
pub(crate) fn is_message_too_large(status: &Status) -> bool {
    status.code() == tonic::Code::OutOfRange
        && status
            .message()
            .contains("decoded message length too large")
}

/// How long a sync's stream may take: between two messages, and in all.
#[derive(Debug, Clone, Copy)]
struct StreamClock {
    idle_timeout: std::time::Duration,
    deadline: tokio::time::Instant,
    max_duration: std::time::Duration,
}

impl StreamClock {
    /// Waits for the next message, until the client has been idle too long or the sync's
    /// time is up, whichever comes first. A client trickling messages still meets the
    /// deadline: a sync cannot hold its seat and connection for as long as it likes.
    async fn next<T>(&self, message: impl std::future::Future<Output = T>) -> Result<T, SyncError> {
        let now = tokio::time::Instant::now();
        // Checked first: a timeout does not fire while messages are ready at once (a client
        // sending faster than the sync stages), and staging's own waits count too.
        if now >= self.deadline {
            return Err(SyncError::TooLong(self.max_duration));
        }
        let idle_until = now + self.idle_timeout;
        if idle_until < self.deadline {
            tokio::time::timeout_at(idle_until, message)
                .await
                .map_err(|_| SyncError::Idle(self.idle_timeout))
        } else {
            tokio::time::timeout_at(self.deadline, message)
                .await
                .map_err(|_| SyncError::TooLong(self.max_duration))
        }
    }
}

/// Feeds every message of a sync's stream to its session, until the client half-closes.
async fn receive_all(
    session: &mut SyncSession,
    first_products: Vec<pb::ProductUpdate>,
    stream: &mut Streaming<pb::SyncRequest>,
    clock: StreamClock,
) -> Result<(), StreamEnd> {
    session.receive(first_products).await?;
    let mut message_number = 1u64;
    loop {
        let next = clock.next(stream.message()).await?;
        let Some(message) = next.map_err(StreamEnd::Broken)? else {
            return Ok(());
        };
        message_number += 1;
        if message.header.is_some() {
            session.reject(Violation::new(
                "header",
                format!(
                    "message {message_number} of the stream carries a header; only the first may"
                ),
            ));
        }
        session.receive(message.products).await?;
    }
}

pub(crate) fn check_store_id(store_id: i64) -> Result<(), Status> {
    if store_id <= 0 {
        return Err(invalid_field(
            "store_id",
            format!("store_id is {store_id}; it must be > 0"),
        ));
    }
    Ok(())
}
