//! Thin adapters from the generated gRPC service traits to the domain. Requests are checked
//! and converted here, the domain does the work, and errors become `Status` in [`status`].

mod convert;
mod inventory;
mod match_queue;
mod pages;
mod status;

pub use inventory::InventoryService;
pub use match_queue::MatchQueueService;
