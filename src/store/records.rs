//! What the database stores and is asked for: product rows, lookups and filters, the
//! matching queue's parties, and a product to stage.

use crate::product::ProductChange;

/// A validated product to stage, and its position in the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StagedProduct {
    pub index: u64,
    pub change: ProductChange,
    /// Rejected with skip_invalid: only its key is staged, so that it counts as listed.
    pub skipped: bool,
}

/// A product by the service's own id, with its store when the caller knows it: then every
/// statement names the store, and a product of another store is not found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProductRef {
    pub id: i64,
    pub store_id: Option<i64>,
}

/// How a single product is looked up.
#[derive(Debug, Clone)]
pub enum ProductKey {
    ExternalId(String),
    Barcode(String),
}

/// Filters of a product listing.
#[derive(Debug, Clone, Default)]
pub struct ProductFilter {
    pub store_id: i64,
    /// 0 = any status.
    pub match_status: i32,
    pub in_stock_only: bool,
    /// Microseconds since the Unix epoch.
    pub updated_since: Option<i64>,
}

/// Filters of the matching queue.
#[derive(Debug, Clone, Default)]
pub struct PendingFilter {
    /// 0 = every store.
    pub store_id: i64,
    /// 0 = every category.
    pub category: i32,
    /// List products being matched too, not only those waiting.
    pub include_in_progress: bool,
}

/// A catalog item as the matching queue stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogItemFields<'a> {
    pub id: i64,
    pub kind: i32,
    pub name: &'a str,
    pub vintage: &'a str,
    pub producer: &'a str,
}

/// Who works the matching queue in one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimant<'a> {
    /// The token's name, recorded as `claimed_by`.
    pub name: &'a str,
    /// The token's id; `None` when authentication is off.
    pub token_id: Option<i64>,
    /// An admin may release or complete anyone's claim.
    pub admin: bool,
}

impl Claimant<'_> {
    /// The token a claim must be held by for this claimant to release or complete it;
    /// `None` for any.
    pub(super) fn required_owner(&self) -> Option<i64> {
        if self.admin { None } else { self.token_id }
    }
}

/// A product as stored, one row of `products`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ProductRecord {
    pub id: i64,
    pub store_id: i64,
    pub external_id: Option<String>,
    /// Sorted barcodes joined by single spaces.
    pub barcodes: Option<String>,
    pub in_stock: Option<i64>,
    pub price: Option<String>,
    pub name: Option<String>,
    pub unit_size: Option<String>,
    pub abv: Option<f64>,
    pub proof: Option<f64>,
    pub category: i32,
    pub match_status: i32,
    /// Who is matching the product while it is in progress, and who matched it once it is
    /// complete (a token's name).
    pub claimed_by: Option<String>,
    /// The token of `claimed_by`; `None` when authentication is off.
    pub claimed_by_token: Option<i64>,
    pub catalog_item_id: Option<i64>,
    pub catalog_kind: Option<i32>,
    pub catalog_name: Option<String>,
    pub catalog_vintage: Option<String>,
    pub catalog_producer: Option<String>,
    /// Microseconds since the Unix epoch.
    pub created_at: i64,
    /// Microseconds since the Unix epoch.
    pub updated_at: i64,
}
