//! `get-nodes-history`: each node's past figures, which its quorum agent adds once a minute
//! (`cerana-quorum`, `presence.rs`) under [`NODES_HISTORY`]. Unlike the original, whose filters
//! never filtered, every filter given holds for every entry returned.

use cerana_protocol::tasks::clusterconf::{
    node_history_key, node_history_prefix, Node, NodesHistory, NodesHistoryArgs, NODES_HISTORY, NODES_HISTORY_MAX_NODES,
};
use cerana_protocol::TaskError;
use cerana_store::{prefix_end, task_error, Store};
use std::collections::BTreeMap;

const DEFAULT_LIMIT: u32 = 60;

/// The nodes with a history, in name order: one keys-only read per node, each skipping past
/// the node before (a node's entries are never all read to find the next node).
async fn nodes_with_history(s: &Store) -> Result<Vec<String>, TaskError> {
    let prefix = format!("{NODES_HISTORY}/");
    let end = String::from_utf8(prefix_end(prefix.as_bytes())).unwrap_or_default();
    let mut nodes = Vec::new();
    let mut start = prefix.clone();
    while nodes.len() < NODES_HISTORY_MAX_NODES {
        let Some(first) = s.range(&start, &end, 1, false).await.map_err(task_error)?.into_iter().next() else {
            break;
        };
        let Some((node, _)) = first.key.strip_prefix(&prefix).and_then(|rest| rest.split_once('/')) else {
            // Not a history entry; step over it.
            start = format!("{}\0", first.key);
            continue;
        };
        start = String::from_utf8(prefix_end(node_history_prefix(node).as_bytes())).unwrap_or_else(|_| end.clone());
        nodes.push(node.to_owned());
    }
    Ok(nodes)
}

pub async fn nodes_history(s: &Store, args: NodesHistoryArgs) -> Result<NodesHistory, TaskError> {
    args.validate().map_err(super::bad)?;
    let nodes = if args.nodes.is_empty() {
        nodes_with_history(s).await?
    } else {
        args.nodes.iter().map(|n| n.to_string()).collect()
    };
    let limit = args.limit.unwrap_or(DEFAULT_LIMIT);
    let mut history = BTreeMap::new();
    for node in nodes {
        let start = node_history_key(&node, args.after_ms.unwrap_or(0));
        let end = match args.before_ms {
            Some(before) => node_history_key(&node, before),
            None => String::from_utf8(prefix_end(node_history_prefix(&node).as_bytes())).unwrap_or_default(),
        };
        let entries = s.range(&start, &end, limit, true).await.map_err(task_error)?;
        let mut figures = Vec::with_capacity(entries.len());
        for entry in entries {
            match serde_json::from_str::<Node>(&entry.value) {
                Ok(node) => figures.push(node),
                // One damaged entry does not hide the rest.
                Err(e) => tracing::warn!(key = %entry.key, "unreadable node history entry: {e}"),
            }
        }
        history.insert(node, figures);
    }
    Ok(NodesHistory { nodes: history })
}
