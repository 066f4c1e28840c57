//! Typed failures of the service tasks and their stable reasons on the wire.

use cerana_protocol::tasks::service::ServiceErrorReason;
use cerana_protocol::TaskError;

/// Why a service task failed. Every variant has one stable [`ServiceErrorReason`].
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("service {0} exists already (set overwrite to replace it)")]
    Exists(String),
    #[error("no service {0}")]
    NotFound(String),
    #[error("{binary:?} is not an executable file in the service's root filesystem{detail}")]
    BinaryMissing { binary: String, detail: String },
    #[error("dataset {0:?} does not exist")]
    DatasetMissing(String),
    #[error("{field} = {value} is out of range ({range})")]
    LimitOutOfRange { field: &'static str, value: u64, range: String },
    #[error("network namespace {0:?} does not exist (no /run/netns/{0})")]
    NetnsMissing(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("root filesystem: {0}")]
    Rootfs(String),
    #[error("the container did not start: {0}")]
    StartFailed(String),
}

impl ServiceError {
    pub fn reason(&self) -> ServiceErrorReason {
        match self {
            Self::Exists(_) => ServiceErrorReason::Exists,
            Self::NotFound(_) => ServiceErrorReason::NotFound,
            Self::BinaryMissing { .. } => ServiceErrorReason::BinaryMissing,
            Self::DatasetMissing(_) => ServiceErrorReason::DatasetMissing,
            Self::LimitOutOfRange { .. } => ServiceErrorReason::LimitOutOfRange,
            Self::NetnsMissing(_) => ServiceErrorReason::NetnsMissing,
            Self::InvalidArgument(_) => ServiceErrorReason::InvalidArgument,
            Self::Unavailable(_) => ServiceErrorReason::Unavailable,
            Self::Rootfs(_) => ServiceErrorReason::RootfsFailed,
            Self::StartFailed(_) => ServiceErrorReason::StartFailed,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }
}

impl From<ServiceError> for TaskError {
    fn from(e: ServiceError) -> Self {
        let reason = e.reason();
        TaskError::new(reason.code(), e.to_string()).with_details(serde_json::json!({ "reason": reason.as_str() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cerana_protocol::ErrorCode;

    #[test]
    fn errors_travel_with_code_and_reason() {
        let err: TaskError = ServiceError::NetnsMissing("nope".into()).into();
        assert_eq!(err.code, ErrorCode::NotFound);
        assert_eq!(err.details.unwrap()["reason"], "netns-missing");
        assert!(err.message.contains("/run/netns/nope"), "{}", err.message);
    }
}
