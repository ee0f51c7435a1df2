//! One sync from its first message to its commit.
//!
//! The gRPC handler feeds a [`SyncSession`] as messages arrive; the session validates each
//! product and hands the valid ones to a worker task that owns a database connection and
//! stages them. Memory stays flat whatever the size of the sync: only a few batches are in
//! the queue between the two, and backpressure slows the client down when the database is
//! slower. When the client half-closes, the worker checks the batch as a whole and merges it
//! in one transaction. If the session is dropped first (the client cancelled, the stream
//! broke, the server shut down), the worker sees its queue close and discards everything.

use std::sync::Arc;
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tracing::{Instrument, Span, info, warn};

use super::{
    FieldError, MAX_LISTED_REJECTIONS, ProductChange, Rejection, StagedProduct, SyncCounts,
    SyncError, SyncLimits, SyncOptions, SyncSummary, Violation, Violations,
};
use crate::activity::Activity;
use crate::pb;
use crate::store::{BatchConflict, Database, MergeOutcome, MergeRequest, Staging};

/// Batches waiting between the handler and the worker; bounds memory per sync.
const STAGING_QUEUE_DEPTH: usize = 4;

/// Starts syncs, at most `max_concurrent_syncs` at a time.
#[derive(Debug, Clone)]
pub struct SyncEngine {
    database: Database,
    activity: Activity,
    limits: SyncLimits,
    turns: Arc<Semaphore>,
}

impl SyncEngine {
    pub fn new(database: Database, activity: Activity, limits: SyncLimits) -> Self {
        let turns = Arc::new(Semaphore::new(limits.max_concurrent_syncs));
        SyncEngine {
            database,
            activity,
            limits,
            turns,
        }
    }

    pub fn limits(&self) -> &SyncLimits {
        &self.limits
    }

    /// Opens a sync: waits for its turn (a bounded time), then opens a staging area on a
    /// connection of its own and starts the worker that fills it.
    pub async fn begin(&self, options: SyncOptions) -> Result<SyncSession, SyncError> {
        let sync_id = uuid::Uuid::now_v7().to_string();
        let span = tracing::info_span!("sync", store_id = options.store_id, sync_id = %sync_id);
        let waited = self.limits.queue_timeout;
        let turn = match tokio::time::timeout(waited, self.turns.clone().acquire_owned()).await {
            Ok(Ok(turn)) => turn,
            // The semaphore is never closed; a timeout is the only way to get here in practice.
            Ok(Err(_)) | Err(_) => {
                let limit = self.limits.max_concurrent_syncs;
                span.in_scope(|| warn!(limit, ?waited, "sync refused: no turn came up in time"));
                return Err(SyncError::Busy { limit, waited });
            }
        };
        let staging = self
            .database
            .open_staging(options.store_id, options.key)
            .instrument(span.clone())
            .await?;
        let (commands, queue) = mpsc::channel(STAGING_QUEUE_DEPTH);
        let worker = Worker {
            staging,
            queue,
            options: options.clone(),
            limits: self.limits.clone(),
            in_flight: self.activity.start_sync(),
            _turn: turn,
        };
        let worker = tokio::spawn(worker.run().instrument(span.clone()));
        span.in_scope(|| {
            info!(
                key = ?options.key,
                clear = options.clear,
                dry_run = options.dry_run,
                "sync started"
            )
        });
        Ok(SyncSession {
            sync_id,
            options,
            limits: self.limits.clone(),
            span,
            received: 0,
            violations: Violations::with_cap(self.limits.max_violations),
            rejections: Rejections::default(),
            commands,
            worker,
        })
    }
}

/// What the handler tells the worker.
enum Command {
    /// Stage these valid products; `received` counts every product of the message.
    Stage {
        products: Vec<StagedProduct>,
        received: u64,
    },
    /// The client half-closed: check and merge.
    Finish {
        received: u64,
        violations: Violations,
        rejections: Rejections,
    },
}

/// Products skipped by `skip_invalid`: the first [`MAX_LISTED_REJECTIONS`] kept, all counted.
#[derive(Debug, Default)]
struct Rejections {
    kept: Vec<Rejection>,
    total: u64,
}

impl Rejections {
    fn push(&mut self, rejection: Rejection) {
        self.total += 1;
        if self.kept.len() < MAX_LISTED_REJECTIONS {
            self.kept.push(rejection);
        }
    }

    /// A product skipped because its fields are invalid.
    fn invalid_fields(&mut self, index: u64, external_id: String, errors: Vec<FieldError>) {
        let field = errors
            .first()
            .map(|error| error.field.clone())
            .unwrap_or_default();
        let reason = errors
            .into_iter()
            .map(|error| error.description)
            .collect::<Vec<_>>()
            .join("; ");
        self.push(Rejection {
            index,
            external_id,
            field,
            reason,
        });
    }

