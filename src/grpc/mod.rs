//! Thin adapters from the generated gRPC service traits to the domain. Requests are checked
//! and converted here, the domain does the work, and errors become `Status` in [`status`].

mod convert;
mod inventory;
mod status;

pub use inventory::InventoryService;
