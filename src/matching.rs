//! The catalog team's matching queue: every product a sync creates waits as pending, in the
//! queue of its category, until a matcher claims it and links it to a catalog item. The
//! transitions are single conditional updates, so two matchers can never both claim one
//! product; a sync never touches match status or catalog item.
//!
//! A claim belongs to the token that made it: only that token (or an admin) may release or
//! complete it, and a claim older than the claim TTL expires, so that a product whose
//! matcher went away is pending again.

use std::time::Duration;

use crate::auth::Principal;
use crate::clock::now_micros;
use crate::pb;
use crate::quote::quoted;
use crate::store::{CatalogItemFields, Claimant, Database, ProductRecord, ProductRef, StoreError};
use crate::sync::{FieldError, MAX_NAME_CHARS, Violation, Violations, check_text};

/// Longest catalog producer name, in characters.
pub const MAX_PRODUCER_CHARS: usize = 256;

/// Why a queue operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum MatchError {
    #[error("{0}")]
    Invalid(Violations),
    #[error("there is no product {product_id}")]
    NotFound { product_id: i64 },
    #[error("product {product_id} is {}; {action}", status_name(*.status))]
    WrongStatus {
        product_id: i64,
        status: i32,
        action: &'static str,
    },
    #[error(
        "product {product_id} is claimed by {}; only that token or an admin may release or \
         complete it",
        quoted(claimed_by)
    )]
    NotYours { product_id: i64, claimed_by: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn status_name(status: i32) -> &'static str {
    pb::MatchStatus::try_from(status)
        .map(|status| status.as_str_name())
        .unwrap_or("in an unknown state")
}

/// A catalog item a matcher sends, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogItem {
    pub id: i64,
    pub kind: i32,
    pub name: String,
    pub vintage: String,
    pub producer: String,
}

impl CatalogItem {
    /// Validates the catalog item of a `Complete` request; every problem is reported.
    pub fn from_wire(item: Option<pb::CatalogItem>) -> Result<Self, Violations> {
        let Some(item) = item else {
            return Err(Violations::single(Violation::new(
                "catalog_item",
                "catalog_item is missing; send the catalog item the product is",
            )));
        };
        let mut violations = Violations::with_cap(8);
        let mut refuse = |field: &str, description: String| {
            violations.push(Violation::new(format!("catalog_item.{field}"), description));
        };
        if item.id <= 0 {
            refuse(
                "id",
                format!("id is {}; a catalog item's id is > 0", item.id),
            );
        }
        if pb::Category::try_from(item.kind).is_err() {
            refuse("kind", format!("kind {} is unknown", item.kind));
        }
        for (field, text, max) in [
            ("name", &item.name, MAX_NAME_CHARS),
            ("producer", &item.producer, MAX_PRODUCER_CHARS),
        ] {
            if let Err(FieldError { description, .. }) = check_text(field, text, max) {
                refuse(field, description);
            }
        }
        let vintage_ok = item.vintage.is_empty()
            || item.vintage == "NV"
            || (item.vintage.len() == 4 && item.vintage.bytes().all(|b| b.is_ascii_digit()));
        if !vintage_ok {
            refuse(
                "vintage",
                format!(
                    "vintage {:?} is neither a year such as \"2019\" nor \"NV\"",
                    item.vintage.chars().take(40).collect::<String>()
                ),
            );
        }
        if !violations.is_empty() {
            return Err(violations);
        }
        Ok(CatalogItem {
            id: item.id,
            kind: item.kind,
            name: item.name,
            vintage: item.vintage,
            producer: item.producer,
        })
    }
}

/// The queue's transitions.
#[derive(Debug, Clone)]
pub struct MatchQueue {
    database: Database,
    claim_ttl: Duration,
}

/// How long a claim holds by default.
pub const DEFAULT_CLAIM_TTL: Duration = Duration::from_secs(30 * 60);

impl MatchQueue {
    pub fn new(database: Database, claim_ttl: Duration) -> Self {
        MatchQueue {
            database,
            claim_ttl,
        }
    }

    /// Makes products whose claim is older than the claim TTL pending again.
    pub async fn expire_claims(&self) -> Result<u64, StoreError> {
        let ttl = i64::try_from(self.claim_ttl.as_micros()).unwrap_or(i64::MAX);
        self.database
            .expire_claims(now_micros().saturating_sub(ttl))
            .await
    }

    /// Expires old claims every `interval` until aborted, so that reads outside the queue
    /// see them pending too.
    pub async fn expire_claims_periodically(self, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        loop {
            ticks.tick().await;
            match self.expire_claims().await {
                Ok(0) => {}
                Ok(expired) => tracing::info!(expired, "claims expired; the products are pending"),
                Err(error) => tracing::warn!(%error, "could not expire old claims"),
            }
        }
    }