    /// A product skipped because it conflicts with another product.
    fn conflict(&mut self, conflict: BatchConflict) {
        let external_id = match &conflict {
            BatchConflict::DuplicateExternalId { external_id, .. }
            | BatchConflict::ExternalIdOfAnotherProduct { external_id, .. } => external_id.clone(),
            BatchConflict::ExternalIdMismatch { sent, .. } => sent.clone(),
            _ => String::new(),
        };
        let violation = Violation::from(conflict);
        let field = violation
            .field
            .split_once('.')
            .map(|(_, field)| field.to_owned())
            .unwrap_or_default();
        self.push(Rejection {
            index: violation.index.unwrap_or_default(),
            external_id,
            field,
            reason: violation.description,
        });
    }
}

/// What the worker reports of a completed merge.
struct Merged {
    counts: SyncCounts,
    rejections: Rejections,
}

/// The handler's side of one sync.
pub struct SyncSession {
    sync_id: String,
    options: SyncOptions,
    limits: SyncLimits,
    span: Span,
    received: u64,
    violations: Violations,
    rejections: Rejections,
    commands: mpsc::Sender<Command>,
    worker: JoinHandle<Result<Merged, SyncError>>,
}

impl SyncSession {
    /// The span every log line of this sync belongs to.
    pub fn span(&self) -> &Span {
        &self.span
    }

    pub fn sync_id(&self) -> &str {
        &self.sync_id
    }

    /// Takes the products of one message: validates each, queues the valid ones for
    /// staging and remembers what is wrong with the others.
    pub async fn receive(&mut self, products: Vec<pb::ProductUpdate>) -> Result<(), SyncError> {
        let count = products.len() as u64;
        if self.received + count > self.limits.max_products {
            return Err(SyncError::TooManyProducts {
                limit: self.limits.max_products,
            });
        }
        let (key, fields) = (self.options.key, &self.limits.fields);
        let mut valid = Vec::with_capacity(products.len());
        for (offset, update) in products.into_iter().enumerate() {
            let index = self.received + offset as u64;
            // A skipped product's key still counts as listed; keep it to stage that.
            let key_fields = self
                .options
                .skip_invalid
                .then(|| (update.external_id.clone(), update.barcodes.clone()));
            match ProductChange::from_wire(update, key, fields) {
                Ok(change) => valid.push(StagedProduct {
                    index,
                    change,
                    skipped: false,
                }),
                Err(errors) => match key_fields {
                    Some((external_id, barcodes)) => {
                        let key_only =
                            ProductChange::key_only(external_id.clone(), barcodes, key, fields);
                        if let Some(change) = key_only {
                            valid.push(StagedProduct {
                                index,
                                change,
                                skipped: true,
                            });
                        }
                        self.rejections.invalid_fields(index, external_id, errors);
                    }
                    None => {
                        for error in errors {
                            self.violations.push(Violation::in_product(index, error));
                        }
                    }
                },
            }
        }
        self.received += count;
        // Once the sync is known to fail, staging more is wasted work; validation goes on
        // so that the client hears of every problem at once.
        if !self.violations.is_empty() {
            valid.clear();
        }
        let command = Command::Stage {
            products: valid,
            received: count,
        };
        if self.commands.send(command).await.is_err() {
            // The worker stopped early, which it only does on an error: report that.
            return Err(self.worker_error().await);
        }
        Ok(())
    }

    /// Records a problem found outside the products, such as a header on a later message.
    pub fn reject(&mut self, violation: Violation) {
        self.violations.push(violation);
    }

    /// The client half-closed: checks the whole batch and commits it (or, for a dry run,
    /// computes the counts and rolls back).
    pub async fn finish(mut self) -> Result<SyncSummary, SyncError> {
        let command = Command::Finish {
            received: self.received,
            violations: std::mem::replace(&mut self.violations, Violations::with_cap(0)),
            rejections: std::mem::take(&mut self.rejections),
        };
        if self.commands.send(command).await.is_err() {
            return Err(self.worker_error().await);
        }
        // Keep `commands` open until the worker is done: if this future is dropped, the
        // closed queue tells the worker that nobody waits for the result any more.
        let Merged { counts, rejections } = join(&mut self.worker).await?;
        let mut rejected = rejections.kept;
        rejected.sort_by_key(|rejection| rejection.index);
        Ok(SyncSummary {
            sync_id: self.sync_id.clone(),
            counts,
            rejected,
            dry_run: self.options.dry_run,
        })
    }

    async fn worker_error(&mut self) -> SyncError {
        match join(&mut self.worker).await {
            Err(error) => error,
            Ok(_) => SyncError::Worker("the worker ended before the sync did".to_owned()),
        }
    }
}

async fn join(worker: &mut JoinHandle<Result<Merged, SyncError>>) -> Result<Merged, SyncError> {
    worker
        .await
        .map_err(|error| SyncError::Worker(error.to_string()))?
}

