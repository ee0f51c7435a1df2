//! The matching queue: new products wait in it, matchers work through it, stores read the
//! results back.

use inventory_sync::pb;
use inventory_sync::pb::match_queue_client::MatchQueueClient;
use tonic::transport::Channel;

use crate::support::*;

const STORE: i64 = 640;

fn categorized(external_id: &str, category: pb::Category) -> pb::ProductUpdate {
    pb::ProductUpdate {
        category: category as i32,
        ..stocked(external_id, 1)
    }
}

async fn pending(
    queue: &mut MatchQueueClient<Channel>,
    request: pb::ListPendingRequest,
) -> Vec<String> {
    let mut stream = queue.list_pending(request).await.unwrap().into_inner();
    let mut ids = Vec::new();
    while let Some(product) = stream.message().await.unwrap() {
        ids.push(product.external_id);
    }
    ids
}

fn catalog_item(id: i64) -> pb::CatalogItem {
    pb::CatalogItem {
        id,
        kind: pb::Category::Wine as i32,
        name: "Chateau Margaux".into(),
        vintage: "2015".into(),
        producer: "Chateau Margaux".into(),
    }
}

async fn product_id(
    client: &mut pb::inventory_sync_client::InventorySyncClient<Channel>,
    external_id: &str,
) -> i64 {
    get(client, STORE, external_id).await.unwrap().id
}

