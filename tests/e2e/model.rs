//! A model-based test: random sequences of syncs (stores, external ids, fields, barcodes,
//! invalid products, clears, dry runs, skip_invalid) run against the real server and against
//! a small in-memory model of the contract. After every sync the answer's counts and every
//! store's products must agree.

use std::collections::BTreeSet;

use inventory_sync::pb;
use proptest::prelude::*;

use crate::support::*;

const STORES: [i64; 2] = [1, 2];

/// One product of a random sync.
#[derive(Debug, Clone)]
struct Update {
    external_id: String,
    barcodes: Vec<String>,
    in_stock: Option<i64>,
    price: Option<String>,
    name: Option<String>,
}

impl Update {
    fn is_valid(&self) -> bool {
        self.in_stock.is_none_or(|stock| stock >= 0) && self.price.as_deref() != Some("x")
    }

    fn to_wire(&self) -> pb::ProductUpdate {
        pb::ProductUpdate {
            external_id: self.external_id.clone(),
            barcodes: self.barcodes.clone(),
            in_stock: self.in_stock,
            price: self.price.clone(),
            name: self.name.clone(),
            ..pb::ProductUpdate::default()
        }
    }
}

#[derive(Debug, Clone)]
struct Sync {
    store_id: i64,
    clear: bool,
    dry_run: bool,
    skip_invalid: bool,
    products: Vec<Update>,
}

fn update() -> impl Strategy<Value = Update> {
    (
        0..6usize,
        proptest::collection::btree_set(0..4usize, 0..3),
        proptest::option::of(-1..4i64),
        proptest::option::of(prop_oneof![Just("1.5"), Just("2"), Just("2.00"), Just("x")]),
        proptest::option::of(prop_oneof![Just("gin"), Just("rum")]),
    )
        .prop_map(|(id, barcodes, in_stock, price, name)| Update {
            external_id: format!("p{id}"),
            barcodes: barcodes.into_iter().map(|b| format!("b{b}")).collect(),
            in_stock,
            price: price.map(str::to_owned),
            name: name.map(str::to_owned),
        })
}

fn sync_strategy() -> impl Strategy<Value = Sync> {
    (
        prop::sample::select(STORES.to_vec()),
        any::<bool>(),
        prop::bool::weighted(0.2),
        any::<bool>(),
        proptest::collection::vec(update(), 0..6),
    )
        .prop_map(|(store_id, clear, dry_run, skip_invalid, products)| Sync {
            store_id,
            clear,
            dry_run,
            skip_invalid,
            products,
        })
}

/// A stored product in the model.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Product {
    store_id: i64,
    external_id: String,
    barcodes: BTreeSet<String>,
    in_stock: Option<i64>,
    price: Option<String>,
    name: Option<String>,
}

/// What the model expects of a sync.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Refused,
    Counts {
        created: u64,
        updated: u64,
        unchanged: u64,
        cleared: u64,
        rejected: u64,
    },
}

/// The contract, small: products in creation order.
#[derive(Debug, Default)]
struct Model {
    products: Vec<Product>,
}

impl Model {
    fn apply(&mut self, sync: &Sync) -> Expected {
        let staged: Vec<(usize, &Update)> = sync
            .products
            .iter()
            .enumerate()
            .filter(|(_, update)| update.is_valid())
            .collect();
        let invalid = sync.products.len() - staged.len();
        if invalid > 0 && !sync.skip_invalid {
            return Expected::Refused;
        }
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
            for (position, &(index, update)) in staged.iter().enumerate() {
                if skipped.contains(&index) {
                    continue;
                }
                let earlier = &staged[..position];
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
                return Expected::Refused;
            }
            skipped.extend(round);
        }
        // Conflicts with stored products: a barcode owned by another product that keeps it.
        loop {
            let mut round = BTreeSet::new();
            for &(index, update) in &staged {
                if skipped.contains(&index) {
                    continue;
                }
                let taken = update.barcodes.iter().any(|barcode| {
                    self.store(sync.store_id).any(|owner| {
                        owner.barcodes.contains(barcode)
                            && owner.external_id != update.external_id
                            && !staged.iter().any(|&(other, o)| {
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
                return Expected::Refused;
            }
            skipped.extend(round);
        }

        let mut next = self.products.clone();
        let (mut created, mut updated) = (0, 0);
        for &(index, update) in &staged {
            if skipped.contains(&index) {
                continue;
            }
            let existing = next
                .iter_mut()
                .find(|p| p.store_id == sync.store_id && p.external_id == update.external_id);
            match existing {
                Some(product) => {
                    let before = product.clone();
                    if !update.barcodes.is_empty() {
                        product.barcodes = update.barcodes.iter().cloned().collect();
                    }
                    product.in_stock = update.in_stock.or(product.in_stock);
                    product.price = update.price.clone().or(product.price.clone());
                    product.name = update.name.clone().or(product.name.clone());
                    if *product != before {
                        updated += 1;
                    }
                }
                None => {
                    created += 1;
                    next.push(Product {
                        store_id: sync.store_id,
                        external_id: update.external_id.clone(),
                        barcodes: update.barcodes.iter().cloned().collect(),
                        in_stock: update.in_stock,
                        price: update.price.clone(),
                        name: update.name.clone(),
                    });
                }
            }
        }
        let mut cleared = 0;
        if sync.clear {
            // Every product sent counts as listed, a skipped one too (its key is readable).
            let listed: BTreeSet<&str> = sync
                .products
                .iter()
                .map(|u| u.external_id.as_str())
                .collect();
            for product in next.iter_mut().filter(|p| p.store_id == sync.store_id) {
                if !listed.contains(product.external_id.as_str()) && product.in_stock != Some(0) {
                    product.in_stock = Some(0);
                    cleared += 1;
                }
            }
        }
        let rejected = (invalid + skipped.len()) as u64;
        let received = sync.products.len() as u64;
        if !sync.dry_run {
            self.products = next;
        }
        Expected::Counts {
            created,
            updated,
            unchanged: received - created - updated - rejected,
            cleared,
            rejected,
        }
    }

    fn store(&self, store_id: i64) -> impl Iterator<Item = &Product> {
        self.products.iter().filter(move |p| p.store_id == store_id)
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
            in_stock: p.in_stock,
            price: p.price,
            name: p.name,
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
        let header = pb::SyncHeader {
            store_id: sync_.store_id,
            clear: sync_.clear,
            dry_run: sync_.dry_run,
            skip_invalid: sync_.skip_invalid,
            ..pb::SyncHeader::default()
        };
        let products = sync_.products.iter().map(Update::to_wire).collect();
        let actual = match sync(&mut client, header, products).await {
            Ok(response) => Expected::Counts {
                created: response.created,
                updated: response.updated,
                unchanged: response.unchanged,
                cleared: response.cleared,
                rejected: response.rejected_total,
            },
            Err(status) => {
                prop_assert_eq!(status.code(), tonic::Code::InvalidArgument, "step {}", step);
                Expected::Refused
            }
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
    fn sqlite_agrees_with_the_model(syncs in proptest::collection::vec(sync_strategy(), 1..8)) {
        run(Backend::Sqlite, syncs)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn postgres_agrees_with_the_model(syncs in proptest::collection::vec(sync_strategy(), 1..8)) {
        run(Backend::Postgres, syncs)?;
    }
}
