//! Structured task errors: a stable machine-readable code, a message for people, and where the
//! error arose (task, provider, node).

use crate::names::{ProviderName, TaskName};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Declares [`ErrorCode`] from one list of `Variant = "wire_name"`: the enum (with the
/// [`ErrorCode::Other`] fallback), [`ErrorCode::KNOWN`] and [`ErrorCode::as_str`].
macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $wire:literal,)*) => {
        /// Stable error codes. Clients branch on these, never on messages.
        ///
        /// On the wire a code is its snake_case string. A code this version does not know (sent by a
        /// newer node during a rolling upgrade) decodes as [`ErrorCode::Other`] keeping its string, and
        /// encodes back as the same string, so an older node relays a newer node's error unchanged.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
            /// A code this version does not know, as it came on the wire. Make one with
            /// [`ErrorCode::from_code`], which never wraps a known code.
            Other(String),
        }

        impl ErrorCode {
            /// Every code this version knows, i.e. all but [`ErrorCode::Other`].
            pub const KNOWN: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code's wire string.
            pub fn as_str(&self) -> &str {
                match self {
                    $(ErrorCode::$variant => $wire,)*
                    ErrorCode::Other(code) => code,
                }
            }
        }
    };
}

error_codes! {
    /// The message could not be decoded or broke the protocol.
    InvalidRequest = "invalid_request",
    /// A frame exceeded the size limit.
    FrameTooLarge = "frame_too_large",
    /// No task of that name is documented and no provider serves it.
    UnknownTask = "unknown_task",
    /// The task exists but no provider serving it is connected.
    NoProvider = "no_provider",
    /// The arguments do not match the task's argument type.
    InvalidArgs = "invalid_args",
    /// A request id already in flight was sent again.
    DuplicateId = "duplicate_id",
    /// The task did not finish within its timeout.
    Timeout = "timeout",
    /// The provider handling the task went away before answering.
    ProviderLost = "provider_lost",
    /// The caller cancelled the task.
    Cancelled = "cancelled",
    /// No or a wrong bearer token.
    Unauthenticated = "unauthenticated",
    /// The peer coordinator could not be reached or answered garbage.
    PeerUnreachable = "peer_unreachable",
    /// A byte stream failed: its peer vanished, never arrived, or sent a malformed chunk.
    StreamError = "stream_error",
    /// The object the task names does not exist.
    NotFound = "not_found",
    /// The object the task would create exists already.
    AlreadyExists = "already_exists",
    /// The object is in use.
    Busy = "busy",
    /// A name is longer than the backend allows.
    NameTooLong = "name_too_long",
    /// The backend refused an argument value.
    InvalidArgument = "invalid_argument",
    /// The caller may not do this.
    PermissionDenied = "permission_denied",
    /// A backend the provider needs is not available (not installed, not running).
    Unavailable = "unavailable",
    /// The task ran and failed for a reason without a more specific code.
    Failed = "failed",
    /// A bug or an unexpected state inside the coordinator or a provider.
    Internal = "internal",
    /// A compare-and-swap lost: the object changed since the caller read it
    /// (`details.current_index` says what it is now).
    Conflict = "conflict",
    /// The history the caller asked for is gone (a watch from a compacted index): read the
    /// current state again and go on from there.
    Compacted = "compacted",
}

/// Coarse classes of errors, for exit codes and HTTP statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request itself is wrong; retrying it unchanged will fail again.
    BadInput,
    NotFound,
    Conflict,
    Timeout,
    /// Something needed is not there right now; a retry later may succeed.
    Unavailable,
    Auth,
    Failed,
}

impl ErrorCode {
    /// The code a wire string names: a known variant, else [`ErrorCode::Other`] with the string.
    pub fn from_code(code: &str) -> Self {
        Self::KNOWN.iter().find(|known| known.as_str() == code).cloned().unwrap_or_else(|| Self::Other(code.to_owned()))
    }

    /// Whether this version knows the code (it is not [`ErrorCode::Other`]).
    pub fn is_known(&self) -> bool {
        !matches!(self, Self::Other(_))
    }

