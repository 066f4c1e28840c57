//! `import-dataset` (issue #18; the original's datatrade): the request's stream becomes a
//! dataset on one node — `zfs-create` and `zfs-unpack` for a tar archive, `zfs-receive` for a
//! ZFS stream, both forwarded to that node with the stream, which its coordinator pulls from
//! ours — then the snapshot the dataset tick copies from, then the declaration. Anything that
//! fails on the way destroys what was made on the node and declares nothing.

use cerana_protocol::tasks::clusterconf::{
    self as c, ImportDatasetArgs, ImportFormat, ImportedDataset, DATASETS_ON_POOL, IMPORT_SNAPSHOT,
};
use cerana_protocol::tasks::zfs::{
    CreateArgs, DatasetType, DestroyArgs, ReceiveArgs, ReceiveResult, SnapshotArgs, UnpackArgs, UnpackResult,
    ZfsCreate, ZfsDestroy, ZfsReceive, ZfsSnapshot, ZfsUnpack,
};
use cerana_protocol::{ErrorCode, NodeUrl, Request, StreamHandle, Task, TaskError};
use cerana_provider_sdk::Context;
use cerana_store::LazyStore;
use std::collections::BTreeMap;

/// The node to import on: the one named, or the one with the most free disk that has room for
/// the quota. Only nodes with a live heartbeat and an API URL count.
pub fn pick<'a>(nodes: &'a [c::Node], named: Option<&str>, quota: Option<u64>) -> Result<&'a c::Node, TaskError> {
    let reachable = || nodes.iter().filter(|n| n.api_url.is_some());
    if let Some(name) = named {
        return reachable().find(|n| n.id == name).ok_or_else(|| {
            TaskError::new(ErrorCode::NotFound, format!("node {name} has no live heartbeat (see list-nodes)"))
        });
    }
    let need = quota.unwrap_or(0);
    let best = reachable()
        .filter(|n| n.disk_free >= need)
        .max_by(|a, b| (a.disk_free, std::cmp::Reverse(&a.id)).cmp(&(b.disk_free, std::cmp::Reverse(&b.id))));
    best.ok_or_else(|| {
        let seen = reachable().count();
        TaskError::new(
            ErrorCode::Unavailable,
            match seen {
                0 => "no node has a live heartbeat to import on".to_string(),
                n => format!("none of {n} nodes has {need} bytes of disk free for the quota"),
            },
        )
    })
}

/// Runs `T` on `node`, with `stream` as its input when given.
async fn on_node<T: Task>(
    ctx: &Context,
    node: &NodeUrl,
    args: &T::Args,
    stream: Option<StreamHandle>,
) -> Result<T::Output, TaskError> {
    let mut request = Request::for_task::<T>(args)
        .map_err(|e| TaskError::new(ErrorCode::Internal, format!("cannot encode {}: {e}", T::NAME)))?;
    request.node = Some(node.clone());
    request.stream = stream;
    ctx.call_request(request).await?.decode()
}

