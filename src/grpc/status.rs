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
            SyncError::CountMismatch { .. } => Status::failed_precondition(error.to_string()),
            SyncError::Unimplemented { .. } => Status::unimplemented(error.to_string()),
            SyncError::TooManyProducts { .. } | SyncError::Busy { .. } => {
                Status::resource_exhausted(error.to_string())
            }
            SyncError::MassClear { .. } => Status::failed_precondition(error.to_string()),
            SyncError::Abandoned => Status::cancelled(error.to_string()),
            SyncError::Idle(_) => Status::deadline_exceeded(error.to_string()),
            SyncError::Store(error) => error.into(),
            SyncError::Worker(detail) => {
                tracing::error!(%detail, "sync worker failed");
                Status::internal("internal error; the server log has the details")
            }
        }
    }
}

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
            Status::unavailable("the database is unavailable; retry later")
        } else {
            Status::internal("internal error; the server log has the details")
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
