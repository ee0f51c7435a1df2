//! Read replicas (`serve --read-database-url`): the reads the service sends to a standby
//! answer what the standby has replayed, while syncs write to the primary; a replica that
//! cannot be reached is skipped. The standby is the machine's local PostgreSQL's streaming
//! replica on port 5433 (`scripts/ensure_standby.sh`, which `.ci/run` runs), or the server
//! `TEST_STANDBY_URL` names.

use std::time::{Duration, Instant};

use inventory_sync::pb::inventory_sync_client::InventorySyncClient;
use sqlx::{Connection, PgConnection};

use crate::support::*;

const DEFAULT_STANDBY_URL: &str = "postgres://postgres@127.0.0.1:5433/postgres";
/// How long a standby may take to replay what the tests wait for.
const REPLAY_DEADLINE: Duration = Duration::from_secs(60);
const STORE: i64 = 5_433;

/// The URL of database `name` on the standby, once the standby has replayed its creation;
/// `None` (the test skips) if there is no standby, outside CI.
async fn standby_database(name: &str) -> Option<String> {
    let mut url = url::Url::parse(
        &std::env::var("TEST_STANDBY_URL").unwrap_or_else(|_| DEFAULT_STANDBY_URL.to_owned()),
    )
    .expect("TEST_STANDBY_URL is a URL");
    if let Err(error) = PgConnection::connect(url.as_str()).await {
        if std::env::var("CI").is_ok_and(|ci| ci == "true") {
            panic!("the standby at {url} is unreachable in CI: {error}");
        }
        eprintln!("skipping: the standby at {url} is unreachable: {error}");
        return None;
    }
    url.set_path(name);
    let started = Instant::now();
    loop {
        match PgConnection::connect(url.as_str()).await {
            Ok(connection) => {
                let _ = connection.close().await;
                return Some(url.to_string());
            }
            Err(error) if started.elapsed() > REPLAY_DEADLINE => {
                panic!("the standby has not replayed the creation of {name}: {error}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Waits until the standby has replayed everything the primary has written so far.
async fn caught_up(primary: &mut PgConnection, standby: &mut PgConnection) {
    let written: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut *primary)
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let replayed: bool =
            sqlx::query_scalar("SELECT COALESCE(pg_last_wal_replay_lsn() >= $1::pg_lsn, FALSE)")
                .bind(&written)
                .fetch_one(&mut *standby)
                .await
                .unwrap();
        if replayed {
            return;
        }
        assert!(
            started.elapsed() < REPLAY_DEADLINE,
            "the standby has not replayed up to {written}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Pauses the standby's replay, and waits until it has paused.
async fn pause_replay(standby: &mut PgConnection) {
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&mut *standby)
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let state: String = sqlx::query_scalar("SELECT pg_get_wal_replay_pause_state()")
            .fetch_one(&mut *standby)
            .await
            .unwrap();
        if state == "paused" {
            return;
        }
        assert!(
            started.elapsed() < REPLAY_DEADLINE,
            "the replay did not pause"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resumes the standby's replay when dropped, so that a failed test leaves it replaying.
struct ResumesReplay(String);

impl Drop for ResumesReplay {
    fn drop(&mut self) {
        let url = self.0.clone();
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                if let Ok(mut standby) = PgConnection::connect(&url).await {
                    let _ = sqlx::query("SELECT pg_wal_replay_resume()")
                        .execute(&mut standby)
                        .await;
                }
            })
        })
        .join()
        .expect("resume the standby's replay");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_answer_what_the_replica_has_replayed_and_syncs_write_to_the_primary() {
    let Some((admin_url, name, url)) = create_postgres_database().await else {
        return;
    };
    let Some(standby_url) = standby_database(&name).await else {
        drop_postgres_database(&admin_url, &name).await;
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let served = serve_in(
        dir.path(),
        &[
            "--insecure-no-auth",
            "--database-url",
            &url,
            "--read-database-url",
            &standby_url,
        ],
    );
    let mut client = InventorySyncClient::connect(served.endpoint.clone())
        .await
        .unwrap();
    let mut primary = PgConnection::connect(&url).await.unwrap();
    let mut standby = PgConnection::connect(&standby_url).await.unwrap();
    let _resumes = ResumesReplay(standby_url.clone());

    sync(&mut client, header(STORE), vec![stocked("a", 1)])
        .await
        .unwrap();
    caught_up(&mut primary, &mut standby).await;
    assert_eq!(
        get(&mut client, STORE, "a").await.unwrap().in_stock,
        Some(1)
    );

    // The standby stops replaying; a sync still writes, to the primary.
    pause_replay(&mut standby).await;
    let second = sync(
        &mut client,
        header(STORE),
        vec![stocked("a", 2), stocked("b", 2)],
    )
    .await
    .unwrap();
    assert_eq!((second.created, second.updated), (1, 1));
    // Reads answer the standby's older state.
    assert_eq!(
        get(&mut client, STORE, "a").await.unwrap().in_stock,
        Some(1)
    );
    let status = get(&mut client, STORE, "b").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert_eq!(stock(&mut client, STORE).await, [("a".into(), Some(1))]);
    let stored: i64 = sqlx::query_scalar("SELECT in_stock FROM products WHERE external_id = 'a'")
        .fetch_one(&mut primary)
        .await
        .unwrap();
    assert_eq!(stored, 2, "the sync wrote to the primary");

    // Replaying again, the standby catches up, and so do the reads.
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&mut standby)
        .await
        .unwrap();
    caught_up(&mut primary, &mut standby).await;
    assert_eq!(
        stock(&mut client, STORE).await,
        [("a".into(), Some(2)), ("b".into(), Some(2))]
    );

    assert!(terminate(served.child).await.success());
    let _ = primary.close().await;
    let _ = standby.close().await;
    drop_postgres_database(&admin_url, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_be_reached_is_skipped_for_the_primary() {
    let Some((admin_url, name, url)) = create_postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1.
    let served = serve_in(
        dir.path(),
        &[
            "--insecure-no-auth",
            "--database-url",
            &url,
            "--read-database-url",
            "postgres://postgres@127.0.0.1:1/nowhere",
        ],
    );
    let mut client = InventorySyncClient::connect(served.endpoint.clone())
        .await
        .unwrap();
    sync(&mut client, header(STORE), vec![stocked("a", 3)])
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(
            get(&mut client, STORE, "a").await.unwrap().in_stock,
            Some(3)
        );
        assert_eq!(stock(&mut client, STORE).await, [("a".into(), Some(3))]);
    }
    assert!(terminate(served.child).await.success());
    drop_postgres_database(&admin_url, &name).await;
}
