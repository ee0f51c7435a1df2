//! One sync from its first message to its commit.
//!
//! The gRPC handler feeds a [`SyncSession`] as messages arrive; the session validates each
//! product and hands the valid ones to a worker task that owns a database connection and
//! stages them. Memory stays flat whatever the size of the sync: only a few batches are in
//! the queue between the two, and backpressure slows the client down when the database is
//! slower. When the client half-closes, the worker checks the batch as a whole and merges it
//! in one transaction. If the session is dropped first (the client cancelled, the stream
//! broke, the server shut down), the worker sees its queue close and discards everything.

use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Instant;

use prost::Message;
use sha2::{Digest, Sha256};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{Instrument, Span, info, warn};

use super::admission::{Admission, Turn};
use super::{
    FieldError, MAX_LISTED_REJECTIONS, ProductChange, Rejection, StagedProduct, SyncCounts,
    SyncError, SyncLimits, SyncOptions, SyncSummary, Violation, Violations,
};
use crate::activity::Activity;
use crate::clock::now_micros;
use crate::metrics::Metrics;
use crate::pb;
use crate::quote::{shortened, truncate_bytes};
use crate::store::{
    BatchConflict, Database, IdempotencyCheck, MergeOutcome, MergeRequest, MergeRun, NewSyncRun,
    RunEnding, RunOutcome, Staging, SyncRunRecord,
};

/// How the edge answers a failed sync: its status code and message. The history records
/// both; the sync layer itself knows nothing of gRPC codes.
pub type DescribeError = fn(&SyncError) -> (i32, String);

/// Longest external id that can be valid, in bytes (128 characters of up to 4 bytes).
const MAX_EXTERNAL_ID_BYTES: usize = super::MAX_EXTERNAL_ID_CHARS * 4;

/// Batches waiting between the handler and the worker; bounds memory per sync.
const STAGING_QUEUE_DEPTH: usize = 4;

/// Starts syncs, at most `max_concurrent_syncs` at a time.
#[derive(Debug, Clone)]
pub struct SyncEngine {
    database: Database,
    activity: Activity,
    limits: SyncLimits,
    admission: Admission,
    describe: DescribeError,
    metrics: Metrics,
}

impl SyncEngine {
    pub fn new(
        database: Database,
        activity: Activity,
        limits: SyncLimits,
        describe: DescribeError,
        metrics: Metrics,
    ) -> Self {
        SyncEngine {
            database,
            activity,
            admission: Admission::new(&limits),
            limits,
            describe,
            metrics,
        }
    }

    pub fn limits(&self) -> &SyncLimits {
        &self.limits
    }