    /// An unknown code counts as [`ErrorClass::Failed`].
    pub fn class(&self) -> ErrorClass {
        use ErrorCode::*;
        match self {
            InvalidRequest | FrameTooLarge | UnknownTask | InvalidArgs | DuplicateId | NameTooLong
            | InvalidArgument => ErrorClass::BadInput,
            NotFound => ErrorClass::NotFound,
            AlreadyExists | Busy | Conflict | Compacted => ErrorClass::Conflict,
            Timeout => ErrorClass::Timeout,
            NoProvider | ProviderLost | PeerUnreachable | Unavailable => ErrorClass::Unavailable,
            Unauthenticated | PermissionDenied => ErrorClass::Auth,
            Cancelled | StreamError | Failed | Internal | Other(_) => ErrorClass::Failed,
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = String::deserialize(deserializer)?;
        Ok(Self::from_code(&code))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error half of a [`crate::Response`]. Received back by callers (and relayed between
/// nodes), so it tolerates fields a newer version adds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub struct TaskError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderName>,
    /// The node (coordinator URL or name) where the error arose, when not the local one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Extra machine-readable detail, e.g. an errno.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl TaskError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), task: None, provider: None, node: None, details: None }
    }
    pub fn with_task(mut self, task: &TaskName) -> Self {
        self.task.get_or_insert_with(|| task.clone());
        self
    }
    pub fn with_provider(mut self, provider: &ProviderName) -> Self {
        self.provider.get_or_insert_with(|| provider.clone());
        self
    }
    pub fn with_node(mut self, node: impl Into<String>) -> Self {
        self.node.get_or_insert_with(|| node.into());
        self
    }
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        match (&self.task, &self.provider) {
            (Some(t), Some(p)) => write!(f, " (task {t}, provider {p})")?,
            (Some(t), None) => write!(f, " (task {t})")?,
            (None, Some(p)) => write!(f, " (provider {p})")?,
            (None, None) => {}
        }
        if let Some(node) = &self.node {
            write!(f, " on {node}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_serialize_with_codes() {
        let err = TaskError::new(ErrorCode::NotFound, "dataset data/x does not exist")
            .with_task(&TaskName::new("zfs-get").unwrap());
        let json = serde_json::to_value(&err).unwrap();
        assert_eq!(json["code"], "not_found");
        assert_eq!(json["task"], "zfs-get");
        assert!(json.get("provider").is_none());
        let back: TaskError = serde_json::from_value(json).unwrap();
        assert_eq!(back, err);
        assert_eq!(back.to_string(), "not_found: dataset data/x does not exist (task zfs-get)");
    }

    #[test]
    fn every_code_string_matches_serde() {
        assert_eq!(ErrorCode::KNOWN.len(), 23);
        for code in ErrorCode::KNOWN {
            assert!(code.is_known());
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
            assert_eq!(serde_json::from_value::<ErrorCode>(code.as_str().into()).unwrap(), *code);
        }
        // The wire names are part of the protocol: byte-identical to the snake_case of before.
        let names: Vec<&str> = ErrorCode::KNOWN.iter().map(ErrorCode::as_str).collect();
        assert_eq!(
            names.join(","),
            "invalid_request,frame_too_large,unknown_task,no_provider,invalid_args,duplicate_id,timeout,\
             provider_lost,cancelled,unauthenticated,peer_unreachable,stream_error,not_found,already_exists,busy,\
             name_too_long,invalid_argument,permission_denied,unavailable,failed,internal,conflict,compacted"
        );
    }

    #[test]
    fn an_unknown_code_is_kept_and_relayed_unchanged() {
        let text = r#"{"code":"quota_exceeded","message":"over quota","node":"http://n2:8080"}"#;
        let err: TaskError = serde_json::from_str(text).unwrap();
        assert_eq!(err.code, ErrorCode::Other("quota_exceeded".into()));
        assert!(!err.code.is_known());
        assert_eq!(err.code.class(), ErrorClass::Failed);
        assert_eq!(err.to_string(), "quota_exceeded: over quota on http://n2:8080");
        assert_eq!(serde_json::to_string(&err).unwrap(), text);

        let known: TaskError = serde_json::from_str(r#"{"code":"busy","message":"x"}"#).unwrap();
        assert_eq!(known.code, ErrorCode::Busy);
        assert_eq!(ErrorCode::from_code("busy"), ErrorCode::Busy);
        assert!(serde_json::from_str::<ErrorCode>("7").is_err());
    }

    #[test]
    fn errors_from_newer_nodes_may_carry_more_fields() {
        let err: TaskError =
            serde_json::from_str(r#"{"code":"not_found","message":"gone","retry_after_ms":5}"#).unwrap();
        assert_eq!(err, TaskError::new(ErrorCode::NotFound, "gone"));
    }
}
