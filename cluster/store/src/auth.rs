//! The scoped API tokens' records (`cerana_protocol::tasks::auth`), as the `clusterconf`
//! provider lists them and every node's quorum agent copies them to the node's tokens file.

use crate::{Store, StoreError};
use cerana_protocol::tasks::auth::{TokenRecord, MAX_TOKENS, TOKENS_PREFIX};

/// Every token record in the store (at most `MAX_TOKENS`); a record that does not decode is
/// skipped and logged, so one bad record does not lock every caller out.
pub async fn token_records(store: &Store) -> Result<Vec<TokenRecord>, StoreError> {
    let (entries, _) = store.list_all(&format!("{TOKENS_PREFIX}/"), MAX_TOKENS).await?;
    Ok(entries
        .into_iter()
        .filter_map(|e| match serde_json::from_str::<TokenRecord>(&e.value) {
            Ok(r) => Some(r),
            Err(err) => {
                tracing::warn!(key = %e.key, "not a token record: {err}");
                None
            }
        })
        .collect())
}
