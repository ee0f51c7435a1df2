//! Everything wrong with a sync's input, collected across the whole stream so that a client
//! learns of every problem at once (up to a cap), each named by its place in the stream.

use std::fmt;

use crate::product::FieldError;
use crate::quote::quoted;
use crate::store::BatchConflict;

/// One problem with the input, at a place such as `products[7].price`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Position of the product in the stream, when the problem belongs to one.
    pub index: Option<u64>,
    /// Where the problem is: `header`, `products[7].price`, ….
    pub field: String,
    /// What is wrong, in words a person can act on.
    pub description: String,
}

impl Violation {
    /// A problem outside the products, such as a missing header.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Violation {
            index: None,
            field: field.into(),
            description: description.into(),
        }
    }

    /// A bad field of product `index`.
    pub fn in_product(index: u64, error: FieldError) -> Self {
        Violation {
            index: Some(index),
            field: format!("products[{index}].{}", error.field),
            description: error.description,
        }
    }
}

impl From<BatchConflict> for Violation {
    fn from(conflict: BatchConflict) -> Self {
        let index = conflict.index();
        let (field, description) = match conflict {
            BatchConflict::DuplicateExternalId {
                first_index,
                external_id,
                ..
            } => (
                "external_id",
                format!(
                    "external_id {} is also used by products[{first_index}]; \
                     each product may appear once per sync",
                    quoted(&external_id)
                ),
            ),
            BatchConflict::BarcodeSharedInBatch {
                first_index,
                barcode,
                ..
            } => (
                "barcodes",
                format!(
                    "barcode {} is also given to products[{first_index}]; \
                     a barcode belongs to one product of the store",
                    quoted(&barcode)
                ),
            ),
            BatchConflict::BarcodeOwnedByStoredProduct {
                barcode,
                owner_external_id,
                ..
            } => (
                "barcodes",
                match owner_external_id {
                    Some(owner) => format!(
                        "barcode {} belongs to the store's product {}; \
                         send that product with other barcodes in the same sync to move it",
                        quoted(&barcode),
                        quoted(&owner)
                    ),
                    None => format!(
                        "barcode {} belongs to another product of the store \
                         that has no external id",
                        quoted(&barcode)
                    ),
                },
            ),
            BatchConflict::BarcodesOfSeveralProducts { products, .. } => (
                "barcodes",
                format!(
                    "the barcodes of this product belong to {products} different products of \
                     the store; in a barcode-keyed sync a product's barcodes must identify one"
                ),
            ),
            BatchConflict::SameStoredProduct { first_index, .. } => (
                "barcodes",
                format!(
                    "matches the same stored product as products[{first_index}]; \
                     each product may appear once per sync"
                ),
            ),
            BatchConflict::ExternalIdMismatch { sent, stored, .. } => (
                "external_id",
                format!(
                    "the product its barcodes match already has external_id {}, \
                     not {}; a sync never changes a product's external id",
                    quoted(&stored),
                    quoted(&sent)
                ),
            ),
            BatchConflict::ExternalIdOfAnotherProduct { external_id, .. } => (
                "external_id",
                format!(
                    "external_id {} already belongs to another product of the store",
                    quoted(&external_id)
                ),
            ),
        };
        Violation {
            index: Some(index),
            field: format!("products[{index}].{field}"),
            description,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

/// The violations of one sync: at most `cap` kept, all of them counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violations {
    kept: Vec<Violation>,
    total: u64,
    cap: usize,
}

impl Violations {
    pub fn with_cap(cap: usize) -> Self {
        Violations {
            kept: Vec::new(),
            total: 0,
            cap,
        }
    }

    /// Violations of one problem outside the products.
    pub fn single(violation: Violation) -> Self {
        let mut violations = Violations::with_cap(1);
        violations.push(violation);
        violations
    }

    pub fn push(&mut self, violation: Violation) {
        self.total += 1;
        if self.kept.len() < self.cap {
            self.kept.push(violation);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// How many more would still be kept.
    pub fn room(&self) -> usize {
        self.cap - self.kept.len()
    }

    /// How many were found, kept or not.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The kept violations, in stream order.
    pub fn kept(&self) -> &[Violation] {
        &self.kept
    }

    /// Puts the kept violations in stream order (problems outside products first).
    pub fn sort(&mut self) {
        self.kept.sort_by_key(|violation| violation.index);
    }
}

impl Violations {
    /// What the violations come to, in one line, saying that `listed` of them are listed
    /// (an error detail may have room for fewer than are kept).
    pub fn summary(&self, listed: usize) -> String {
        let Some(first) = self.kept.first() else {
            return "no violations".to_owned();
        };
        if self.total == 1 {
            return format!("invalid sync: {first}");
        }
        let mut summary = format!("invalid sync: {} problems; the first: {first}", self.total);
        if self.total > listed as u64 {
            summary.push_str(&format!(" (the first {listed} are listed)"));
        }
        summary
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary(self.kept.len()))
    }
}
