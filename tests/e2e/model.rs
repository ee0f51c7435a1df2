//! A model-based test: random sequences of syncs (stores, both keys, every product field,
//! barcodes, invalid products, clears big enough to reach the mass-clear guard, dry runs,
//! skip_invalid, idempotency keys, expected counts) run against the real server and against
//! a small in-memory model of the contract. After every sync the answer and every store's
//! products must agree.

use std::collections::{BTreeSet, HashMap};

use inventory_sync::pb;
use proptest::prelude::*;
use tonic::Code;

use crate::support::*;

const STORES: [i64; 2] = [1, 2];
/// The server's default mass-clear guard.
const MAX_CLEAR_FRACTION: f64 = 0.5;
const MASS_CLEAR_FLOOR: u64 = 10;
/// Values the generators use to make a product invalid.
const BAD_PRICE: &str = "x";
const BAD_ABV: f64 = 150.0;
const UNKNOWN_CATEGORY: i32 = 9;

/// The fields a sync may send and a product stores; `None` is "left out" / "unknown".
#[derive(Debug, Clone, PartialEq, Default)]
struct Fields {
    in_stock: Option<i64>,
    price: Option<String>,
    name: Option<String>,
    unit_size: Option<String>,
    abv: Option<f64>,
    proof: Option<f64>,
    /// `None` for `CATEGORY_UNSPECIFIED`.
    category: Option<i32>,
}

impl Fields {
    fn is_valid(&self) -> bool {
        self.in_stock.is_none_or(|stock| stock >= 0)
            && self.price.as_deref() != Some(BAD_PRICE)
            && self.abv != Some(BAD_ABV)
            && self.category != Some(UNKNOWN_CATEGORY)
    }

    /// A sent field replaces the stored one; a field left out keeps it.
    fn write_over(&self, stored: &mut Fields) {
        fn over<T: Clone>(sent: &Option<T>, stored: &mut Option<T>) {
            if sent.is_some() {
                stored.clone_from(sent);
            }
        }
        over(&self.in_stock, &mut stored.in_stock);
        over(&self.price, &mut stored.price);
        over(&self.name, &mut stored.name);
        over(&self.unit_size, &mut stored.unit_size);
        over(&self.abv, &mut stored.abv);
        over(&self.proof, &mut stored.proof);
        over(&self.category, &mut stored.category);
    }
}

/// One product of a random sync.
#[derive(Debug, Clone)]
struct Update {
    /// Empty only in a barcode-keyed sync.
    external_id: String,
    barcodes: Vec<String>,
    fields: Fields,
}

impl Update {
    fn is_valid(&self, key: pb::KeyField) -> bool {
        let keyed = match key {
            pb::KeyField::Barcode => !self.barcodes.is_empty(),
            _ => !self.external_id.is_empty(),
        };
        keyed && self.fields.is_valid()
    }

    fn shares_a_barcode_with(&self, other: &Update) -> bool {
        self.barcodes
            .iter()
            .any(|code| other.barcodes.contains(code))
    }

    fn to_wire(&self) -> pb::ProductUpdate {
        let fields = self.fields.clone();
        pb::ProductUpdate {
            external_id: self.external_id.clone(),
            barcodes: self.barcodes.clone(),
            in_stock: fields.in_stock,
            price: fields.price,
            name: fields.name,
            unit_size: fields.unit_size,
            abv: fields.abv,
            proof: fields.proof,
            category: fields.category.unwrap_or(0),
        }
    }
}

#[derive(Debug, Clone)]
struct Sync {
    store_id: i64,
    key: pb::KeyField,
    clear: bool,
    dry_run: bool,
    skip_invalid: bool,
    allow_mass_clear: bool,
    idempotency_key: Option<&'static str>,
    expected_count: Option<u64>,
    products: Vec<Update>,
}

impl Sync {
    fn header(&self) -> pb::SyncHeader {
        pb::SyncHeader {
            store_id: self.store_id,
            key: self.key as i32,
            clear: self.clear,
            dry_run: self.dry_run,
            skip_invalid: self.skip_invalid,
            allow_mass_clear: self.allow_mass_clear,
            idempotency_key: self.idempotency_key.unwrap_or_default().to_owned(),
            expected_count: self.expected_count,
        }
    }

    /// What an idempotency key stands for: everything but the key itself.
    fn content(&self) -> String {
        format!(
            "{} {:?} {} {} {} {} {:?} {:?}",
            self.store_id,
            self.key,
            self.clear,
            self.dry_run,
            self.skip_invalid,
            self.allow_mass_clear,
            self.expected_count,
            self.products
        )
    }
}

