//! The command line. Every flag also reads an environment variable, so the same binary is
//! configured by flags on a laptop and by the environment in a container.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

use crate::store::DatabaseUrl;
use crate::sync::SyncLimits;

/// Keeps a retail store's inventory in step with a central product catalog.
#[derive(Debug, Parser)]
#[command(name = "inventory-sync", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `inventory-sync`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gRPC API (InventorySync, health, reflection) until SIGTERM or SIGINT.
    Serve(ServeArgs),
}

/// Options of `inventory-sync serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on for gRPC.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Where the data lives: a SQLite file (a path or `sqlite://PATH`, created if missing) or
    /// a PostgreSQL server (`postgres://USER@HOST/DB`).
    #[arg(long, env = "DATABASE_URL", default_value = "inventory-sync.db")]
    pub database_url: DatabaseUrl,

    /// Largest decoded gRPC message accepted, in bytes.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Most products one sync may carry.
    #[arg(long, env = "MAX_PRODUCTS_PER_SYNC", default_value_t = SyncLimits::default().max_products)]
    pub max_products_per_sync: u64,
}

impl ServeArgs {
    /// The limits a sync is held to.
    pub fn sync_limits(&self) -> SyncLimits {
        SyncLimits {
            max_products: self.max_products_per_sync,
            ..SyncLimits::default()
        }
    }
}
