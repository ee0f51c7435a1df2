//! The PostgreSQL schema as a database sharded or partitioned by store needs it: every
//! primary, unique and foreign key of a table of store data includes the store's column, so
//! that each key is checked within one shard (or partition) and no key ties two stores.

use std::collections::BTreeMap;

use inventory_sync::store::{Database, DatabaseUrl};
use sqlx::Connection;

use crate::support::*;

/// The tables of store data, and the column that names a row's store.
const STORE_DATA: [(&str, &str); 4] = [
    ("stores", "id"),
    ("products", "store_id"),
    ("product_barcodes", "store_id"),
    ("sync_runs", "store_id"),
];

/// A key of a table: (table, key, kind, its columns, for a foreign key the referenced table
/// and its columns).
type Key = (
    String,
    String,
    String,
    Vec<String>,
    Option<String>,
    Vec<String>,
);

/// Tables that every store shares (a distributed engine keeps a copy of each on every node).
const SHARED: [&str; 4] = [
    "api_tokens",
    "api_token_stores",
    "bootstrap",
    "_sqlx_migrations",
];

#[tokio::test]
async fn every_key_of_a_table_of_store_data_includes_its_store() {
    let Some((admin_url, name, url)) = create_postgres_database().await else {
        return;
    };
    let parsed: DatabaseUrl = url.parse().unwrap();
    Database::connect(&parsed).await.unwrap().close().await;
    let mut connection = sqlx::PgConnection::connect(&url).await.unwrap();

    // Every table is either store data or shared: a new table must say which.
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
         ORDER BY 1",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap();
    let store_column: BTreeMap<&str, &str> = STORE_DATA.into_iter().collect();
    for table in &tables {
        assert!(
            store_column.contains_key(table.as_str()) || SHARED.contains(&table.as_str()),
            "table {table} is neither store data nor shared"
        );
    }

    let keys: Vec<Key> = sqlx::query_as(
        "SELECT c.relname::text, k.conname::text, k.contype::text,
                    ARRAY(SELECT a.attname::text FROM unnest(k.conkey) AS n (attnum)
                          JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = n.attnum),
                    r.relname::text,
                    ARRAY(SELECT a.attname::text FROM unnest(k.confkey) AS n (attnum)
                          JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = n.attnum)
             FROM pg_constraint k
             JOIN pg_class c ON c.oid = k.conrelid
             JOIN pg_namespace s ON s.oid = c.relnamespace
             LEFT JOIN pg_class r ON r.oid = COALESCE(pg_partition_root(k.confrelid), k.confrelid)
             WHERE s.nspname = 'public' AND k.contype IN ('p', 'u', 'f')",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap();
    // Unique indexes that back no constraint (partial ones, say) are keys too.
    let unique_indexes: Vec<(String, String, Vec<String>)> = sqlx::query_as(
        "SELECT c.relname::text, i.relname::text,
                ARRAY(SELECT a.attname::text FROM unnest(x.indkey) AS n (attnum)
                      JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = n.attnum)
         FROM pg_index x
         JOIN pg_class c ON c.oid = x.indrelid
         JOIN pg_class i ON i.oid = x.indexrelid
         JOIN pg_namespace s ON s.oid = c.relnamespace
         WHERE s.nspname = 'public' AND x.indisunique
           AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid)",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap();

    let mut checked = 0;
    for (table, key, kind, columns, referenced, referenced_columns) in &keys {
        let Some(column) = store_column.get(table.as_str()) else {
            continue;
        };
        assert!(
            columns.iter().any(|each| each == column),
            "{kind} key {key} of {table} ({columns:?}) leaves out {column}"
        );
        if let Some(referenced) = referenced {
            // The foreign key names the same store on both sides.
            let position = columns.iter().position(|each| each == column).unwrap();
            let referenced_column = store_column.get(referenced.as_str());
            assert_eq!(
                referenced_column.copied(),
                referenced_columns.get(position).map(String::as_str),
                "foreign key {key} of {table} ties its {column} to {referenced}'s {:?}",
                referenced_columns.get(position)
            );
        }
        checked += 1;
    }
    for (table, index, columns) in &unique_indexes {
        if let Some(column) = store_column.get(table.as_str()) {
            assert!(
                columns.iter().any(|each| each == column),
                "unique index {index} of {table} ({columns:?}) leaves out {column}"
            );
            checked += 1;
        }
    }
    // The primary keys of the four tables, the external-id and idempotency keys, and
    // products' foreign key to its store at least.
    assert!(checked >= 7, "only {checked} keys were checked");
    connection.close().await.unwrap();
    drop_postgres_database(&admin_url, &name).await;
}