backend_tests! {
    async fn new_products_wait_in_the_queue_of_their_category_oldest_first(server) {
        let mut client = server.client().await;
        let mut queue = MatchQueueClient::new(server.channel().await);
        sync(
            &mut client,
            header(STORE),
            vec![
                categorized("w1", pb::Category::Wine),
                categorized("d1", pb::Category::Drink),
                categorized("u1", pb::Category::Unspecified),
                categorized("w2", pb::Category::Wine),
            ],
        )
        .await
        .unwrap();
        sync(&mut client, header(STORE + 1), vec![categorized("w3", pb::Category::Wine)]).await.unwrap();

        let wine = pb::ListPendingRequest { category: pb::Category::Wine as i32, ..Default::default() };
        assert_eq!(pending(&mut queue, wine).await, ["w1", "w2", "w3"]);
        let drink = pb::ListPendingRequest { category: pb::Category::Drink as i32, ..Default::default() };
        assert_eq!(pending(&mut queue, drink).await, ["d1"]);
        assert_eq!(pending(&mut queue, pb::ListPendingRequest::default()).await, ["w1", "d1", "u1", "w2", "w3"]);
        let one_store = pb::ListPendingRequest { store_id: STORE + 1, ..Default::default() };
        assert_eq!(pending(&mut queue, one_store).await, ["w3"]);

        // A re-sync does not put anything in the queue twice.
        sync(&mut client, header(STORE), vec![categorized("w1", pb::Category::Wine)]).await.unwrap();
        assert_eq!(pending(&mut queue, wine).await, ["w1", "w2", "w3"]);
    }

    async fn a_queue_call_that_names_the_store_finds_only_that_stores_product(server) {
        let mut client = server.client().await;
        let mut queue = MatchQueueClient::new(server.channel().await);
        sync(&mut client, header(STORE), vec![categorized("a", pb::Category::Wine), categorized("b", pb::Category::Wine)])
            .await
            .unwrap();
        let (a, b) = (product_id(&mut client, "a").await, product_id(&mut client, "b").await);
        let elsewhere = Some(STORE + 1);

        // Named with another store, the product is not found, and nothing changes.
        let status = queue
            .claim(pb::ClaimRequest { product_id: a, store_id: elsewhere, ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
        let status = queue
            .complete(pb::CompleteRequest { product_id: b, store_id: elsewhere, catalog_item: Some(catalog_item(3)) })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
        assert_eq!(pending(&mut queue, pb::ListPendingRequest::default()).await, ["a", "b"]);

        // Named with its own, the call works as without a store.
        let claimed = queue
            .claim(pb::ClaimRequest { product_id: a, store_id: Some(STORE), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((claimed.id, claimed.match_status), (a, pb::MatchStatus::InProgress as i32));
        let status = queue.release(pb::ReleaseRequest { product_id: a, store_id: elsewhere }).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
        let released = queue
            .release(pb::ReleaseRequest { product_id: a, store_id: Some(STORE) })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(released.match_status, pb::MatchStatus::Pending as i32);
        let completed = queue
            .complete(pb::CompleteRequest { product_id: b, store_id: Some(STORE), catalog_item: Some(catalog_item(3)) })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(completed.match_status, pb::MatchStatus::Complete as i32);

        for store_id in [0, -4] {
            let status = queue
                .claim(pb::ClaimRequest { product_id: a, store_id: Some(store_id), ..Default::default() })
                .await
                .unwrap_err();
            assert_eq!(violated_fields(&status), ["store_id"], "{status:?}");
        }
    }

    async fn a_product_goes_from_pending_to_claimed_to_complete_and_the_store_reads_it_back(server) {
        let mut client = server.client().await;
        let mut queue = MatchQueueClient::new(server.channel().await);
        sync(&mut client, header(STORE), vec![categorized("w1", pb::Category::Wine), categorized("w2", pb::Category::Wine)])
            .await
            .unwrap();
        let id = product_id(&mut client, "w1").await;

        let claimed = queue
            .claim(pb::ClaimRequest { product_id: id, claimed_by: "ana".into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(claimed.match_status, pb::MatchStatus::InProgress as i32);
        // The claim is the caller's token's, whatever the request says (no auth: anonymous).
        assert_eq!(claimed.claimed_by, "anonymous");
        assert_eq!(pending(&mut queue, pb::ListPendingRequest::default()).await, ["w2"]);
        let with_claimed = pb::ListPendingRequest { include_in_progress: true, ..Default::default() };
        assert_eq!(pending(&mut queue, with_claimed).await, ["w1", "w2"]);

        let completed = queue
            .complete(pb::CompleteRequest { product_id: id, catalog_item: Some(catalog_item(9001)), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(completed.match_status, pb::MatchStatus::Complete as i32);
        assert_eq!(completed.catalog_item, Some(catalog_item(9001)));
        let time = |product: &pb::Product| {
            let stamp = product.updated_at.unwrap();
            (stamp.seconds, stamp.nanos)
        };
        assert!(time(&completed) > time(&claimed), "a match is a change the store can pull");

        // The store pulls processed data back by external id, or all complete products.
        let read_back = get(&mut client, STORE, "w1").await.unwrap();
        assert_eq!(read_back.catalog_item, Some(catalog_item(9001)));
        let complete = list_filtered(
            &mut client,
            pb::ListProductsRequest {
                store_id: STORE,
                match_status: pb::MatchStatus::Complete as i32,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(complete.iter().map(|p| p.external_id.as_str()).collect::<Vec<_>>(), ["w1"]);
        assert!(pending(&mut queue, pb::ListPendingRequest::default()).await == ["w2"]);
    }

    async fn a_matcher_may_release_a_claim_and_a_pending_product_may_be_completed_directly(server) {
        let mut client = server.client().await;
        let mut queue = MatchQueueClient::new(server.channel().await);
        sync(&mut client, header(STORE), vec![stocked("a", 1), stocked("b", 1)]).await.unwrap();
        let a = product_id(&mut client, "a").await;
        let b = product_id(&mut client, "b").await;

        queue.claim(pb::ClaimRequest { product_id: a, claimed_by: "ana".into(), ..Default::default() }).await.unwrap();
        let released = queue.release(pb::ReleaseRequest { product_id: a, ..Default::default() }).await.unwrap().into_inner();
        assert_eq!(released.match_status, pb::MatchStatus::Pending as i32);
        assert_eq!(released.claimed_by, "");
        // Released, it can be claimed again.
        let again = queue.claim(pb::ClaimRequest { product_id: a, claimed_by: "ben".into(), ..Default::default() }).await.unwrap();
        assert_eq!(again.into_inner().match_status, pb::MatchStatus::InProgress as i32);

        let completed = queue
            .complete(pb::CompleteRequest { product_id: b, catalog_item: Some(catalog_item(7)), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(completed.match_status, pb::MatchStatus::Complete as i32);
    }

    async fn illegal_transitions_are_refused_and_change_nothing(server) {
        let mut client = server.client().await;
        let mut queue = MatchQueueClient::new(server.channel().await);
        sync(&mut client, header(STORE), vec![stocked("p", 1), stocked("c", 1)]).await.unwrap();
        let p = product_id(&mut client, "p").await;
        let c = product_id(&mut client, "c").await;
        queue.complete(pb::CompleteRequest { product_id: c, catalog_item: Some(catalog_item(1)), ..Default::default() }).await.unwrap();

        let code = |result: Result<tonic::Response<pb::Product>, tonic::Status>| result.unwrap_err().code();
        // Releasing a pending product, claiming or completing a complete one.
        assert_eq!(code(queue.release(pb::ReleaseRequest { product_id: p, ..Default::default() }).await), tonic::Code::FailedPrecondition);
        let claim_complete = queue.claim(pb::ClaimRequest { product_id: c, claimed_by: "ana".into(), ..Default::default() }).await;
        let status = claim_complete.unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains("MATCH_STATUS_COMPLETE"), "{}", status.message());
        let complete_again = queue.complete(pb::CompleteRequest { product_id: c, catalog_item: Some(catalog_item(2)), ..Default::default() }).await;
        assert_eq!(code(complete_again), tonic::Code::FailedPrecondition);
        // Claiming a claimed product.
        queue.claim(pb::ClaimRequest { product_id: p, claimed_by: "ana".into(), ..Default::default() }).await.unwrap();
        let twice = queue.claim(pb::ClaimRequest { product_id: p, claimed_by: "ben".into(), ..Default::default() }).await;
        assert_eq!(code(twice), tonic::Code::FailedPrecondition);

        // Unknown products.
        let unknown = 987_654;
        assert_eq!(code(queue.claim(pb::ClaimRequest { product_id: unknown, claimed_by: "a".into(), ..Default::default() }).await), tonic::Code::NotFound);
        assert_eq!(code(queue.release(pb::ReleaseRequest { product_id: unknown, ..Default::default() }).await), tonic::Code::NotFound);
        let complete_unknown = queue.complete(pb::CompleteRequest { product_id: unknown, catalog_item: Some(catalog_item(3)), ..Default::default() }).await;
        assert_eq!(code(complete_unknown), tonic::Code::NotFound);

        // Bad requests.
        let empty_item = queue.complete(pb::CompleteRequest { product_id: p, catalog_item: Some(pb::CatalogItem::default()), ..Default::default() }).await;
        assert_eq!(violated_fields(&empty_item.unwrap_err()), ["catalog_item.id"]);
        let no_item = queue.complete(pb::CompleteRequest { product_id: p, catalog_item: None, ..Default::default() }).await;
        assert_eq!(violated_fields(&no_item.unwrap_err()), ["catalog_item"]);

        let still = get(&mut client, STORE, "p").await.unwrap();
        assert_eq!((still.match_status, still.claimed_by.as_str()), (pb::MatchStatus::InProgress as i32, "anonymous"));
        assert_eq!(get(&mut client, STORE, "c").await.unwrap().catalog_item, Some(catalog_item(1)));
    }

    async fn a_later_sync_never_resets_match_status_or_catalog_item(server) {
        let mut client = server.client().await;
        let mut queue = MatchQueueClient::new(server.channel().await);
        sync(&mut client, header(STORE), vec![categorized("m", pb::Category::Wine), stocked("claimed", 1)])
            .await
            .unwrap();
        let m = product_id(&mut client, "m").await;
        let claimed = product_id(&mut client, "claimed").await;
        queue.complete(pb::CompleteRequest { product_id: m, catalog_item: Some(catalog_item(42)), ..Default::default() }).await.unwrap();
        queue.claim(pb::ClaimRequest { product_id: claimed, claimed_by: "ana".into(), ..Default::default() }).await.unwrap();

        let changed = pb::ProductUpdate {
            name: Some("renamed".into()),
            category: pb::Category::Drink as i32,
            ..stocked("m", 9)
        };
        let clear = pb::SyncHeader { clear: true, ..header(STORE) };
        let response = sync(&mut client, clear, vec![changed]).await.unwrap();
        assert_eq!((response.updated, response.cleared), (1, 1));

        let product = get(&mut client, STORE, "m").await.unwrap();
        assert_eq!(product.match_status, pb::MatchStatus::Complete as i32);
        assert_eq!(product.catalog_item, Some(catalog_item(42)));
        assert_eq!((product.in_stock, product.name.as_deref()), (Some(9), Some("renamed")));
        let other = get(&mut client, STORE, "claimed").await.unwrap();
        assert_eq!((other.match_status, other.in_stock), (pb::MatchStatus::InProgress as i32, Some(0)));
    }
}

/// A claim of `product_id`; who claims it is the caller's token.
fn claim(product_id: i64) -> pb::ClaimRequest {
    pb::ClaimRequest {
        product_id,
        claimed_by: String::new(),
        ..Default::default()
    }
}

/// A server that checks tokens, with claims that expire after `claim_ttl`.
fn secured(claim_ttl: std::time::Duration) -> Config {
    Config {
        authenticated: true,
        claim_ttl,
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_is_its_matchers_only_an_admin_may_take_it_over() {
    use inventory_sync::auth::Role;
    let config = || secured(inventory_sync::matching::DEFAULT_CLAIM_TTL);
    each_backend(config, async |server| {
        let admin = server.token("admin", Role::Admin).await;
        let mut client = server.client_as(&admin).await;
        let products = vec![stocked("a", 1), stocked("b", 1)];
        client
            .sync(tokio_stream::iter(messages(header(STORE), products, 10)))
            .await
            .unwrap();
        let id = |external_id: &str| {
            let mut client = client.clone();
            let key = pb::get_product_request::Key::ExternalId(external_id.into());
            async move {
                let request = pb::GetProductRequest {
                    store_id: STORE,
                    key: Some(key),
                };
                client.get_product(request).await.unwrap().into_inner().id
            }
        };
        let (a, b) = (id("a").await, id("b").await);
        let mut ana = server
            .queue_as(&server.token("ana", Role::Matcher).await)
            .await;
        let mut ben = server
            .queue_as(&server.token("ben", Role::Matcher).await)
            .await;
        let mut boss = server.queue_as(&admin).await;

        // The request's claimed_by is ignored: the claim is the caller's token's.
        let claimed = ana
            .claim(pb::ClaimRequest {
                product_id: a,
                claimed_by: "ben".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(claimed.into_inner().claimed_by, "ana");
        let denied = ben
            .release(pb::ReleaseRequest {
                product_id: a,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
        assert!(
            denied.message().contains("claimed by \"ana\""),
            "{}",
            denied.message()
        );
        let item = Some(catalog_item(5));
        let denied = ben
            .complete(pb::CompleteRequest {
                product_id: a,
                catalog_item: item.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
        let request = pb::GetProductRequest {
            store_id: STORE,
            key: Some(pb::get_product_request::Key::ExternalId("a".into())),
        };
        let still = client.get_product(request).await.unwrap().into_inner();
        assert_eq!(
            (still.match_status, still.claimed_by.as_str()),
            (pb::MatchStatus::InProgress as i32, "ana")
        );

        // An admin may release anyone's claim; then another matcher claims and completes it.
        let released = boss
            .release(pb::ReleaseRequest {
                product_id: a,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(released.match_status, pb::MatchStatus::Pending as i32);
        ben.claim(claim(a)).await.unwrap();
        let done = ben
            .complete(pb::CompleteRequest {
                product_id: a,
                catalog_item: item.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let done = done.into_inner();
        assert_eq!(
            (done.match_status, done.claimed_by.as_str()),
            (pb::MatchStatus::Complete as i32, "ben")
        );

        // Completing a pending product records who matched it.
        let done = ana
            .complete(pb::CompleteRequest {
                product_id: b,
                catalog_item: item,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            done.into_inner().claimed_by,
            "ana",
            "Complete records who matched"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_older_than_its_ttl_is_pending_again() {
    use inventory_sync::auth::Role;
    const TTL: std::time::Duration = std::time::Duration::from_secs(2);
    each_backend(
        || secured(TTL),
        async |server| {
            let admin = server.token("admin", Role::Admin).await;
            let mut client = server.client_as(&admin).await;
            let products = vec![stocked("a", 1)];
            client
                .sync(tokio_stream::iter(messages(header(STORE), products, 10)))
                .await
                .unwrap();
            let mut ana = server
                .queue_as(&server.token("ana", Role::Matcher).await)
                .await;
            let mut ben = server
                .queue_as(&server.token("ben", Role::Matcher).await)
                .await;
            let listed = |queue: &mut MatchQueueClient<WithToken>| {
                let mut queue = queue.clone();
                async move {
                    let mut stream = queue
                        .list_pending(pb::ListPendingRequest::default())
                        .await
                        .unwrap()
                        .into_inner();
                    let mut ids = Vec::new();
                    while let Some(product) = stream.message().await.unwrap() {
                        ids.push((product.external_id, product.match_status));
                    }
                    ids
                }
            };
            let mut stream = ana
                .list_pending(pb::ListPendingRequest::default())
                .await
                .unwrap()
                .into_inner();
            let a = stream.message().await.unwrap().unwrap().id;

            let claimed_at = std::time::Instant::now();
            ana.claim(claim(a)).await.unwrap();
            let taken = ben.claim(claim(a)).await.unwrap_err();
            let pending_meanwhile = listed(&mut ben).await;
            // (Only checked if this machine was not so slow that the claim expired already.)
            if claimed_at.elapsed() < TTL {
                assert_eq!(taken.code(), tonic::Code::FailedPrecondition, "{taken:?}");
                assert!(pending_meanwhile.is_empty(), "a fresh claim is not pending");
            }

            // The matcher went away; once the claim is older than the TTL, the product is listed
            // as pending and another matcher may claim it.
            tokio::time::sleep(
                TTL.saturating_sub(claimed_at.elapsed()) + std::time::Duration::from_millis(50),
            )
            .await;
            assert_eq!(
                listed(&mut ben).await,
                [("a".to_owned(), pb::MatchStatus::Pending as i32)]
            );
            let claimed = ben.claim(claim(a)).await.unwrap();
            assert_eq!(claimed.into_inner().claimed_by, "ben");
            let late = ana
                .release(pb::ReleaseRequest {
                    product_id: a,
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(
                late.code(),
                tonic::Code::PermissionDenied,
                "the expired claimer lost it"
            );
        },
    )
    .await;
}
