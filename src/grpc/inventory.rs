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
use crate::store::{Database, ProductFilter, ProductKey};
use crate::sync::{SyncEngine, SyncError, SyncOptions, Violation};

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
        let mut session = self.engine.begin(options).await?;
        let span = session.span().clone();

        async move {
            session.receive(first.products).await?;
            let mut message_number = 1u64;
            loop {
                // A client that goes silent must not hold a sync (and its connection) open.
                let next = tokio::time::timeout(idle_timeout, stream.message())
                    .await
                    .map_err(|_| SyncError::Idle(idle_timeout))?;
                let Some(message) = next? else { break };
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
            let summary = session.finish().await?;
            Ok(Response::new(summary.into()))
        }
        .instrument(span)
        .await
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

pub(crate) fn check_store_id(store_id: i64) -> Result<(), Status> {
    if store_id <= 0 {
        return Err(invalid_field(
            "store_id",
            format!("store_id is {store_id}; it must be > 0"),
        ));
    }
    Ok(())
}
