//! Crash safety: the server process killed with SIGKILL in the middle of a large sync,
//! during the upload and during the final commit, then restarted on the same database.
//! Either the whole sync is there or none of it, the history records the run that died, and
//! the next sync works.

use std::time::{Duration, Instant};

use inventory_sync::pb;
use inventory_sync::pb::SyncOutcome;
use inventory_sync::pb::inventory_sync_client::InventorySyncClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::support::*;

const STORE: i64 = 13;
const BIG_SYNC_MESSAGES: usize = 30;

/// A database for a server process: a SQLite file in `dir`, or a new PostgreSQL database
/// (its admin URL and name, to drop it).
async fn database_url(
    backend: Backend,
    dir: &std::path::Path,
) -> Option<(String, Option<(String, String)>)> {
    match backend {
        Backend::Sqlite => Some((dir.join("crash.db").display().to_string(), None)),
        Backend::Postgres => {
            let (admin_url, name, url) = create_postgres_database().await?;
            Some((url, Some((admin_url, name))))
        }
    }
}

fn start(dir: &std::path::Path, database_url: &str) -> Served {
    serve_in(
        dir,
        &[
            "--insecure-no-auth",
            "--database-url",
            database_url,
            "--sync-heartbeat",
            "200ms",
        ],
    )
}

fn kill(served: &mut Served) {
    served.child.kill().expect("SIGKILL the server");
    served.child.wait().unwrap();
}

async fn runs(client: &mut InventorySyncClient<Channel>) -> Vec<pb::SyncRun> {
    client
        .list_sync_runs(pb::ListSyncRunsRequest {
            store_id: STORE,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .runs
}

/// Waits until the history no longer says the newest run is running (a restarted server
/// notices that its heartbeats stopped); returns that run.
async fn newest_run_once_settled(client: &mut InventorySyncClient<Channel>) -> pb::SyncRun {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let newest = runs(client).await.remove(0);
        if newest.outcome != SyncOutcome::Running as i32 {
            return newest;
        }
        assert!(Instant::now() < deadline, "the run stayed RUNNING");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a clearing sync of `BIG_SYNC_MESSAGES` thousand products, all in stock 9; returns
/// its open message queue and the call.
async fn big_sync(
    client: &InventorySyncClient<Channel>,
) -> (
    mpsc::Sender<pb::SyncRequest>,
    tokio::task::JoinHandle<Result<tonic::Response<pb::SyncResponse>, tonic::Status>>,
) {
    let (messages, stream) = mpsc::channel::<pb::SyncRequest>(2);
    let mut call_client = client.clone();
    let call = tokio::spawn(async move { call_client.sync(ReceiverStream::new(stream)).await });
    let header = pb::SyncHeader {
        clear: true,
        allow_mass_clear: true,
        ..header(STORE)
    };
    messages
        .send(pb::SyncRequest {
            header: Some(header),
            products: vec![],
        })
        .await
        .unwrap();
    for batch in 0..BIG_SYNC_MESSAGES {
        let products = (0..1000)
            .map(|n| stocked(&format!("big-{batch}-{n}"), 9))
            .collect();
        messages
            .send(pb::SyncRequest {
                header: None,
                products,
            })
            .await
            .unwrap();
    }
    (messages, call)
}

/// Kills the server once it says so in a log line containing `moment` (or at once for
/// `None`), restarts it, and checks that the big sync is all there or not at all.
async fn kill_during(backend: Backend, moment: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let Some((url, postgres)) = database_url(backend, dir.path()).await else {
        return;
    };
    let mut served = start(dir.path(), &url);
    let mut client = InventorySyncClient::connect(served.endpoint.clone())
        .await
        .unwrap();
    let base: Vec<_> = (0..100).map(|n| stocked(&format!("base-{n}"), 1)).collect();
    sync(&mut client, header(STORE), base).await.unwrap();
    let before = list(&mut client, STORE).await;

    let (messages, call) = big_sync(&client).await;
    if let Some(moment) = moment {
        drop(messages);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = served
                .logs
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("the server logs the moment");
            // The base sync said so too; wait for the big one.
            let big_one = format!("received={}", BIG_SYNC_MESSAGES * 1000);
            if line.contains(moment) && line.contains(&big_one) {
                break;
            }
        }
        kill(&mut served);
    } else {
        // Kill only once the server has started the sync (it may still be buffering the
        // stream before its handler runs).
        let deadline = Instant::now() + Duration::from_secs(30);
        while runs(&mut client).await.len() < 2 {
            assert!(Instant::now() < deadline, "the big sync never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        kill(&mut served);
        drop(messages);
    }
    // Killed in the commit, the sync may still have committed and answered just before.
    let answered = call.await.unwrap().is_ok();
    assert!(
        moment.is_some() || !answered,
        "the client sees the server go"
    );

    let served = start(dir.path(), &url);
    let mut client = InventorySyncClient::connect(served.endpoint.clone())
        .await
        .unwrap();
    let after = list(&mut client, STORE).await;
    let big = after
        .iter()
        .filter(|p| p.external_id.starts_with("big-"))
        .count();
    let run = newest_run_once_settled(&mut client).await;
    assert!(
        !answered || big > 0,
        "{backend:?}: an answered sync committed"
    );
    if big == 0 {
        assert_eq!(after, before, "{backend:?}: none of the sync is there");
        assert_eq!(
            run.outcome,
            SyncOutcome::Aborted as i32,
            "{backend:?}: {run:?}"
        );
        assert!(run.status_message.contains("server stopped"), "{run:?}");
    } else {
        // It committed just before the kill: all of it is there.
        assert_eq!(big, BIG_SYNC_MESSAGES * 1000, "{backend:?}");
        assert!(
            after
                .iter()
                .filter(|p| p.external_id.starts_with("base-"))
                .all(|p| p.in_stock == Some(0))
        );
        assert_eq!(run.outcome, SyncOutcome::Committed as i32, "{backend:?}");
    }

    // The store is not left locked or dirty: the next sync works.
    let next = sync(&mut client, header(STORE), vec![stocked("base-0", 5)])
        .await
        .unwrap();
    assert_eq!(next.received, 1);
    drop(client);
    terminate(served.child).await;
    if let Some((admin_url, name)) = postgres {
        drop_postgres_database(&admin_url, &name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_the_upload_commits_nothing_and_recovers() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        kill_during(backend, None).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_the_final_commit_leaves_all_or_nothing() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        kill_during(backend, Some("checking and merging")).await;
    }
}
