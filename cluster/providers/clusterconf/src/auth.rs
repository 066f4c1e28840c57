//! `auth-*`: the cluster's scoped API tokens, kept under
//! `cerana_protocol::tasks::auth::TOKENS_PREFIX` as records holding the secret's SHA-256 only.
//! Every node's quorum agent copies them to the node's tokens file.

use cerana_credentials::ApiToken;
use cerana_protocol::tasks::auth::{self as a, MAX_TOKENS, TOKENS_PREFIX};
use cerana_protocol::{ErrorCode, NoOutput, TaskError};
use cerana_provider_sdk::Provider;
use cerana_store::{store_task, task_error, token_records, LazyStore, Store};

fn key(id: &a::TokenId) -> String {
    format!("{TOKENS_PREFIX}/{id}")
}

async fn create(s: &Store, args: a::TokenCreateArgs) -> Result<a::TokenCreated, TaskError> {
    args.validate().map_err(|e| TaskError::new(ErrorCode::InvalidArgument, e))?;
    let now = cerana_credentials::unix_now();
    let live = token_records(s).await.map_err(task_error)?.into_iter().filter(|r| r.expires_at > now).count();
    if live >= MAX_TOKENS {
        return Err(TaskError::new(
            ErrorCode::Busy,
            format!("the cluster holds {live} live tokens, the most it keeps: revoke some first"),
        ));
    }
    let token = ApiToken::mint().map_err(|e| TaskError::new(ErrorCode::Internal, e.to_string()))?;
    let record = token.record(&args, now);
    let json = serde_json::to_string(&record).map_err(|e| TaskError::new(ErrorCode::Internal, e.to_string()))?;
    // Create only: an id minted twice (48 random bits) fails instead of replacing a token.
    s.put_if(&key(token.id()), &json, 0).await.map_err(task_error)?;
    Ok(a::TokenCreated {
        id: token.id().clone(),
        token: token.reveal(),
        role: record.role,
        expires_at: record.expires_at,
    })
}

/// Adds the `auth-*` tasks to `p`.
pub fn tasks(p: Provider, store: &LazyStore) -> Provider {
    let p = store_task!(p, store, a::AuthTokenCreate, |s, args| create(s, args).await);
    let p = store_task!(p, store, a::AuthTokenList, |s, _args| {
        let mut tokens: Vec<a::TokenSummary> =
            token_records(s).await.map_err(task_error)?.iter().map(a::TokenSummary::from).collect();
        tokens.sort_by_key(|t| t.created_at);
        Ok(a::TokenList { tokens })
    });
    store_task!(p, store, a::AuthTokenRevoke, |s, args| {
        let (deleted, _) = s.delete(&key(&args.id), false).await.map_err(task_error)?;
        if deleted == 0 {
            return Err(TaskError::new(ErrorCode::NotFound, format!("no token {}", args.id)));
        }
        Ok(NoOutput {})
    })
}
