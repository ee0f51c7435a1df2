//! Staging marks a product unchanged with the Rust rule (`unchanged::is_unchanged`); the
//! merge writes the products that changed by SQL (`sql::differs`), which also decides when
//! the marks were stale. This property test holds the two to the same answer on random
//! products.

use proptest::prelude::*;

use super::sql::differs;
use crate::product::{Barcodes, Category, Price, ProductChange};
use crate::store::unchanged::{StoredFields, is_unchanged};

/// A value from a small set, or none: small, so that sent and stored often agree.
fn text(values: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
    proptest::option::of(proptest::sample::select(values).prop_map(str::to_owned))
}

fn number<T: Clone + std::fmt::Debug + 'static>(
    values: &'static [T],
) -> impl Strategy<Value = Option<T>> {
    proptest::option::of(proptest::sample::select(values))
}

fn change() -> impl Strategy<Value = ProductChange> {
    (
        text(&["sku-1", "sku-2"]),
        proptest::option::of(proptest::collection::vec(
            proptest::sample::select(&["111", "222"][..]),
            1..3,
        )),
        number(&[0i64, 4]),
        text(&["12.50", "12.5", "9"]),
        text(&["Merlot", "Gin"]),
        text(&["750ML", "1L"]),
        number(&[13.5f64, 40.0]),
        number(&[80.0f64, 90.0]),
        number(&[Category::Wine, Category::Drink]),
    )
        .prop_map(
            |(external_id, barcodes, in_stock, price, name, unit_size, abv, proof, category)| {
                ProductChange {
                    external_id,
                    barcodes: barcodes
                        .map(|codes| Barcodes::new(codes.into_iter().map(str::to_owned).collect())),
                    in_stock,
                    price: price.map(|price| Price::parse(&price).unwrap()),
                    name,
                    unit_size,
                    abv,
                    proof,
                    category,
                }
            },
        )
}

fn stored() -> impl Strategy<Value = StoredFields> {
    (
        text(&["sku-1", "sku-2"]),
        text(&["111", "222", "111 222"]),
        number(&[0i64, 4]),
        text(&["12.50", "12.5", "9"]),
        text(&["Merlot", "Gin"]),
        text(&["750ML", "1L"]),
        number(&[13.5f64, 40.0]),
        number(&[80.0f64, 90.0]),
        proptest::sample::select(&[0, 1, 2][..]),
    )
        .prop_map(
            |(external_id, barcodes, in_stock, price, name, unit_size, abv, proof, category)| {
                StoredFields {
                    id: 1,
                    external_id,
                    barcodes,
                    in_stock,
                    price,
                    name,
                    unit_size,
                    abv,
                    proof,
                    category,
                }
            },
        )
}

/// Whether the SQL rule finds that `change` changes nothing of `stored`.
fn unchanged_in_sql(
    connection: &rusqlite::Connection,
    change: &ProductChange,
    stored: &StoredFields,
) -> bool {
    connection
        .execute_batch("DELETE FROM s; DELETE FROM p;")
        .unwrap();
    connection
        .execute(
            "INSERT INTO s VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            rusqlite::params![
                change.external_id,
                change.barcodes.as_ref().map(Barcodes::joined),
                change.in_stock,
                change.price.as_ref().map(|price| price.as_str()),
                change.name,
                change.unit_size,
                change.abv,
                change.proof,
                change.category.map(|category| category.code()),
            ],
        )
        .unwrap();
    connection
        .execute(
            "INSERT INTO p VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            rusqlite::params![
                stored.external_id,
                stored.barcodes,
                stored.in_stock,
                stored.price,
                stored.name,
                stored.unit_size,
                stored.abv,
                stored.proof,
                stored.category,
            ],
        )
        .unwrap();
    let query = format!("SELECT NOT {} FROM s, p", differs("s", "p"));
    connection.query_row(&query, [], |row| row.get(0)).unwrap()
}

proptest! {
    /// SQLite marks unchanged products with this SQL; PostgreSQL with the Rust rule.
    #[test]
    fn the_sql_rule_agrees_with_the_rust_rule(change in change(), stored in stored()) {
        let connection = rusqlite::Connection::open_in_memory().unwrap();
        let columns = "external_id TEXT, barcodes TEXT, in_stock INTEGER, price TEXT, \
                       name TEXT, unit_size TEXT, abv REAL, proof REAL, category INTEGER";
        connection
            .execute_batch(&format!("CREATE TABLE s ({columns}); CREATE TABLE p ({columns});"))
            .unwrap();
        prop_assert_eq!(
            unchanged_in_sql(&connection, &change, &stored),
            is_unchanged(&change, &stored.view()),
            "{:?} over {:?}", change, stored
        );
    }
}
