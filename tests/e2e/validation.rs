//! Bad input: `INVALID_ARGUMENT` naming every offending place, and nothing committed.

use inventory_sync::pb;

use crate::support::*;

const STORE: i64 = 42;

/// Puts a known state in the store and returns it, to check later that nothing changed.
async fn seed(
    client: &mut pb::inventory_sync_client::InventorySyncClient<tonic::transport::Channel>,
) -> Vec<pb::Product> {
    let products = vec![
        pb::ProductUpdate {
            barcodes: vec!["777".into()],
            ..stocked("kept", 5)
        },
        stocked("other", 2),
    ];
    sync(client, header(STORE), products).await.unwrap();
    list(client, STORE).await
}

backend_tests! {
    async fn every_invalid_field_is_reported_with_its_place_and_nothing_is_committed(server) {
        let mut client = server.client().await;
        let before = seed(&mut client).await;
        let long = "x".repeat(129);
        let products = vec![
            stocked("kept", 100),                                              // 0: valid
            item(""),                                                          // 1
            item(&long),                                                       // 2
            stocked("neg", -1),                                                // 3
            pb::ProductUpdate { price: Some("-1".into()), ..item("p1") },      // 4
            pb::ProductUpdate { price: Some("1.23456".into()), ..item("p2") }, // 5
            pb::ProductUpdate { price: Some("ten".into()), ..item("p3") },     // 6
            pb::ProductUpdate { abv: Some(f64::NAN), ..item("a1") },           // 7
            pb::ProductUpdate { abv: Some(100.5), ..item("a2") },              // 8
            pb::ProductUpdate { proof: Some(-0.1), ..item("pr") },             // 9
            pb::ProductUpdate { name: Some("n".repeat(513)), ..item("n") },    // 10
            pb::ProductUpdate { unit_size: Some("u".repeat(65)), ..item("u") },// 11
            pb::ProductUpdate { barcodes: vec!["ok".into(), "".into()], ..item("b1") }, // 12
            pb::ProductUpdate { barcodes: vec!["9".repeat(65)], ..item("b2") },         // 13
            pb::ProductUpdate { category: 9, ..item("c") },                    // 14
            pb::ProductUpdate { name: Some("bad\0name".into()), ..item("z") }, // 15
        ];
        let status = sync(&mut client, header(STORE), products).await.unwrap_err();
        assert_eq!(
            violated_fields(&status),
            [
                "products[1].external_id",
                "products[2].external_id",
                "products[3].in_stock",
                "products[4].price",
                "products[5].price",
                "products[6].price",
                "products[7].abv",
                "products[8].abv",
                "products[9].proof",
                "products[10].name",
                "products[11].unit_size",
                "products[12].barcodes[1]",
                "products[13].barcodes[0]",
                "products[14].category",
                "products[15].name",
            ]
        );
        assert!(status.message().contains("15 problems"), "{}", status.message());
        assert_eq!(list(&mut client, STORE).await, before, "nothing was committed");
    }

    async fn the_same_external_id_twice_in_one_sync_is_refused(server) {
        let mut client = server.client().await;
        let before = seed(&mut client).await;
        let status = sync(
            &mut client,
            header(STORE),
            vec![stocked("a", 1), stocked("b", 1), stocked("a", 2), stocked("new", 1)],
        )
        .await
        .unwrap_err();
        assert_eq!(violated_fields(&status), ["products[2].external_id"]);
        assert!(status.message().contains("products[0]"), "{}", status.message());
        assert_eq!(list(&mut client, STORE).await, before);
    }

    async fn a_stored_external_id_twice_in_a_re_sync_is_refused(server) {
        // PostgreSQL groups only the new products' external ids unless a stored product
        // was found twice while staging; here one is, and the repeat is found.
        let mut client = server.client().await;
        let before = seed(&mut client).await;
        let status = sync(
            &mut client,
            header(STORE),
            vec![stocked("kept", 1), stocked("other", 1), stocked("new", 1), stocked("kept", 2)],
        )
        .await
        .unwrap_err();
        assert_eq!(violated_fields(&status), ["products[3].external_id"]);
        assert!(status.message().contains("products[0]"), "{}", status.message());
        assert_eq!(list(&mut client, STORE).await, before);
    }

    async fn a_stored_product_sent_twice_exactly_as_stored_is_refused(server) {
        // Both copies of "other" change nothing, so staging sets them aside with the other
        // unchanged products; the repeat must still be found, and skip_invalid must still
        // reject the later copy only.
        let mut client = server.client().await;
        let before = seed(&mut client).await;
        let products = vec![stocked("other", 2), stocked("new", 1), stocked("other", 2)];
        let status = sync(&mut client, header(STORE), products.clone()).await.unwrap_err();
        assert_eq!(violated_fields(&status), ["products[2].external_id"]);
        assert!(status.message().contains("products[0]"), "{}", status.message());
        assert_eq!(list(&mut client, STORE).await, before);

        let skip = pb::SyncHeader { skip_invalid: true, ..header(STORE) };
        let response = sync(&mut client, skip, products).await.unwrap();
        assert_eq!(
            (response.created, response.unchanged, response.rejected_total),
            (1, 1, 1)
        );
        assert_eq!(response.rejected.len(), 1);
        assert_eq!(response.rejected[0].index, 2);
    }

    async fn repeats_in_the_first_sync_of_a_store_are_refused_the_same_way(server) {
        // The store has no products, so the merge lets the live tables' unique keys find
        // the repeats; the answer and the untouched store must not differ.
        let mut client = server.client().await;
        for dry_run in [false, true] {
            let repeated_id = vec![stocked("a", 1), stocked("b", 1), stocked("a", 2)];
            let status = sync(&mut client, pb::SyncHeader { dry_run, ..header(STORE) }, repeated_id)
                .await
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert_eq!(violated_fields(&status), ["products[2].external_id"]);
            assert!(status.message().contains("products[0]"), "{}", status.message());

            let shared_barcode = vec![
                pb::ProductUpdate { barcodes: vec!["123".into()], ..item("x") },
                pb::ProductUpdate { barcodes: vec!["456".into(), "123".into()], ..item("y") },
            ];
            let status = sync(&mut client, pb::SyncHeader { dry_run, ..header(STORE) }, shared_barcode)
                .await
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert_eq!(violated_fields(&status), ["products[1].barcodes"]);
            assert!(status.message().contains("\"123\""), "{}", status.message());
            assert!(list(&mut client, STORE).await.is_empty(), "nothing was committed");
        }
        // Without repeats the same store takes the batch.
        let created = sync(&mut client, header(STORE), vec![stocked("a", 1), stocked("b", 1)]).await.unwrap();
        assert_eq!(created.created, 2);
    }

    async fn a_barcode_given_to_two_products_of_the_batch_is_refused(server) {
        let mut client = server.client().await;
        let before = seed(&mut client).await;
        let status = sync(
            &mut client,
            header(STORE),
            vec![
                pb::ProductUpdate { barcodes: vec!["123".into()], ..item("x") },
                pb::ProductUpdate { barcodes: vec!["456".into(), "123".into()], ..item("y") },
            ],
        )
        .await
        .unwrap_err();
        assert_eq!(violated_fields(&status), ["products[1].barcodes"]);
        assert!(status.message().contains("\"123\""), "{}", status.message());
        assert_eq!(list(&mut client, STORE).await, before);
    }

    async fn a_barcode_of_a_stored_product_that_keeps_it_is_refused(server) {
        let mut client = server.client().await;
        let before = seed(&mut client).await;
        // "kept" owns 777 and is not in this sync, so it keeps it.
        let status = sync(
            &mut client,
            header(STORE),
            vec![stocked("other", 9), pb::ProductUpdate { barcodes: vec!["777".into()], ..item("thief") }],
        )
        .await
        .unwrap_err();
        assert_eq!(violated_fields(&status), ["products[1].barcodes"]);
        assert!(status.message().contains("kept"), "{}", status.message());
        assert_eq!(list(&mut client, STORE).await, before);

        // Listed without barcodes, "kept" still keeps 777.
        let status = sync(
            &mut client,
            header(STORE),
            vec![stocked("kept", 1), pb::ProductUpdate { barcodes: vec!["777".into()], ..item("thief") }],
        )
        .await
        .unwrap_err();
        assert_eq!(violated_fields(&status), ["products[1].barcodes"]);
        assert_eq!(list(&mut client, STORE).await, before);

        // Changed, and sent with the very barcodes it has, "kept" keeps 777 too, from a new
        // product and from a stored one alike.
        for taker in ["thief", "other"] {
            let status = sync(
                &mut client,
                header(STORE),
                vec![
                    pb::ProductUpdate { barcodes: vec!["777".into()], ..stocked("kept", 42) },
                    pb::ProductUpdate { barcodes: vec!["777".into()], ..item(taker) },
                ],
            )
            .await
            .unwrap_err();
            assert_eq!(violated_fields(&status), ["products[1].barcodes"], "{taker}");
            assert_eq!(list(&mut client, STORE).await, before, "{taker}");
        }
    }

    async fn the_first_message_must_carry_the_header(server) {
        let mut client = server.client().await;
        let status = send(
            &mut client,
            vec![pb::SyncRequest { header: None, products: vec![stocked("a", 1)] }],
        )
        .await
        .unwrap_err();
        assert_eq!(violated_fields(&status), ["header"]);

        let status = send(&mut client, vec![]).await.unwrap_err();
        assert_eq!(violated_fields(&status), ["header"]);
    }

    async fn a_header_on_a_later_message_is_refused(server) {
        let mut client = server.client().await;
        let before = seed(&mut client).await;
        let mut stream = messages(header(STORE), vec![stocked("a", 1)], 1);
        stream.push(pb::SyncRequest { header: Some(header(STORE)), products: vec![stocked("b", 1)] });
        let status = send(&mut client, stream).await.unwrap_err();
        assert_eq!(violated_fields(&status), ["header"]);
        assert!(status.message().contains("message 3"), "{}", status.message());
        assert_eq!(list(&mut client, STORE).await, before);
    }

    async fn store_id_must_be_positive(server) {
        let mut client = server.client().await;
        for store_id in [0, -5] {
            let status = sync(&mut client, header(store_id), vec![stocked("a", 1)]).await.unwrap_err();
            assert_eq!(violated_fields(&status), ["header.store_id"]);
        }
    }

    async fn header_options_are_checked(server) {
        let mut client = server.client().await;
        for key in ["k".repeat(129), "bad\nkey".to_owned()] {
            let header = pb::SyncHeader { idempotency_key: key, ..header(STORE) };
            let status = sync(&mut client, header, vec![stocked("a", 1)]).await.unwrap_err();
            assert_eq!(violated_fields(&status), ["header.idempotency_key"]);
        }
        assert!(list(&mut client, STORE).await.is_empty());

        let unknown_key = pb::SyncHeader { key: 7, ..header(STORE) };
        let status = sync(&mut client, unknown_key, vec![stocked("a", 1)]).await.unwrap_err();
        assert_eq!(violated_fields(&status), ["header.key"]);

        // The explicit default key is the external id.
        let explicit = pb::SyncHeader { key: pb::KeyField::ExternalId as i32, ..header(STORE) };
        assert_eq!(sync(&mut client, explicit, vec![stocked("a", 1)]).await.unwrap().created, 1);
    }

    async fn violations_are_listed_up_to_a_cap_and_all_counted(server) {
        let mut client = server.client().await;
        let products: Vec<_> = (0..500).map(|n| stocked(&format!("p{n}"), -1)).collect();
        let status = sync(&mut client, header(STORE), products).await.unwrap_err();
        // The detail lists the first ones, as many as a client's trailer takes.
        let fields = violated_fields(&status);
        assert!((20..=100).contains(&fields.len()), "{}", fields.len());
        let expected: Vec<_> = (0..fields.len()).map(|n| format!("products[{n}].in_stock")).collect();
        assert_eq!(fields, expected);
        let listed = "500 problems; the first: products[0].in_stock";
        assert!(status.message().contains(listed), "{}", status.message());
        let says_listed = format!("(the first {} are listed)", fields.len());
        assert!(status.message().contains(&says_listed), "{}", status.message());
    }

    async fn a_refusal_with_a_hundred_long_problems_still_reaches_the_client(server) {
        // Each conflict names the stored owner's external id (128 characters here): a
        // hundred of them would overflow the trailer a client accepts, were the detail not
        // cut short.
        let mut client = server.client().await;
        let owner = |n: usize| format!("{n:0>128}");
        let stored: Vec<_> = (0..150).map(|n| coded(&owner(n), &[&format!("{n:08}")], 1)).collect();
        sync(&mut client, header(STORE), stored).await.unwrap();
        let before = list(&mut client, STORE).await;

        let thieves: Vec<_> = (0..150).map(|n| coded(&format!("t{n}"), &[&format!("{n:08}")], 1)).collect();
        let status = sync(&mut client, header(STORE), thieves).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        let fields = violated_fields(&status);
        assert!(!fields.is_empty() && fields.len() < 100, "{} violations in the detail", fields.len());
        assert_eq!(fields[0], "products[0].barcodes");
        assert!(status.message().contains("100 problems"), "{}", status.message());
        assert_eq!(list(&mut client, STORE).await, before);
    }
}

mod limits {
    use inventory_sync::sync::SyncLimits;

    use crate::support::*;

    #[tokio::test]
    async fn a_sync_over_the_product_limit_is_refused_and_commits_nothing() {
        for backend in [Backend::Sqlite, Backend::Postgres] {
            let limits = SyncLimits {
                max_products: 10,
                ..SyncLimits::default()
            };
            let Some(server) = TestServer::start_with(backend, limits).await else {
                continue;
            };
            let mut client = server.client().await;
            let products: Vec<_> = (0..11).map(|n| stocked(&format!("p{n}"), 1)).collect();
            let status = sync(&mut client, header(1), products).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{backend:?}");
            assert!(
                status.message().contains("at most 10"),
                "{}",
                status.message()
            );
            assert!(list(&mut client, 1).await.is_empty());
        }
    }
}