    /// PENDING -> IN_PROGRESS, claimed by the caller's token.
    pub async fn claim(
        &self,
        product: ProductRef,
        caller: &Principal,
    ) -> Result<ProductRecord, MatchError> {
        check_product(product)?;
        self.expire_claims().await?;
        let moved = self
            .database
            .claim(product, &claimant(caller), now_micros())
            .await?;
        self.after_transition(
            product,
            None,
            moved,
            "only a pending product can be claimed",
        )
        .await
    }

    /// PENDING or IN_PROGRESS -> COMPLETE, storing the catalog item and who matched it.
    pub async fn complete(
        &self,
        product: ProductRef,
        item: &CatalogItem,
        caller: &Principal,
    ) -> Result<ProductRecord, MatchError> {
        check_product(product)?;
        self.expire_claims().await?;
        let fields = CatalogItemFields {
            id: item.id,
            kind: item.kind,
            name: &item.name,
            vintage: &item.vintage,
            producer: &item.producer,
        };
        let moved = self
            .database
            .complete(product, &fields, &claimant(caller), now_micros())
            .await?;
        self.after_transition(
            product,
            Some(caller),
            moved,
            "only a pending or in-progress product can be completed",
        )
        .await
    }

    /// IN_PROGRESS -> PENDING: a matcher gives up.
    pub async fn release(
        &self,
        product: ProductRef,
        caller: &Principal,
    ) -> Result<ProductRecord, MatchError> {
        check_product(product)?;
        self.expire_claims().await?;
        let moved = self.database.release(product, &claimant(caller)).await?;
        self.after_transition(
            product,
            Some(caller),
            moved,
            "only a product in progress can be released",
        )
        .await
    }

    /// The product after a transition, or why the transition did not apply; `claimant` is
    /// the caller of a transition that only the claim's token (or an admin) may make.
    async fn after_transition(
        &self,
        transitioned: ProductRef,
        claimant: Option<&Principal>,
        moved: bool,
        action: &'static str,
    ) -> Result<ProductRecord, MatchError> {
        let product_id = transitioned.id;
        let product = self
            .database
            .product_by_id(transitioned)
            .await?
            .ok_or(MatchError::NotFound { product_id })?;
        if moved {
            return Ok(product);
        }
        let claimed_by_another = claimant.is_some_and(|caller| {
            product.match_status == pb::MatchStatus::InProgress as i32
                && !caller.is_admin()
                && product.claimed_by_token != caller.token_id
        });
        if claimed_by_another {
            return Err(MatchError::NotYours {
                product_id,
                claimed_by: product.claimed_by.unwrap_or_default(),
            });
        }
        Err(MatchError::WrongStatus {
            product_id,
            status: product.match_status,
            action,
        })
    }
}

fn claimant(caller: &Principal) -> Claimant<'_> {
    Claimant {
        name: &caller.name,
        token_id: caller.token_id,
        admin: caller.is_admin(),
    }
}

fn check_product(product: ProductRef) -> Result<(), MatchError> {
    if product.id <= 0 {
        return Err(invalid(
            "product_id",
            format!("product_id is {}; it must be > 0", product.id),
        ));
    }
    if let Some(store_id) = product.store_id
        && store_id <= 0
    {
        return Err(invalid(
            "store_id",
            format!("store_id is {store_id}; it must be > 0 when given"),
        ));
    }
    Ok(())
}

fn invalid(field: &str, description: impl Into<String>) -> MatchError {
    MatchError::Invalid(Violations::single(Violation::new(field, description)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_catalog_item_is_refused() {
        let empty = CatalogItem::from_wire(Some(pb::CatalogItem::default())).unwrap_err();
        assert_eq!(empty.kept()[0].field, "catalog_item.id");
        let missing = CatalogItem::from_wire(None).unwrap_err();
        assert_eq!(missing.kept()[0].field, "catalog_item");
    }

    #[test]
    fn vintage_is_a_year_or_nv() {
        for (vintage, ok) in [
            ("2019", true),
            ("NV", true),
            ("", true),
            ("19", false),
            ("nv", false),
        ] {
            let item = pb::CatalogItem {
                id: 1,
                vintage: vintage.into(),
                ..pb::CatalogItem::default()
            };
            assert_eq!(
                CatalogItem::from_wire(Some(item)).is_ok(),
                ok,
                "{vintage:?}"
            );
        }
    }
}
