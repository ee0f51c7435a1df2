//! Spotting, while a sync uploads, the products it sends exactly as they are stored.
//!
//! Most of a periodic re-sync repeats what is stored. An external-id sync of a store that
//! has products looks up each batch's stored products as it stages the batch (on other
//! connections, while the batch before is written), and stages each product with the id it
//! resolves to and whether it would change anything, by the rule below. The merge then
//! leaves the unchanged ones out of every check and write, instead of joining a whole
//! store's rows to find that nothing differs. The merge's own test for a changed row is SQL
//! (each backend's `differs`); a property test holds SQLite's to the rule below.
//!
//! The marks hold only while no other sync writes to the store. Staging reads the store's
//! `sync_generation` before its first lookup; the merge reads it again under the store's
//! lock, and if another sync committed in between it drops the marks and checks every
//! product as if none had been made.

use std::collections::HashMap;

use roaring::RoaringTreemap;

use super::StagedProduct;
use crate::product::{ProductChange, SyncKey};

/// The store a staging area stages for, and what it resolves while staging.
#[derive(Debug, Clone, Copy)]
pub(super) struct StagingTarget {
    pub store_id: i64,
    /// For an external-id sync: the store's sync generation when the upload began, as of
    /// which staged products are resolved and marked unchanged.
    pub resolved_at: Option<i64>,
    /// Look up each batch's stored products: an external-id sync of a store that has any.
    pub look_up: bool,
}

impl StagingTarget {
    /// What a sync keyed by `key` resolves while it stages, given the store's sync
    /// generation and whether it has products when the upload begins.
    pub fn new(store_id: i64, key: SyncKey, generation: i64, has_products: bool) -> Self {
        match key {
            SyncKey::ExternalId => StagingTarget {
                store_id,
                resolved_at: Some(generation),
                look_up: has_products,
            },
            SyncKey::Barcode => StagingTarget {
                store_id,
                resolved_at: None,
                look_up: false,
            },
        }
    }

    /// Staging goes on without lookups (none can be made, or one failed): nothing staged
    /// is resolved or marked as of a generation, so the merge resolves every product.
    pub fn without_lookups(&mut self) {
        if self.look_up {
            self.look_up = false;
            self.resolved_at = None;
        }
    }

    /// Whether every staged product is new to the store: an external-id sync of a store
    /// that had no products when the upload began, and no sync has written to it since
    /// (only syncs create products, and a sync that writes advances the generation).
    pub fn stages_only_new_products(&self, generation: i64) -> bool {
        !self.look_up && self.resolved_at == Some(generation)
    }

    /// Whether the marks made while staging still hold under the store's lock, at
    /// `generation`: no other sync wrote to the store during the upload.
    pub fn marks_hold(&self, generation: i64) -> bool {
        self.resolved_at == Some(generation)
    }
}

/// The fields of a stored product that a sync compares and may change.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub(in crate::store) struct StoredFields {
    pub id: i64,
    pub external_id: Option<String>,
    /// Sorted barcodes joined by single spaces, as staged.
    pub barcodes: Option<String>,
    pub in_stock: Option<i64>,
    /// Exact decimal text, as staged.
    pub price: Option<String>,
    pub name: Option<String>,
    pub unit_size: Option<String>,
    pub abv: Option<f64>,
    pub proof: Option<f64>,
    pub category: i32,
}

/// What staging learned of a product from the stored product with its external id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StoredMatch {
    pub product_id: i64,
    /// Writing the product would change nothing.
    pub unchanged: bool,
    /// It is sent with exactly the barcodes stored.
    pub barcodes_kept: bool,
}

/// A stored product's fields as `is_unchanged` compares them, borrowed from wherever they
/// were read (a decoded row, or SQLite's own row buffer).
#[derive(Debug, Clone, Copy)]
pub(in crate::store) struct StoredView<'a> {
    pub external_id: Option<&'a str>,
    /// Sorted barcodes joined by single spaces, as stored.
    pub barcodes: Option<&'a str>,
    pub in_stock: Option<i64>,
    pub price: Option<&'a str>,
    pub name: Option<&'a str>,
    pub unit_size: Option<&'a str>,
    pub abv: Option<f64>,
    pub proof: Option<f64>,
    pub category: i32,
}

