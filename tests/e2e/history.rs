//! The sync history (`ListSyncRuns`) and idempotency keys: every sync is recorded with how
//! it ended, and a retried key replays its first answer instead of applying twice.

use inventory_sync::pb;
use inventory_sync::pb::SyncOutcome;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::support::*;

const STORE: i64 = 77;

type Client = pb::inventory_sync_client::InventorySyncClient<Channel>;

async fn runs_page(
    client: &mut Client,
    page_size: i32,
    page_token: &str,
) -> pb::ListSyncRunsResponse {
    client
        .list_sync_runs(pb::ListSyncRunsRequest {
            store_id: STORE,
            page_size,
            page_token: page_token.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Every run of the store, newest first, read page by page.
async fn all_runs(client: &mut Client) -> Vec<pb::SyncRun> {
    let mut runs = Vec::new();
    let mut token = String::new();
    loop {
        let page = runs_page(client, 2, &token).await;
        assert!(page.runs.len() <= 2);
        runs.extend(page.runs);
        if page.next_page_token.is_empty() {
            return runs;
        }
        token = page.next_page_token;
    }
}

fn outcome(run: &pb::SyncRun) -> SyncOutcome {
    SyncOutcome::try_from(run.outcome).unwrap()
}

fn keyed(key: &str) -> pb::SyncHeader {
    pb::SyncHeader {
        idempotency_key: key.to_owned(),
        ..header(STORE)
    }
}

backend_tests! {
    async fn every_sync_is_recorded_with_how_it_ended_newest_first(server) {
        let mut client = server.client().await;
        let committed = sync(&mut client, header(STORE), vec![stocked("a", 1), stocked("b", 2)]).await.unwrap();
        let dry = pb::SyncHeader { dry_run: true, clear: true, ..header(STORE) };
        sync(&mut client, dry, vec![stocked("a", 5)]).await.unwrap();
        let bad = pb::ProductUpdate { price: Some("free".into()), ..stocked("c", 1) };
        sync(&mut client, header(STORE), vec![bad]).await.unwrap_err();

        // A client that goes away mid-stream.
        let (messages, stream) = mpsc::channel::<pb::SyncRequest>(4);
        let mut call_client = client.clone();
        let call = tokio::spawn(async move { call_client.sync(ReceiverStream::new(stream)).await });
        messages.send(pb::SyncRequest { header: Some(header(STORE)), products: vec![stocked("d", 1)] }).await.unwrap();
        server.wait_until(|now| now.products_in_flight >= 1).await;
        call.abort();
        server.wait_until(|now| now.syncs_in_flight == 0).await;

        let runs = all_runs(&mut client).await;
        let outcomes: Vec<_> = runs.iter().map(outcome).collect();
        assert_eq!(
            outcomes,
            [SyncOutcome::Aborted, SyncOutcome::Rejected, SyncOutcome::DryRun, SyncOutcome::Committed]
        );
        let [aborted, rejected, dry_run, first] = &runs[..] else { unreachable!() };

        assert_eq!(first.sync_id, committed.sync_id);
        assert_eq!((first.received, first.created, first.unchanged), (2, 2, 0));
        assert_eq!(first.store_id, STORE);
        assert_eq!(first.token_name, "anonymous");
        assert!(first.finished_at.as_ref().unwrap().seconds >= first.started_at.as_ref().unwrap().seconds);

        let header = dry_run.header.as_ref().unwrap();
        assert!(header.dry_run && header.clear && !header.skip_invalid);
        assert_eq!((dry_run.received, dry_run.updated, dry_run.cleared), (1, 1, 1));

        assert_eq!(rejected.status_code, tonic::Code::InvalidArgument as i32);
        assert!(rejected.status_message.contains("products[0].price"), "{}", rejected.status_message);
        assert_eq!(aborted.status_code, tonic::Code::Cancelled as i32);
        assert!(aborted.finished_at.is_some());
        // Only the committed sync changed the store.
        assert_eq!(stock(&mut client, STORE).await, vec![("a".into(), Some(1)), ("b".into(), Some(2))]);
    }

    async fn a_history_page_token_must_be_one_the_server_gave(server) {
        let mut client = server.client().await;
        for (page_size, page_token, field) in [(501, "", "page_size"), (-1, "", "page_size"), (0, "nope", "page_token")] {
            let status = client
                .list_sync_runs(pb::ListSyncRunsRequest { store_id: STORE, page_size, page_token: page_token.into() })
                .await
                .unwrap_err();
            assert_eq!(violated_fields(&status), [field]);
        }
    }

    async fn a_retried_idempotency_key_replays_the_first_answer_and_changes_nothing(server) {
        let mut client = server.client().await;
        let products = vec![stocked("a", 1), stocked("b", 2)];
        let first = sync(&mut client, keyed("nightly-1"), products.clone()).await.unwrap();
        assert!(!first.replayed);
        let stored = list(&mut client, STORE).await;

        // The answer got lost; the client sends the same sync again.
        let retry = sync(&mut client, keyed("nightly-1"), products.clone()).await.unwrap();
        assert!(retry.replayed);
        assert_eq!(
            pb::SyncResponse { replayed: false, ..retry.clone() },
            first,
            "the replay repeats the first answer, sync id included"
        );
        assert_eq!(list(&mut client, STORE).await, stored, "nothing was written again");

        // The same content under a new key is a new sync.
        let fresh = sync(&mut client, keyed("nightly-2"), products).await.unwrap();
        assert!(!fresh.replayed);
        assert_eq!((fresh.created, fresh.unchanged), (0, 2));

        let runs = all_runs(&mut client).await;
        let replay = runs.iter().find(|run| outcome(run) == SyncOutcome::Replayed).unwrap();
        assert_eq!(replay.replay_of, first.sync_id);
        assert_eq!(replay.header.as_ref().unwrap().idempotency_key, "nightly-1");
    }

    async fn an_idempotency_key_reused_for_other_content_is_refused(server) {
        let mut client = server.client().await;
        let products = vec![coded("a", &["111"], 1)];
        sync(&mut client, keyed("k"), products.clone()).await.unwrap();
        let before = list(&mut client, STORE).await;
        // Other products, or the same products under any other header option.
        let mut retries = vec![(keyed("k"), vec![coded("a", &["111"], 9)])];
        let options = [
            pb::SyncHeader { clear: true, ..keyed("k") },
            pb::SyncHeader { skip_invalid: true, ..keyed("k") },
            pb::SyncHeader { allow_mass_clear: true, ..keyed("k") },
            pb::SyncHeader { expected_count: Some(1), ..keyed("k") },
            pb::SyncHeader { key: pb::KeyField::Barcode as i32, ..keyed("k") },
            pb::SyncHeader { dry_run: true, ..keyed("k") },
        ];
        retries.extend(options.into_iter().map(|header| (header, products.clone())));
        for (header, products) in retries {
            let status = sync(&mut client, header.clone(), products).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{header:?}: {status:?}");
            assert!(status.message().contains("\"k\""), "{}", status.message());
        }
        assert_eq!(list(&mut client, STORE).await, before);
    }

    async fn a_retry_racing_its_first_attempt_applies_once(server) {
        let products: Vec<_> = (0..500).map(|n| stocked(&format!("p{n}"), 1)).collect();
        let mut attempts = Vec::new();
        for _ in 0..2 {
            let mut client = server.client().await;
            let products = products.clone();
            attempts.push(tokio::spawn(async move { sync(&mut client, keyed("race"), products).await.unwrap() }));
        }
        let mut answers = Vec::new();
        for attempt in attempts {
            answers.push(attempt.await.unwrap());
        }
        answers.sort_by_key(|answer| answer.replayed);
        assert_eq!(answers.iter().map(|a| a.replayed).collect::<Vec<_>>(), [false, true]);
        assert_eq!(answers[0].created, 500);
        assert_eq!(pb::SyncResponse { replayed: false, ..answers[1].clone() }, answers[0]);
        let mut client = server.client().await;
        assert_eq!(list(&mut client, STORE).await.len(), 500);
    }
}

mod configured {
    use std::time::Duration;

    use inventory_sync::sync::SyncLimits;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_past_its_retention_applies_again() {
        let limits = SyncLimits {
            idempotency_retention: Duration::ZERO,
            ..SyncLimits::default()
        };
        let config = || Config {
            limits: limits.clone(),
            ..Config::default()
        };
        each_backend(config, async |server| {
            let mut client = server.client().await;
            sync(&mut client, keyed("k"), vec![stocked("a", 1)])
                .await
                .unwrap();
            let again = sync(&mut client, keyed("k"), vec![stocked("a", 2)])
                .await
                .unwrap();
            assert!(!again.replayed);
            assert_eq!(again.updated, 1);
        })
        .await;
    }
}
