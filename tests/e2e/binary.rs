//! The `inventory-sync` binary as an operator runs it: defaults, signals, restarts.

use std::process::Command;

use inventory_sync::pb::inventory_sync_client::InventorySyncClient;
use sqlx::Connection;

use crate::support::*;

/// Runs `inventory-sync ARGS` to completion; returns (success, stdout).
fn run(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_inventory-sync"))
        .args(args)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
    )
}

/// A client that sends `token` with every call.
async fn client_with_token(
    endpoint: String,
    token: String,
) -> InventorySyncClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        impl tonic::service::Interceptor,
    >,
> {
    let channel = tonic::transport::Channel::from_shared(endpoint)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let value: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    InventorySyncClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
        Ok(request)
    })
}

#[tokio::test]
async fn serve_defaults_to_a_sqlite_file_in_wal_mode_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve_in(dir.path(), &[]);
    let token = served
        .first_admin_token
        .clone()
        .expect("a first start prints an admin token");
    let mut client = client_with_token(served.endpoint.clone(), token.clone()).await;
    let products = messages(header(3), vec![stocked("kept", 2)], 100);
    let response = client.sync(tokio_stream::iter(products)).await.unwrap();
    assert_eq!(response.into_inner().created, 1);
    drop(client);

    let status = terminate(served.child).await;
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

    // A restart on the same file serves what was committed, and prints no new token.
    let served = serve_in(dir.path(), &[]);
    assert_eq!(
        served.first_admin_token, None,
        "the admin token is shown only once"
    );
    let mut client = client_with_token(served.endpoint.clone(), token).await;
    let request = inventory_sync::pb::GetProductRequest {
        store_id: 3,
        key: Some(inventory_sync::pb::get_product_request::Key::ExternalId(
            "kept".into(),
        )),
    };
    let product = client.get_product(request).await.unwrap().into_inner();
    assert_eq!(product.in_stock, Some(2));
    drop(client);
    assert!(terminate(served.child).await.success());
}

#[tokio::test]
async fn tokens_are_created_listed_and_revoked_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, created) = run(
        dir.path(),
        &[
            "tokens", "create", "--store", "5", "--store", "6", "--name", "pos-5",
        ],
    );
    assert!(ok, "{created}");
    let token = created.lines().last().unwrap().to_owned();
    assert!(
        token.starts_with("isk_"),
        "the token is alone on the last line: {created}"
    );

    let (ok, listed) = run(dir.path(), &["tokens", "list"]);
    assert!(ok);
    assert!(
        listed.contains("pos-5") && listed.contains("store") && listed.contains("5,6"),
        "{listed}"
    );
    let secret = token.rsplit('_').next().unwrap();
    assert!(!listed.contains(secret), "a list never shows a token");

    // The token works against a server on the same database, until it is revoked.
    let served = serve_in(dir.path(), &[]);
    assert_eq!(
        served.first_admin_token, None,
        "a database with tokens gets no new admin token"
    );
    let mut client = client_with_token(served.endpoint.clone(), token.clone()).await;
    let products = messages(header(5), vec![stocked("a", 1)], 100);
    assert!(client.sync(tokio_stream::iter(products)).await.is_ok());

    let id = token.split('_').nth(1).unwrap();
    let (ok, _) = run(dir.path(), &["tokens", "revoke", id]);
    assert!(ok);
    let products = messages(header(5), vec![stocked("a", 1)], 100);
    let status = client.sync(tokio_stream::iter(products)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let (_, listed) = run(dir.path(), &["tokens", "list"]);
    assert!(listed.contains("revoked"), "{listed}");
    drop(client);
    assert!(terminate(served.child).await.success());

    let (ok, _) = run(dir.path(), &["tokens", "create"]);
    assert!(!ok, "a token needs a role");
}

