//! `import-dataset` end to end on the host: the CLI's stream goes to one coordinator, whose
//! clusterconf provider forwards `zfs-create`, `zfs-unpack` and `zfs-snapshot` to the node it
//! picks — a second coordinator, over HTTP, pulling the stream from the first — and declares
//! the dataset in a real etcd. The node's zfs provider is a double (ZFS runs only in VMs; the
//! real `zfs-unpack` is tested in `make test-zfs`): it keeps the datasets in memory and reads
//! the stream to its end.

use cerana_client::{open_stream, UnixClient};
use cerana_coordinator::{Config, Coordinator};
use cerana_protocol::stream::ChunkWriter;
use cerana_protocol::tasks::clusterconf::{ImportDataset, ImportDatasetArgs, ImportFormat, ImportedDataset, ObjectId};
use cerana_protocol::tasks::zfs::{
    CreateArgs, Dataset, DatasetType, DestroyArgs, NameResult, SnapshotArgs, UnpackArgs, UnpackResult, ZfsCreate,
    ZfsDestroy, ZfsSnapshot, ZfsUnpack,
};
use cerana_protocol::{ErrorCode, Request, StreamDirection, StreamHandle, StreamId, TaskError};
use cerana_provider_sdk::Provider;
use cerana_store::{LazyStore, StoreConfig};
use cerana_testbed::etcd::EtcdCluster;
use cerana_testbed::require_ok;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "peer-token-0123456789abcdef";

fn dataset(name: &str) -> Dataset {
    Dataset {
        name: name.into(),
        kind: DatasetType::Filesystem,
        guid: 1,
        creation: 1,
        used: 0,
        available: Some(1 << 30),
        referenced: 0,
        mountpoint: Some(format!("/{name}")),
        mounted: Some(true),
        origin: None,
        volsize: None,
        device: None,
    }
}

/// What the double's node holds: datasets and snapshots by name.
type Held = Arc<Mutex<BTreeSet<String>>>;

/// `zfs-*` as a node would answer them; an archive containing `BAD` is refused.
fn zfs_double(held: Held) -> Provider {
    let (h1, h2, h3, h4) = (held.clone(), held.clone(), held.clone(), held);
    Provider::new("zfs", "double")
        .task::<ZfsCreate, _, _>(move |_ctx, a: CreateArgs| {
            let held = h1.clone();
            async move {
                if !held.lock().unwrap().insert(a.name.clone()) {
                    return Err(TaskError::new(ErrorCode::AlreadyExists, format!("{} exists", a.name)));
                }
                Ok(NameResult { name: a.name, device: None })
            }
        })
        .task::<ZfsUnpack, _, _>(move |ctx, a: UnpackArgs| {
            let held = h2.clone();
            async move {
                if !held.lock().unwrap().contains(&a.name) {
                    return Err(TaskError::new(ErrorCode::NotFound, format!("{} does not exist", a.name)));
                }
                let mut input = ctx.input_stream().await?;
                let mut bytes = Vec::new();
                while let Some(chunk) =
                    input.next_chunk().await.map_err(|e| TaskError::new(ErrorCode::StreamError, e.to_string()))?
                {
                    bytes.extend_from_slice(chunk);
                }
                if bytes.windows(3).any(|w| w == b"BAD") {
                    return Err(TaskError::new(ErrorCode::InvalidArgument, "entry \"../BAD\" would land outside"));
                }
                Ok(UnpackResult {
                    dataset: dataset(&a.name),
                    entries: 1,
                    files: 1,
                    directories: 0,
                    symlinks: 0,
                    hard_links: 0,
                    bytes: bytes.len() as u64,
                })
            }
        })
        .task::<ZfsSnapshot, _, _>(move |_ctx, a: SnapshotArgs| {
            let held = h3.clone();
            async move {
                let name = format!("{}@{}", a.name, a.snapname);
                held.lock().unwrap().insert(name.clone());
                Ok(NameResult { name, device: None })
            }
        })
        .task::<ZfsDestroy, _, _>(move |_ctx, a: DestroyArgs| {
            let held = h4.clone();
            async move {
                let mut held = held.lock().unwrap();
                let before = held.len();
                held.retain(|n| n != &a.name && !(a.recursive && n.starts_with(&format!("{}@", a.name))));
                if held.len() == before {
                    return Err(TaskError::new(ErrorCode::NotFound, format!("{} does not exist", a.name)));
                }
                Ok(NameResult { name: a.name, device: None })
            }
        })
}

fn coordinator_config(socket: &std::path::Path, name: &str) -> Config {
    let mut config = Config::new(socket);
    config.name = name.into();
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    config.token = Some(TOKEN.into());
    config.peer_token = Some(TOKEN.into());
    config
}