    /// Opens a sync sent by `sender`: takes its store's and token's seat (or refuses it at
    /// once), records its run, waits for its turn (a bounded time), then opens a staging area
    /// on a connection of its own and starts the worker that fills it.
    pub async fn begin(
        &self,
        options: SyncOptions,
        sender: Sender<'_>,
    ) -> Result<SyncSession, SyncError> {
        let started = Instant::now();
        let sync_id = uuid::Uuid::now_v7().to_string();
        let span = tracing::info_span!("sync", store_id = options.store_id, sync_id = %sync_id);
        let token_name = sender.token_name;
        let seat = match self.admission.seat(options.store_id, sender.token_id) {
            Ok(seat) => seat,
            Err(error) => {
                // Refused before it cost a history row: a client retrying in a loop must
                // not fill the store's history.
                span.in_scope(|| warn!(%error, "sync refused"));
                self.metrics.sync_ended(
                    outcome_label(RunOutcome::Rejected),
                    None,
                    started.elapsed(),
                );
                return Err(error);
            }
        };
        let run = NewSyncRun {
            id: &sync_id,
            store_id: options.store_id,
            started_at: now_micros(),
            clear: options.clear,
            dry_run: options.dry_run,
            key_field: match options.key {
                super::SyncKey::ExternalId => pb::KeyField::ExternalId as i32,
                super::SyncKey::Barcode => pb::KeyField::Barcode as i32,
            },
            skip_invalid: options.skip_invalid,
            allow_mass_clear: options.allow_mass_clear,
            expected_count: options.expected_count,
            idempotency_key: options.idempotency_key.as_deref(),
            token_name,
        };
        if let Err(error) = self
            .database
            .insert_sync_run(&run)
            .instrument(span.clone())
            .await
        {
            span.in_scope(|| tracing::error!(%error, "could not record the sync's start"));
            return Err(error.into());
        }
        let history = RunHistory {
            database: self.database.clone(),
            store_id: options.store_id,
            sync_id: sync_id.clone(),
            describe: self.describe,
        };
        let refused = |error: SyncError| async {
            self.metrics
                .sync_ended(outcome_label(RunOutcome::Rejected), None, started.elapsed());
            history
                .record(history.ending(&error, RunOutcome::Rejected))
                .instrument(span.clone())
                .await;
            error
        };
        let turn = match self.admission.turn(seat).await {
            Ok(turn) => turn,
            Err(error) => {
                span.in_scope(|| warn!(%error, "sync refused: no turn came up in time"));
                return Err(refused(error).await);
            }
        };
        let staging = match self
            .database
            .open_staging(options.store_id, options.key)
            .instrument(span.clone())
            .await
        {
            Ok(staging) => staging,
            Err(error) => {
                span.in_scope(|| tracing::error!(%error, "could not open the sync's staging"));
                return Err(refused(error.into()).await);
            }
        };
        let ended_early = Arc::new(Mutex::new(None));
        let (commands, queue) = mpsc::channel(STAGING_QUEUE_DEPTH);
        let worker = Worker {
            staging,
            queue,
            options: options.clone(),
            limits: self.limits.clone(),
            in_flight: self.activity.start_sync(),
            database: self.database.clone(),
            history: history.clone(),
            ended_early: ended_early.clone(),
            metrics: self.metrics.clone(),
            started,
            token_id: sender.token_id,
            _turn: turn,
        };
        let heartbeat = tokio::spawn(
            keep_alive(
                self.database.clone(),
                options.store_id,
                sync_id.clone(),
                self.limits.heartbeat,
            )
            .instrument(span.clone()),
        );
        let worker = tokio::spawn(
            async move {
                let result = worker.run().await;
                heartbeat.abort();
                result
            }
            .instrument(span.clone()),
        );
        span.in_scope(|| {
            info!(
                key = ?options.key,
                clear = options.clear,
                dry_run = options.dry_run,
                "sync started"
            )
        });
        let content_hash = options
            .idempotency_key
            .is_some()
            .then(|| ContentHash::new(&options));
        Ok(SyncSession {
            sync_id,
            options,
            limits: self.limits.clone(),
            span,
            received: 0,
            violations: Violations::with_cap(self.limits.max_violations),
            rejections: Rejections::default(),
            content_hash,
            history,
            ended_early,
            commands,
            worker: Some(worker),
            _awaited: self.activity.await_sync(),
        })
    }
}

/// The fingerprint of a sync's content for its idempotency key: its options and every
/// product as sent, in order.
struct ContentHash(Sha256);

impl ContentHash {
    fn new(options: &SyncOptions) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(format!(
            "store={} clear={} key={:?} dry_run={} skip_invalid={} allow_mass_clear={} \
             expected_count={:?}\n",
            options.store_id,
            options.clear,
            options.key,
            options.dry_run,
            options.skip_invalid,
            options.allow_mass_clear,
            options.expected_count
        ));
        ContentHash(hasher)
    }

    fn add(&mut self, product: &pb::ProductUpdate) {
        self.0.update(product.encode_length_delimited_to_vec());
    }

    fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

/// Writes how a sync's history run ended.
#[derive(Clone)]
struct RunHistory {
    database: Database,
    store_id: i64,
    sync_id: String,
    describe: DescribeError,
}

impl RunHistory {
    fn ending(&self, error: &SyncError, outcome: RunOutcome) -> RunEnding {
        let (status_code, status_message) = (self.describe)(error);
        RunEnding {
            finished_at: now_micros(),
            outcome: Some(outcome),
            status_code,
            status_message,
            ..RunEnding::default()
        }
    }

    /// Records the ending; a failure to is logged, never the sync's own failure.
    async fn record(&self, ending: RunEnding) {
        if let Err(error) = self
            .database
            .end_sync_run(self.store_id, &self.sync_id, &ending)
            .await
        {
            warn!(%error, "could not record how the sync ended in its history");
        }
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
        request_hash: Option<String>,
    },
}

/// Products skipped by `skip_invalid`: the first [`MAX_LISTED_REJECTIONS`] kept, within
/// [`MAX_LISTED_REJECTION_BYTES`], all counted.
#[derive(Debug, Default)]
struct Rejections {
    kept: Vec<Rejection>,
    /// Bytes of text the kept rejections hold.
    kept_bytes: usize,
    total: u64,
}

