//! What a store operation can fail with.

use std::time::Duration;

/// Why a store operation failed. Callers branch on the variant: `Unavailable` is worth a retry
/// later, `Conflict` means read again, `Compacted` means list again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No quorum, no member reachable, or no answer within the operation's timeout.
    #[error("the cluster store is unavailable ({op}): {reason}")]
    Unavailable { op: &'static str, reason: String },
    /// A compare-and-swap lost; `current` is the key's index now (0: absent).
    #[error("{key} changed: its index is now {current}")]
    Conflict { key: String, current: u64 },
    #[error("{what} does not exist")]
    NotFound { what: String },
    /// The history asked for is gone; `compacted` is the oldest index still kept minus one.
    #[error("index {requested} is compacted (history kept from {}); list again and watch from there", compacted + 1)]
    Compacted { requested: u64, compacted: u64 },
    /// A lock or an election held by someone else.
    #[error("{key} is held by lease {holder} (token {token})")]
    Held { key: String, holder: i64, token: u64 },
    /// A leader's fenced write after it lost the election (its key is gone or another's):
    /// nothing was written.
    #[error("deposed: {key} (term {term}) no longer leads; nothing written")]
    Deposed { key: String, term: u64 },
    /// The store refused the request itself (too large, say), or handed back a value that is
    /// not UTF-8.
    #[error("{0}")]
    Invalid(String),
    /// Anything else the store or its client reported.
    #[error("the cluster store failed ({op}): {reason}")]
    Failed { op: &'static str, reason: String },
}

/// Whether a failed call may be tried again: any unavailability for a read; for a write only
/// what proves the write was not applied (no leader, no connection).
pub(crate) fn retryable(err: &etcd_client::Error, read: bool) -> bool {
    use etcd_client::Error as E;
    match err {
        E::GRpcStatus(status) if status.code() == tonic::Code::Unavailable => {
            let m = status.message();
            read || m.contains("no leader") || m.contains("leader changed") || m.contains("connect")
        }
        // The member a request was in flight to went away (its connection dropped): the
        // request's fate is unknown, so only a repeatable one is sent again.
        E::GRpcStatus(status) if status.code() == tonic::Code::Cancelled => read,
        E::GRpcStatus(status)
            if status.code() == tonic::Code::Unknown && status.message().contains("transport error") =>
        {
            read
        }
        E::TransportError(_) => true,
        E::LeaseKeepAliveError(reason) if reason.contains("not found") => false,
        E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => read,
        _ => false,
    }
}

impl StoreError {
    pub(crate) fn timed_out(op: &'static str, after: Duration) -> Self {
        StoreError::Unavailable { op, reason: format!("no answer within {} ms", after.as_millis()) }
    }

    /// Sorts the client's error: the store's own gRPC status where there is one.
    pub(crate) fn from_client(op: &'static str, err: etcd_client::Error) -> Self {
        use etcd_client::Error as E;
        use tonic::Code;
        match err {
            E::GRpcStatus(status) => {
                let reason = status.message().to_owned();
                match status.code() {
                    Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
                        StoreError::Unavailable { op, reason }
                    }
                    // etcd answers "no leader" and "request timed out" as Unknown on some paths,
                    // and the client a connection that broke mid-request.
                    Code::Unknown
                        if reason.contains("leader")
                            || reason.contains("timed out")
                            || reason.contains("transport error") =>
                    {
                        StoreError::Unavailable { op, reason }
                    }
                    Code::InvalidArgument | Code::FailedPrecondition | Code::ResourceExhausted => {
                        StoreError::Invalid(format!("the store refused {op}: {reason}"))
                    }
                    // etcd's only NotFound: "requested lease not found".
                    Code::NotFound => StoreError::NotFound { what: "the lease".into() },
                    _ => StoreError::Failed { op, reason: format!("{:?}: {reason}", status.code()) },
                }
            }
            E::TransportError(e) => StoreError::Unavailable { op, reason: e.to_string() },
            E::IoError(e) => StoreError::Unavailable { op, reason: e.to_string() },
            E::LeaseKeepAliveError(reason) if reason.contains("not found") => {
                StoreError::NotFound { what: "the lease".into() }
            }
            E::WatchError(reason) | E::LeaseKeepAliveError(reason) => StoreError::Unavailable { op, reason },
            other => StoreError::Failed { op, reason: other.to_string() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_cut_off_with_its_member_is_repeated_only_if_repeatable() {
        // What the client reports for a request in flight to a member that was killed.
        let cut = etcd_client::Error::GRpcStatus(tonic::Status::cancelled("operation was canceled"));
        assert!(retryable(&cut, true));
        assert!(!retryable(&cut, false), "a write's fate is unknown: not applied twice");
        let dropped = etcd_client::Error::GRpcStatus(tonic::Status::unknown("transport error"));
        assert!(retryable(&dropped, true) && !retryable(&dropped, false));
        let no_leader = etcd_client::Error::GRpcStatus(tonic::Status::unavailable("etcdserver: no leader"));
        assert!(retryable(&no_leader, false));
        let refused = etcd_client::Error::GRpcStatus(tonic::Status::invalid_argument("too large"));
        assert!(!retryable(&refused, true));
    }
}
