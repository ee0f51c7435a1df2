//! The `inventory.v1.InventorySync` service.

use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::caller;
use super::convert::micros_from_timestamp;
use super::pages::{PAGE_SIZE, ProductStream, stream_pages};
use super::status::invalid_field;
use crate::auth::Authenticator;
use crate::pb;
use crate::pb::inventory_sync_server::InventorySync;
use crate::store::{Database, ProductFilter, ProductKey, RunOutcome};
use crate::sync::{SyncEngine, SyncError, SyncOptions, SyncSession, Violation};

/// Serves syncs and reads of one database.
#[derive(Debug, Clone)]
pub struct InventoryService {
    engine: SyncEngine,
    database: Database,
    auth: Authenticator,
}

impl InventoryService {
    pub fn new(engine: SyncEngine, database: Database, auth: Authenticator) -> Self {
        InventoryService {
            engine,
            database,
            auth,
        }
    }
}

#[tonic::async_trait]
impl InventorySync for InventoryService {
    async fn sync(
        &self,
        request: Request<Streaming<pb::SyncRequest>>,
    ) -> Result<Response<pb::SyncResponse>, Status> {
        let principal = caller(&self.auth, &request).await?;
        let mut stream = request.into_inner();
        let idle_timeout = self.engine.limits().idle_timeout;
        let first = tokio::time::timeout(idle_timeout, stream.message())
            .await
            .map_err(|_| SyncError::Idle(idle_timeout))??;
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
        let mut session = self.engine.begin(options, &principal.name).await?;
        let span = session.span().clone();

        async move {
            let received = receive_all(&mut session, first.products, &mut stream, idle_timeout);
            match received.await {
                Ok(()) => Ok(Response::new(session.finish().await?.into())),
                Err(StreamEnd::Sync(error)) => Err(session.abandon(error).await.into()),
                Err(StreamEnd::Broken(status)) => {
                    tracing::info!(%status, "the sync's stream failed; nothing committed");
                    let outcome = if status.code() == tonic::Code::Cancelled {
                        RunOutcome::Aborted
                    } else {
                        RunOutcome::Rejected
                    };
                    let message = status.message().to_owned();
                    session
                        .abandon_broken_stream(outcome, status.code() as i32, message)
                        .await;
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
        let mut runs = self
            .database
            .sync_runs_page(
                request.store_id,
                before.as_deref(),
                i64::from(page_size) + 1,
            )
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
                ProductKey::ExternalId(id)
            }
            Some(pb::get_product_request::Key::Barcode(code)) if !code.is_empty() => {
                ProductKey::Barcode(code)
            }
            _ => {
                return Err(invalid_field(
                    "key",
                    "set external_id or barcode to the product to look up",
                ));
            }
        };
        match self.database.product(request.store_id, &key).await? {
            Some(record) => Ok(Response::new(record.into())),
            None => {
                let (field, value) = match &key {
                    ProductKey::ExternalId(id) => ("external_id", id),
                    ProductKey::Barcode(code) => ("barcode", code),
                };
                Err(Status::not_found(format!(
                    "store {} has no product with {field} {value:?}",
                    request.store_id
                )))
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

        let database = self.database.clone();
        let span = tracing::info_span!("list_products", store_id = request.store_id);
        Ok(Response::new(stream_pages(span, move |after_id| {
            let database = database.clone();
            let filter = filter.clone();
            async move { database.products_page(&filter, after_id, PAGE_SIZE).await }
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

/// Feeds every message of a sync's stream to its session, until the client half-closes.
async fn receive_all(
    session: &mut SyncSession,
    first_products: Vec<pb::ProductUpdate>,
    stream: &mut Streaming<pb::SyncRequest>,
    idle_timeout: std::time::Duration,
) -> Result<(), StreamEnd> {
    session.receive(first_products).await?;
    let mut message_number = 1u64;
    loop {
        // A client that goes silent must not hold a sync (and its connection) open.
        let next = tokio::time::timeout(idle_timeout, stream.message())
            .await
            .map_err(|_| SyncError::Idle(idle_timeout))?;
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
