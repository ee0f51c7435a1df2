//! On a database whose tables of store data are hash-partitioned by store
//! (`scripts/partition_postgres_by_store.sql`), every statement of a sync, a read, the
//! history and the queue's calls for one store touches one partition of each such table:
//! PostgreSQL's plan (`EXPLAIN (FORMAT JSON)`, planned for the values bound) names no other.
//! A sharded engine routes such a statement to one shard the same way.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{Connection, PgConnection};

use super::sql;

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// The store every statement is planned for.
const STORE: i64 = 7;

/// A fresh database on the test server, migrated and partitioned by store: its URL, and the
/// admin URL and name to drop it by. `None` outside CI when there is no server.
async fn partitioned_database() -> Option<(String, String, String)> {
    let admin_url =
        std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
    let mut admin = match PgConnection::connect(&admin_url).await {
        Ok(admin) => admin,
        Err(error) if std::env::var("CI").is_ok_and(|ci| ci == "true") => {
            panic!("PostgreSQL at {admin_url} is unreachable in CI: {error}")
        }
        Err(error) => {
            eprintln!("skipping: PostgreSQL at {admin_url} is unreachable: {error}");
            return None;
        }
    };
    let name = format!(
        "inventory_sync_partitions_{}",
        uuid::Uuid::new_v4().simple()
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let _ = admin.close().await;
    let mut url = url::Url::parse(&admin_url).unwrap();
    url.set_path(&name);
    let url = url.to_string();
    let database = crate::store::Database::connect(&url.parse().unwrap())
        .await
        .unwrap();
    database.close().await;
    let mut connection = PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(include_str!(
        "../../../scripts/partition_postgres_by_store.sql"
    ))
    .execute(&mut connection)
    .await
    .unwrap();
    let _ = connection.close().await;
    Some((url, admin_url, name))
}

/// The partitions each partitioned table has: partition name -> its table.
async fn partitions(connection: &mut PgConnection) -> BTreeMap<String, String> {
    sqlx::query_as(
        "SELECT c.relname::text, p.relname::text
         FROM pg_inherits i
         JOIN pg_class c ON c.oid = i.inhrelid
         JOIN pg_class p ON p.oid = i.inhparent
         WHERE p.relkind = 'p'",
    )
    .fetch_all(&mut *connection)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// The partitions of each table that the plan of `statement` names, planned for store
/// `STORE` (every `bigint` parameter is bound to it, every other one to a value of its
/// type).
async fn partitions_touched(
    connection: &mut PgConnection,
    partitions: &BTreeMap<String, String>,
    statement: &str,
) -> BTreeMap<String, BTreeSet<String>> {
    sqlx::raw_sql("DEALLOCATE ALL")
        .execute(&mut *connection)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "PREPARE checked AS {statement}"
    )))
    .execute(&mut *connection)
    .await
    .unwrap_or_else(|error| panic!("{error} preparing {statement}"));
    let types: Vec<String> = sqlx::query_scalar(
        "SELECT unnest(parameter_types)::text FROM pg_prepared_statements WHERE name = 'checked'",
    )
    .fetch_all(&mut *connection)
    .await
    .unwrap();
    let values: Vec<String> = types
        .iter()
        .map(|kind| match kind.as_str() {
            "bigint" | "integer" | "numeric" | "double precision" => STORE.to_string(),
            "boolean" => "false".to_owned(),
            "text[]" => "'{x}'".to_owned(),
            _ => "'x'".to_owned(),
        })
        .collect();
    let execute = if values.is_empty() {
        "EXPLAIN (FORMAT JSON) EXECUTE checked".to_owned()
    } else {
        format!(
            "EXPLAIN (FORMAT JSON) EXECUTE checked ({})",
            values.join(", ")
        )
    };
    let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(execute))
        .fetch_one(&mut *connection)
        .await
        .unwrap_or_else(|error| panic!("{error} planning {statement}"));
    let mut touched: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut relations = Vec::new();
    relation_names(&plan, &mut relations);
    for relation in relations {
        if let Some(table) = partitions.get(&relation) {
            touched.entry(table.clone()).or_default().insert(relation);
        }
    }
    touched
}