/// Mostly valid values, sometimes an invalid one.
fn fields() -> impl Strategy<Value = Fields> {
    (
        proptest::option::of(prop_oneof![19 => 0..4i64, 1 => Just(-1)]),
        proptest::option::of(prop_oneof![
            6 => Just("1.5"),
            7 => Just("2"),
            6 => Just("2.00"),
            1 => Just(BAD_PRICE)
        ]),
        proptest::option::of(prop_oneof![Just("gin"), Just("rum")]),
        proptest::option::of(prop_oneof![Just("750ML"), Just("1L")]),
        proptest::option::of(prop_oneof![10 => Just(12.5), 9 => Just(40.0), 1 => Just(BAD_ABV)]),
        proptest::option::of(prop_oneof![Just(80.0), Just(90.0)]),
        proptest::option::of(prop_oneof![19 => 1..3i32, 1 => Just(UNKNOWN_CATEGORY)]),
    )
        .prop_map(
            |(in_stock, price, name, unit_size, abv, proof, category)| Fields {
                in_stock,
                price: price.map(str::to_owned),
                name: name.map(str::to_owned),
                unit_size: unit_size.map(str::to_owned),
                abv,
                proof,
                category,
            },
        )
}

/// A product of a random sync; its external id may be blanked in a barcode-keyed sync. A
/// product's barcodes are mostly its own (`b3` for `p3`), so that syncs match, update and
/// link products more often than they conflict; sometimes one more is borrowed.
fn update() -> impl Strategy<Value = (Update, bool)> {
    (
        0..8usize,
        prop::bool::weighted(0.6),
        proptest::option::weighted(0.25, 0..8usize),
        fields(),
        any::<bool>(),
    )
        .prop_map(|(id, coded, borrowed, fields, blank_external_id)| {
            let mut barcodes = BTreeSet::new();
            if coded {
                barcodes.insert(format!("b{id}"));
                barcodes.extend(borrowed.map(|other| format!("b{other}")));
            }
            let update = Update {
                external_id: format!("p{id}"),
                barcodes: barcodes.into_iter().collect(),
                fields,
            };
            (update, blank_external_id)
        })
}

/// Enough stocked products to make a store big enough for the mass-clear guard.
fn bulk(count: usize) -> impl Iterator<Item = Update> {
    (0..count).map(|n| Update {
        external_id: format!("s{n}"),
        barcodes: vec![format!("c{n}")],
        fields: Fields {
            in_stock: Some(1),
            ..Fields::default()
        },
    })
}

fn sync_strategy() -> impl Strategy<Value = Sync> {
    (
        (
            prop::sample::select(STORES.to_vec()),
            prop::bool::weighted(0.25),
            any::<bool>(),
            prop::bool::weighted(0.2),
            any::<bool>(),
            prop::bool::weighted(0.2),
        ),
        proptest::option::weighted(0.3, prop_oneof![Just("k1"), Just("k2")]),
        proptest::option::weighted(0.2, 0..2u64),
        proptest::collection::vec(update(), 0..5),
        prop_oneof![3 => Just(0usize), 1 => 12..25usize],
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(
                (store_id, by_barcode, clear, dry_run, skip_invalid, allow_mass_clear),
                idempotency_key,
                count_offset,
                mut updates,
                bulk_size,
                keep_repeats,
            )| {
                if !keep_repeats {
                    // Most syncs send each product once; the others test repeats.
                    let mut seen = BTreeSet::new();
                    updates.retain(|(update, _)| seen.insert(update.external_id.clone()));
                }
                let key = if by_barcode {
                    pb::KeyField::Barcode
                } else {
                    pb::KeyField::ExternalId
                };
                let mut products: Vec<Update> = updates
                    .into_iter()
                    .map(|(mut update, blank_external_id)| {
                        if by_barcode && update.barcodes.is_empty() {
                            // A product's own barcode (`b3` for `p3`).
                            update.barcodes = vec![format!("b{}", &update.external_id[1..])];
                        }
                        if by_barcode && blank_external_id {
                            update.external_id.clear();
                        }
                        update
                    })
                    .collect();
                products.extend(bulk(bulk_size));
                Sync {
                    store_id,
                    key,
                    clear,
                    dry_run,
                    // The model of a barcode-keyed sync stops at "refused": which products
                    // skip_invalid would skip there is left to the barcode tests.
                    skip_invalid: skip_invalid && !by_barcode,
                    allow_mass_clear,
                    idempotency_key,
                    expected_count: count_offset.map(|offset| products.len() as u64 + offset),
                    products,
                }
            },
        )
}

