//! Thin adapters from the generated gRPC service traits to the domain. Requests are checked
//! and converted here, the domain does the work, and errors become `Status` in [`status`].

mod convert;
mod inventory;
mod match_queue;
mod pages;
mod status;

pub use inventory::InventoryService;
pub use match_queue::MatchQueueService;
pub(crate) use status::describe_sync_error;

use tonic::{Request, Status};

use crate::auth::{Authenticator, Principal};

/// The authenticated caller of a request.
async fn caller<T>(auth: &Authenticator, request: &Request<T>) -> Result<Principal, Status> {
    let authorization = request
        .metadata()
        .get("authorization")
        .and_then(|value| value.to_str().ok());
    Ok(auth.authenticate(authorization).await?)
}
