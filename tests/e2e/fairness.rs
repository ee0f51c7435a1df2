//! One store's client, careless or hostile, never starves or blocks the others: streams that
//! trickle forever are cut, a store or token gets only its share of the sync slots, reads
//! have connections of their own and never wait for another store's merge.

use std::time::{Duration, Instant};

use inventory_sync::auth::Role;
use inventory_sync::pb;
use inventory_sync::pb::match_queue_client::MatchQueueClient;
use inventory_sync::sync::SyncLimits;

use crate::support::*;

const STORE: i64 = 1_200;

/// The store's history, newest first.
async fn outcomes(server: &TestServer, store_id: i64) -> Vec<pb::SyncRun> {
    let mut client = server.client().await;
    client
        .list_sync_runs(pb::ListSyncRunsRequest {
            store_id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_keeps_trickling_is_cut_at_the_longest_sync_duration() {
    let config = || {
        Config::limited(SyncLimits {
            max_sync_duration: Duration::from_millis(800),
            idle_timeout: Duration::from_secs(60),
            ..SyncLimits::default()
        })
    };
    each_backend(config, async |server| {
        let client = server.client().await;
        let open = open_sync(&client, header(STORE), vec![stocked("a", 1)]).await;
        // An empty message every 100 ms: never idle, never done.
        let trickle = tokio::spawn({
            let messages = open.messages.clone();
            async move {
                let mut ticks = tokio::time::interval(Duration::from_millis(100));
                loop {
                    ticks.tick().await;
                    if messages.send(pb::SyncRequest::default()).await.is_err() {
                        break;
                    }
                }
            }
        });
        let started = Instant::now();
        let status = open.answer.await.unwrap().unwrap_err();
        trickle.abort();
        assert_refused(
            &status,
            tonic::Code::DeadlineExceeded,
            "longest a sync may take",
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "cut by the duration, not idleness"
        );

        let mut client = server.client().await;
        assert_nothing_committed(&server, &mut client, STORE).await;
        let runs = outcomes(&server, STORE).await;
        assert_eq!(runs[0].outcome, pb::SyncOutcome::TimedOut as i32);
        assert_eq!(runs[0].status_code, tonic::Code::DeadlineExceeded as i32);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_sends_without_pause_is_cut_at_the_longest_sync_duration_too() {
    // Messages always ready: the deadline must not wait for a pause that never comes.
    let config = || {
        Config::limited(SyncLimits {
            max_sync_duration: Duration::from_millis(500),
            max_products: 1_000_000,
            ..SyncLimits::default()
        })
    };
    each_backend(config, async |server| {
        let mut client = server.client().await;
        let endless = (0..).map(|n| pb::SyncRequest {
            header: None,
            products: (0..100).map(|k| stocked(&format!("p{n}-{k}"), 1)).collect(),
        });
        let first = pb::SyncRequest {
            header: Some(header(STORE)),
            products: Vec::new(),
        };
        let stream = tokio_stream::iter(std::iter::once(first).chain(endless));
        let status = client.sync(stream).await.unwrap_err();
        assert_refused(
            &status,
            tonic::Code::DeadlineExceeded,
            "longest a sync may take",
        );
        assert_nothing_committed(&server, &mut client, STORE).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_over_its_sync_limit_is_refused_at_once_while_other_stores_sync() {
    let config = || {
        Config::limited(SyncLimits {
            max_syncs_per_store: 2,
            // A refusal that waited for a turn would show as this long wait.
            queue_timeout: Duration::from_secs(60),
            ..SyncLimits::default()
        })
    };
    each_backend(config, async |server| {
        let mut client = server.client().await;
        let first = open_sync(&client, header(STORE), vec![stocked("a", 1)]).await;
        let second = open_sync(&client, header(STORE), vec![stocked("b", 1)]).await;
        server.wait_until(|now| now.syncs_in_flight == 2).await;

        let refused = sync(&mut client, header(STORE), vec![stocked("c", 1)])
            .await
            .unwrap_err();
        assert_refused(
            &refused,
            tonic::Code::ResourceExhausted,
            "store 1200 already has 2 syncs running",
        );
        // Another store is untouched.
        let other = sync(&mut client, header(STORE + 1), vec![stocked("x", 1)])
            .await
            .unwrap();
        assert_eq!(other.created, 1);

        assert_eq!(first.finish().await.unwrap().created, 1);
        // A seat given back is a seat for the next sync of the store.
        assert_eq!(
            sync(&mut client, header(STORE), vec![stocked("c", 1)])
                .await
                .unwrap()
                .created,
            1
        );
        assert_eq!(second.finish().await.unwrap().created, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_its_sync_limit_is_refused_while_other_tokens_sync() {
    let config = || Config {
        authenticated: true,
        limits: SyncLimits {
            max_syncs_per_token: 2,
            ..SyncLimits::default()
        },
        ..Config::default()
    };
    each_backend(config, async |server| {
        let busy = server
            .token("busy-pos", Role::Store(vec![STORE, STORE + 1, STORE + 2]))
            .await;
        let calm = server.token("calm-pos", Role::Store(vec![STORE + 2])).await;
        let mut busy_client = server.client_as(&busy).await;
        let first = open_sync(&busy_client, header(STORE), vec![stocked("a", 1)]).await;
        let second = open_sync(&busy_client, header(STORE + 1), vec![stocked("a", 1)]).await;
        server.wait_until(|now| now.syncs_in_flight == 2).await;

        let third = messages(header(STORE + 2), vec![stocked("a", 1)], 10);
        let refused = busy_client
            .sync(tokio_stream::iter(third.clone()))
            .await
            .unwrap_err();
        assert_refused(
            &refused,
            tonic::Code::ResourceExhausted,
            "token already has 2 syncs",
        );
        let mut calm_client = server.client_as(&calm).await;
        let answer = calm_client
            .sync(tokio_stream::iter(third))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.created, 1);

        assert_eq!(first.finish().await.unwrap().created, 1);
        assert_eq!(second.finish().await.unwrap().created, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_sync_slot_held_by_an_idle_stream_reads_still_answer() {
    const SLOTS: usize = 16;
    let config = || {
        Config::limited(SyncLimits {
            max_concurrent_syncs: SLOTS,
            queue_timeout: Duration::from_millis(300),
            ..SyncLimits::default()
        })
    };
    each_backend(config, async |server| {
        let mut client = server.client().await;
        sync(&mut client, header(STORE), vec![stocked("kept", 3)])
            .await
            .unwrap();
        let mut idle = Vec::new();
        for n in 0..SLOTS {
            idle.push(
                open_sync(&client, header(STORE + 1 + n as i64), vec![stocked("a", 1)]).await,
            );
        }
        server
            .wait_until(|now| now.syncs_in_flight == SLOTS as u64)
            .await;

        // Every read of the service and the queue answers, none after a pool's timeout.
        let started = Instant::now();
        assert_eq!(
            get(&mut client, STORE, "kept").await.unwrap().in_stock,
            Some(3)
        );
        assert_eq!(list(&mut client, STORE).await.len(), 1);
        let history = client
            .list_sync_runs(pb::ListSyncRunsRequest {
                store_id: STORE,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(history.into_inner().runs.len(), 1);
        let mut queue = MatchQueueClient::new(server.channel().await);
        let pending = queue
            .list_pending(pb::ListPendingRequest::default())
            .await
            .unwrap();
        let mut pending = pending.into_inner();
        assert!(pending.message().await.unwrap().is_some());
        eprintln!("reads with {SLOTS} idle syncs took {:?}", started.elapsed());

        // The next sync waits its bounded time for a slot, and its refusal is recorded.
        let refused = sync(&mut client, header(STORE), vec![stocked("b", 1)])
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::ResourceExhausted,
            "{refused:?}"
        );
        assert_eq!(
            outcomes(&server, STORE).await[0].outcome,
            pb::SyncOutcome::Rejected as i32
        );

        for open in idle {
            assert_eq!(open.finish().await.unwrap().created, 1);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_answer_while_another_stores_big_merge_runs() {
    const PRODUCTS: usize = 100_000;
    let config = || Config {
        authenticated: true,
        ..Config::default()
    };
    each_backend(config, async |server| {
        let admin = server.token("admin", Role::Admin).await;
        let mut reader = server.client_as(&admin).await;
        let mut writer = server.client_as(&admin).await;
        let seed = messages(header(STORE), vec![stocked("kept", 1)], 10);
        writer.sync(tokio_stream::iter(seed)).await.unwrap();

        let big: Vec<_> = (0..PRODUCTS)
            .map(|n| stocked(&format!("p{n}"), 1))
            .collect();
        let big = messages(header(STORE + 1), big, 1_000);
        let merge = tokio::spawn(async move { writer.sync(tokio_stream::iter(big)).await });
        server.wait_until(|now| now.syncs_merging == 1).await;

        // Reads issued while the merge runs must come back while it still runs: none may
        // wait for the merge's write (on SQLite, any write waits for it).
        let mut during_merge = Vec::new();
        while server.activity.snapshot().syncs_merging == 1 {
            let started = Instant::now();
            let key = pb::get_product_request::Key::ExternalId("kept".into());
            let request = pb::GetProductRequest {
                store_id: STORE,
                key: Some(key),
            };
            reader.get_product(request).await.unwrap();
            if server.activity.snapshot().syncs_merging == 1 {
                during_merge.push(started.elapsed());
            }
        }
        let created = merge.await.unwrap().unwrap().into_inner().created;
        assert_eq!(created, PRODUCTS as u64);
        assert!(
            !during_merge.is_empty(),
            "no read came back while the merge ran"
        );
        during_merge.sort();
        eprintln!(
            "{} reads during the merge; median {:?}, slowest {:?}",
            during_merge.len(),
            during_merge[during_merge.len() / 2],
            during_merge.last().unwrap()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_whose_token_is_revoked_during_its_upload_commits_nothing() {
    let config = || Config {
        authenticated: true,
        ..Config::default()
    };
    each_backend(config, async |server| {
        let token = server.token("pos", Role::Store(vec![STORE])).await;
        let id: i64 = token.split('_').nth(1).unwrap().parse().unwrap();
        let client = server.client_as(&token).await;
        let open = open_sync(&client, header(STORE), vec![stocked("a", 1)]).await;
        server.wait_until(|now| now.products_in_flight == 1).await;

        assert!(
            inventory_sync::auth::revoke_token(&server.database, id)
                .await
                .unwrap()
        );
        let status = open.finish().await.unwrap_err();
        assert_refused(&status, tonic::Code::Unauthenticated, "revoked");

        let admin = server.token("admin", Role::Admin).await;
        let mut admin_client = server.client_as(&admin).await;
        let request = pb::ListProductsRequest {
            store_id: STORE,
            ..Default::default()
        };
        let mut products = admin_client
            .list_products(request)
            .await
            .unwrap()
            .into_inner();
        assert!(
            products.message().await.unwrap().is_none(),
            "nothing was committed"
        );
        let history = admin_client
            .list_sync_runs(pb::ListSyncRunsRequest {
                store_id: STORE,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(history.runs[0].outcome, pb::SyncOutcome::Rejected as i32);
    })
    .await;
}