/// Sends `bytes` as a stream and runs import-dataset with it.
async fn import(
    client: &UnixClient,
    socket: &std::path::Path,
    args: &ImportDatasetArgs,
    bytes: Vec<u8>,
) -> Result<ImportedDataset, TaskError> {
    let id = StreamId::random();
    let socket = socket.to_path_buf();
    let producer = tokio::spawn(async move {
        let conn = open_stream(&socket, StreamHandle::local(id), StreamDirection::Put).await.unwrap();
        let mut writer = ChunkWriter::new(conn);
        for chunk in bytes.chunks(64 << 10) {
            if writer.write_chunk(chunk).await.is_err() {
                return;
            }
        }
        let _ = writer.finish().await;
    });
    let mut request = Request::for_task::<ImportDataset>(args).unwrap();
    request.stream = Some(StreamHandle::local(id));
    request.timeout_ms = Some(30_000);
    let outcome = client.call(request).await.unwrap().decode();
    producer.abort();
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_is_imported_on_a_node_snapshotted_and_declared_or_leaves_nothing() {
    let etcd = require_ok!(tokio::task::spawn_blocking(|| EtcdCluster::start(3)).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let (here, there) = (dir.path().join("here.sock"), dir.path().join("there.sock"));
    let _here = Coordinator::start(coordinator_config(&here, "here")).await.unwrap();
    let node = Coordinator::start(coordinator_config(&there, "node-b")).await.unwrap();
    let node_url = format!("http://{}", node.http_addr().unwrap());
    let held = Held::default();
    tokio::spawn(zfs_double(held.clone()).serve(there.clone()));
    let store = LazyStore::new(StoreConfig::new(etcd.endpoints()));
    tokio::spawn(cerana_clusterconf::provider_with(store.clone()).serve(here.clone()));
    let client = UnixClient::connect(&here, "test").await.unwrap();

    // The node's heartbeat entry, as its quorum agent writes it.
    let s = store.get().await.unwrap();
    let entry = serde_json::json!({"id": "node-b", "heartbeat_ms": 1, "disk_free": 1u64 << 30, "api_url": node_url});
    s.put("/cerana/v1/nodes/node-b", &entry.to_string()).await.unwrap();

    let args = |id: &str| ImportDatasetArgs {
        id: ObjectId::new(id).unwrap(),
        format: ImportFormat::Tar,
        redundancy: 2,
        read_only: true,
        quota: Some(1 << 20),
        node: None,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let imported = loop {
        match import(&client, &here, &args("site"), b"an archive".repeat(1000)).await {
            Ok(imported) => break imported,
            Err(e) if e.code == ErrorCode::NoProvider && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("import-dataset: {e}"),
        }
    };
    assert_eq!((imported.node.as_str(), imported.bytes), ("node-b", 10_000));
    assert_eq!(imported.snapshot, "data/datasets/site@import");
    assert!(imported.dataset.read_only && imported.dataset.redundancy == 2 && imported.dataset.mod_index > 0);
    assert!(held.lock().unwrap().contains("data/datasets/site@import"));
    let declared = s.get("/cerana/v1/datasets/site").await.unwrap().expect("declared");
    assert!(declared.value.contains("\"redundancy\":2"), "{}", declared.value);

    // Declared already: refused before anything is made.
    let err = import(&client, &here, &args("site"), b"again".to_vec()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::AlreadyExists, "{err}");
    // Refused on the node: its dataset is destroyed, nothing is declared.
    let err = import(&client, &here, &args("bad"), b"BAD archive".to_vec()).await.unwrap_err();
    assert!(err.code == ErrorCode::InvalidArgument && err.message.contains("BAD"), "{err}");
    assert!(!held.lock().unwrap().iter().any(|n| n.contains("datasets/bad")), "{:?}", held.lock().unwrap());
    assert!(s.get("/cerana/v1/datasets/bad").await.unwrap().is_none());
    // No room for the quota, an unknown node, no stream.
    let big = ImportDatasetArgs { quota: Some(2 << 30), ..args("big") };
    let err = import(&client, &here, &big, b"x".to_vec()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable, "{err}");
    let elsewhere = ImportDatasetArgs { node: Some("node-z".into()), ..args("z") };
    assert_eq!(import(&client, &here, &elsewhere, b"x".to_vec()).await.unwrap_err().code, ErrorCode::NotFound);
    let no_stream = client.call(Request::for_task::<ImportDataset>(&args("nostream")).unwrap()).await.unwrap();
    assert_eq!(no_stream.decode::<ImportedDataset>().unwrap_err().code, ErrorCode::InvalidArgs);
}
