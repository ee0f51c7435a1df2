//! Two syncs of one store never interleave, whichever replica takes them: the result equals
//! running them one after the other, in one order or the other.

use std::collections::BTreeMap;

use inventory_sync::pb;
use inventory_sync::pb::inventory_sync_client::InventorySyncClient;
use sqlx::Connection;
use tonic::transport::Channel;

use crate::support::*;

/// Stock by external id.
type State = BTreeMap<String, Option<i64>>;

/// (created, updated, cleared) of a clearing sync applied to `state`, as the contract says.
fn apply(state: &mut State, products: &[(&str, i64)]) -> (u64, u64, u64) {
    let (mut created, mut updated, mut cleared) = (0, 0, 0);
    for (id, stock) in products {
        match state.insert(id.to_string(), Some(*stock)) {
            None => created += 1,
            Some(before) if before != Some(*stock) => updated += 1,
            Some(_) => {}
        }
    }
    for (id, stock) in state.iter_mut() {
        if !products.iter().any(|(listed, _)| listed == id) && *stock != Some(0) {
            *stock = Some(0);
            cleared += 1;
        }
    }
    (created, updated, cleared)
}

fn clearing(store_id: i64, products: &[(&str, i64)]) -> (pb::SyncHeader, Vec<pb::ProductUpdate>) {
    let header = pb::SyncHeader {
        clear: true,
        ..header(store_id)
    };
    (
        header,
        products
            .iter()
            .map(|(id, stock)| stocked(id, *stock))
            .collect(),
    )
}

fn counts(response: &pb::SyncResponse) -> (u64, u64, u64) {
    (response.created, response.updated, response.cleared)
}

/// Runs two clearing syncs of one store at once, through two clients (of one server or of
/// two), several times, and checks each outcome against both serial orders.
async fn clearing_syncs_serialize(
    mut first_client: InventorySyncClient<Channel>,
    mut second_client: InventorySyncClient<Channel>,
) {
    let seed: Vec<(&str, i64)> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|id| (*id, 5))
        .collect();
    let first: &[(&str, i64)] = &[("a", 1), ("b", 1), ("c", 1), ("new1", 1)];
    let second: &[(&str, i64)] = &[("c", 2), ("d", 2), ("new2", 2)];
    for round in 0..6 {
        let store_id = 7_000 + round;
        let (header_, products) = clearing(store_id, &seed);
        sync(&mut first_client, header_, products).await.unwrap();
        let mut initial = State::new();
        apply(&mut initial, &seed);

        let (first_header, first_products) = clearing(store_id, first);
        let (second_header, second_products) = clearing(store_id, second);
        let (one, two) = tokio::join!(
            sync(&mut first_client, first_header, first_products),
            sync(&mut second_client, second_header, second_products),
        );
        let (one, two) = (one.unwrap(), two.unwrap());

        let mut first_then_second = initial.clone();
        let expected_one = apply(&mut first_then_second, first);
        let expected_two = apply(&mut first_then_second, second);
        let mut second_then_first = initial.clone();
        let other_two = apply(&mut second_then_first, second);
        let other_one = apply(&mut second_then_first, first);

        let stored: State = list(&mut first_client, store_id)
            .await
            .into_iter()
            .map(|p| (p.external_id, p.in_stock))
            .collect();
        let observed = (counts(&one), counts(&two), stored);
        assert!(
            observed == (expected_one, expected_two, first_then_second.clone())
                || observed == (other_one, other_two, second_then_first.clone()),
            "round {round}: {observed:?} is neither serial order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_syncs_of_one_store_through_one_sqlite_server_run_one_after_the_other() {
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    clearing_syncs_serialize(server.client().await, server.client().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_syncs_of_one_store_through_two_server_processes_on_postgres_run_one_after_the_other()
 {
    let Some((admin_url, name, url)) = create_postgres_database().await else {
        return;
    };
    clearing_syncs_through_two_servers(&url).await;
    drop_postgres_database(&admin_url, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_repeatable_read_clearing_syncs_through_two_servers_retry_and_run_one_after_the_other()
 {
    // As CockroachDB's serializable or YugabyteDB's snapshot isolation would: the second of
    // two merges of a store fails with SQLSTATE 40001 once the first commits, and is run
    // again.
    let Some((admin_url, name, url)) = create_postgres_database().await else {
        return;
    };
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} SET default_transaction_isolation = 'repeatable read'"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    admin.close().await.unwrap();
    let retries = clearing_syncs_through_two_servers(&url).await;
    assert!(retries > 0, "no merge had to be run again");
    drop_postgres_database(&admin_url, &name).await;
}

/// Runs [`clearing_syncs_serialize`] through two server processes on the PostgreSQL
/// database `url`; returns how many serialization retries the two made.
async fn clearing_syncs_through_two_servers(url: &str) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--insecure-no-auth",
        "--database-url",
        url,
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    let replica_one = serve_in(dir.path(), &args);
    let replica_two = serve_in(dir.path(), &args);
    let first = InventorySyncClient::connect(replica_one.endpoint.clone())
        .await
        .unwrap();
    let second = InventorySyncClient::connect(replica_two.endpoint.clone())
        .await
        .unwrap();

    clearing_syncs_serialize(first, second).await;

    let mut retries = 0;
    // Each stops cleanly after serving reads: its point readers give their connections back.
    for replica in [&replica_one, &replica_two] {
        let mut client = InventorySyncClient::connect(replica.endpoint.clone())
            .await
            .unwrap();
        let product = get(&mut client, 7_000, "c").await.unwrap();
        assert_eq!(product.external_id, "c");
        retries += metric(replica, "inventory_sync_serialization_retries_total").await;
    }
    assert!(terminate(replica_one.child).await.success());
    assert!(terminate(replica_two.child).await.success());
    retries
}
