//! What the benchmarks share: the release server as a separate process, and fresh
//! databases for it.

// Each benchmark uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use inventory_sync::pb::inventory_sync_client::InventorySyncClient;
use sqlx::{Connection, Executor};
use tonic::transport::Channel;

pub const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct Server {
    pub child: Child,
    pub endpoint: String,
}

impl Server {
    /// Starts the release server on `database_url` without authentication.
    pub fn start(database_url: &str) -> Server {
        Self::start_with(database_url, &["--insecure-no-auth"])
    }

    /// Starts the release server on `database_url` with `extra` arguments.
    pub fn start_with(database_url: &str, extra: &[&str]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_inventory-sync"));
        command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                database_url,
                "--max-concurrent-syncs",
                "8",
                "--sync-queue-timeout",
                "30m",
            ])
            .args(extra)
            .env(
                "RUST_LOG",
                // The service's own info lines stay on: `listen=` is among them.
                match std::env::var("BENCH_SERVER_LOG") {
                    Ok(more) => format!("warn,inventory_sync=info,{more}"),
                    Err(_) => "warn,inventory_sync=info".to_owned(),
                },
            );
        spawn_listening(&mut command)
    }

    pub async fn client(&self) -> InventorySyncClient<Channel> {
        InventorySyncClient::connect(self.endpoint.clone())
            .await
            .expect("connect")
            .max_decoding_message_size(64 * 1024 * 1024)
    }

    /// Starts a new peak-RSS measurement.
    pub fn reset_peak_memory(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5");
    }

    /// Peak RSS since the last reset, in MiB.
    pub fn peak_memory_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| {
                value
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .map_or(f64::NAN, |kib| kib / 1024.0)
    }
}

/// Starts `command`, a server that logs `listen=ADDR` once it listens, and waits for that.
pub fn spawn_listening(command: &mut Command) -> Server {
    let mut child = command
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the server");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let address = loop {
        let line = lines.next().expect("the server starts").unwrap();
        if let Some(rest) = line.split("listen=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // BENCH_SERVER_LOG=sqlx::query=debug shows where a sync spends its time.
    let echo = std::env::var_os("BENCH_SERVER_LOG").is_some();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if echo {
                eprintln!("server: {line}");
            }
        }
    });
    Server {
        child,
        endpoint: format!("http://{address}"),
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// A fresh database: (URL for the server, what to drop afterwards).
pub async fn fresh_database(backend: Backend, dir: &std::path::Path, name: &str) -> Option<String> {
    match backend {
        Backend::Sqlite => Some(dir.join(format!("{name}.db")).display().to_string()),
        Backend::Postgres => {
            let admin_url =
                std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_POSTGRES.to_owned());
            let mut admin = sqlx::PgConnection::connect(&admin_url).await.ok()?;
            let database = format!("inventory_sync_bench_{name}");
            admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
                )))
                .await
                .ok()?;
            admin
                .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
                .await
                .ok()?;
            let mut url = url::Url::parse(&admin_url).ok()?;
            url.set_path(&database);
            Some(url.to_string())
        }
    }
}
