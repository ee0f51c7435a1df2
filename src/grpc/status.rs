//! The one place where errors become `tonic::Status`. Input problems are explained to the
//! client in detail; internal failures are logged with their context and answered without
//! any SQL, path or driver message.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::AuthError;
use crate::matching::MatchError;
use crate::store::StoreError;
use crate::sync::{SyncError, Violation, Violations};

impl From<SyncError> for Status {
    fn from(error: SyncError) -> Self {
        match error {
            SyncError::Invalid(violations) => invalid_argument(&violations),
            SyncError::Store(error) => error.into(),
            SyncError::Worker(detail) => {
                tracing::error!(%detail, "sync worker failed");
                Status::internal(INTERNAL)
            }
            error => Status::new(sync_error_code(&error), error.to_string()),
        }
    }
}

const INTERNAL: &str = "internal error; the server log has the details";

fn sync_error_code(error: &SyncError) -> Code {
    match error {
        SyncError::Invalid(_) => Code::InvalidArgument,
        SyncError::CountMismatch { .. }
        | SyncError::MassClear { .. }
        | SyncError::IdempotencyKeyReused { .. } => Code::FailedPrecondition,
        SyncError::TooManyProducts { .. } | SyncError::Busy { .. } => Code::ResourceExhausted,
        SyncError::Abandoned => Code::Cancelled,
        SyncError::Idle(_) => Code::DeadlineExceeded,
        SyncError::Store(error) if error.is_unavailable() => Code::Unavailable,
        SyncError::Store(_) | SyncError::Worker(_) => Code::Internal,
    }
}

/// The status code and message a client gets for a failed sync, for the sync history
/// (without logging: the failure is logged where it is answered).
pub(crate) fn describe_sync_error(error: &SyncError) -> (i32, String) {
    let code = sync_error_code(error);
    let message = match error {
        SyncError::Store(error) if error.is_unavailable() => UNAVAILABLE.to_owned(),
        SyncError::Store(_) | SyncError::Worker(_) => INTERNAL.to_owned(),
        error => error.to_string(),
    };
    (code as i32, message)
}

const UNAVAILABLE: &str = "the database is unavailable; retry later";

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Missing | AuthError::Invalid => Status::unauthenticated(error.to_string()),
            AuthError::StoreDenied { .. } | AuthError::RoleDenied { .. } => {
                Status::permission_denied(error.to_string())
            }
            AuthError::Store(error) => error.into(),
        }
    }
}

impl From<MatchError> for Status {
    fn from(error: MatchError) -> Self {
        match error {
            MatchError::Invalid(violations) => invalid_argument(&violations),
            MatchError::NotFound { .. } => Status::not_found(error.to_string()),
            MatchError::WrongStatus { .. } => Status::failed_precondition(error.to_string()),
            MatchError::Store(error) => error.into(),
        }
    }
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        tracing::error!(%error, "database operation failed");
        if error.is_unavailable() {
            Status::unavailable(UNAVAILABLE)
        } else {
            Status::internal(INTERNAL)
        }
    }
}

/// How many bytes of violations go into the `BadRequest` detail. It travels base64-encoded
/// in a trailer, and HTTP/2 clients refuse header blocks over 16 KiB by default (the whole
/// answer would turn into a protocol error), so the detail stops short of that.
const DETAIL_BUDGET: usize = 8 * 1024;

/// `INVALID_ARGUMENT` with a `google.rpc.BadRequest` detail naming the listed violations,
/// as many as fit in [`DETAIL_BUDGET`].
pub(crate) fn invalid_argument(violations: &Violations) -> Status {
    let mut details = ErrorDetails::new();
    let mut budget = DETAIL_BUDGET;
    for violation in violations.kept() {
        // Each entry also costs a few bytes of protobuf framing.
        let size = violation.field.len() + violation.description.len() + 8;
        if size > budget {
            break;
        }
        budget -= size;
        details.add_bad_request_violation(violation.field.clone(), violation.description.clone());
    }
    Status::with_error_details(Code::InvalidArgument, violations.to_string(), details)
}

/// `INVALID_ARGUMENT` for one bad request field.
pub(crate) fn invalid_field(field: &str, description: impl Into<String>) -> Status {
    invalid_argument(&Violations::single(Violation::new(field, description)))
}