/// The database side of one sync; runs as a task of its own.
struct Worker {
    staging: Staging,
    queue: mpsc::Receiver<Command>,
    options: SyncOptions,
    limits: SyncLimits,
    in_flight: crate::activity::SyncInFlight,
    /// Held until the worker ends, so the next sync's turn comes only then.
    _turn: OwnedSemaphorePermit,
}

impl Worker {
    async fn run(mut self) -> Result<Merged, SyncError> {
        let result = self.stage_and_merge().await;
        match &result {
            Ok(Merged { counts, .. }) => info!(
                received = counts.received,
                created = counts.created,
                updated = counts.updated,
                unchanged = counts.unchanged,
                cleared = counts.cleared,
                linked = counts.linked,
                rejected = counts.rejected,
                dry_run = self.options.dry_run,
                "sync {}",
                if self.options.dry_run {
                    "checked (dry run)"
                } else {
                    "committed"
                }
            ),
            Err(SyncError::Abandoned) => warn!("sync abandoned by the client; nothing committed"),
            Err(error @ (SyncError::Store(_) | SyncError::Worker(_))) => {
                tracing::error!(%error, "sync failed; nothing committed")
            }
            Err(error) => info!(%error, "sync refused; nothing committed"),
        }
        self.staging.close().await;
        result
    }

    async fn stage_and_merge(&mut self) -> Result<Merged, SyncError> {
        // The staging area takes the batches as one stream, so a backend can keep a single
        // bulk load open for the whole upload; the stream ends at the client's half-close
        // (a Finish) or when the client goes away (the queue closes).
        let mut finish = None;
        let batches = futures::stream::poll_fn(|context| match self.queue.poll_recv(context) {
            Poll::Ready(Some(Command::Stage { products, received })) => {
                self.in_flight.received(received);
                Poll::Ready(Some(products))
            }
            Poll::Ready(Some(Command::Finish {
                received,
                violations,
                rejections,
            })) => {
                finish = Some((received, violations, rejections));
                Poll::Ready(None)
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        });
        self.staging.stage_all(batches).await?;
        match finish {
            Some((received, violations, rejections)) => {
                self.staging.prepare_checks().await?;
                self.merge(received, violations, rejections).await
            }
            None => Err(SyncError::Abandoned),
        }
    }

    async fn merge(
        &mut self,
        received: u64,
        mut violations: Violations,
        mut rejections: Rejections,
    ) -> Result<Merged, SyncError> {
        if let Some(expected) = self.options.expected_count
            && expected != received
        {
            return Err(SyncError::CountMismatch { expected, received });
        }
        if self.options.skip_invalid {
            for conflict in self.staging.skip_batch_conflicts().await? {
                rejections.conflict(conflict);
            }
        } else if violations.room() > 0 {
            for conflict in self.staging.batch_conflicts(violations.room()).await? {
                violations.push(conflict.into());
            }
        }
        if !violations.is_empty() {
            violations.sort();
            return Err(SyncError::Invalid(violations));
        }

        let request = MergeRequest {
            store_id: self.options.store_id,
            key: self.options.key,
            clear: self.options.clear,
            dry_run: self.options.dry_run,
            now: now_micros(),
            max_conflicts: self.limits.max_violations,
            skip_invalid: self.options.skip_invalid,
            max_clear_fraction: (!self.options.allow_mass_clear)
                .then_some(self.limits.max_clear_fraction),
        };
        let queue = &self.queue;
        match self.staging.merge(&request, || queue.is_closed()).await? {
            MergeOutcome::Applied { counts, skipped } => {
                for conflict in skipped {
                    rejections.conflict(conflict);
                }
                let written = counts.created + counts.updated + rejections.total;
                let unchanged = received.checked_sub(written).ok_or_else(|| {
                    SyncError::Worker(format!(
                        "counts disagree: {written} written or rejected of {received} received"
                    ))
                })?;
                Ok(Merged {
                    counts: SyncCounts {
                        received,
                        created: counts.created,
                        updated: counts.updated,
                        unchanged,
                        cleared: counts.cleared,
                        linked: counts.linked,
                        rejected: rejections.total,
                    },
                    rejections,
                })
            }
            MergeOutcome::Conflicts(conflicts) => {
                let mut violations = Violations::with_cap(self.limits.max_violations);
                for conflict in conflicts {
                    violations.push(conflict.into());
                }
                Err(SyncError::Invalid(violations))
            }
            MergeOutcome::Abandoned => Err(SyncError::Abandoned),
            MergeOutcome::MassClear {
                would_clear,
                in_stock,
            } => Err(SyncError::MassClear {
                would_clear,
                in_stock,
                percent: (self.limits.max_clear_fraction * 100.0).round() as u32,
            }),
        }
    }
}

/// Microseconds since the Unix epoch.
pub(crate) fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as i64)
        .unwrap_or_default()
}
