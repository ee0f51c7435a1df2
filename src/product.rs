//! A product as a POS reports it, validated: once a `ProductChange` exists, every field in it
//! is within the contract's bounds, so the rest of the sync never checks again.

use std::fmt;

use crate::pb;
use crate::quote::quoted;

/// Longest external id, in characters.
pub const MAX_EXTERNAL_ID_CHARS: usize = 128;
/// Longest product name by default, in characters (also the bound of catalog item names).
pub const MAX_NAME_CHARS: usize = 512;
/// Most digits before the decimal point of a price.
pub const MAX_PRICE_INTEGER_DIGITS: usize = 14;
/// Most digits after the decimal point of a price.
pub const MAX_PRICE_DECIMALS: usize = 4;

/// Bounds on the fields of one product; the server's operator may tune them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldLimits {
    /// Most barcodes one product may carry.
    pub max_barcodes: usize,
    /// Longest barcode, in characters.
    pub max_barcode_chars: usize,
    /// Longest product name, in characters.
    pub max_name_chars: usize,
    /// Longest unit size, in characters.
    pub max_unit_size_chars: usize,
}

impl Default for FieldLimits {
    fn default() -> Self {
        FieldLimits {
            max_barcodes: 32,
            max_barcode_chars: 64,
            max_name_chars: MAX_NAME_CHARS,
            max_unit_size_chars: 64,
        }
    }
}

/// Which matching queue a product belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Wine,
    Drink,
}

impl Category {
    /// The number stored in the database and sent on the wire.
    pub fn code(self) -> i32 {
        match self {
            Category::Wine => 1,
            Category::Drink => 2,
        }
    }
}

/// What is wrong with one field of one product; the path is relative to the product
/// (`price`, `barcodes[2]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub description: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// An exact, non-negative decimal with at most four decimal places, kept as text so that
/// it is stored and returned without float rounding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price(String);

impl Price {
    /// Parses `digits[.digits]`. Leading zeros of the integer part are dropped
    /// (`"007.50"` becomes `"7.50"`); the decimals are kept as sent.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.starts_with('-') {
            return Err(format!(
                "price {} is negative; prices must be >= 0",
                quoted(text)
            ));
        }
        let (integer, decimals) = match text.split_once('.') {
            Some((integer, decimals)) => (integer, Some(decimals)),
            None => (text, None),
        };
        let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(integer) || decimals.is_some_and(|d| !all_digits(d)) {
            return Err(format!(
                "price {} is not a plain decimal such as \"12.99\"",
                quoted(text)
            ));
        }
        if let Some(decimals) = decimals
            && decimals.len() > MAX_PRICE_DECIMALS
        {
            return Err(format!(
                "price {} has {} decimal places; at most {MAX_PRICE_DECIMALS} are allowed",
                quoted(text),
                decimals.len()
            ));
        }
        let integer = match integer.trim_start_matches('0') {
            "" => "0",
            significant => significant,
        };
        if integer.len() > MAX_PRICE_INTEGER_DIGITS {
            return Err(format!(
                "price {} is too large; at most {MAX_PRICE_INTEGER_DIGITS} digits before the decimal point",
                quoted(text)
            ));
        }
        Ok(Price(match decimals {
            Some(decimals) => format!("{integer}.{decimals}"),
            None => integer.to_owned(),
        }))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A product's barcodes: sorted, without repeats, at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Barcodes(Vec<String>);

impl Barcodes {
    /// Barcodes known to be valid, sorted and without repeats (for tests of the layers
    /// that take validated products).
    #[cfg(test)]
    pub(crate) fn new(mut barcodes: Vec<String>) -> Self {
        barcodes.sort();
        barcodes.dedup();
        Barcodes(barcodes)
    }

    /// The barcodes in their stored order (sorted).
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<String> {
        self.0
    }

    /// The stored form: sorted barcodes joined by single spaces. Barcodes contain no
    /// whitespace, so the join can be split back without ambiguity.
    pub fn joined(&self) -> String {
        self.0.join(" ")
    }

    /// Whether `joined` is the stored form of these barcodes (`joined() == joined`, without
    /// building the string: a re-sync compares a million of them).
    pub fn is_joined(&self, joined: &str) -> bool {
        if self.0.is_empty() {
            return joined.is_empty();
        }
        self.0.iter().map(String::as_str).eq(joined.split(' '))
    }