/// A stored product in the model.
#[derive(Debug, Clone, PartialEq)]
struct Product {
    store_id: i64,
    external_id: String,
    barcodes: BTreeSet<String>,
    fields: Fields,
}

/// What the model expects of a sync.
#[derive(Debug, Clone, PartialEq)]
enum Expected {
    Refused(Code),
    Counts {
        created: u64,
        updated: u64,
        unchanged: u64,
        cleared: u64,
        linked: u64,
        rejected: u64,
        replayed: bool,
    },
}

/// What a sync's products do to the stored ones, before the clear.
struct Written {
    products: Vec<Product>,
    created: u64,
    updated: u64,
    linked: u64,
    /// Products skipped for conflicts.
    skipped: u64,
    /// Positions (in `products`) of the stored products the sync lists, for the clear.
    listed: BTreeSet<usize>,
}

/// The contract, small: products in creation order.
#[derive(Debug, Default)]
struct Model {
    products: Vec<Product>,
    /// `(store, idempotency key)` → the content and answer of the sync that committed it.
    keys: HashMap<(i64, &'static str), (String, Expected)>,
}

impl Model {
    fn apply(&mut self, sync: &Sync) -> Expected {
        let received = sync.products.len() as u64;
        if sync
            .expected_count
            .is_some_and(|expected| expected != received)
        {
            return Expected::Refused(Code::FailedPrecondition);
        }
        let valid: Vec<(usize, &Update)> = sync
            .products
            .iter()
            .enumerate()
            .filter(|(_, update)| update.is_valid(sync.key))
            .collect();
        let invalid = sync.products.len() - valid.len();
        if invalid > 0 && !sync.skip_invalid {
            return Expected::Refused(Code::InvalidArgument);
        }
        if let Some(key) = sync.idempotency_key
            && let Some((content, answer)) = self.keys.get(&(sync.store_id, key))
        {
            if *content != sync.content() {
                return Expected::Refused(Code::FailedPrecondition);
            }
            let mut answer = answer.clone();
            if let Expected::Counts { replayed, .. } = &mut answer {
                *replayed = true;
            }
            return answer;
        }
        let written = match sync.key {
            pb::KeyField::Barcode => self.write_by_barcode(sync, &valid),
            _ => self.write_by_external_id(sync, &valid),
        };
        let Some(mut written) = written else {
            return Expected::Refused(Code::InvalidArgument);
        };

        let mut cleared = 0;
        if sync.clear {
            let in_stock_before = self
                .store(sync.store_id)
                .filter(|product| product.fields.in_stock.is_some_and(|stock| stock > 0))
                .count();
            for (position, product) in written.products.iter_mut().enumerate() {
                let stale = product.store_id == sync.store_id
                    && position < self.products.len()
                    && !written.listed.contains(&position);
                if stale && product.fields.in_stock != Some(0) {
                    product.fields.in_stock = Some(0);
                    cleared += 1;
                }
            }
            let guarded = !sync.allow_mass_clear;
            if guarded
                && cleared > MASS_CLEAR_FLOOR
                && cleared as f64 > MAX_CLEAR_FRACTION * in_stock_before as f64
            {
                return Expected::Refused(Code::FailedPrecondition);
            }
        }
        let rejected = invalid as u64 + written.skipped;
        let answer = Expected::Counts {
            created: written.created,
            updated: written.updated,
            unchanged: received - written.created - written.updated - rejected,
            cleared,
            linked: written.linked,
            rejected,
            replayed: false,
        };
        if !sync.dry_run {
            self.products = written.products;
            if let Some(key) = sync.idempotency_key {
                self.keys
                    .insert((sync.store_id, key), (sync.content(), answer.clone()));
            }
        }
        answer
    }

