//! The `inventory.v1.MatchQueue` service.

use tonic::{Request, Response, Status};

use super::caller;
use super::pages::{PAGE_SIZE, ProductStream, stream_pages};
use super::status::invalid_field;
use crate::auth::{Authenticator, Principal};
use crate::matching::{CatalogItem, MatchError, MatchQueue};
use crate::pb;
use crate::pb::match_queue_server;
use crate::replicas::ReplicaReads;
use crate::store::{Database, PendingFilter, ProductRef};

/// Serves the matching queue of one database.
#[derive(Debug, Clone)]
pub struct MatchQueueService {
    queue: MatchQueue,
    /// The listing, which a read replica may answer; the transitions read the primary.
    reads: ReplicaReads,
    auth: Authenticator,
}

impl MatchQueueService {
    pub fn new(
        database: Database,
        reads: ReplicaReads,
        auth: Authenticator,
        claim_ttl: std::time::Duration,
    ) -> Self {
        MatchQueueService {
            queue: MatchQueue::new(database, claim_ttl),
            reads,
            auth,
        }
    }

    /// The queue's transitions, for the server's background expiry of old claims.
    pub fn queue(&self) -> &MatchQueue {
        &self.queue
    }

    /// Every queue call takes a matcher or admin token.
    async fn check_matcher<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let principal = caller(&self.auth, request).await?;
        principal.may_match()?;
        Ok(principal)
    }
}

#[tonic::async_trait]
impl match_queue_server::MatchQueue for MatchQueueService {
    type ListPendingStream = ProductStream;

    async fn list_pending(
        &self,
        request: Request<pb::ListPendingRequest>,
    ) -> Result<Response<Self::ListPendingStream>, Status> {
        self.check_matcher(&request).await?;
        let request = request.into_inner();
        if request.store_id < 0 {
            return Err(invalid_field(
                "store_id",
                format!(
                    "store_id is {}; use 0 for every store or a store's id",
                    request.store_id
                ),
            ));
        }
        if pb::Category::try_from(request.category).is_err() {
            return Err(invalid_field(
                "category",
                format!("category {} is unknown", request.category),
            ));
        }
        // Products whose claim expired are listed as pending.
        self.queue.expire_claims().await?;
        let filter = PendingFilter {
            store_id: request.store_id,
            category: request.category,
            include_in_progress: request.include_in_progress,
        };
        let reads = self.reads.clone();
        let span = tracing::info_span!("list_pending", store_id = request.store_id);
        Ok(Response::new(stream_pages(span, move |after_id| {
            let reads = reads.clone();
            let filter = filter.clone();
            async move {
                reads
                    .read(|database| {
                        let filter = filter.clone();
                        async move { database.pending_page(&filter, after_id, PAGE_SIZE).await }
                    })
                    .await
            }
        })))
    }

    async fn claim(
        &self,
        request: Request<pb::ClaimRequest>,
    ) -> Result<Response<pb::Product>, Status> {
        let principal = self.check_matcher(&request).await?;
        let request = request.into_inner();
        // `claimed_by` of the request is ignored: a claim is the caller's token's.
        let product = ProductRef {
            id: request.product_id,
            store_id: request.store_id,
        };
        let product = self.queue.claim(product, &principal).await?;
        Ok(Response::new(product.into()))
    }

    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::Product>, Status> {
        let principal = self.check_matcher(&request).await?;
        let request = request.into_inner();
        let item = CatalogItem::from_wire(request.catalog_item).map_err(MatchError::Invalid)?;
        let product = ProductRef {
            id: request.product_id,
            store_id: request.store_id,
        };
        let product = self.queue.complete(product, &item, &principal).await?;
        Ok(Response::new(product.into()))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::Product>, Status> {
        let principal = self.check_matcher(&request).await?;
        let request = request.into_inner();
        let product = ProductRef {
            id: request.product_id,
            store_id: request.store_id,
        };
        let product = self.queue.release(product, &principal).await?;
        Ok(Response::new(product.into()))
    }
}