/// Every "Relation Name" of a JSON plan.
fn relation_names(plan: &serde_json::Value, names: &mut Vec<String>) {
    match plan {
        serde_json::Value::Object(node) => {
            for (key, value) in node {
                match (key.as_str(), value) {
                    ("Relation Name", serde_json::Value::String(name)) => names.push(name.clone()),
                    _ => relation_names(value, names),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                relation_names(item, names);
            }
        }
        _ => {}
    }
}

/// Every statement of a sync, a read, the history and the queue for one store, by name.
/// Inserts are routed to a partition when they run, so their plans name none.
fn statements() -> Vec<(&'static str, String)> {
    let one_store = Some(STORE);
    let mut statements: Vec<(&'static str, String)> = vec![
        // reads
        (
            "select_products_by_external_ids(1)",
            sql::select_products_by_external_ids(1).into(),
        ),
        (
            "select_products_by_external_ids(64)",
            sql::select_products_by_external_ids(64).into(),
        ),
        (
            "select_products_by_barcodes(1)",
            sql::select_products_by_barcodes(1).into(),
        ),
        (
            "select_products_by_barcodes(64)",
            sql::select_products_by_barcodes(64).into(),
        ),
        ("SELECT_PRODUCTS_PAGE", sql::SELECT_PRODUCTS_PAGE.into()),
        (
            "SELECT_PRODUCT_BY_ID",
            sql::SELECT_PRODUCT_BY_ID.for_store(one_store).into(),
        ),
        // the queue, for one store
        (
            "SELECT_PENDING_PAGE",
            sql::SELECT_PENDING_PAGE.for_store(one_store).into(),
        ),
        ("CLAIM", sql::CLAIM.for_store(one_store).into()),
        ("COMPLETE", sql::COMPLETE.for_store(one_store).into()),
        ("RELEASE", sql::RELEASE.for_store(one_store).into()),
        // the history
        ("INSERT_SYNC_RUN", sql::INSERT_SYNC_RUN.into()),
        ("END_SYNC_RUN", sql::END_SYNC_RUN.into()),
        ("TOUCH_SYNC_RUN", sql::TOUCH_SYNC_RUN.into()),
        ("SELECT_SYNC_RUN", sql::SELECT_SYNC_RUN.into()),
        ("SYNC_RUN_OUTCOME", sql::SYNC_RUN_OUTCOME.into()),
        ("SELECT_SYNC_RUNS_PAGE", sql::SELECT_SYNC_RUNS_PAGE.into()),
        // a sync: its upload
        ("STAGING_START", sql::STAGING_START.into()),
        ("SELECT_STORED_FIELDS", sql::SELECT_STORED_FIELDS.into()),
        (
            "SELECT_STORED_FIELDS_FROM",
            sql::SELECT_STORED_FIELDS_FROM.into(),
        ),
        ("SYNC_GENERATION", sql::SYNC_GENERATION.into()),
        // and its merge
        ("ENSURE_STORE", sql::ENSURE_STORE.into()),
        ("LOCK_STORE", sql::LOCK_STORE.into()),
        (
            "FORGET_EXPIRED_IDEMPOTENCY_KEY",
            sql::FORGET_EXPIRED_IDEMPOTENCY_KEY.into(),
        ),
        (
            "COMMITTED_RUN_OF_IDEMPOTENCY_KEY",
            sql::COMMITTED_RUN_OF_IDEMPOTENCY_KEY.into(),
        ),
        ("RESOLVE_BY_EXTERNAL_ID", sql::RESOLVE_BY_EXTERNAL_ID.into()),
        ("RESOLVE_BY_BARCODES", sql::RESOLVE_BY_BARCODES.into()),
        (
            "BARCODES_OWNED_BY_OTHER_PRODUCTS",
            sql::BARCODES_OWNED_BY_OTHER_PRODUCTS.into(),
        ),
        (
            "BARCODES_OF_SEVERAL_PRODUCTS",
            sql::BARCODES_OF_SEVERAL_PRODUCTS.into(),
        ),
        ("EXTERNAL_ID_MISMATCHES", sql::EXTERNAL_ID_MISMATCHES.into()),
        (
            "EXTERNAL_IDS_OF_OTHER_PRODUCTS",
            sql::EXTERNAL_IDS_OF_OTHER_PRODUCTS.into(),
        ),
        ("COUNT_IN_STOCK_AND_ALL", sql::COUNT_IN_STOCK_AND_ALL.into()),
        ("COUNT_LINKS", sql::COUNT_LINKS.into()),
        (
            "DELETE_REPLACED_BARCODES",
            sql::DELETE_REPLACED_BARCODES.into(),
        ),
        (
            "INSERT_REPLACEMENT_BARCODES",
            sql::INSERT_REPLACEMENT_BARCODES.into(),
        ),
        (
            "UPDATE_CHANGED_PRODUCTS",
            sql::UPDATE_CHANGED_PRODUCTS.clone(),
        ),
        (
            "CLEAR_UNLISTED_PRODUCTS",
            sql::CLEAR_UNLISTED_PRODUCTS.into(),
        ),
        (
            "INSERT_NEW_PRODUCTS_WITH_BARCODES",
            sql::INSERT_NEW_PRODUCTS_WITH_BARCODES.into(),
        ),
        (
            "ADVANCE_SYNC_GENERATION",
            sql::ADVANCE_SYNC_GENERATION.into(),
        ),
        ("COMMIT_SYNC_RUN", sql::COMMIT_SYNC_RUN.into()),
    ];
    statements.sort_by_key(|(name, _)| *name);
    statements
}

#[tokio::test]
async fn each_statement_for_one_store_touches_one_partition_of_each_table() {
    let Some((url, admin_url, name)) = partitioned_database().await else {
        return;
    };
    let mut connection = PgConnection::connect(&url).await.unwrap();
    // The merge's statements join the staging tables of the sync's connection.
    sqlx::raw_sql(sql::OPEN_STAGING)
        .execute(&mut connection)
        .await
        .unwrap();
    sqlx::raw_sql("SET plan_cache_mode = force_custom_plan")
        .execute(&mut connection)
        .await
        .unwrap();
    let partitions = partitions(&mut connection).await;
    assert_eq!(
        partitions.len(),
        16,
        "four tables of four partitions: {partitions:?}"
    );

    let mut scanning = 0;
    for (statement_name, statement) in statements() {
        let touched = partitions_touched(&mut connection, &partitions, &statement).await;
        for (table, names) in &touched {
            assert_eq!(
                names.len(),
                1,
                "{statement_name} touches {names:?} of {table}"
            );
        }
        if !touched.is_empty() {
            scanning += 1;
        }
    }
    // All but the inserts read or write a table of store data through its partitions.
    assert!(
        scanning >= 30,
        "only {scanning} statements named a partition"
    );

    // The check sees a statement that asks every partition: a product by its id alone.
    let everywhere = partitions_touched(
        &mut connection,
        &partitions,
        sql::SELECT_PRODUCT_BY_ID.for_store(None),
    )
    .await;
    assert_eq!(everywhere.get("products").map(BTreeSet::len), Some(4));

    let _ = connection.close().await;
    let mut admin = PgConnection::connect(&admin_url).await.unwrap();
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await;
}
