//! inventory-sync keeps a retail store's inventory in step with a central product catalog.
//!
//! A store's point of sale streams its whole inventory over gRPC; the service validates and
//! stages the products as they arrive, then merges them into the catalog's copy in one
//! transaction (UPSERT by external id, and optionally a clear of everything not listed).
//!
//! # Layout
//! - [`config`]: the command line (every flag also reads an environment variable).
//! - [`server`]: assembles the gRPC services and serves them until shutdown.
//! - [`grpc`]: thin adapters from the generated service traits to the domain; the one
//!   place where errors become `tonic::Status`.
//! - [`product`]: a product as a POS sends it, validated: the values and their bounds.
//! - [`sync`]: the domain of a sync: its options, the session and its counts.
//! - [`matching`]: the catalog team's matching queue and its transitions.
//! - [`store`]: the database: SQLite and PostgreSQL behind one type, all SQL in one place.
//! - [`auth`]: bearer tokens, roles, and who may call what.
//! - [`push`]: the `push` command, a client that streams a POS export file as one sync.
//! - [`metrics`]: Prometheus metrics and the `/metrics` endpoint.
//! - [`clock`]: the service's time, as the tables store it.
//! - [`quote`]: how a client's values appear in messages: quoted, shortened, bounded.
//! - [`activity`]: what is in flight right now (syncs, products), for operators and tests.
//! - [`pb`]: code generated from `proto/inventory/v1/inventory.proto`.

pub mod activity;
pub mod auth;
pub mod clock;
pub mod config;
pub mod grpc;
pub mod matching;
pub mod metrics;
pub mod pb;
pub mod product;
pub mod push;
pub mod quote;
pub mod replicas;
pub mod server;
pub mod store;
pub mod sync;
