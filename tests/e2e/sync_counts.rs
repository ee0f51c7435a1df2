//! What a sync writes and the counts it answers with.

use inventory_sync::pb;

use crate::support::*;

const STORE: i64 = 19771;

backend_tests! {
    async fn sync_creates_missing_products_and_updates_existing_ones(server) {
        let mut client = server.client().await;
        let first = sync(&mut client, header(STORE), vec![stocked("10003", 5), stocked("10004", 5)])
            .await
            .unwrap();
        assert_eq!((first.received, first.created, first.updated, first.unchanged), (2, 2, 0, 0));
        assert!(!first.sync_id.is_empty());

        let second = sync(
            &mut client,
            header(STORE),
            vec![stocked("10003", 12), stocked("10004", 12), stocked("10005", 33)],
        )
        .await
        .unwrap();
        assert_eq!(
            (second.received, second.created, second.updated, second.unchanged, second.cleared),
            (3, 1, 2, 0, 0)
        );
        assert_ne!(first.sync_id, second.sync_id);
        assert_eq!(
            stock(&mut client, STORE).await,
            [("10003".into(), Some(12)), ("10004".into(), Some(12)), ("10005".into(), Some(33))]
        );
    }

    async fn resync_of_unchanged_data_counts_unchanged_and_writes_nothing(server) {
        let mut client = server.client().await;
        let products = vec![
            pb::ProductUpdate {
                barcodes: vec!["b".into(), "a".into()],
                price: Some("12.99".into()),
                name: Some("Rioja".into()),
                unit_size: Some("750ML".into()),
                abv: Some(13.5),
                proof: Some(27.0),
                category: pb::Category::Wine as i32,
                ..stocked("1", 4)
            },
            stocked("2", 0),
        ];
        sync(&mut client, header(STORE), products.clone()).await.unwrap();
        let before = list(&mut client, STORE).await;

        // Barcodes in another order are the same set.
        let mut again = products;
        again[0].barcodes = vec!["a".into(), "b".into()];
        let response = sync(&mut client, header(STORE), again).await.unwrap();
        assert_eq!((response.created, response.updated, response.unchanged), (0, 0, 2));
        assert_eq!(list(&mut client, STORE).await, before, "nothing, not even updated_at, changes");
    }

    async fn updated_counts_only_products_whose_stored_data_changes(server) {
        let mut client = server.client().await;
        sync(&mut client, header(STORE), vec![stocked("1", 1), stocked("2", 2), stocked("3", 3)])
            .await
            .unwrap();
        let response = sync(
            &mut client,
            header(STORE),
            vec![
                stocked("1", 1),
                stocked("2", 20),
                pb::ProductUpdate { name: Some("new name".into()), ..stocked("3", 3) },
                item("4"),
            ],
        )
        .await
        .unwrap();
        assert_eq!(
            (response.received, response.created, response.updated, response.unchanged),
            (4, 1, 2, 1)
        );
        assert_eq!(response.created + response.updated + response.unchanged, response.received);
    }

    async fn a_field_left_out_keeps_its_stored_value(server) {
        let mut client = server.client().await;
        let full = pb::ProductUpdate {
            barcodes: vec!["0001".into(), "0002".into()],
            price: Some("19.50".into()),
            name: Some("Malbec".into()),
            unit_size: Some("1.5 L".into()),
            abv: Some(14.0),
            proof: Some(28.0),
            category: pb::Category::Wine as i32,
            ..stocked("m", 6)
        };
        sync(&mut client, header(STORE), vec![full]).await.unwrap();

        let response = sync(&mut client, header(STORE), vec![stocked("m", 2)]).await.unwrap();
        assert_eq!(response.updated, 1);
        let product = get(&mut client, STORE, "m").await.unwrap();
        assert_eq!(product.in_stock, Some(2));
        assert_eq!(product.barcodes, ["0001", "0002"], "empty barcodes keep the stored ones");
        assert_eq!(product.price.as_deref(), Some("19.50"));
        assert_eq!(product.name.as_deref(), Some("Malbec"));
        assert_eq!(product.unit_size.as_deref(), Some("1.5 L"));
        assert_eq!(product.abv, Some(14.0));
        assert_eq!(product.proof, Some(28.0));
        assert_eq!(product.category, pb::Category::Wine as i32);

        let replaced = pb::ProductUpdate { barcodes: vec!["0003".into()], ..item("m") };
        sync(&mut client, header(STORE), vec![replaced]).await.unwrap();
        let product = get(&mut client, STORE, "m").await.unwrap();
        assert_eq!(product.barcodes, ["0003"], "non-empty barcodes replace the stored ones");
        assert_eq!(product.in_stock, Some(2));
    }

    async fn a_new_product_stores_unset_fields_as_unknown(server) {
        let mut client = server.client().await;
        sync(&mut client, header(STORE), vec![item("bare")]).await.unwrap();
        let product = get(&mut client, STORE, "bare").await.unwrap();
        assert_eq!(product.in_stock, None);
        assert_eq!(product.price, None);
        assert_eq!(product.name, None);
        assert_eq!(product.abv, None);
        assert!(product.barcodes.is_empty());
        assert_eq!(product.category, pb::Category::Unspecified as i32);
        assert_eq!(product.match_status, pb::MatchStatus::Pending as i32);
        assert_eq!(product.created_at, product.updated_at);
    }

    async fn clear_marks_unlisted_products_out_of_stock_and_keeps_them(server) {
        let mut client = server.client().await;
        sync(
            &mut client,
            header(STORE),
            vec![stocked("listed", 5), stocked("stocked", 3), stocked("empty", 0), item("unknown")],
        )
        .await
        .unwrap();
        sync(&mut client, header(7), vec![stocked("other-store", 9)]).await.unwrap();

        let clear = pb::SyncHeader { clear: true, ..header(STORE) };
        let response = sync(&mut client, clear, vec![stocked("listed", 4), stocked("new", 1)])
            .await
            .unwrap();
        assert_eq!(
            (response.received, response.created, response.updated, response.unchanged, response.cleared),
            (2, 1, 1, 0, 2),
            "only products whose stock was not already 0 count as cleared"
        );
        assert_eq!(
            stock(&mut client, STORE).await,
            [
                ("listed".into(), Some(4)),
                ("stocked".into(), Some(0)),
                ("empty".into(), Some(0)),
                ("unknown".into(), Some(0)),
                ("new".into(), Some(1)),
            ],
            "nothing is deleted"
        );
        assert_eq!(stock(&mut client, 7).await, [("other-store".into(), Some(9))]);
    }

    async fn a_clear_beside_unchanged_products_clears_exactly_the_ones_left_out(server) {
        // A re-sync in the stored order, in reverse, and in another order with gaps: the
        // unchanged products stand apart from the changed ones while staging, and the
        // clear must still tell every listed product from every unlisted one.
        let mut client = server.client().await;
        let all: Vec<_> = (0..40).map(|n| stocked(&format!("p{n}"), 1)).collect();
        sync(&mut client, header(STORE), all.clone()).await.unwrap();
        let clear = pb::SyncHeader { clear: true, ..header(STORE) };
        let left_out = [0, 7, 8, 23, 39];
        let listed = |order: &mut dyn Iterator<Item = usize>| -> Vec<pb::ProductUpdate> {
            order.filter(|n| !left_out.contains(n)).map(|n| all[n].clone()).collect()
        };
        for order in [
            listed(&mut (0..40)),
            listed(&mut (0..40).rev()),
            listed(&mut (0..40).map(|n| (n * 7) % 40)),
        ] {
            sync(&mut client, header(STORE), all.clone()).await.unwrap();
            let response = sync(&mut client, clear.clone(), order).await.unwrap();
            assert_eq!((response.unchanged, response.updated, response.cleared), (35, 0, 5));
        }
        // Once more with one of them changed.
        sync(&mut client, header(STORE), all.clone()).await.unwrap();
        let mut products = listed(&mut (0..40));
        for product in &mut products {
            if product.external_id == "p12" {
                product.in_stock = Some(2);
            }
        }
        let response = sync(&mut client, clear, products).await.unwrap();
        assert_eq!(
            (response.unchanged, response.updated, response.cleared),
            (34, 1, 5)
        );
        let stocks = stock(&mut client, STORE).await;
        for (n, (external_id, in_stock)) in stocks.iter().enumerate() {
            assert_eq!(external_id, &format!("p{n}"));
            let expected = if left_out.contains(&n) { 0 } else if n == 12 { 2 } else { 1 };
            assert_eq!(*in_stock, Some(expected), "{external_id}");
        }
    }

    async fn a_re_sync_of_a_store_whose_ids_interleave_with_another_store_finds_each_product(server) {
        // Products created by turns in two stores have ids that alternate in blocks: the
        // product after one of store 1 is often one of store 2.
        let mut client = server.client().await;
        for round in 0..4 {
            for store in [STORE, 7] {
                let products = (0..5).map(|n| stocked(&format!("p{round}-{n}"), store)).collect();
                sync(&mut client, header(store), products).await.unwrap();
            }
        }
        for store in [STORE, 7] {
            let mut products: Vec<_> = (0..4)
                .flat_map(|round| (0..5).map(move |n| stocked(&format!("p{round}-{n}"), store)))
                .collect();
            products[13].in_stock = Some(100);
            let clear = pb::SyncHeader { clear: true, ..header(store) };
            let response = sync(&mut client, clear, products).await.unwrap();
            assert_eq!(
                (response.created, response.updated, response.unchanged, response.cleared),
                (0, 1, 19, 0),
                "store {store}"
            );
            let stocks = stock(&mut client, store).await;
            assert_eq!(stocks.len(), 20);
            assert_eq!(stocks[13], ("p2-3".to_owned(), Some(100)));
            assert!(stocks.iter().enumerate().all(|(n, (_, in_stock))| n == 13 || *in_stock == Some(store)));
        }
    }

    async fn sync_without_clear_leaves_unlisted_products_alone(server) {
        let mut client = server.client().await;
        sync(&mut client, header(STORE), vec![stocked("a", 1), stocked("b", 2)]).await.unwrap();
        let response = sync(&mut client, header(STORE), vec![stocked("a", 5)]).await.unwrap();
        assert_eq!(response.cleared, 0);
        assert_eq!(stock(&mut client, STORE).await, [("a".into(), Some(5)), ("b".into(), Some(2))]);
    }

    async fn products_may_come_in_any_number_of_messages(server) {
        let mut client = server.client().await;
        let products: Vec<_> = (0..250).map(|n| stocked(&format!("p{n}"), n)).collect();
        // Header with products in the first message, empty messages in between.
        let mut stream = vec![pb::SyncRequest {
            header: Some(header(STORE)),
            products: products[..10].to_vec(),
        }];
        stream.push(pb::SyncRequest::default());
        for chunk in products[10..].chunks(7) {
            stream.push(pb::SyncRequest { header: None, products: chunk.to_vec() });
            stream.push(pb::SyncRequest::default());
        }
        let response = send(&mut client, stream).await.unwrap();
        assert_eq!((response.received, response.created), (250, 250));
        let listed = list(&mut client, STORE).await;
        let ids: Vec<_> = listed.iter().map(|p| p.external_id.clone()).collect();
        let sent: Vec<_> = products.iter().map(|p| p.external_id.clone()).collect();
        assert_eq!(ids, sent, "products are created in stream order");
    }

    async fn a_message_larger_than_one_staging_statement_is_staged_whole(server) {
        // More products and barcodes in one message than one staging INSERT takes (1,000
        // products, 2,000 barcodes on SQLite), so each message is split, with a short tail.
        const COUNT: usize = 2_600;
        let product = |n: usize, in_stock: i64| {
            let barcodes = [format!("{n:06}1"), format!("{n:06}2")];
            coded(&format!("p{n}"), &[&barcodes[0], &barcodes[1]], in_stock)
        };
        let mut client = server.client().await;
        let created = send(
            &mut client,
            messages(header(STORE), (0..COUNT).map(|n| product(n, 1)).collect(), COUNT),
        )
        .await
        .unwrap();
        assert_eq!((created.received, created.created), (COUNT as u64, COUNT as u64));

        // Every tenth product changes; the rest, the tail included, are found unchanged.
        let resync: Vec<_> =
            (0..COUNT).map(|n| product(n, if n % 10 == 9 { 2 } else { 1 })).collect();
        let response = send(&mut client, messages(header(STORE), resync, COUNT)).await.unwrap();
        assert_eq!(
            (response.created, response.updated, response.unchanged),
            (0, COUNT as u64 / 10, COUNT as u64 - COUNT as u64 / 10)
        );
        let stock = stock(&mut client, STORE).await;
        assert_eq!(stock.len(), COUNT);
        let last = get_by_barcode(&mut client, STORE, &format!("{:06}2", COUNT - 1)).await.unwrap();
        assert_eq!((last.external_id.as_str(), last.in_stock), ("p2599", Some(2)));
    }

    async fn a_sync_with_only_a_header_changes_nothing(server) {
        let mut client = server.client().await;
        sync(&mut client, header(STORE), vec![stocked("a", 1)]).await.unwrap();
        let response = sync(&mut client, header(STORE), vec![]).await.unwrap();
        assert_eq!((response.received, response.created, response.updated, response.cleared), (0, 0, 0, 0));
        assert_eq!(stock(&mut client, STORE).await, [("a".into(), Some(1))]);
    }

    async fn prices_come_back_exactly_as_sent(server) {
        let mut client = server.client().await;
        let priced = |id: &str, price: &str| pb::ProductUpdate { price: Some(price.into()), ..item(id) };
        sync(
            &mut client,
            header(STORE),
            vec![
                priced("a", "12.99"),
                priced("b", "12.90"),
                priced("c", "0.0001"),
                priced("d", "007.5"),
                priced("e", "99999999999999.9999"),
                priced("f", "0"),
            ],
        )
        .await
        .unwrap();
        let prices: Vec<_> = list(&mut client, STORE)
            .await
            .into_iter()
            .map(|p| p.price.unwrap())
            .collect();
        assert_eq!(prices, ["12.99", "12.90", "0.0001", "7.5", "99999999999999.9999", "0"]);

        // A price written differently is a change of the stored text.
        let response = sync(&mut client, header(STORE), vec![priced("a", "12.99"), priced("b", "12.9")])
            .await
            .unwrap();
        assert_eq!((response.updated, response.unchanged), (1, 1));
        assert_eq!(get(&mut client, STORE, "b").await.unwrap().price.as_deref(), Some("12.9"));
    }

    async fn barcodes_may_move_between_products_in_one_sync(server) {
        let mut client = server.client().await;
        let coded = |id: &str, codes: &[&str]| pb::ProductUpdate {
            barcodes: codes.iter().map(|c| c.to_string()).collect(),
            ..item(id)
        };
        sync(&mut client, header(STORE), vec![coded("a", &["111", "222"]), coded("b", &["333"])])
            .await
            .unwrap();
        // "222" moves from a to b; a keeps "111".
        let response = sync(&mut client, header(STORE), vec![coded("a", &["111"]), coded("b", &["333", "222"])])
            .await
            .unwrap();
        assert_eq!(response.updated, 2);
        let by_barcode = get_by_barcode(&mut client, STORE, "222").await.unwrap();
        assert_eq!(by_barcode.external_id, "b");
        assert_eq!(get(&mut client, STORE, "a").await.unwrap().barcodes, ["111"]);
        assert_eq!(by_barcode.barcodes, ["222", "333"]);
    }

    async fn the_same_barcode_may_be_used_by_different_stores(server) {
        let mut client = server.client().await;
        let coded = pb::ProductUpdate { barcodes: vec!["0042".into()], ..item("x") };
        sync(&mut client, header(1), vec![coded.clone()]).await.unwrap();
        let response = sync(&mut client, header(2), vec![coded]).await.unwrap();
        assert_eq!(response.created, 1);
    }

    async fn dry_run_reports_the_counts_and_commits_nothing(server) {
        let mut client = server.client().await;
        sync(&mut client, header(STORE), vec![stocked("a", 1), stocked("b", 2), stocked("c", 3)])
            .await
            .unwrap();
        let before = list(&mut client, STORE).await;
        let dry = pb::SyncHeader { dry_run: true, clear: true, ..header(STORE) };
        let response = sync(&mut client, dry, vec![stocked("a", 1), stocked("b", 5), stocked("new", 1)])
            .await
            .unwrap();
        assert!(response.dry_run);
        assert_eq!(
            (response.received, response.created, response.updated, response.unchanged, response.cleared),
            (3, 1, 1, 1, 1)
        );
        assert_eq!(list(&mut client, STORE).await, before);

        // The same sync for real gives the same counts.
        let real = pb::SyncHeader { clear: true, ..header(STORE) };
        let committed = sync(&mut client, real, vec![stocked("a", 1), stocked("b", 5), stocked("new", 1)])
            .await
            .unwrap();
        assert!(!committed.dry_run);
        assert_eq!(
            (committed.created, committed.updated, committed.unchanged, committed.cleared),
            (1, 1, 1, 1)
        );
    }

    async fn expected_count_commits_only_when_it_matches(server) {
        let mut client = server.client().await;
        let expecting = |count| pb::SyncHeader { expected_count: Some(count), ..header(STORE) };
        let status = sync(&mut client, expecting(3), vec![stocked("a", 1), stocked("b", 1)])
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains("expected 3"), "{}", status.message());
        assert!(list(&mut client, STORE).await.is_empty());

        let response = sync(&mut client, expecting(2), vec![stocked("a", 1), stocked("b", 1)])
            .await
            .unwrap();
        assert_eq!(response.created, 2);
    }
}
