//! A sync commits whole or not at all: cancelled streams, shutdown, concurrency.

use inventory_sync::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::support::*;

const STORE: i64 = 500;

backend_tests! {
    async fn a_stream_cancelled_after_10000_products_commits_nothing(server) {
        let mut client = server.client().await;
        sync(&mut client, header(STORE), vec![stocked("existing", 3)]).await.unwrap();
        let before = list(&mut client, STORE).await;

        let (messages, stream) = mpsc::channel::<pb::SyncRequest>(4);
        let clear = pb::SyncHeader { clear: true, ..header(STORE) };
        let mut call_client = client.clone();
        let call = tokio::spawn(async move { call_client.sync(ReceiverStream::new(stream)).await });
        messages.send(pb::SyncRequest { header: Some(clear), products: vec![] }).await.unwrap();
        for batch in 0..10 {
            let products = (0..1000).map(|n| stocked(&format!("p{batch}-{n}"), 1)).collect();
            messages.send(pb::SyncRequest { header: None, products }).await.unwrap();
        }
        // The server has taken in all 10,000 products; now the client goes away.
        server.wait_until(|now| now.products_in_flight >= 10_000).await;
        call.abort();
        server.wait_until(|now| now.syncs_in_flight == 0).await;

        assert_eq!(list(&mut client, STORE).await, before, "nothing of the cancelled sync is visible");
        // The store is not left locked or dirty: the next sync works.
        let response = sync(&mut client, header(STORE), vec![stocked("p0-0", 1)]).await.unwrap();
        assert_eq!(response.created, 1);
    }

    async fn a_stream_cancelled_after_it_half_closed_commits_nothing(server) {
        let mut client = server.client().await;
        sync(&mut client, header(STORE), vec![stocked("existing", 3)]).await.unwrap();
        let before = list(&mut client, STORE).await;

        let open = open_sync(&client, header(STORE), vec![stocked("existing", 4), stocked("new", 1)]).await;
        server.wait_until(|now| now.products_in_flight == 2).await;
        // The merge cannot commit while this test holds its lock. The client half-closes,
        // and the server checks and merges; then the client goes away, and the server sees
        // it go.
        let lock = server.hold_merge_lock(STORE).await;
        let OpenSync { messages, answer } = open;
        drop(messages);
        server.wait_until(|now| now.syncs_merging == 1).await;
        answer.abort();
        server.wait_until(|now| now.syncs_awaited == 0).await;
        drop(lock);
        server.wait_until(|now| now.syncs_in_flight == 0).await;

        assert_eq!(list(&mut client, STORE).await, before, "nothing of the cancelled sync is visible");
        let runs = client
            .list_sync_runs(pb::ListSyncRunsRequest { store_id: STORE, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .runs;
        assert_eq!(runs[0].outcome, pb::SyncOutcome::Aborted as i32, "{:?}", runs[0]);
    }

    async fn a_sync_in_flight_at_shutdown_completes_before_the_server_stops(server) {
        let mut client = server.client().await;
        let (messages, stream) = mpsc::channel::<pb::SyncRequest>(4);
        let mut call_client = client.clone();
        let call = tokio::spawn(async move { call_client.sync(ReceiverStream::new(stream)).await });
        messages
            .send(pb::SyncRequest { header: Some(header(STORE)), products: vec![stocked("a", 1)] })
            .await
            .unwrap();
        server.wait_until(|now| now.products_in_flight >= 1).await;

        server.begin_shutdown();
        messages
            .send(pb::SyncRequest { header: None, products: vec![stocked("b", 2)] })
            .await
            .unwrap();
        drop(messages); // half-close: commit
        let response = call.await.unwrap().unwrap().into_inner();
        assert_eq!((response.received, response.created), (2, 2));
        server.stopped().await;

        assert!(
            client.get_product(pb::GetProductRequest::default()).await.is_err(),
            "the server no longer answers"
        );
    }

    async fn a_resent_stored_state_still_wins_over_a_sync_committed_during_its_upload(server) {
        // The first sync resends what is stored, so while uploading it finds nothing to
        // change; the other sync then changes those products.
        let mut client = server.client().await;
        sync(&mut client, header(STORE), vec![stocked("a", 1), stocked("b", 1)]).await.unwrap();
        let other = sync_overtaken_during_its_upload(&server).await;
        assert_eq!(other.updated, 2);
    }

    async fn a_sync_into_an_empty_store_updates_what_another_sync_created_meanwhile(server) {
        // The store has no products when the first sync begins, so it stages everything as
        // new; the other sync creates some of them.
        let other = sync_overtaken_during_its_upload(&server).await;
        assert_eq!(other.created, 2);
    }

    async fn an_overtaken_sync_writes_only_the_fields_it_sent(server) {
        let mut client = server.client().await;
        let priced = pb::ProductUpdate { price: Some("5.00".into()), ..stocked("a", 1) };
        sync(&mut client, header(STORE), vec![priced]).await.unwrap();

        // "a" is sent with its stock only, as stored: unchanged while staging.
        let meanwhile = pb::ProductUpdate { price: Some("9.99".into()), ..stocked("a", 7) };
        let overtaken = overtaken_by(
            &server,
            [vec![stocked("a", 1)], vec![stocked("c", 1)]],
            header(STORE),
            vec![meanwhile],
        )
        .await
        .1
        .unwrap();
        assert_eq!((overtaken.created, overtaken.updated, overtaken.unchanged), (1, 1, 0));
        // Serially: the other sync's price stays, this sync's stock is written over it.
        let products = list(&mut client, STORE).await;
        let a = products.iter().find(|product| product.external_id == "a").unwrap();
        assert_eq!((a.in_stock, a.price.as_deref()), (Some(1), Some("9.99")));
    }

    async fn an_overtaken_sync_restocks_what_a_clear_took_meanwhile(server) {
        let mut client = server.client().await;
        sync(&mut client, header(STORE), vec![stocked("a", 1), stocked("b", 1)]).await.unwrap();

        let clear = pb::SyncHeader { clear: true, ..header(STORE) };
        let (other, overtaken) = overtaken_by(
            &server,
            [vec![stocked("a", 1)], vec![stocked("c", 1)]],
            clear,
            vec![stocked("b", 1)],
        )
        .await;
        assert_eq!(other.cleared, 1);
        let overtaken = overtaken.unwrap();
        assert_eq!((overtaken.created, overtaken.updated, overtaken.unchanged), (1, 1, 0));
        assert_eq!(
            stock(&mut client, STORE).await,
            [("a".into(), Some(1)), ("b".into(), Some(1)), ("c".into(), Some(1))]
        );
    }

    async fn an_overtaken_sync_still_refuses_a_barcode_sent_twice(server) {
        let mut client = server.client().await;
        sync(&mut client, header(STORE), vec![coded("p", &["111"], 1)]).await.unwrap();

        // "p" is sent as stored (unchanged while staging), then "n" claims its barcode.
        let status = overtaken_by(
            &server,
            [vec![coded("p", &["111"], 1)], vec![coded("n", &["111"], 1)]],
            header(STORE),
            vec![stocked("p", 7)],
        )
        .await
        .1
        .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert_eq!(violated_fields(&status), ["products[1].barcodes"]);
        assert!(status.message().contains("\"111\""), "{}", status.message());
        assert_eq!(stock(&mut client, STORE).await, [("p".into(), Some(7))]);
    }

    async fn concurrent_syncs_of_different_stores_do_not_touch_each_other(server) {
        let mut tasks = Vec::new();
        for store in 1..=8 {
            let mut client = server.client().await;
            tasks.push(tokio::spawn(async move {
                let products = (0..300).map(|n| stocked(&format!("{store}-{n}"), store)).collect();
                let clear = pb::SyncHeader { clear: true, ..header(store) };
                sync(&mut client, clear, products).await.unwrap()
            }));
        }
        for task in tasks {
            let response = task.await.unwrap();
            assert_eq!((response.created, response.cleared), (300, 0));
        }
        let mut client = server.client().await;
        for store in 1..=8 {
            let products = list(&mut client, store).await;
            assert_eq!(products.len(), 300);
            assert!(products.iter().all(|p| p.store_id == store && p.in_stock == Some(store)));
        }
    }
}

/// Streams a sync of "a" and "b" (in stock 1), then "c", and while it uploads lets another
/// sync set "a" and "b" to 7 and commit; returns the other sync's answer. Serially (the
/// other, then this one) this sync's values are the last written, so it must write them
/// whatever it concluded while staging.
async fn sync_overtaken_during_its_upload(server: &TestServer) -> pb::SyncResponse {
    let mut client = server.client().await;
    let (messages, stream) = mpsc::channel::<pb::SyncRequest>(4);
    let mut call_client = client.clone();
    let call = tokio::spawn(async move { call_client.sync(ReceiverStream::new(stream)).await });
    let first = vec![stocked("a", 1), stocked("b", 1)];
    messages
        .send(pb::SyncRequest {
            header: Some(header(STORE)),
            products: first,
        })
        .await
        .unwrap();
    messages
        .send(pb::SyncRequest {
            header: None,
            products: vec![stocked("c", 1)],
        })
        .await
        .unwrap();
    // The worker takes the second batch only once the first is staged.
    server.wait_until(|now| now.products_in_flight >= 3).await;

    let meanwhile = vec![stocked("a", 7), stocked("b", 7)];
    let other = sync(&mut client, header(STORE), meanwhile).await.unwrap();

    drop(messages);
    let overtaken = call.await.unwrap().unwrap().into_inner();
    assert_eq!(
        (overtaken.created, overtaken.updated, overtaken.unchanged),
        (1, 2, 0)
    );
    assert_eq!(
        stock(&mut client, STORE).await,
        vec![
            ("a".into(), Some(1)),
            ("b".into(), Some(1)),
            ("c".into(), Some(1))
        ]
    );
    other
}

/// Streams a sync of store `STORE` in two messages; once the server has both, lets another
/// sync (`header`, `products`) run and commit, then ends the stream. Returns the other
/// sync's answer and the first one's.
async fn overtaken_by(
    server: &TestServer,
    [first, second]: [Vec<pb::ProductUpdate>; 2],
    header: pb::SyncHeader,
    products: Vec<pb::ProductUpdate>,
) -> (pb::SyncResponse, Result<pb::SyncResponse, tonic::Status>) {
    let mut client = server.client().await;
    let expected = first.len() + second.len();
    let open = open_sync(&client, crate::support::header(STORE), first).await;
    open.messages
        .send(pb::SyncRequest {
            header: None,
            products: second,
        })
        .await
        .unwrap();
    // The worker takes the second message only once the first is staged.
    server
        .wait_until(|now| now.products_in_flight >= expected as u64)
        .await;
    let other = sync(&mut client, header, products).await.unwrap();
    (other, open.finish().await)
}