#[test]
fn help_lists_the_serve_subcommand_and_its_flags() {
    let output = Command::new(env!("CARGO_BIN_EXE_inventory-sync"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in [
        "--listen",
        "LISTEN_ADDR",
        "--database-url",
        "DATABASE_URL",
        "--read-database-url",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[test]
fn read_replicas_are_refused_for_a_sqlite_database() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_inventory-sync"))
        .args(["serve", "--listen", "127.0.0.1:0", "--insecure-no-auth"])
        .args(["--database-url", "local.db"])
        .args([
            "--read-database-url",
            "postgres://postgres@127.0.0.1:5433/x",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--read-database-url"), "{stderr}");
}

#[tokio::test]
async fn logs_are_json_lines_with_log_format_json() {
    use std::io::{BufRead, BufReader};

    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_inventory-sync"))
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .args(["--insecure-no-auth", "--database-url", "logs.db"])
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let serving = loop {
        let line = lines
            .next()
            .expect("the server logs that it serves")
            .unwrap();
        let entry: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(
            entry["level"].is_string() && entry["timestamp"].is_string(),
            "{line}"
        );
        if entry["fields"]["listen"].is_string() {
            break entry;
        }
    };
    assert!(serving["fields"]["message"].is_string(), "{serving}");
    std::thread::spawn(move || for _ in lines {});
    let endpoint = format!("http://{}", serving["fields"]["listen"].as_str().unwrap());
    let mut client = InventorySyncClient::connect(endpoint).await.unwrap();
    assert!(list(&mut client, 1).await.is_empty(), "it serves");
    drop(client);
    assert!(terminate(child).await.success());
}

#[tokio::test]
async fn metrics_count_syncs_by_outcome_and_products_by_change() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve_in(
        dir.path(),
        &["--insecure-no-auth", "--metrics-listen", "127.0.0.1:0"],
    );
    let metrics = metrics_address(&served);

    let mut client = InventorySyncClient::connect(served.endpoint.clone())
        .await
        .unwrap();
    let products = vec![stocked("a", 1), stocked("b", 1)];
    sync(&mut client, header(1), products).await.unwrap();
    sync(&mut client, header(1), vec![stocked("a", 2)])
        .await
        .unwrap();
    let clear = inventory_sync::pb::SyncHeader {
        clear: true,
        ..header(1)
    };
    sync(&mut client, clear, vec![stocked("a", 2)])
        .await
        .unwrap();
    let bad = inventory_sync::pb::ProductUpdate {
        price: Some("free".into()),
        ..stocked("c", 1)
    };
    sync(&mut client, header(1), vec![bad]).await.unwrap_err();

    let body = scrape(&metrics).await;
    assert_eq!(
        sample(&body, "inventory_sync_syncs_total{outcome=\"committed\"}"),
        3.0
    );
    assert_eq!(
        sample(&body, "inventory_sync_syncs_total{outcome=\"rejected\"}"),
        1.0
    );
    assert_eq!(
        sample(&body, "inventory_sync_products_total{change=\"created\"}"),
        2.0
    );
    assert_eq!(
        sample(&body, "inventory_sync_products_total{change=\"updated\"}"),
        1.0
    );
    assert_eq!(
        sample(&body, "inventory_sync_products_total{change=\"unchanged\"}"),
        1.0
    );
    assert_eq!(
        sample(&body, "inventory_sync_products_total{change=\"cleared\"}"),
        1.0
    );
    assert_eq!(
        sample(&body, "inventory_sync_sync_duration_seconds_count"),
        4.0
    );
    assert_eq!(sample(&body, "inventory_sync_syncs_in_flight"), 0.0);
    // The pools keep their connections open; at any moment some may be busy (history tasks).
    for pool in ["syncs", "requests"] {
        let connections = |state: &str| {
            let name =
                format!("inventory_sync_database_connections{{pool=\"{pool}\",state=\"{state}\"}}");
            sample(&body, &name)
        };
        assert!(
            connections("idle") + connections("in_use") >= 1.0,
            "{pool}: {body}"
        );
    }
    drop(client);
    assert!(terminate(served.child).await.success());
}