/// Most bytes of text the listed rejections of one sync hold: what the server keeps while
/// the sync runs and what its answer carries stay far below a client's default 4 MiB.
const MAX_LISTED_REJECTION_BYTES: usize = 256 * 1024;

/// Longest reason of one rejection, in bytes.
const MAX_REJECTION_REASON_BYTES: usize = 512;

impl Rejections {
    fn push(&mut self, mut rejection: Rejection) {
        self.total += 1;
        rejection.external_id = shortened(&rejection.external_id);
        rejection.reason = truncate_bytes(rejection.reason, MAX_REJECTION_REASON_BYTES);
        let bytes = rejection.external_id.len() + rejection.field.len() + rejection.reason.len();
        if self.kept.len() < MAX_LISTED_REJECTIONS
            && self.kept_bytes + bytes <= MAX_LISTED_REJECTION_BYTES
        {
            self.kept_bytes += bytes;
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

/// The key of a product that failed validation in a `skip_invalid` sync.
struct SkippedKey {
    /// The external id as the rejection shows it.
    shown_id: String,
    /// The external id, unless it is too long to be valid.
    external_id: Option<String>,
    barcodes: Vec<String>,
}

/// What the worker reports of a completed merge.
struct Merged {
    counts: SyncCounts,
    rejections: Rejections,
    /// A replayed idempotency key: the committed run answered instead.
    replay_of: Option<String>,
    request_hash: Option<String>,
}

impl Merged {
    fn replay(run: SyncRunRecord, request_hash: String) -> Self {
        Merged {
            counts: run.counts.into(),
            rejections: Rejections::default(),
            replay_of: Some(run.id),
            request_hash: Some(request_hash),
        }
    }

    /// What the history records of it, unless the merge recorded it itself (committed).
    fn ending(&self, dry_run: bool) -> Option<RunEnding> {
        let outcome = if self.replay_of.is_some() {
            RunOutcome::Replayed
        } else if dry_run {
            RunOutcome::DryRun
        } else {
            return None;
        };
        Some(RunEnding {
            finished_at: now_micros(),
            outcome: Some(outcome),
            counts: self.counts.into(),
            request_hash: self.request_hash.clone(),
            replay_of: self.replay_of.clone(),
            ..RunEnding::default()
        })
    }
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
    /// Kept when the sync has an idempotency key.
    content_hash: Option<ContentHash>,
    history: RunHistory,
    /// How the sync ended, when the handler ended it (the worker only sees its queue close).
    ended_early: Arc<Mutex<Option<RunEnding>>>,
    commands: mpsc::Sender<Command>,
    /// Taken when joined: a finished task's result can be taken once.
    worker: Option<JoinHandle<Result<Merged, SyncError>>>,
    /// Declared last, so it is dropped after `commands`: once it no longer counts, the
    /// worker has been told that nobody waits.
    _awaited: crate::activity::SyncAwaited,
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
        if let Some(hash) = &mut self.content_hash {
            for product in &products {
                hash.add(product);
            }
        }
        let (key, fields) = (self.options.key, &self.limits.fields);
        let mut valid = Vec::with_capacity(products.len());
        for (offset, update) in products.into_iter().enumerate() {
            let index = self.received + offset as u64;
            // A skipped product's key still counts as listed; keep it to stage that. A key
            // too long to be valid is not copied: a hostile megabyte id costs nothing more.
            let key_fields = self.options.skip_invalid.then(|| SkippedKey {
                shown_id: shortened(&update.external_id),
                external_id: (update.external_id.len() <= MAX_EXTERNAL_ID_BYTES)
                    .then(|| update.external_id.clone()),
                barcodes: update.barcodes.clone(),
            });
            match ProductChange::from_wire(update, key, fields) {
                Ok(change) => valid.push(StagedProduct {
                    index,
                    change,
                    skipped: false,
                }),
                Err(errors) => match key_fields {
                    Some(skipped) => {
                        let key_only = ProductChange::key_only(
                            skipped.external_id.unwrap_or_default(),
                            skipped.barcodes,
                            key,
                            fields,
                        );
                        if let Some(change) = key_only {
                            valid.push(StagedProduct {
                                index,
                                change,
                                skipped: true,
                            });
                        }
                        self.rejections
                            .invalid_fields(index, skipped.shown_id, errors);
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
            request_hash: self.content_hash.take().map(ContentHash::finish),
        };
        if self.commands.send(command).await.is_err() {
            return Err(self.worker_error().await);
        }
        // Keep `commands` open until the worker is done: if this future is dropped, the
        // closed queue tells the worker that nobody waits for the result any more.
        let Merged {
            counts,
            rejections,
            replay_of,
            ..
        } = self.join_worker().await?;
        let mut rejected = rejections.kept;
        rejected.sort_by_key(|rejection| rejection.index);
        let replayed = replay_of.is_some();
        Ok(SyncSummary {
            // A replay repeats the committed answer, sync id included.
            sync_id: replay_of.unwrap_or_else(|| self.sync_id.clone()),
            counts,
            rejected,
            dry_run: self.options.dry_run && !replayed,
            replayed,
        })
    }

    /// Ends the sync without a commit, for a reason the handler saw (`Abandoned` for a
    /// broken stream, `Idle`, a limit); waits until the history says so.
    pub async fn abandon(self, error: SyncError) -> SyncError {
        let outcome = match error {
            SyncError::Abandoned
            | SyncError::StreamFailed {
                cancelled: true, ..
            } => RunOutcome::Aborted,
            SyncError::Idle(_) | SyncError::TooLong(_) => RunOutcome::TimedOut,
            _ => RunOutcome::Rejected,
        };
        let ending = self.history.ending(&error, outcome);
        self.end_early(ending).await;
        error
    }

    async fn end_early(mut self, ending: RunEnding) {
        *self.ended_early.lock().expect("the lock is never poisoned") = Some(ending);
        let worker = self.worker.take();
        drop(self);
        // Dropping the session closed the queue. The worker may have been joined already
        // (it failed first); then it is done.
        if let Some(worker) = worker {
            let _ = worker.await;
        }
    }

    async fn worker_error(&mut self) -> SyncError {
        match self.join_worker().await {
            Err(error) => error,
            Ok(_) => SyncError::Worker("the worker ended before the sync did".to_owned()),
        }
    }

    async fn join_worker(&mut self) -> Result<Merged, SyncError> {
        let worker = self
            .worker
            .take()
            .ok_or_else(|| SyncError::Worker("the worker was joined already".to_owned()))?;
        worker.await.map_err(|error| {
            tracing::error!(%error, "the sync's worker failed");
            SyncError::Worker(error.to_string())
        })?
    }
}

/// The database side of one sync; runs as a task of its own.
struct Worker {
    staging: Box<dyn Staging>,
    queue: mpsc::Receiver<Command>,
    options: SyncOptions,
    limits: SyncLimits,
    in_flight: crate::activity::SyncInFlight,
    database: Database,
    history: RunHistory,
    ended_early: Arc<Mutex<Option<RunEnding>>>,
    metrics: Metrics,
    /// When the sync's first message arrived.
    started: Instant,
    /// The token that sent the sync, checked again just before the commit.
    token_id: Option<i64>,
    /// Held until the worker ends, so the next sync's turn comes only then.
    _turn: Turn,
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
        let ending = match &result {
            Ok(merged) => merged.ending(self.options.dry_run),
            Err(SyncError::Abandoned) => {
                let early = self
                    .ended_early
                    .lock()
                    .expect("the lock is never poisoned")
                    .take();
                Some(early.unwrap_or_else(|| {
                    self.history
                        .ending(&SyncError::Abandoned, RunOutcome::Aborted)
                }))
            }
            Err(error) => Some(self.history.ending(error, RunOutcome::Rejected)),
        };
        let outcome = ending
            .as_ref()
            .and_then(|ending| ending.outcome)
            .unwrap_or(RunOutcome::Committed);
        let counts = result.as_ref().ok().map(|merged| &merged.counts);
        self.metrics
            .sync_ended(outcome_label(outcome), counts, self.started.elapsed());
        if let Some(ending) = ending {
            self.history.record(ending).await;
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
                request_hash,
            })) => {
                finish = Some((received, violations, rejections, request_hash));
                Poll::Ready(None)
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        });
        self.staging.stage_all(Box::pin(batches)).await?;
        match finish {
            Some((received, violations, rejections, request_hash)) => {
                info!(received, "upload complete; checking and merging");
                self.in_flight.merging();
                self.merge(received, violations, rejections, request_hash)
                    .await
            }
            None => Err(SyncError::Abandoned),
        }
    }

    async fn merge(
        &mut self,
        received: u64,
        mut violations: Violations,
        mut rejections: Rejections,
        request_hash: Option<String>,
    ) -> Result<Merged, SyncError> {
        if let Some(expected) = self.options.expected_count
            && expected != received
        {
            return Err(SyncError::CountMismatch { expected, received });
        }
        // A batch that is failing anyway reports its repeats along with its other errors,
        // and skip_invalid must know what to skip; otherwise the merge checks for repeats
        // only when it needs to.
        if self.options.skip_invalid {
            for conflict in self.staging.skip_batch_conflicts().await? {
                rejections.conflict(conflict);
            }
        } else if !violations.is_empty() && violations.room() > 0 {
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
            run: MergeRun {
                sync_id: self.history.sync_id.clone(),
                received,
                rejected_before: rejections.total,
            },
            idempotency: self
                .options
                .idempotency_key
                .clone()
                .zip(request_hash.clone())
                .map(|(key, request_hash)| IdempotencyCheck {
                    key,
                    request_hash,
                    not_before: now_micros().saturating_sub(
                        i64::try_from(self.limits.idempotency_retention.as_micros())
                            .unwrap_or(i64::MAX),
                    ),
                }),
        };
        self.check_sender_still_authorized().await?;
        let queue = &self.queue;
        let abandoned = || queue.is_closed();
        match self.staging.merge(&request, &abandoned).await? {
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
                    replay_of: None,
                    request_hash,
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
            MergeOutcome::Replay { run_id } => {
                let run = self
                    .database
                    .sync_run(self.options.store_id, &run_id)
                    .await?
                    .ok_or_else(|| {
                        SyncError::Worker(format!("the replayed run {run_id} is gone"))
                    })?;
                info!(replay_of = %run_id, "idempotency key seen before; replaying its answer");
                Ok(Merged::replay(run, request_hash.unwrap_or_default()))
            }
            MergeOutcome::KeyReused { run_id } => Err(SyncError::IdempotencyKeyReused {
                key: self.options.idempotency_key.clone().unwrap_or_default(),
                run_id,
            }),
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

impl Worker {
    /// A token revoked while its sync uploaded must not commit that sync.
    async fn check_sender_still_authorized(&self) -> Result<(), SyncError> {
        let Some(token_id) = self.token_id else {
            return Ok(());
        };
        match self.database.token(token_id).await? {
            Some(token) if token.revoked_at.is_none() => Ok(()),
            _ => Err(SyncError::Revoked),
        }
    }
}

/// Who sends a sync.
#[derive(Debug, Clone, Copy)]
pub struct Sender<'a> {
    /// The token's name, for the history.
    pub token_name: &'a str,
    /// The token's id; `None` when authentication is off.
    pub token_id: Option<i64>,
}

/// Marks a sync's history run alive every `interval` until aborted.
async fn keep_alive(
    database: Database,
    store_id: i64,
    sync_id: String,
    interval: std::time::Duration,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.tick().await; // the first tick is immediate; the run was just written
    loop {
        ticks.tick().await;
        if let Err(error) = database
            .touch_sync_run(store_id, &sync_id, now_micros())
            .await
        {
            warn!(%error, "could not mark the sync alive in its history");
        }
    }
}

/// Records, every `interval`, the runs of syncs whose server stopped (their heartbeats
/// stopped) as aborted, with the status `describe` gives [`SyncError::ServerStopped`].
/// Every server does it; the UPDATE is idempotent.
pub async fn reap_silent_runs(
    database: Database,
    interval: std::time::Duration,
    describe: DescribeError,
) {
    let silence = interval * super::SILENT_HEARTBEATS;
    let mut ticks = tokio::time::interval(interval);
    let (status_code, status_message) = describe(&SyncError::ServerStopped);
    loop {
        ticks.tick().await;
        let now = now_micros();
        let silent_since =
            now.saturating_sub(i64::try_from(silence.as_micros()).unwrap_or(i64::MAX));
        let ending = RunEnding {
            finished_at: now,
            outcome: Some(RunOutcome::Aborted),
            status_code,
            status_message: status_message.clone(),
            ..RunEnding::default()
        };
        match database.end_silent_sync_runs(silent_since, &ending).await {
            Ok(0) => {}
            Ok(aborted) => info!(aborted, "recorded syncs of a stopped server as aborted"),
            Err(error) => warn!(%error, "could not look for syncs of stopped servers"),
        }
    }
}

/// How an outcome is named in metrics.
fn outcome_label(outcome: RunOutcome) -> &'static str {
    match outcome {
        RunOutcome::Running => "running",
        RunOutcome::Committed => "committed",
        RunOutcome::DryRun => "dry_run",
        RunOutcome::Rejected => "rejected",
        RunOutcome::Aborted => "aborted",
        RunOutcome::TimedOut => "timed_out",
        RunOutcome::Replayed => "replayed",
    }
}
