//! Reading products back: one by key, or a store's listing with filters.

use inventory_sync::pb;

use crate::support::*;

const STORE: i64 = 77;

backend_tests! {
    async fn get_product_finds_by_external_id_or_barcode(server) {
        let mut client = server.client().await;
        let product = pb::ProductUpdate {
            barcodes: vec!["08234123".into(), "0001".into()],
            price: Some("24.99".into()),
            name: Some("Barolo".into()),
            ..stocked("10004", 12)
        };
        sync(&mut client, header(STORE), vec![product]).await.unwrap();

        let found = get(&mut client, STORE, "10004").await.unwrap();
        assert_eq!(found.store_id, STORE);
        assert_eq!(found.external_id, "10004");
        assert_eq!(found.barcodes, ["0001", "08234123"]);
        assert_eq!(found.price.as_deref(), Some("24.99"));
        assert!(found.id > 0);
        assert!(found.created_at.is_some() && found.updated_at.is_some());

        let by_code = get_by_barcode(&mut client, STORE, "08234123").await.unwrap();
        assert_eq!(by_code, found);
    }

    async fn get_product_answers_not_found_for_unknown_keys_and_other_stores(server) {
        let mut client = server.client().await;
        sync(&mut client, header(STORE), vec![pb::ProductUpdate { barcodes: vec!["1".into()], ..item("a") }])
            .await
            .unwrap();
        let status = get(&mut client, STORE, "missing").await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert!(status.message().contains("missing"));
        assert_eq!(get_by_barcode(&mut client, STORE, "2").await.unwrap_err().code(), tonic::Code::NotFound);
        assert_eq!(get(&mut client, STORE + 1, "a").await.unwrap_err().code(), tonic::Code::NotFound);
    }

    // Lookups that arrive together are answered together (PostgreSQL gathers them into
    // one query per store): each caller still gets exactly its own product, or NOT_FOUND.
    async fn concurrent_lookups_of_two_stores_each_get_their_own_product(server) {
        let mut client = server.client().await;
        let stores = [(STORE, 0), (STORE + 1, 1_000)];
        for (store, stock_offset) in stores {
            let products = (0..100)
                .map(|i| pb::ProductUpdate {
                    barcodes: vec![format!("{store}-{i}")],
                    ..stocked(&format!("k{i}"), stock_offset + i)
                })
                .collect();
            sync(&mut client, header(store), products).await.unwrap();
        }
        // 64 callers at once; keys 100 to 109 are missing; a few keys are asked for twice
        // at once.
        let lookups = (0..600).map(|call| {
            let mut client = client.clone();
            async move {
                let (store, stock_offset) = stores[call % 2];
                let i = (call / 2) % 110;
                let found = if call % 3 == 0 {
                    get_by_barcode(&mut client, store, &format!("{store}-{i}")).await
                } else {
                    get(&mut client, store, &format!("k{i}")).await
                };
                (store, stock_offset, i, found)
            }
        });
        let answers: Vec<_> = futures::StreamExt::collect(
            futures::StreamExt::buffer_unordered(futures::stream::iter(lookups), 64),
        )
        .await;
        for (store, stock_offset, i, found) in answers {
            if i >= 100 {
                let status = found.expect_err("a missing key is not found");
                assert_eq!(status.code(), tonic::Code::NotFound, "store {store} key {i}: {status:?}");
                continue;
            }
            let product = found.unwrap_or_else(|status| panic!("store {store} key {i}: {status:?}"));
            assert_eq!(product.store_id, store);
            assert_eq!(product.external_id, format!("k{i}"));
            assert_eq!(product.barcodes, [format!("{store}-{i}")]);
            assert_eq!(product.in_stock, Some(stock_offset + i as i64));
        }
    }

    async fn get_product_refuses_a_request_without_a_key(server) {
        let mut client = server.client().await;
        let status = client
            .get_product(pb::GetProductRequest { store_id: STORE, key: None })
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["key"]);
        let status = get(&mut client, 0, "a").await.unwrap_err();
        assert_eq!(violated_fields(&status), ["store_id"]);
    }

    async fn list_products_streams_every_product_in_id_order_across_pages(server) {
        let mut client = server.client().await;
        let products: Vec<_> = (0..1234).map(|n| stocked(&format!("{n:05}"), n % 3)).collect();
        sync(&mut client, header(STORE), products).await.unwrap();
        sync(&mut client, header(STORE + 1), vec![stocked("elsewhere", 1)]).await.unwrap();

        let listed = list(&mut client, STORE).await;
        assert_eq!(listed.len(), 1234);
        assert!(listed.windows(2).all(|pair| pair[0].id < pair[1].id));
        assert!(listed.iter().all(|p| p.store_id == STORE));
    }

    async fn list_products_filters_by_stock_status_and_update_time(server) {
        let mut client = server.client().await;
        sync(&mut client, header(STORE), vec![stocked("a", 0), stocked("b", 4), item("c")]).await.unwrap();
        let first_sync_time = get(&mut client, STORE, "a").await.unwrap().updated_at;

        let in_stock = list_filtered(
            &mut client,
            pb::ListProductsRequest { store_id: STORE, in_stock_only: true, ..Default::default() },
        )
        .await;
        assert_eq!(in_stock.iter().map(|p| p.external_id.as_str()).collect::<Vec<_>>(), ["b"]);

        let pending = list_filtered(
            &mut client,
            pb::ListProductsRequest {
                store_id: STORE,
                match_status: pb::MatchStatus::Pending as i32,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(pending.len(), 3, "new products wait in the matching queue");
        let complete = list_filtered(
            &mut client,
            pb::ListProductsRequest {
                store_id: STORE,
                match_status: pb::MatchStatus::Complete as i32,
                ..Default::default()
            },
        )
        .await;
        assert!(complete.is_empty());

        // A later sync changes only "c"; updated_since after the first sync finds only it.
        let changed_from = {
            let mut time = first_sync_time.unwrap();
            time.nanos += 1_000;
            if time.nanos >= 1_000_000_000 {
                time.seconds += 1;
                time.nanos -= 1_000_000_000;
            }
            time
        };
        sync(&mut client, header(STORE), vec![stocked("a", 0), stocked("c", 2)]).await.unwrap();
        let recent = list_filtered(
            &mut client,
            pb::ListProductsRequest { store_id: STORE, updated_since: Some(changed_from), ..Default::default() },
        )
        .await;
        assert_eq!(recent.iter().map(|p| p.external_id.as_str()).collect::<Vec<_>>(), ["c"]);
        let since_first = list_filtered(
            &mut client,
            pb::ListProductsRequest { store_id: STORE, updated_since: first_sync_time, ..Default::default() },
        )
        .await;
        assert_eq!(since_first.len(), 3, "updated_since is inclusive");
    }

    async fn list_products_refuses_a_bad_store_or_status(server) {
        let mut client = server.client().await;
        let status = client
            .list_products(pb::ListProductsRequest { store_id: 0, ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["store_id"]);
        let status = client
            .list_products(pb::ListProductsRequest { store_id: 1, match_status: 42, ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["match_status"]);
    }
}