    /// Splits the stored form back into barcodes.
    pub fn split_stored(stored: Option<&str>) -> Vec<String> {
        stored
            .map(|joined| {
                joined
                    .split(' ')
                    .filter(|b| !b.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// How the products of a sync are identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncKey {
    /// By `external_id`, which every product must carry.
    ExternalId,
    /// By barcodes (the legacy sync), which every product must carry; `external_id` is
    /// optional and links the matched product to it.
    Barcode,
}

/// One product update that passed validation. `None` means "keep the stored value".
#[derive(Debug, Clone, PartialEq)]
pub struct ProductChange {
    /// Always set in an external-id sync; optional in a barcode sync.
    pub external_id: Option<String>,
    pub barcodes: Option<Barcodes>,
    pub in_stock: Option<i64>,
    pub price: Option<Price>,
    pub name: Option<String>,
    pub unit_size: Option<String>,
    pub abv: Option<f64>,
    pub proof: Option<f64>,
    pub category: Option<Category>,
}

impl ProductChange {
    /// Validates a product update of a sync keyed by `key`. Checks every field and reports
    /// every problem found, not just the first.
    pub fn from_wire(
        raw: pb::ProductUpdate,
        key: SyncKey,
        limits: &FieldLimits,
    ) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let external_id = match (key, raw.external_id.is_empty()) {
            (SyncKey::Barcode, true) => None,
            _ => {
                collect(&mut errors, check_external_id(&raw.external_id));
                Some(raw.external_id)
            }
        };
        if key == SyncKey::Barcode && raw.barcodes.is_empty() {
            errors.push(FieldError::new(
                "barcodes",
                "barcodes are missing; every product of a barcode-keyed sync needs at least one",
            ));
        }
        let barcodes = validate_barcodes(raw.barcodes, limits, &mut errors);
        if let Some(in_stock) = raw.in_stock
            && in_stock < 0
        {
            errors.push(FieldError::new(
                "in_stock",
                format!("in_stock is {in_stock}; it must be >= 0"),
            ));
        }
        let price = raw.price.and_then(|text| match Price::parse(&text) {
            Ok(price) => Some(price),
            Err(description) => {
                errors.push(FieldError::new("price", description));
                None
            }
        });
        if let Some(name) = &raw.name {
            collect(&mut errors, check_text("name", name, limits.max_name_chars));
        }
        if let Some(unit_size) = &raw.unit_size {
            collect(
                &mut errors,
                check_text("unit_size", unit_size, limits.max_unit_size_chars),
            );
        }
        if let Some(abv) = raw.abv {
            collect(&mut errors, check_range("abv", abv, 100.0));
        }
        if let Some(proof) = raw.proof {
            collect(&mut errors, check_range("proof", proof, 200.0));
        }
        let category = match raw.category {
            0 => None,
            1 => Some(Category::Wine),
            2 => Some(Category::Drink),
            unknown => {
                errors.push(FieldError::new(
                    "category",
                    format!("category {unknown} is unknown; use CATEGORY_WINE or CATEGORY_DRINK"),
                ));
                None
            }
        };

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ProductChange {
            external_id,
            barcodes,
            in_stock: raw.in_stock,
            price,
            name: raw.name,
            unit_size: raw.unit_size,
            abv: raw.abv,
            proof: raw.proof,
            category,
        })
    }
}

impl ProductChange {
    /// The key of a product that failed validation, if it is readable: a product skipped by
    /// `skip_invalid` still counts as listed, so a clear never zeroes it for a bad copy.
    pub fn key_only(
        external_id: String,
        barcodes: Vec<String>,
        key: SyncKey,
        limits: &FieldLimits,
    ) -> Option<Self> {
        let (external_id, barcodes) = match key {
            SyncKey::ExternalId => {
                check_external_id(&external_id).ok()?;
                (Some(external_id), None)
            }
            SyncKey::Barcode => {
                let mut errors = Vec::new();
                let barcodes = validate_barcodes(barcodes, limits, &mut errors)?;
                if !errors.is_empty() {
                    return None;
                }
                (None, Some(barcodes))
            }
        };
        Some(ProductChange {
            external_id,
            barcodes,
            in_stock: None,
            price: None,
            name: None,
            unit_size: None,
            abv: None,
            proof: None,
            category: None,
        })
    }
}

fn collect(errors: &mut Vec<FieldError>, result: Result<(), FieldError>) {
    if let Err(error) = result {
        errors.push(error);
    }
}

fn check_external_id(external_id: &str) -> Result<(), FieldError> {
    if external_id.is_empty() {
        return Err(FieldError::new(
            "external_id",
            "external_id is missing; every product of an external-id sync needs one",
        ));
    }
    check_text("external_id", external_id, MAX_EXTERNAL_ID_CHARS)
}

fn validate_barcodes(
    barcodes: Vec<String>,
    limits: &FieldLimits,
    errors: &mut Vec<FieldError>,
) -> Option<Barcodes> {
    if barcodes.is_empty() {
        return None;
    }
    if barcodes.len() > limits.max_barcodes {
        errors.push(FieldError::new(
            "barcodes",
            format!(
                "{} barcodes given; a product may have at most {}",
                barcodes.len(),
                limits.max_barcodes
            ),
        ));
        return None;
    }
    let errors_before = errors.len();
    for (position, barcode) in barcodes.iter().enumerate() {
        let field = format!("barcodes[{position}]");
        if barcode.is_empty() {
            errors.push(FieldError::new(field, "barcode is empty"));
        } else if barcode.chars().count() > limits.max_barcode_chars {
            errors.push(FieldError::new(
                field,
                format!(
                    "barcode is longer than {} characters",
                    limits.max_barcode_chars
                ),
            ));
        } else if !barcode.bytes().all(|b| b.is_ascii_graphic()) {
            errors.push(FieldError::new(
                field,
                format!(
                    "barcode {} may hold only printable ASCII characters without spaces",
                    quoted(barcode)
                ),
            ));
        }
    }
    if errors.len() > errors_before {
        return None;
    }
    let mut sorted = barcodes;
    sorted.sort_unstable();
    sorted.dedup();
    Some(Barcodes(sorted))
}

/// Bounds a free-text field and keeps control characters (which some databases cannot
/// store) out of it.
pub(crate) fn check_text(field: &str, text: &str, max_chars: usize) -> Result<(), FieldError> {
    if text.chars().count() > max_chars {
        return Err(FieldError::new(
            field,
            format!("{field} is longer than {max_chars} characters"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            format!("{field} contains a control character"),
        ));
    }
    Ok(())
}

fn check_range(field: &str, value: f64, max: f64) -> Result<(), FieldError> {
    // Written so that NaN fails too.
    if (0.0..=max).contains(&value) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("{field} is {value}; it must be a number from 0 to {max}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn price_keeps_decimals_and_drops_leading_zeros() {
        assert_eq!(Price::parse("12.99").unwrap().as_str(), "12.99");
        assert_eq!(Price::parse("12.90").unwrap().as_str(), "12.90");
        assert_eq!(Price::parse("007.5").unwrap().as_str(), "7.5");
        assert_eq!(Price::parse("0").unwrap().as_str(), "0");
        assert_eq!(Price::parse("000.0001").unwrap().as_str(), "0.0001");
    }

    #[test]
    fn price_rejects_what_is_not_a_plain_non_negative_decimal() {
        for bad in [
            "",
            "-1",
            "1.23456",
            "1e3",
            "abc",
            " 1",
            "1.",
            ".5",
            "1,50",
            "+1",
            "NaN",
            "123456789012345",
        ] {
            assert!(Price::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn every_invalid_field_is_reported() {
        let raw = pb::ProductUpdate {
            external_id: String::new(),
            in_stock: Some(-1),
            price: Some("1.23456".into()),
            abv: Some(f64::NAN),
            proof: Some(201.0),
            barcodes: vec!["ok".into(), String::new()],
            category: 9,
            ..pb::ProductUpdate::default()
        };
        let errors = ProductChange::from_wire(raw, SyncKey::ExternalId, &FieldLimits::default())
            .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "external_id",
                "barcodes[1]",
                "in_stock",
                "price",
                "abv",
                "proof",
                "category"
            ]
        );
    }

    #[test]
    fn barcodes_are_sorted_and_deduplicated() {
        let raw = pb::ProductUpdate {
            external_id: "1".into(),
            barcodes: vec!["b".into(), "a".into(), "b".into()],
            ..pb::ProductUpdate::default()
        };
        let change =
            ProductChange::from_wire(raw, SyncKey::ExternalId, &FieldLimits::default()).unwrap();
        assert_eq!(change.barcodes.unwrap().joined(), "a b");
    }

    #[test]
    fn a_stored_form_matches_exactly_the_barcodes_it_joins() {
        let barcodes =
            |codes: &[&str]| Barcodes::new(codes.iter().map(|&c| c.to_owned()).collect());
        let cases: [(&[&str], &str); 7] = [
            (&["a", "b"], "a b"),
            (&["a", "b"], "a"),
            (&["a", "b"], "a b "),
            (&["a", "b"], "a  b"),
            (&["a"], "a b"),
            (&[], ""),
            (&[], " "),
        ];
        for (codes, stored) in cases {
            let barcodes = barcodes(codes);
            assert_eq!(
                barcodes.is_joined(stored),
                barcodes.joined() == stored,
                "{codes:?} against {stored:?}"
            );
        }
    }

    #[test]
    fn a_barcode_sync_needs_barcodes_but_not_an_external_id() {
        let without_barcodes = pb::ProductUpdate::default();
        let errors =
            ProductChange::from_wire(without_barcodes, SyncKey::Barcode, &FieldLimits::default())
                .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["barcodes"]);

        let coded = pb::ProductUpdate {
            barcodes: vec!["1".into()],
            ..pb::ProductUpdate::default()
        };
        let change =
            ProductChange::from_wire(coded, SyncKey::Barcode, &FieldLimits::default()).unwrap();
        assert_eq!(change.external_id, None);
    }

    mod fuzz {
        use proptest::prelude::*;
        use prost::Message;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

            /// Whatever bytes arrive, decoding and validation never panic, and a refusal
            /// always names a field (so it becomes an INVALID_ARGUMENT with a field path).
            #[test]
            fn arbitrary_bytes_never_panic_and_every_refusal_names_a_field(
                bytes in proptest::collection::vec(any::<u8>(), 0..256),
            ) {
                if let Ok(update) = pb::ProductUpdate::decode(bytes.as_slice()) {
                    for key in [SyncKey::ExternalId, SyncKey::Barcode] {
                        if let Err(errors) = ProductChange::from_wire(update.clone(), key, &FieldLimits::default()) {
                            prop_assert!(!errors.is_empty());
                            prop_assert!(errors.iter().all(|e| !e.field.is_empty() && !e.description.is_empty()));
                        }
                    }
                }
            }

            /// Arbitrary wire products: never a panic, and what passes is within bounds.
            #[test]
            fn arbitrary_products_validate_within_bounds(
                external_id in ".{0,140}",
                barcodes in proptest::collection::vec(".{0,70}", 0..40),
                in_stock in proptest::option::of(any::<i64>()),
                price in proptest::option::of("[-+0-9.eE ]{0,24}|.{0,10}"),
                abv in proptest::option::of(any::<f64>()),
                category in any::<i32>(),
            ) {
                let update = pb::ProductUpdate {
                    external_id, barcodes, in_stock, price, abv, category,
                    ..pb::ProductUpdate::default()
                };
                let limits = FieldLimits::default();
                if let Ok(change) = ProductChange::from_wire(update, SyncKey::ExternalId, &limits) {
                    let id = change.external_id.unwrap();
                    prop_assert!(!id.is_empty() && id.chars().count() <= MAX_EXTERNAL_ID_CHARS);
                    prop_assert!(change.in_stock.is_none_or(|stock| stock >= 0));
                    prop_assert!(change.abv.is_none_or(|abv| (0.0..=100.0).contains(&abv)));
                    if let Some(barcodes) = change.barcodes {
                        prop_assert!(barcodes.as_slice().len() <= limits.max_barcodes);
                    }
                    if let Some(price) = change.price {
                        let (integer, decimals) = price.as_str().split_once('.').unwrap_or((price.as_str(), ""));
                        prop_assert!(integer.bytes().all(|b| b.is_ascii_digit()) && !integer.is_empty());
                        prop_assert!(decimals.len() <= MAX_PRICE_DECIMALS);
                    }
                }
            }

            #[test]
            fn price_parsing_never_panics(text in "\\PC{0,32}") {
                let _ = Price::parse(&text);
            }
        }
    }
}
