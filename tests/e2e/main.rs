//! End-to-end tests: a real server on 127.0.0.1:0 over a fresh real database per test,
//! driven through the generated gRPC client. Every behaviour runs on SQLite and on
//! PostgreSQL (`sqlite::…` and `postgres::…`).

mod support;

mod atomicity;
mod auth;
mod barcode_sync;
mod binary;
mod bootstrap;
mod crash;
mod fairness;
mod guards;
mod history;
mod hostile;
mod match_queue;
mod model;
mod outage;
mod push;
mod reads;
mod replicas;
mod schema;
mod serving;
mod standby;
mod sync_counts;
mod tls;
mod validation;