impl StoredFields {
    pub fn view(&self) -> StoredView<'_> {
        StoredView {
            external_id: self.external_id.as_deref(),
            barcodes: self.barcodes.as_deref(),
            in_stock: self.in_stock,
            price: self.price.as_deref(),
            name: self.name.as_deref(),
            unit_size: self.unit_size.as_deref(),
            abv: self.abv,
            proof: self.proof,
            category: self.category,
        }
    }
}

/// Whether writing `change` over `stored` changes nothing. This is the negation of the
/// merge's test for a changed row (`update_changed_products`): a field the POS leaves out
/// changes nothing, and a sent field changes the row when it differs from the stored one.
pub(in crate::store) fn is_unchanged(change: &ProductChange, stored: &StoredView<'_>) -> bool {
    fn same<T: PartialEq>(sent: Option<T>, stored: Option<T>) -> bool {
        sent.is_none() || sent == stored
    }
    let gains_external_id = change.external_id.is_some() && stored.external_id.is_none();
    !gains_external_id
        && change.barcodes.as_ref().is_none_or(|barcodes| {
            stored
                .barcodes
                .is_some_and(|joined| barcodes.is_joined(joined))
        })
        && same(change.in_stock, stored.in_stock)
        && same(
            change.price.as_ref().map(|price| price.as_str()),
            stored.price,
        )
        && same(change.name.as_deref(), stored.name)
        && same(change.unit_size.as_deref(), stored.unit_size)
        && same(change.abv, stored.abv)
        && same(change.proof, stored.proof)
        && same(
            change.category.map(|category| category.code()),
            Some(stored.category),
        )
}

/// What staging learned of a sent product from the stored one with its external id.
pub(in crate::store) fn stored_match(
    product: &StagedProduct,
    product_id: i64,
    stored: &StoredView<'_>,
) -> StoredMatch {
    // A skipped product writes nothing anyway; leave it to the usual path.
    let barcodes_kept = !product.skipped
        && product.change.barcodes.as_ref().is_some_and(|barcodes| {
            stored
                .barcodes
                .is_some_and(|joined| barcodes.is_joined(joined))
        });
    StoredMatch {
        product_id,
        unchanged: !product.skipped && is_unchanged(&product.change, stored),
        barcodes_kept,
    }
}

/// The stored products a sync's lookups found: whether one was found twice (then the check
/// for repeated external ids must group every staged product), and how many (when that is
/// every product of the store, a clear has nothing to do).
#[derive(Default)]
pub(in crate::store) struct FoundProducts {
    /// A compressed bitmap: a million ids take a few hundred KiB. Emptied once the upload
    /// ends.
    ids: RoaringTreemap,
    pub found_twice: bool,
    /// Distinct stored products found.
    pub count: u64,
}

impl FoundProducts {
    pub fn note(&mut self, matches: &[Option<StoredMatch>]) {
        for found in matches.iter().flatten() {
            let first_time =
                u64::try_from(found.product_id).is_ok_and(|product_id| self.ids.insert(product_id));
            self.found_twice |= !first_time;
        }
        self.count = self.ids.len();
    }

    /// Frees the ids once the upload is over; the flag and the count stay.
    pub fn forget_ids(&mut self) {
        self.ids.clear();
    }
}

/// Matches each product of a batch with the stored product of its external id, given the
/// stored products found for the batch's external ids.
pub(super) fn match_batch(
    products: &[StagedProduct],
    stored: Vec<StoredFields>,
) -> Vec<Option<StoredMatch>> {
    let by_external_id: HashMap<String, StoredFields> = stored
        .into_iter()
        .filter_map(|fields| Some((fields.external_id.clone()?, fields)))
        .collect();
    products
        .iter()
        .map(|product| {
            let stored = by_external_id.get(product.change.external_id.as_ref()?)?;
            Some(stored_match(product, stored.id, &stored.view()))
        })
        .collect()
}