/// See the module docs.
pub async fn import(ctx: &Context, store: &LazyStore, args: ImportDatasetArgs) -> Result<ImportedDataset, TaskError> {
    let declared = c::Dataset {
        id: args.id.clone(),
        parent: None,
        parent_same_machine: false,
        read_only: args.read_only,
        nfs: false,
        redundancy: args.redundancy,
        quota: args.quota,
        mod_index: 0,
    };
    declared.validate().map_err(crate::bad)?;
    let stream = ctx.input_stream_handle().cloned().ok_or_else(|| {
        TaskError::new(ErrorCode::InvalidArgs, "import-dataset imports its input stream: --stream-in FILE (or -)")
    })?;
    let s = store.get().await?;
    if crate::get::<c::Dataset>(&s, args.id.as_str()).await?.is_some() {
        return Err(TaskError::new(ErrorCode::AlreadyExists, format!("dataset {} is declared already", args.id)));
    }
    let nodes: Vec<c::Node> = crate::list(&s).await?;
    let node = pick(&nodes, args.node.as_deref(), args.quota)?;
    let url = node
        .api_url
        .as_deref()
        .map(NodeUrl::new)
        .transpose()
        .map_err(|e| TaskError::new(ErrorCode::Failed, format!("node {}'s API URL is not usable: {e}", node.id)))?;
    let url = url.ok_or_else(|| TaskError::new(ErrorCode::Internal, "picked a node without an API URL"))?;
    let name = format!("{DATASETS_ON_POOL}/{}", args.id);
    tracing::info!(dataset = %args.id, node = %node.id, format = ?args.format, "importing");

    let made = async {
        let bytes = match args.format {
            ImportFormat::Tar => {
                let properties: BTreeMap<String, String> =
                    args.quota.map(|q| ("quota".to_string(), q.to_string())).into_iter().collect();
                let create =
                    CreateArgs { name: name.clone(), kind: DatasetType::Filesystem, volsize: None, properties };
                on_node::<ZfsCreate>(ctx, &url, &create, None).await?;
                let unpack = UnpackArgs { name: name.clone(), max_bytes: args.quota };
                let done: UnpackResult = on_node::<ZfsUnpack>(ctx, &url, &unpack, Some(stream)).await?;
                done.bytes
            }
            ImportFormat::Zfs => {
                let receive = ReceiveArgs { name: name.clone(), force: false };
                let done: ReceiveResult = on_node::<ZfsReceive>(ctx, &url, &receive, Some(stream)).await?;
                done.bytes
            }
        };
        let snapshot = SnapshotArgs { name: name.clone(), snapname: IMPORT_SNAPSHOT.into(), recursive: false };
        on_node::<ZfsSnapshot>(ctx, &url, &snapshot, None).await?;
        Ok::<u64, TaskError>(bytes)
    }
    .await;
    let declared = match made {
        Ok(bytes) => crate::put(&s, declared).await.map(|dataset| (dataset, bytes)),
        Err(e) => Err(e),
    };
    match declared {
        Ok((dataset, bytes)) => {
            Ok(ImportedDataset { dataset, node: node.id.clone(), snapshot: format!("{name}@{IMPORT_SNAPSHOT}"), bytes })
        }
        Err(e) => {
            // Whatever exists of it on the node goes; a dataset never made is no error here.
            let destroy = DestroyArgs {
                name: name.clone(),
                defer: false,
                recursive: true,
                recursive_clones: false,
                force_unmount: true,
            };
            if let Err(cleanup) = on_node::<ZfsDestroy>(ctx, &url, &destroy, None).await {
                if cleanup.code != ErrorCode::NotFound {
                    tracing::warn!(dataset = %name, node = %node.id, error = %cleanup, "cannot remove a failed import");
                }
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, disk_free: u64, url: bool) -> c::Node {
        c::Node {
            id: id.into(),
            heartbeat_ms: 1,
            memory_total: 0,
            memory_free: 0,
            cpu_cores: 1,
            cpu_load: 0.0,
            disk_total: 0,
            disk_free,
            api_url: url.then(|| format!("https://{id}:8080")),
            mod_index: 0,
        }
    }

    #[test]
    fn the_node_named_or_the_one_with_most_room() {
        let nodes = [node("a", 100, true), node("b", 500, true), node("c", 900, false), node("d", 500, true)];
        assert_eq!(pick(&nodes, None, None).unwrap().id, "b", "most free disk; ties by id");
        assert_eq!(pick(&nodes, Some("a"), None).unwrap().id, "a");
        assert_eq!(pick(&nodes, None, Some(200)).unwrap().id, "b");
        let err = pick(&nodes, Some("c"), None).unwrap_err();
        assert!(err.code == ErrorCode::NotFound && err.message.contains("no live heartbeat"), "{err}");
        let err = pick(&nodes, None, Some(1000)).unwrap_err();
        assert!(err.code == ErrorCode::Unavailable && err.message.contains("none of 3 nodes"), "{err}");
        assert!(pick(&[], None, None).unwrap_err().message.contains("no node"));
    }
}
