//! The legacy barcode-keyed sync, and the migration from it to external ids.

use inventory_sync::pb;

use crate::support::*;

const STORE: i64 = 880;

/// `(external_id, barcodes, in_stock)` of every product of the store.
async fn state(
    client: &mut pb::inventory_sync_client::InventorySyncClient<tonic::transport::Channel>,
) -> Vec<(String, Vec<String>, Option<i64>)> {
    list(client, STORE)
        .await
        .into_iter()
        .map(|p| (p.external_id, p.barcodes, p.in_stock))
        .collect()
}

fn s(text: &str) -> String {
    text.to_owned()
}

backend_tests! {
    async fn barcode_sync_creates_products_with_or_without_external_ids(server) {
        let mut client = server.client().await;
        let response = sync(
            &mut client,
            barcode_header(STORE),
            vec![coded("", &["111"], 1), coded("ext-2", &["222", "223"], 2)],
        )
        .await
        .unwrap();
        assert_eq!((response.received, response.created, response.linked), (2, 2, 0));
        assert_eq!(
            state(&mut client).await,
            [
                (s(""), vec![s("111")], Some(1)),
                (s("ext-2"), vec![s("222"), s("223")], Some(2)),
            ]
        );
        let legacy = get_by_barcode(&mut client, STORE, "111").await.unwrap();
        assert_eq!(legacy.external_id, "", "a product without an external id reads back empty");
        assert_eq!(legacy.match_status, pb::MatchStatus::Pending as i32);
    }

    async fn barcode_sync_matches_a_stored_product_by_any_of_its_barcodes(server) {
        let mut client = server.client().await;
        let full = pb::ProductUpdate { price: Some("9.99".into()), name: Some("Gin".into()), ..coded("", &["111", "112"], 1) };
        sync(&mut client, barcode_header(STORE), vec![full, coded("", &["333"], 3)]).await.unwrap();

        // Matched by its second barcode; the sent barcodes replace the stored set.
        let response = sync(&mut client, barcode_header(STORE), vec![coded("", &["112"], 5), coded("", &["333"], 3)])
            .await
            .unwrap();
        assert_eq!(
            (response.received, response.created, response.updated, response.unchanged),
            (2, 0, 1, 1)
        );
        let product = get_by_barcode(&mut client, STORE, "112").await.unwrap();
        assert_eq!(product.in_stock, Some(5));
        assert_eq!(product.barcodes, ["112"]);
        assert_eq!(product.price.as_deref(), Some("9.99"), "fields left out keep their value");
        assert_eq!(product.name.as_deref(), Some("Gin"));
        assert_eq!(get_by_barcode(&mut client, STORE, "111").await.unwrap_err().code(), tonic::Code::NotFound);
    }

    async fn barcode_sync_gives_an_external_id_to_a_product_that_has_none(server) {
        let mut client = server.client().await;
        sync(&mut client, barcode_header(STORE), vec![coded("", &["111"], 1), coded("", &["222"], 2)])
            .await
            .unwrap();
        let response = sync(
            &mut client,
            barcode_header(STORE),
            vec![coded("A", &["111"], 1), coded("", &["222"], 2)],
        )
        .await
        .unwrap();
        assert_eq!(
            (response.created, response.updated, response.unchanged, response.linked),
            (0, 1, 1, 1),
            "a link counts in linked and in updated"
        );
        assert_eq!(get(&mut client, STORE, "A").await.unwrap().barcodes, ["111"]);

        // Sending the same external id again is not a change.
        let again = sync(&mut client, barcode_header(STORE), vec![coded("A", &["111"], 1)]).await.unwrap();
        assert_eq!((again.updated, again.unchanged, again.linked), (0, 1, 0));
    }

    async fn barcode_sync_with_clear_sets_every_unmatched_product_out_of_stock(server) {
        let mut client = server.client().await;
        sync(
            &mut client,
            barcode_header(STORE),
            vec![coded("", &["111"], 1), coded("", &["222"], 2), coded("", &["333"], 0)],
        )
        .await
        .unwrap();
        sync(&mut client, header(STORE), vec![stocked("by-ext", 4)]).await.unwrap();
        let clear = pb::SyncHeader { clear: true, ..barcode_header(STORE) };
        let response = sync(&mut client, clear, vec![coded("", &["111"], 1), coded("", &["444"], 6)])
            .await
            .unwrap();
        assert_eq!(
            (response.created, response.unchanged, response.cleared),
            (1, 1, 2),
            "222 and by-ext are cleared; 333 was already out of stock"
        );
        assert_eq!(
            state(&mut client).await,
            [
                (s(""), vec![s("111")], Some(1)),
                (s(""), vec![s("222")], Some(0)),
                (s(""), vec![s("333")], Some(0)),
                (s("by-ext"), vec![], Some(0)),
                (s(""), vec![s("444")], Some(6)),
            ]
        );
    }

    async fn barcode_sync_refuses_what_would_mix_up_products(server) {
        let mut client = server.client().await;
        sync(
            &mut client,
            barcode_header(STORE),
            vec![coded("", &["111"], 1), coded("", &["222"], 2), coded("B", &["333"], 3)],
        )
        .await
        .unwrap();
        let before = state(&mut client).await;

        let cases: Vec<(&str, Vec<pb::ProductUpdate>, &str)> = vec![
            ("no barcode", vec![coded("", &["111"], 1), stocked("x", 1)], "products[1].barcodes"),
            (
                "barcodes of two stored products",
                vec![coded("", &["111", "222"], 1)],
                "products[0].barcodes",
            ),
            (
                "two products matching one stored product",
                vec![coded("", &["333"], 1), coded("", &["444", "333"], 1)],
                "products[1].barcodes",
            ),
            (
                "another external id than the stored one",
                vec![coded("", &["111"], 1), coded("C", &["333"], 1)],
                "products[1].external_id",
            ),
            (
                "an external id of another stored product",
                vec![coded("B", &["111"], 1)],
                "products[0].external_id",
            ),
            (
                "the same external id on two products",
                vec![coded("N", &["111"], 1), coded("N", &["555"], 1)],
                "products[1].external_id",
            ),
        ];
        for (case, products, field) in cases {
            let status = sync(&mut client, barcode_header(STORE), products).await.unwrap_err();
            let fields = violated_fields(&status);
            assert!(fields.contains(&field.to_owned()), "{case}: {fields:?} / {}", status.message());
            assert_eq!(state(&mut client).await, before, "{case}: nothing committed");
        }
    }

    async fn barcode_sync_keeps_dry_run_and_expected_count(server) {
        let mut client = server.client().await;
        sync(&mut client, barcode_header(STORE), vec![coded("", &["111"], 1)]).await.unwrap();
        let before = state(&mut client).await;
        let dry = pb::SyncHeader { dry_run: true, ..barcode_header(STORE) };
        let response = sync(&mut client, dry, vec![coded("A", &["111"], 1), coded("", &["999"], 1)])
            .await
            .unwrap();
        assert_eq!((response.created, response.updated, response.linked, response.dry_run), (1, 1, 1, true));
        assert_eq!(state(&mut client).await, before);

        let expecting = pb::SyncHeader { expected_count: Some(5), ..barcode_header(STORE) };
        let status = sync(&mut client, expecting, vec![coded("A", &["111"], 1)]).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(state(&mut client).await, before);
    }

    async fn a_store_migrates_from_barcodes_to_external_ids(server) {
        let mut client = server.client().await;
        // 1. The old POS sync: barcodes only.
        let legacy = vec![coded("", &["0001"], 5), coded("", &["0002", "0003"], 6), coded("", &["0004"], 7)];
        let created = sync(&mut client, barcode_header(STORE), legacy).await.unwrap();
        assert_eq!(created.created, 3);

        // 2. The old sync with external ids filled in links every product.
        let linking = vec![coded("E1", &["0001"], 5), coded("E2", &["0002", "0003"], 6), coded("E3", &["0004"], 7)];
        let linked = sync(&mut client, barcode_header(STORE), linking).await.unwrap();
        assert_eq!((linked.created, linked.updated, linked.linked), (0, 3, 3));

        // 3. The switch: an external-id sync updates the same products.
        let switched = sync(&mut client, header(STORE), vec![stocked("E1", 1), stocked("E2", 6), stocked("E3", 2)])
            .await
            .unwrap();
        assert_eq!((switched.created, switched.updated, switched.unchanged), (0, 2, 1));
        let listed = list(&mut client, STORE).await;
        assert_eq!(listed.len(), 3, "no product was created twice");
        assert_eq!(get(&mut client, STORE, "E2").await.unwrap().barcodes, ["0002", "0003"]);
    }
}