    /// An external-id sync; `None` if it is refused for conflicts.
    fn write_by_external_id(&self, sync: &Sync, valid: &[(usize, &Update)]) -> Option<Written> {
        // Positions skipped for conflicts; found in rounds, as the server does.
        let mut skipped = BTreeSet::new();
        let barcodes_of = |index: usize, skipped: &BTreeSet<usize>| -> BTreeSet<String> {
            if skipped.contains(&index) {
                BTreeSet::new()
            } else {
                sync.products[index].barcodes.iter().cloned().collect()
            }
        };
        loop {
            let mut round = BTreeSet::new();
            for (position, &(index, update)) in valid.iter().enumerate() {
                if skipped.contains(&index) {
                    continue;
                }
                let earlier = &valid[..position];
                // Invalid products stay staged by their key, so they count as earlier ones.
                let duplicate = sync.products[..index]
                    .iter()
                    .any(|e| e.external_id == update.external_id);
                let shares_barcode = earlier.iter().any(|&(e, _)| {
                    !barcodes_of(e, &skipped).is_disjoint(&barcodes_of(index, &skipped))
                });
                if duplicate || shares_barcode {
                    round.insert(index);
                }
            }
            if round.is_empty() {
                break;
            }
            if !sync.skip_invalid {
                return None;
            }
            skipped.extend(round);
        }
        // Conflicts with stored products: a barcode owned by another product that keeps it.
        loop {
            let mut round = BTreeSet::new();
            for &(index, update) in valid {
                if skipped.contains(&index) {
                    continue;
                }
                let taken = update.barcodes.iter().any(|barcode| {
                    self.store(sync.store_id).any(|owner| {
                        owner.barcodes.contains(barcode)
                            && owner.external_id != update.external_id
                            && !valid.iter().any(|&(other, o)| {
                                o.external_id == owner.external_id
                                    && !skipped.contains(&other)
                                    && !o.barcodes.is_empty()
                            })
                    })
                });
                if taken {
                    round.insert(index);
                }
            }
            if round.is_empty() {
                break;
            }
            if !sync.skip_invalid {
                return None;
            }
            skipped.extend(round);
        }

        let mut written = Written {
            products: self.products.clone(),
            created: 0,
            updated: 0,
            linked: 0,
            skipped: skipped.len() as u64,
            listed: BTreeSet::new(),
        };
        // Every product sent counts as listed, a skipped or invalid one too (its key is
        // readable).
        for update in &sync.products {
            if let Some(position) = written
                .products
                .iter()
                .position(|p| p.store_id == sync.store_id && p.external_id == update.external_id)
            {
                written.listed.insert(position);
            }
        }
        for &(index, update) in valid {
            if skipped.contains(&index) {
                continue;
            }
            let existing = written
                .products
                .iter_mut()
                .find(|p| p.store_id == sync.store_id && p.external_id == update.external_id);
            match existing {
                Some(product) => {
                    let before = product.clone();
                    if !update.barcodes.is_empty() {
                        product.barcodes = update.barcodes.iter().cloned().collect();
                    }
                    update.fields.write_over(&mut product.fields);
                    if *product != before {
                        written.updated += 1;
                    }
                }
                None => {
                    written.created += 1;
                    written.products.push(new_product(sync.store_id, update));
                }
            }
        }
        Some(written)
    }

    /// A barcode-keyed sync (never with skip_invalid here); `None` if it is refused.
    fn write_by_barcode(&self, sync: &Sync, valid: &[(usize, &Update)]) -> Option<Written> {
        let stored: Vec<usize> = (0..self.products.len())
            .filter(|&position| self.products[position].store_id == sync.store_id)
            .collect();
        // Each product's stored match: the stored products owning any of its barcodes.
        let mut matches = Vec::new();
        for (position, &(_, update)) in valid.iter().enumerate() {
            let earlier = &valid[..position];
            let repeats = earlier.iter().any(|&(_, e)| {
                e.shares_a_barcode_with(update)
                    || (!update.external_id.is_empty() && e.external_id == update.external_id)
            });
            let owners: Vec<usize> = stored
                .iter()
                .copied()
                .filter(|&p| {
                    update
                        .barcodes
                        .iter()
                        .any(|code| self.products[p].barcodes.contains(code))
                })
                .collect();
            let matched = match owners[..] {
                [] => None,
                [owner] => Some(owner),
                _ => return None,
            };
            let external_id_elsewhere = !update.external_id.is_empty()
                && stored.iter().any(|&p| {
                    Some(p) != matched && self.products[p].external_id == update.external_id
                });
            let other_external_id = matched.is_some_and(|p| {
                let stored_id = &self.products[p].external_id;
                !update.external_id.is_empty()
                    && !stored_id.is_empty()
                    && *stored_id != update.external_id
            });
            let matched_twice = matched.is_some() && matches.contains(&matched);
            if repeats || external_id_elsewhere || other_external_id || matched_twice {
                return None;
            }
            matches.push(matched);
        }

        let mut written = Written {
            products: self.products.clone(),
            created: 0,
            updated: 0,
            linked: 0,
            skipped: 0,
            listed: matches.iter().flatten().copied().collect(),
        };
        for (&(_, update), matched) in valid.iter().zip(matches) {
            let Some(position) = matched else {
                written.created += 1;
                written.products.push(new_product(sync.store_id, update));
                continue;
            };
            let product = &mut written.products[position];
            let before = product.clone();
            product.barcodes = update.barcodes.iter().cloned().collect();
            if product.external_id.is_empty() && !update.external_id.is_empty() {
                product.external_id.clone_from(&update.external_id);
                written.linked += 1;
            }
            update.fields.write_over(&mut product.fields);
            if *product != before {
                written.updated += 1;
            }
        }
        Some(written)
    }

