//! Limits and guards: what a careless or hostile client cannot do to a store or the server.

use std::time::Duration;

use inventory_sync::pb;
use inventory_sync::sync::{FieldLimits, SyncLimits};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::support::*;

const STORE: i64 = 300;

fn stocked_products(prefix: &str, count: usize) -> Vec<pb::ProductUpdate> {
    (0..count)
        .map(|n| stocked(&format!("{prefix}{n}"), 1))
        .collect()
}

backend_tests! {
    async fn a_clear_of_most_of_a_store_is_refused_unless_allowed(server) {
        let mut client = server.client().await;
        sync(&mut client, header(STORE), stocked_products("p", 20)).await.unwrap();
        let before = list(&mut client, STORE).await;
        let clear = pb::SyncHeader { clear: true, ..header(STORE) };

        // Listing 5 of 20 would clear 15: more than half, and more than 10.
        let status = sync(&mut client, clear.clone(), stocked_products("p", 5)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains("15") && status.message().contains("20"), "{}", status.message());
        assert_eq!(list(&mut client, STORE).await, before);

        // An empty clearing sync, the classic accident.
        let status = sync(&mut client, clear.clone(), vec![]).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        // A dry run gives the same answer.
        let dry = pb::SyncHeader { dry_run: true, ..clear.clone() };
        let status = sync(&mut client, dry, vec![]).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(list(&mut client, STORE).await, before);

        // Half is allowed; so is anything with allow_mass_clear.
        let half = sync(&mut client, clear.clone(), stocked_products("p", 10)).await.unwrap();
        assert_eq!(half.cleared, 10);
        let allowed = pb::SyncHeader { allow_mass_clear: true, ..clear };
        let all = sync(&mut client, allowed, vec![]).await.unwrap();
        assert_eq!(all.cleared, 10);
    }

    async fn a_clear_of_exactly_the_allowed_fraction_goes_through(server) {
        let mut client = server.client().await;
        sync(&mut client, header(STORE), stocked_products("p", 30)).await.unwrap();
        let clear = pb::SyncHeader { clear: true, ..header(STORE) };
        // 15 of 30 is the limit itself (0.5), and more than the 10 the guard ignores.
        let response = sync(&mut client, clear, stocked_products("p", 15)).await.unwrap();
        assert_eq!(response.cleared, 15);
    }

    async fn the_mass_clear_guard_counts_only_products_in_stock(server) {
        let mut client = server.client().await;
        let mut products = stocked_products("p", 20);
        products.extend((0..10).map(|n| stocked(&format!("gone{n}"), 0)));
        sync(&mut client, header(STORE), products).await.unwrap();
        let before = list(&mut client, STORE).await;
        let clear = pb::SyncHeader { clear: true, ..header(STORE) };
        // Listing 8 clears 12 of the 20 in stock: more than half of those, although less
        // than half of all 30 products.
        let status = sync(&mut client, clear, stocked_products("p", 8)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains("12") && status.message().contains("20"), "{}", status.message());
        assert_eq!(list(&mut client, STORE).await, before);
    }

    async fn a_small_store_may_be_cleared_whole(server) {
        let mut client = server.client().await;
        sync(&mut client, header(STORE), stocked_products("p", 10)).await.unwrap();
        let clear = pb::SyncHeader { clear: true, ..header(STORE) };
        let response = sync(&mut client, clear, vec![]).await.unwrap();
        assert_eq!(response.cleared, 10, "10 products or fewer never trip the guard");
    }

    async fn the_server_answers_health_checks_and_small_syncs_while_a_big_sync_streams(server) {
        let mut client = server.client().await;
        let (messages, stream) = mpsc::channel::<pb::SyncRequest>(2);
        let mut big_client = client.clone();
        let big = tokio::spawn(async move { big_client.sync(ReceiverStream::new(stream)).await });
        messages.send(pb::SyncRequest { header: Some(header(STORE)), products: vec![] }).await.unwrap();
        for batch in 0..20 {
            let products = stocked_products(&format!("b{batch}-"), 1000);
            messages.send(pb::SyncRequest { header: None, products }).await.unwrap();
        }
        server.wait_until(|now| now.products_in_flight >= 20_000).await;

        let mut health = HealthClient::new(server.channel().await);
        let check = health.check(HealthCheckRequest { service: String::new() }).await;
        assert!(check.is_ok());
        let small = sync(&mut client, header(STORE + 1), vec![stocked("s", 1)]).await.unwrap();
        assert_eq!(small.created, 1);

        drop(messages);
        let response = big.await.unwrap().unwrap().into_inner();
        assert_eq!(response.created, 20_000);
    }
    async fn skip_invalid_commits_the_valid_products_and_lists_the_others(server) {
        let mut client = server.client().await;
        sync(&mut client, header(STORE), vec![stocked("kept", 5), stocked("other", 1)]).await.unwrap();
        let skipping = pb::SyncHeader { skip_invalid: true, ..header(STORE) };
        let products = vec![
            stocked("kept", -5),                                                   // 0: bad stock
            stocked("new", 2),                                                     // 1
            pb::ProductUpdate { price: Some("1.23456".into()), ..stocked("x", 1) }, // 2: bad price
            item(""),                                                              // 3: no key
            stocked("other", 4),                                                   // 4
        ];
        let response = sync(&mut client, skipping, products).await.unwrap();
        assert_eq!(
            (response.received, response.created, response.updated, response.unchanged, response.rejected_total),
            (5, 1, 1, 0, 3)
        );
        let rejected: Vec<_> = response
            .rejected
            .iter()
            .map(|r| (r.index, r.external_id.as_str(), r.field.as_str()))
            .collect();
        assert_eq!(rejected, [(0, "kept", "in_stock"), (2, "x", "price"), (3, "", "external_id")]);
        assert!(response.rejected[1].reason.contains("decimal places"), "{:?}", response.rejected[1]);
        assert_eq!(
            stock(&mut client, STORE).await,
            [("kept".into(), Some(5)), ("other".into(), Some(4)), ("new".into(), Some(2))]
        );
    }

    async fn skip_invalid_with_clear_never_zeroes_a_product_for_a_bad_copy_of_it(server) {
        let mut client = server.client().await;
        sync(&mut client, header(STORE), vec![stocked("a", 5), stocked("b", 5), stocked("c", 5)]).await.unwrap();
        let skipping = pb::SyncHeader { skip_invalid: true, clear: true, ..header(STORE) };
        let products = vec![stocked("a", 6), pb::ProductUpdate { price: Some("-1".into()), ..stocked("b", 1) }];
        let response = sync(&mut client, skipping, products).await.unwrap();
        assert_eq!((response.updated, response.rejected_total, response.cleared), (1, 1, 1));
        assert_eq!(
            stock(&mut client, STORE).await,
            [("a".into(), Some(6)), ("b".into(), Some(5)), ("c".into(), Some(0))],
            "b was listed, though invalid: only c is cleared"
        );
    }

    async fn skip_invalid_in_a_barcode_sync_keeps_a_skipped_products_barcodes_and_stock(server) {
        let mut client = server.client().await;
        sync(&mut client, barcode_header(STORE), vec![coded("", &["111", "112"], 5), coded("", &["222"], 5)])
            .await
            .unwrap();
        let skipping = pb::SyncHeader { skip_invalid: true, clear: true, ..barcode_header(STORE) };
        let products = vec![coded("", &["111"], -1), coded("", &["222"], 3)];
        let response = sync(&mut client, skipping, products).await.unwrap();
        assert_eq!((response.updated, response.rejected_total, response.cleared), (1, 1, 0));
        let skipped = get_by_barcode(&mut client, STORE, "112").await.unwrap();
        assert_eq!(skipped.barcodes, ["111", "112"], "a skipped product writes nothing");
        assert_eq!(skipped.in_stock, Some(5), "and is not cleared: it was listed");
        assert_eq!(get_by_barcode(&mut client, STORE, "222").await.unwrap().in_stock, Some(3));
    }

    async fn skip_invalid_skips_products_that_conflict_with_others(server) {
        let mut client = server.client().await;
        sync(&mut client, header(STORE), vec![coded("owner", &["777"], 1)]).await.unwrap();
        let skipping = pb::SyncHeader { skip_invalid: true, ..header(STORE) };
        let products = vec![
            stocked("a", 1),
            stocked("a", 2),                 // 1: the same external id again
            coded("thief", &["777"], 1),     // 2: the owner keeps 777
            coded("b", &["888"], 1),
            coded("c", &["888"], 1),         // 4: 888 is b's in this batch
        ];
        let response = sync(&mut client, skipping, products).await.unwrap();
        let rejected: Vec<_> = response.rejected.iter().map(|r| (r.index, r.field.as_str())).collect();
        assert_eq!(rejected, [(1, "external_id"), (2, "barcodes"), (4, "barcodes")]);
        assert_eq!((response.created, response.rejected_total), (2, 3));
        assert_eq!(
            stock(&mut client, STORE).await,
            [("owner".into(), Some(1)), ("a".into(), Some(1)), ("b".into(), Some(1))]
        );
    }

    async fn skip_invalid_lists_the_first_thousand_rejections_and_counts_them_all(server) {
        let mut client = server.client().await;
        let skipping = pb::SyncHeader { skip_invalid: true, ..header(STORE) };
        let mut products: Vec<_> = (0..1500).map(|n| stocked(&format!("bad{n}"), -1)).collect();
        products.push(stocked("good", 1));
        let response = sync(&mut client, skipping, products).await.unwrap();
        assert_eq!((response.rejected_total, response.rejected.len(), response.created), (1500, 1000, 1));
        assert_eq!(response.rejected[999].index, 999);
    }
}

