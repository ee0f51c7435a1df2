//! The `inventory-sync` binary as an operator runs it: defaults, signals, restarts.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use inventory_sync::pb::inventory_sync_client::InventorySyncClient;
use sqlx::Connection;

use crate::support::*;

/// Starts `inventory-sync serve` in `dir` on a free port; returns the process and its address.
fn serve_in(dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_inventory-sync"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the binary");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines();
    let address = loop {
        let line = lines
            .next()
            .expect("the server logs that it is serving")
            .unwrap();
        if let Some(rest) = line.split("listen=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, format!("http://{address}"))
}

/// Sends SIGTERM and waits for the process to exit, without blocking the runtime (which
/// may still have to close the client's connection for the server to finish).
async fn terminate(mut child: Child) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn serve_defaults_to_a_sqlite_file_in_wal_mode_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (server, endpoint) = serve_in(dir.path());
    let mut client = InventorySyncClient::connect(endpoint).await.unwrap();
    let response = sync(&mut client, header(3), vec![stocked("kept", 2)])
        .await
        .unwrap();
    assert_eq!(response.created, 1);
    drop(client);

    let status = terminate(server).await;
    assert!(status.success(), "SIGTERM is a clean stop: {status:?}");

    let file = dir.path().join("inventory-sync.db");
    assert!(file.exists(), "the default database is ./inventory-sync.db");
    let mut connection = sqlx::SqliteConnection::connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    connection.close().await.unwrap();

    // A restart on the same file serves what was committed.
    let (server, endpoint) = serve_in(dir.path());
    let mut client = InventorySyncClient::connect(endpoint).await.unwrap();
    assert_eq!(get(&mut client, 3, "kept").await.unwrap().in_stock, Some(2));
    drop(client);
    assert!(terminate(server).await.success());
}

#[test]
fn help_lists_the_serve_subcommand_and_its_flags() {
    let output = Command::new(env!("CARGO_BIN_EXE_inventory-sync"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in ["--listen", "LISTEN_ADDR", "--database-url", "DATABASE_URL"] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}
