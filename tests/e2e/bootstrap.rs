//! The first start of a database: servers (and `tokens create`) starting at once on one
//! fresh database all come up, and exactly one first admin token is made, reported through
//! the log, written to a file, or seeded by the operator.

use std::process::Command;

use inventory_sync::pb;
use inventory_sync::pb::inventory_sync_client::InventorySyncClient;
use inventory_sync::store::{Database, DatabaseUrl};

use crate::support::*;

/// A fresh database of `backend` for processes started in the returned directory: the
/// `--database-url` to pass them, and the PostgreSQL database to drop afterwards.
async fn fresh_database(
    backend: Backend,
) -> Option<(tempfile::TempDir, String, Option<(String, String)>)> {
    let dir = tempfile::tempdir().unwrap();
    match backend {
        Backend::Sqlite => {
            let url = dir.path().join("fresh.db").display().to_string();
            Some((dir, url, None))
        }
        Backend::Postgres => {
            let (admin_url, name, url) = create_postgres_database().await?;
            Some((dir, url, Some((admin_url, name))))
        }
    }
}

async fn token_count(url: &str) -> i64 {
    let url: DatabaseUrl = url.parse().unwrap();
    let database = Database::connect(&url).await.unwrap();
    let count = database.count_tokens().await.unwrap();
    database.close().await;
    count
}

/// Whether `token` is accepted by the server at `endpoint`.
async fn accepted(endpoint: &str, token: &str) -> bool {
    let channel = tonic::transport::Channel::from_shared(endpoint.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = InventorySyncClient::with_interceptor(channel, Bearer::new(token));
    let request = pb::ListSyncRunsRequest {
        store_id: 1,
        ..Default::default()
    };
    match client.list_sync_runs(request).await {
        Ok(_) => true,
        Err(status) if status.code() == tonic::Code::Unauthenticated => false,
        Err(status) => panic!("unexpected {status:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_first_started_at_once_both_serve_and_make_one_admin_token() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        // A race: a few rounds make losing it likely, were it possible.
        for _ in 0..3 {
            let Some((dir, url, postgres)) = fresh_database(backend).await else {
                return;
            };
            let args = ["--database-url", url.as_str()];
            let first = spawn_serve(dir.path(), &args, &[]);
            let second = spawn_serve(dir.path(), &args, &[]);
            let (first, second) = (Served::when_serving(first), Served::when_serving(second));
            let tokens: Vec<_> = [&first, &second]
                .iter()
                .filter_map(|served| served.first_admin_token.clone())
                .collect();
            assert_eq!(
                tokens.len(),
                1,
                "{backend:?}: one of the two reports a token"
            );
            assert!(accepted(&first.endpoint, &tokens[0]).await);
            assert!(accepted(&second.endpoint, &tokens[0]).await);
            assert_eq!(token_count(&url).await, 1);
            assert!(terminate(first.child).await.success());
            assert!(terminate(second.child).await.success());
            if let Some((admin_url, name)) = postgres {
                drop_postgres_database(&admin_url, &name).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_and_tokens_create_started_at_once_on_a_fresh_database_both_succeed() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some((dir, url, postgres)) = fresh_database(backend).await else {
            return;
        };
        let server = spawn_serve(dir.path(), &["--database-url", &url], &[]);
        let create = Command::new(env!("CARGO_BIN_EXE_inventory-sync"))
            .args([
                "tokens",
                "create",
                "--matcher",
                "--name",
                "team",
                "--database-url",
                &url,
            ])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let served = Served::when_serving(server);
        assert!(
            create.status.success(),
            "{backend:?}: {}",
            String::from_utf8_lossy(&create.stderr)
        );
        let made = String::from_utf8(create.stdout).unwrap();
        let matcher = made.lines().last().unwrap();
        assert!(accepted(&served.endpoint, matcher).await);
        assert!(terminate(served.child).await.success());
        if let Some((admin_url, name)) = postgres {
            drop_postgres_database(&admin_url, &name).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_admin_token_is_a_json_log_line_under_json_logs() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::when_serving(spawn_serve(dir.path(), &["--log-format", "json"], &[]));
    let token = served
        .first_admin_token
        .clone()
        .expect("a token is reported");
    assert!(accepted(&served.endpoint, &token).await);
    // Every line the server wrote up to serving is JSON; none is the bare token.
    assert!(
        served.serving_line.starts_with('{'),
        "{}",
        served.serving_line
    );
    assert!(terminate(served.child).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_admin_token_may_go_to_a_file_instead_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-token");
    // A file left readable by others is made private before the token goes in.
    std::fs::write(&file, "old").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let served = serve_in(dir.path(), &["--admin-token-file", file.to_str().unwrap()]);
    assert_eq!(served.first_admin_token, None, "not logged");
    let token = std::fs::read_to_string(&file).unwrap();
    assert!(accepted(&served.endpoint, token.trim()).await);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "only its owner may read it: {mode:o}");
    assert!(terminate(served.child).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_may_seed_the_first_admin_token() {
    let seed = format!("isk_7_{}", "ab".repeat(32));
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some((dir, url, postgres)) = fresh_database(backend).await else {
            return;
        };
        let served = Served::when_serving(spawn_serve(
            dir.path(),
            &["--database-url", &url],
            &[("INVENTORY_SYNC_ADMIN_TOKEN", seed.as_str())],
        ));
        assert_eq!(
            served.first_admin_token, None,
            "a seeded token is never logged"
        );
        assert!(accepted(&served.endpoint, &seed).await);
        // Tokens made later draw fresh ids.
        let create = Command::new(env!("CARGO_BIN_EXE_inventory-sync"))
            .args(["tokens", "create", "--admin", "--database-url", &url])
            .output()
            .unwrap();
        assert!(
            create.status.success(),
            "{}",
            String::from_utf8_lossy(&create.stderr)
        );
        let made = String::from_utf8(create.stdout).unwrap();
        assert!(accepted(&served.endpoint, made.lines().last().unwrap()).await);
        assert!(terminate(served.child).await.success());
        if let Some((admin_url, name)) = postgres {
            drop_postgres_database(&admin_url, &name).await;
        }
    }
    // A malformed seed stops the server with a reason.
    let dir = tempfile::tempdir().unwrap();
    let failed = Command::new(env!("CARGO_BIN_EXE_inventory-sync"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("INVENTORY_SYNC_ADMIN_TOKEN", "secret")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("isk_<id>_<64 hex digits>"));
}