mod limits {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_client_is_dropped_and_its_sync_rolled_back() {
        let config = || {
            Config::limited(SyncLimits {
                idle_timeout: Duration::from_millis(300),
                ..SyncLimits::default()
            })
        };
        each_backend(config, async |server| {
            let mut client = server.client().await;
            let (messages, stream) = mpsc::channel::<pb::SyncRequest>(2);
            messages
                .send(pb::SyncRequest {
                    header: Some(header(STORE)),
                    products: vec![stocked("a", 1)],
                })
                .await
                .unwrap();
            // The client keeps the stream open and says nothing more.
            let status = client.sync(ReceiverStream::new(stream)).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
            drop(messages);
            assert_nothing_committed(&server, &mut client, STORE).await;
            let history = client
                .list_sync_runs(pb::ListSyncRunsRequest {
                    store_id: STORE,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let outcomes: Vec<_> = history.runs.iter().map(|run| run.outcome).collect();
            assert_eq!(outcomes, [pb::SyncOutcome::TimedOut as i32]);
            assert_eq!(
                history.runs[0].status_code,
                tonic::Code::DeadlineExceeded as i32
            );
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn syncs_beyond_the_concurrency_limit_wait_a_bounded_time_then_are_refused() {
        let config = || {
            Config::limited(SyncLimits {
                max_concurrent_syncs: 1,
                queue_timeout: Duration::from_millis(200),
                ..SyncLimits::default()
            })
        };
        each_backend(config, async |server| {
            let mut client = server.client().await;
            let (messages, stream) = mpsc::channel::<pb::SyncRequest>(2);
            let mut first_client = client.clone();
            let first =
                tokio::spawn(async move { first_client.sync(ReceiverStream::new(stream)).await });
            messages
                .send(pb::SyncRequest {
                    header: Some(header(STORE)),
                    products: vec![stocked("a", 1)],
                })
                .await
                .unwrap();
            server.wait_until(|now| now.syncs_in_flight == 1).await;

            let status = sync(&mut client, header(STORE + 1), vec![stocked("b", 1)])
                .await
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::ResourceExhausted);
            assert!(
                status.message().contains("limit of 1"),
                "{}",
                status.message()
            );

            drop(messages);
            assert_eq!(first.await.unwrap().unwrap().into_inner().created, 1);
            // With the first done, the next sync gets its turn.
            assert_eq!(
                sync(&mut client, header(STORE + 1), vec![stocked("b", 1)])
                    .await
                    .unwrap()
                    .created,
                1
            );
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_over_the_size_limit_fails_the_sync_and_commits_nothing() {
        let config = || Config {
            max_message_bytes: 16 * 1024,
            ..Config::default()
        };
        each_backend(config, async |server| {
            let mut client = server.client().await;
            let mut stream = messages(header(STORE), stocked_products("p", 100), 100);
            stream.push(pb::SyncRequest {
                header: None,
                products: stocked_products("q", 2000),
            });
            let status = send(&mut client, stream).await.unwrap_err();
            // RESOURCE_EXHAUSTED, as the gRPC status codes say (not tonic's OUT_OF_RANGE).
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
            assert!(
                status.message().contains("16384 bytes"),
                "{}",
                status.message()
            );
            assert_nothing_committed(&server, &mut client, STORE).await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn field_limits_follow_the_servers_configuration() {
        let config = || {
            Config::limited(SyncLimits {
                fields: FieldLimits {
                    max_barcodes: 2,
                    max_name_chars: 5,
                    ..FieldLimits::default()
                },
                ..SyncLimits::default()
            })
        };
        each_backend(config, async |server| {
            let mut client = server.client().await;
            let products = vec![
                coded("a", &["1", "2", "3"], 1),
                pb::ProductUpdate {
                    name: Some("sixsix".into()),
                    ..item("b")
                },
            ];
            let status = sync(&mut client, header(STORE), products)
                .await
                .unwrap_err();
            assert_eq!(
                violated_fields(&status),
                ["products[0].barcodes", "products[1].name"]
            );
        })
        .await;
    }
}