/// The external ids of a batch, for the lookup of its stored products.
pub(super) fn external_ids(products: &[StagedProduct]) -> Vec<&str> {
    products
        .iter()
        .filter_map(|product| product.change.external_id.as_deref())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::product::{Barcodes, Category, Price};

    fn stored() -> StoredFields {
        StoredFields {
            id: 7,
            external_id: Some("sku-1".to_owned()),
            barcodes: Some("111 222".to_owned()),
            in_stock: Some(4),
            price: Some("12.50".to_owned()),
            name: Some("Merlot".to_owned()),
            unit_size: Some("750ML".to_owned()),
            abv: Some(13.5),
            proof: None,
            category: Category::Wine.code(),
        }
    }

    fn same_as_stored() -> ProductChange {
        ProductChange {
            external_id: Some("sku-1".to_owned()),
            barcodes: Some(Barcodes::new(vec!["222".to_owned(), "111".to_owned()])),
            in_stock: Some(4),
            price: Some(Price::parse("12.50").unwrap()),
            name: Some("Merlot".to_owned()),
            unit_size: Some("750ML".to_owned()),
            abv: Some(13.5),
            proof: None,
            category: Some(Category::Wine),
        }
    }

    #[test]
    fn a_product_sent_as_stored_is_unchanged() {
        assert!(is_unchanged(&same_as_stored(), &stored().view()));
    }

    #[test]
    fn fields_left_out_change_nothing() {
        let change = ProductChange {
            external_id: Some("sku-1".to_owned()),
            barcodes: None,
            in_stock: None,
            price: None,
            name: None,
            unit_size: None,
            abv: None,
            proof: None,
            category: None,
        };
        assert!(is_unchanged(&change, &stored().view()));
    }

    #[test]
    fn any_sent_field_that_differs_is_a_change() {
        let changes: [fn(&mut ProductChange); 9] = [
            |c| c.barcodes = Some(Barcodes::new(vec!["111".to_owned()])),
            |c| c.in_stock = Some(5),
            |c| c.in_stock = Some(0),
            // The same amount at another scale is stored as sent, so it is a change.
            |c| c.price = Some(Price::parse("12.5").unwrap()),
            |c| c.name = Some("Merlot ".to_owned()),
            |c| c.unit_size = Some("1L".to_owned()),
            |c| c.abv = Some(13.6),
            |c| c.proof = Some(80.0),
            |c| c.category = Some(Category::Drink),
        ];
        for (n, change_field) in changes.iter().enumerate() {
            let mut change = same_as_stored();
            change_field(&mut change);
            assert!(!is_unchanged(&change, &stored().view()), "change {n}");
        }
    }

    #[test]
    fn a_stored_product_without_an_external_id_gains_one() {
        let mut stored = stored();
        stored.external_id = None;
        assert!(!is_unchanged(&same_as_stored(), &stored.view()));
    }

    #[test]
    fn batches_match_by_external_id() {
        let staged = |index: u64, external_id: &str, skipped: bool| StagedProduct {
            index,
            change: ProductChange {
                external_id: Some(external_id.to_owned()),
                ..same_as_stored()
            },
            skipped,
        };
        let products = [
            staged(0, "sku-1", false),
            staged(1, "new", false),
            staged(2, "sku-1", true),
        ];
        let matches = match_batch(&products, vec![stored()]);
        let unchanged = StoredMatch {
            product_id: 7,
            unchanged: true,
            barcodes_kept: true,
        };
        let skipped = StoredMatch {
            product_id: 7,
            unchanged: false,
            barcodes_kept: false,
        };
        assert_eq!(matches, vec![Some(unchanged), None, Some(skipped)]);
        assert_eq!(external_ids(&products), vec!["sku-1", "new", "sku-1"]);
    }

    #[test]
    fn a_changed_product_keeps_its_barcodes_only_when_it_sends_the_stored_set() {
        let staged = |barcodes: Option<Vec<&str>>| StagedProduct {
            index: 0,
            change: ProductChange {
                in_stock: Some(5),
                barcodes: barcodes
                    .map(|codes| Barcodes::new(codes.into_iter().map(str::to_owned).collect())),
                ..same_as_stored()
            },
            skipped: false,
        };
        let kept = |barcodes| {
            let matched = match_batch(&[staged(barcodes)], vec![stored()])[0].unwrap();
            assert!(!matched.unchanged, "the stock changed");
            matched.barcodes_kept
        };
        assert!(kept(Some(vec!["111", "222"])));
        assert!(
            kept(Some(vec!["222", "111"])),
            "the order sent does not matter"
        );
        assert!(!kept(Some(vec!["111"])));
        assert!(!kept(Some(vec!["111", "222", "333"])));
        assert!(!kept(None), "no barcodes sent: nothing to keep or split");
    }
}