    fn store(&self, store_id: i64) -> impl Iterator<Item = &Product> {
        self.products.iter().filter(move |p| p.store_id == store_id)
    }
}

fn new_product(store_id: i64, update: &Update) -> Product {
    Product {
        store_id,
        external_id: update.external_id.clone(),
        barcodes: update.barcodes.iter().cloned().collect(),
        fields: update.fields.clone(),
    }
}

async fn server_state(
    client: &mut pb::inventory_sync_client::InventorySyncClient<tonic::transport::Channel>,
    store_id: i64,
) -> Vec<Product> {
    list(client, store_id)
        .await
        .into_iter()
        .map(|p| Product {
            store_id: p.store_id,
            external_id: p.external_id,
            barcodes: p.barcodes.into_iter().collect(),
            fields: Fields {
                in_stock: p.in_stock,
                price: p.price,
                name: p.name,
                unit_size: p.unit_size,
                abv: p.abv,
                proof: p.proof,
                category: (p.category != 0).then_some(p.category),
            },
        })
        .collect()
}

/// Runs the syncs on a fresh server and on the model, comparing after each.
async fn check_against_model(backend: Backend, syncs: Vec<Sync>) -> Result<(), TestCaseError> {
    let Some(server) = TestServer::start(backend).await else {
        return Ok(());
    };
    let mut client = server.client().await;
    let mut model = Model::default();
    for (step, sync_) in syncs.iter().enumerate() {
        let products = sync_.products.iter().map(Update::to_wire).collect();
        let actual = match sync(&mut client, sync_.header(), products).await {
            Ok(response) => Expected::Counts {
                created: response.created,
                updated: response.updated,
                unchanged: response.unchanged,
                cleared: response.cleared,
                linked: response.linked,
                rejected: response.rejected_total,
                replayed: response.replayed,
            },
            Err(status) => Expected::Refused(status.code()),
        };
        let expected = model.apply(sync_);
        prop_assert_eq!(&actual, &expected, "step {}: {:?}", step, sync_);
        for store_id in STORES {
            let stored = server_state(&mut client, store_id).await;
            let modeled: Vec<Product> = model.store(store_id).cloned().collect();
            prop_assert_eq!(stored, modeled, "step {}, store {}", step, store_id);
        }
    }
    Ok(())
}

/// Syncs where some repeat an earlier one exactly, as a client's retry does.
fn with_retries(mut syncs: Vec<Sync>, retries: Vec<Option<prop::sample::Index>>) -> Vec<Sync> {
    for (position, retry) in retries.into_iter().enumerate().skip(1) {
        if let Some(earlier) = retry
            && position < syncs.len()
        {
            syncs[position] = syncs[earlier.index(position)].clone();
        }
    }
    syncs
}

fn run(backend: Backend, syncs: Vec<Sync>) -> Result<(), TestCaseError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(check_against_model(backend, syncs))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn sqlite_agrees_with_the_model(
        syncs in proptest::collection::vec(sync_strategy(), 2..12),
        retries in proptest::collection::vec(proptest::option::weighted(0.2, any::<prop::sample::Index>()), 12),
    ) {
        run(Backend::Sqlite, with_retries(syncs, retries))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn postgres_agrees_with_the_model(
        syncs in proptest::collection::vec(sync_strategy(), 2..12),
        retries in proptest::collection::vec(proptest::option::weighted(0.2, any::<prop::sample::Index>()), 12),
    ) {
        run(Backend::Postgres, with_retries(syncs, retries))?;
    }
}
