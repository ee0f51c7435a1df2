//! The one place where errors become `tonic::Status`. Input problems are explained to the
//! client in detail; internal failures are logged with their context and answered without
//! any SQL, path or driver message.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::AuthError;
use crate::matching::MatchError;
use crate::quote::truncate_bytes;
use crate::store::StoreError;
use crate::sync::{SyncError, Violation, Violations};

/// A sync's failures are logged by the sync, with its store and sync ids; here they only
/// become statuses.
impl From<SyncError> for Status {
    fn from(error: SyncError) -> Self {
        match error {
            SyncError::Invalid(violations) => invalid_argument(&violations),
            SyncError::Store(error) => store_status(&error),
            SyncError::Worker(_) => Status::internal(INTERNAL),
            error => bounded(sync_error_code(&error), error.to_string()),
        }
    }
}

/// Longest status message, in bytes. A message travels in a trailer, twice (as
/// `grpc-message` and inside `grpc-status-details-bin`); grpc-core clients refuse a trailer
/// block over 8 KiB by default and then lose the whole answer.
pub(crate) const MAX_STATUS_MESSAGE_BYTES: usize = 1024;

/// A status whose message is cut to [`MAX_STATUS_MESSAGE_BYTES`].
pub(crate) fn bounded(code: Code, message: impl Into<String>) -> Status {
    Status::new(
        code,
        truncate_bytes(message.into(), MAX_STATUS_MESSAGE_BYTES),
    )
}

const INTERNAL: &str = "internal error; the server log has the details";

fn sync_error_code(error: &SyncError) -> Code {
    match error {
        SyncError::Invalid(_) => Code::InvalidArgument,
        SyncError::CountMismatch { .. }
        | SyncError::MassClear { .. }
        | SyncError::IdempotencyKeyReused { .. } => Code::FailedPrecondition,
        SyncError::TooManyProducts { .. }
        | SyncError::Busy { .. }
        | SyncError::StoreBusy { .. }
        | SyncError::TokenBusy { .. }
        | SyncError::MessageTooLarge { .. } => Code::ResourceExhausted,
        SyncError::Revoked => Code::Unauthenticated,
        SyncError::Abandoned
        | SyncError::StreamFailed {
            cancelled: true, ..
        } => Code::Cancelled,
        SyncError::StreamFailed { .. } => Code::Unknown,
        SyncError::Idle(_) | SyncError::TooLong(_) => Code::DeadlineExceeded,
        SyncError::Store(error) if error.is_unavailable() => Code::Unavailable,
        SyncError::Store(error) if error.is_contention() => Code::Aborted,
        // Its client saw the connection break.
        SyncError::ServerStopped => Code::Unavailable,
        SyncError::Store(_) | SyncError::Worker(_) => Code::Internal,
    }
}

/// The status code and message a client gets for a failed sync, for the sync history
/// (without logging: the failure is logged where it is answered).
pub(crate) fn describe_sync_error(error: &SyncError) -> (i32, String) {
    let code = sync_error_code(error);
    let message = match error {
        SyncError::Store(error) if error.is_unavailable() => UNAVAILABLE.to_owned(),
        SyncError::Store(error) if error.is_contention() => CONTENTION.to_owned(),
        SyncError::Store(_) | SyncError::Worker(_) => INTERNAL.to_owned(),
        error => error.to_string(),
    };
    (
        code as i32,
        truncate_bytes(message, MAX_STATUS_MESSAGE_BYTES),
    )
}

const UNAVAILABLE: &str = "the database is unavailable; retry later";
const CONTENTION: &str = "the database kept aborting this to keep concurrent work serializable; \
     nothing of it was applied: retry (a sync with the same idempotency key)";

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Missing | AuthError::Invalid => {
                bounded(Code::Unauthenticated, error.to_string())
            }
            AuthError::StoreDenied { .. } | AuthError::RoleDenied { .. } => {
                bounded(Code::PermissionDenied, error.to_string())
            }
            AuthError::Store(error) => error.into(),
        }
    }
}

impl From<MatchError> for Status {
    fn from(error: MatchError) -> Self {
        match error {
            MatchError::Invalid(violations) => invalid_argument(&violations),
            MatchError::NotFound { .. } => bounded(Code::NotFound, error.to_string()),
            MatchError::WrongStatus { .. } => bounded(Code::FailedPrecondition, error.to_string()),
            MatchError::NotYours { .. } => bounded(Code::PermissionDenied, error.to_string()),
            MatchError::Store(error) => error.into(),
        }
    }
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        tracing::error!(%error, "database operation failed");
        store_status(&error)
    }
}

/// What a client is told of a database failure: whether to retry, never the SQL.
fn store_status(error: &StoreError) -> Status {
    if error.is_unavailable() {
        Status::unavailable(UNAVAILABLE)
    } else if error.is_contention() {
        Status::aborted(CONTENTION)
    } else {
        Status::internal(INTERNAL)
    }
}

/// How many bytes of violations go into the `BadRequest` detail. It travels base64-encoded
/// in a trailer next to the status message (which it holds once more), and grpc-core
/// clients take trailer blocks of up to 8 KiB by default (above that they may turn the
/// whole answer into `RESOURCE_EXHAUSTED`): 3 KiB of detail and 1 KiB of message, twice,
/// base64- and percent-encoded, stay under that.
const DETAIL_BUDGET: usize = 3 * 1024;

/// `INVALID_ARGUMENT` with a `google.rpc.BadRequest` detail naming the listed violations,
/// as many as fit in [`DETAIL_BUDGET`].
pub(crate) fn invalid_argument(violations: &Violations) -> Status {
    let mut details = ErrorDetails::new();
    let mut budget = DETAIL_BUDGET;
    let mut listed = 0;
    for violation in violations.kept() {
        // Each entry also costs a few bytes of protobuf framing.
        let size = violation.field.len() + violation.description.len() + 8;
        if size > budget {
            break;
        }
        budget -= size;
        listed += 1;
        details.add_bad_request_violation(violation.field.clone(), violation.description.clone());
    }
    let message = truncate_bytes(violations.summary(listed), MAX_STATUS_MESSAGE_BYTES);
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// `INVALID_ARGUMENT` for one bad request field.
pub(crate) fn invalid_field(field: &str, description: impl Into<String>) -> Status {
    invalid_argument(&Violations::single(Violation::new(field, description)))
}
