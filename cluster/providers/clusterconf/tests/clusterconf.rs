//! The clusterconf tasks through a coordinator against a real 3-member etcd: typed objects,
//! compare-and-swap on `mod_index`, validation naming the field, references checked both ways,
//! plain JSON in the store that `etcdctl` reads, and objects from newer nodes tolerated.

use cerana_client::UnixClient;
use cerana_coordinator::{Config, Coordinator};
use cerana_protocol::{ErrorCode, Request, TaskError, TaskName};
use cerana_store::{LazyStore, StoreConfig};
use cerana_testbed::etcd::EtcdCluster;
use cerana_testbed::require_ok;
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

struct Lab {
    etcd: EtcdCluster,
    client: UnixClient,
    _coordinator: Coordinator,
    _dir: tempfile::TempDir,
}

impl Lab {
    async fn start() -> Result<Lab, String> {
        let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(3)).await.unwrap().map_err(|e| e.to_string())?;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("c.sock");
        let coordinator = Coordinator::start(Config::new(&socket)).await.unwrap();
        let provider = cerana_clusterconf::provider_with(LazyStore::new(StoreConfig::new(etcd.endpoints())));
        tokio::spawn(provider.serve(socket.clone()));
        let client = UnixClient::connect(&socket, "test").await.unwrap();
        let lab = Lab { etcd, client, _coordinator: coordinator, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Err(e) = lab.call("get-default-options", json!({})).await {
            assert!(Instant::now() < deadline, "clusterconf never answered: {e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(lab)
    }

    async fn call(&self, task: &str, args: Value) -> Result<Value, TaskError> {
        let raw = serde_json::value::to_raw_value(&args).unwrap();
        let response = self.client.call(Request::new(TaskName::new(task).unwrap(), raw)).await.expect("call");
        response.decode()
    }

    async fn fails(&self, task: &str, args: Value, code: ErrorCode, says: &str) -> TaskError {
        let err = self.call(task, args.clone()).await.expect_err(&format!("{task} {args} should fail"));
        assert_eq!(err.code, code, "{task}: {err}");
        assert!(err.message.contains(says), "{task}: {err:?} does not say {says:?}");
        err
    }

    fn etcdctl(&self, args: &[&str]) -> String {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.etcd.endpoints().join(",")))
            .args(args)
            .output()
            .expect("etcdctl");
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn index(v: &Value) -> u64 {
    v["mod_index"].as_u64().unwrap_or_else(|| panic!("no mod_index in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_objects_are_typed_checked_and_compare_and_swapped() {
    let lab = require_ok!(Lab::start().await);

    // Datasets: create only with mod_index 0, replace only with the current one.
    let d1 = lab.call("update-dataset", json!({"id": "d1", "redundancy": 2, "quota": 1073741824})).await.unwrap();
    let first = index(&d1);
    assert!(first > 0 && d1["redundancy"] == 2);
    let err = lab.fails("update-dataset", json!({"id": "d1"}), ErrorCode::Conflict, "exists already").await;
    assert_eq!(err.details.unwrap()["current_index"], first);
    let d1 = lab.call("update-dataset", json!({"id": "d1", "redundancy": 3, "mod_index": first})).await.unwrap();
    let err =
        lab.fails("update-dataset", json!({"id": "d1", "mod_index": first}), ErrorCode::Conflict, "changed").await;
    assert_eq!(err.details.unwrap()["current_index"], index(&d1));
    lab.fails(
        "update-dataset",
        json!({"id": "d2", "redundancy": 0}),
        ErrorCode::InvalidArgument,
        "redundancy: must be at least 1",
    )
    .await;
    lab.fails(
        "update-dataset",
        json!({"id": "d2", "parent": "nope"}),
        ErrorCode::InvalidArgument,
        "parent: dataset nope",
    )
    .await;
    lab.fails("update-dataset", json!({"id": "a/b"}), ErrorCode::InvalidArgs, "is not an id").await;
    lab.fails(
        "update-dataset",
        json!({"id": "d2", "nfs": true, "Quota": 5}),
        ErrorCode::InvalidArgs,
        "unknown field `Quota`",
    )
    .await;
    lab.call("update-dataset", json!({"id": "d2", "parent": "d1", "read_only": true, "nfs": false})).await.unwrap();
    let d2 = lab.call("get-dataset", json!({"id": "d2"})).await.unwrap();
    assert_eq!((d2["read_only"].as_bool(), d2["nfs"].as_bool()), (Some(true), Some(false)), "nfs is its own setting");
    assert_eq!(lab.call("list-datasets", json!({})).await.unwrap()["datasets"].as_array().unwrap().len(), 2);
    lab.fails("get-dataset", json!({"id": "none"}), ErrorCode::NotFound, "dataset none does not exist").await;

    // Services name a dataset that exists.
    let service = json!({"id": "s1", "dataset": "d1", "cmd": ["/bin/app", "--serve"], "env": {"MODE": "prod"},
        "health_checks": {"http": {"task": "health-http-status", "args": {"url": "http://127.0.0.1/"}}}});
    let mut wrong = service.clone();
    wrong["dataset"] = json!("nope");
    lab.fails("update-service", wrong, ErrorCode::InvalidArgument, "dataset: dataset nope does not exist").await;
    let mut wrong = service.clone();
    wrong["cmd"] = json!([]);
    lab.fails("update-service", wrong, ErrorCode::InvalidArgument, "cmd: needs a program").await;
    let mut wrong = service.clone();
    wrong["env"] = json!({"_CERANA_ID": "x"});
    lab.fails("update-service", wrong, ErrorCode::InvalidArgument, "env._CERANA_ID").await;
    let mut huge = service.clone();
    huge["env"] = json!({"BIG": "x".repeat(300_000)});
    lab.fails("update-service", huge, ErrorCode::InvalidArgument, "at most 262144").await;
    lab.call("update-service", service).await.unwrap();
    assert_eq!(lab.call("list-services", json!({})).await.unwrap()["services"][0]["id"], "s1");

    // Bundles: every reference checked, the bad field named.
    let bundle = json!({
        "id": "web", "redundancy": 2,
        "datasets": {"data": {"id": "d1", "type": "rw_zfs", "quota": 1024}},
        "services": {"app": {"id": "s1", "overrides": {"env": {"MODE": "canary"}, "limits": {"memory": 268435456}},
                              "datasets": {"data": {"mount_point": "/srv/data"}}}},
        "ports": {"443": {"public": true, "external_port": 8443, "connected_bundles": ["web"]}},
    });
    for (pointer, value, code, says) in [
        ("/services/app/id", json!("nope"), ErrorCode::InvalidArgument, "services.app.id: service nope does not exist"),
        (
            "/datasets/data/id",
            json!("nope"),
            ErrorCode::InvalidArgument,
            "datasets.data.id: dataset nope does not exist",
        ),
        (
            "/ports/443/connected_bundles",
            json!(["db"]),
            ErrorCode::InvalidArgument,
            "ports.443.connected_bundles: bundle db",
        ),
        ("/redundancy", json!(0), ErrorCode::InvalidArgument, "redundancy: must be at least 1"),
        ("/datasets/data/type", json!("tape"), ErrorCode::InvalidArgs, "unknown variant `tape`"),
    ] {
        let mut wrong = bundle.clone();
        *wrong.pointer_mut(pointer).unwrap() = value;
        lab.fails("update-bundle", wrong, code, says).await;
    }
    let mut wrong = bundle.clone();
    wrong["ports"] = json!({"70000": {}});
    lab.fails("update-bundle", wrong, ErrorCode::InvalidArgument, "ports.70000: a port is 1 to 65535").await;
    let mut wrong = bundle.clone();
    wrong["firewall"] = json!({});
    lab.fails("update-bundle", wrong, ErrorCode::InvalidArgs, "unknown field `firewall`").await;
    let web = lab.call("update-bundle", bundle.clone()).await.unwrap();
    assert_eq!(web["ports"]["443"]["external_port"], 8443, "ports are read");
    let view = lab.call("get-bundle", json!({"id": "web", "overlay": true})).await.unwrap();
    let app = &view["services"]["app"];
    assert_eq!((app["env"]["MODE"].as_str(), app["limits"]["memory"].as_u64()), (Some("canary"), Some(268435456)));
    assert_eq!(app["cmd"], json!(["/bin/app", "--serve"]), "the base service underneath");
    let plain = lab.call("get-bundle", json!({"id": "web"})).await.unwrap();
    assert!(plain.get("services").is_none(), "{plain}");
    let all = lab.call("list-bundles", json!({"overlay": true})).await.unwrap();
    assert_eq!(all["bundles"][0]["services"]["app"]["env"]["MODE"], "canary");

    // Plain JSON in the store, without the index (which is the key's revision).
    let stored = lab.etcdctl(&["get", "--print-value-only", "/cerana/v1/bundles/web"]);
    let stored: Value = serde_json::from_str(stored.trim()).unwrap();
    assert_eq!(stored["datasets"]["data"]["quota"], 1024);
    assert!(stored.get("mod_index").is_none(), "{stored}");

    // Nothing named by another object goes.
    let err = lab.fails("delete-service", json!({"id": "s1"}), ErrorCode::Busy, "bundle web").await;
    assert_eq!(err.details.unwrap()["used_by"], json!(["bundle web"]));
    lab.fails("delete-dataset", json!({"id": "d1"}), ErrorCode::Busy, "service s1").await;
    lab.fails("delete-bundle", json!({"id": "web", "mod_index": index(&web) - 1}), ErrorCode::Conflict, "").await;
    lab.call("delete-bundle", json!({"id": "web", "mod_index": index(&web)})).await.unwrap();
    lab.call("delete-service", json!({"id": "s1"})).await.unwrap();
    lab.fails("delete-dataset", json!({"id": "d1"}), ErrorCode::Busy, "dataset d2").await;
    lab.call("delete-dataset", json!({"id": "d2"})).await.unwrap();
    lab.call("delete-dataset", json!({"id": "d1"})).await.unwrap();
    lab.fails("delete-dataset", json!({"id": "d1"}), ErrorCode::NotFound, "does not exist").await;

    // Defaults and DHCP.
    let defaults = lab.call("get-default-options", json!({})).await.unwrap();
    assert_eq!(defaults, json!({"zfs_manual": false, "mod_index": 0}));
    lab.call("set-default-options", json!({"zfs_manual": true})).await.unwrap();
    assert_eq!(lab.call("get-default-options", json!({})).await.unwrap()["zfs_manual"], true);
    lab.fails("get-dhcp-config", json!({}), ErrorCode::NotFound, "DHCP configuration").await;
    let dhcp = json!({"net": "10.0.0.0/24", "gateway": "10.0.0.1", "dns": ["10.0.0.1"], "lease_secs": 3600});
    let mut wrong = dhcp.clone();
    wrong["gateway"] = json!("10.9.0.1");
    lab.fails("set-dhcp-config", wrong, ErrorCode::InvalidArgument, "gateway: is not inside 10.0.0.0/24").await;
    let mut wrong = dhcp.clone();
    wrong["lease_secs"] = json!(60);
    lab.fails("set-dhcp-config", wrong, ErrorCode::InvalidArgument, "lease_secs").await;
    lab.call("set-dhcp-config", dhcp.clone()).await.unwrap();
    lab.fails("set-dhcp-config", dhcp, ErrorCode::Conflict, "exists already").await;
    assert_eq!(lab.call("get-dhcp-config", json!({})).await.unwrap()["gateway"], "10.0.0.1");

    // What a newer node wrote (an extra field) still reads; garbage is named, not a crash.
    lab.etcdctl(&["put", "/cerana/v1/nodes/10.0.0.5", r#"{"id":"10.0.0.5","cpu_cores":4,"gpu":"new"}"#]);
    let nodes = lab.call("list-nodes", json!({})).await.unwrap();
    assert_eq!(nodes["nodes"][0]["cpu_cores"], 4);
    assert_eq!(lab.call("get-node", json!({"id": "10.0.0.5"})).await.unwrap()["id"], "10.0.0.5");
    lab.etcdctl(&["put", "/cerana/v1/datasets/broken", "not json"]);
    lab.fails("get-dataset", json!({"id": "broken"}), ErrorCode::Failed, "/cerana/v1/datasets/broken").await;
}

/// Issue #17: a token's secret is shown once; the store keeps only its hash; bad requests are
/// refused with typed errors; a revoked token is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_are_minted_once_stored_hashed_and_revoked() {
    use cerana_protocol::tasks::auth::{Role, TokenRecord};
    let lab = require_ok!(Lab::start().await);

    let created = lab
        .call("auth-token-create", json!({"role": "read", "ttl_seconds": 3600, "description": "grafana"}))
        .await
        .unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(token.starts_with(&format!("cerana-{id}-")), "{created}");
    let stored = lab.etcdctl(&["get", "--print-value-only", &format!("/cerana/v1/auth/tokens/{id}")]);
    let secret = token.rsplit('-').next().unwrap();
    assert!(!stored.contains(secret), "the store holds the secret: {stored}");
    let record: TokenRecord = serde_json::from_str(stored.trim()).unwrap();
    let table = cerana_credentials::TokenTable::new([record]);
    let verified = table.verify(&token, cerana_credentials::unix_now()).unwrap();
    assert_eq!(verified.role, Role::Read);

    let listed = lab.call("auth-token-list", json!({})).await.unwrap();
    let tokens = listed["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0]["id"], id.as_str());
    assert_eq!(tokens[0]["description"], "grafana");
    assert!(tokens[0].get("secret_sha256").is_none() && !listed.to_string().contains(secret), "{listed}");

    lab.fails(
        "auth-token-create",
        json!({"role": "read", "ttl_seconds": 5}),
        ErrorCode::InvalidArgument,
        "ttl_seconds",
    )
    .await;
    lab.fails(
        "auth-token-create",
        json!({"role": "root", "ttl_seconds": 600}),
        ErrorCode::InvalidArgs,
        "unknown variant",
    )
    .await;
    lab.fails(
        "auth-token-create",
        json!({"role": "read", "ttl_seconds": 600, "secret": "mine"}),
        ErrorCode::InvalidArgs,
        "unknown field",
    )
    .await;
    lab.fails("auth-token-revoke", json!({"id": "../../nodes"}), ErrorCode::InvalidArgs, "not a token id").await;

    lab.call("auth-token-revoke", json!({"id": id})).await.unwrap();
    lab.fails("auth-token-revoke", json!({"id": id}), ErrorCode::NotFound, "no token").await;
    assert_eq!(lab.call("auth-token-list", json!({})).await.unwrap()["tokens"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_history_filters_by_node_time_and_count() {
    let lab = require_ok!(Lab::start().await);
    let entry = |node: &str, at: u64| {
        let key = format!("/cerana/v1/nodes-history/{node}/{at:015}");
        let value = json!({ "id": node, "heartbeat_ms": at, "memory_free": at * 10 }).to_string();
        lab.etcdctl(&["put", &key, &value]);
    };
    for at in [1_000, 61_000, 121_000, 181_000] {
        entry("node-a", at);
    }
    for at in [2_000, 62_000] {
        entry("node-b", at);
    }
    // Neither a node's entry nor readable: stepped over, and a damaged entry hides nothing else.
    lab.etcdctl(&["put", "/cerana/v1/nodes-history/stray", "x"]);
    lab.etcdctl(&["put", "/cerana/v1/nodes-history/node-c/000000000005000", "not json"]);
    entry("node-c", 65_000);

    let times = |v: &Value, node: &str| -> Vec<u64> {
        v["nodes"][node]
            .as_array()
            .unwrap_or_else(|| panic!("no {node} in {v}"))
            .iter()
            .map(|n| n["heartbeat_ms"].as_u64().unwrap())
            .collect()
    };
    let all = lab.call("get-nodes-history", json!({})).await.unwrap();
    assert_eq!(all["nodes"].as_object().unwrap().len(), 3, "{all}");
    assert_eq!(times(&all, "node-a"), [181_000, 121_000, 61_000, 1_000], "newest first");
    assert_eq!(times(&all, "node-c"), [65_000]);
    assert_eq!(all["nodes"]["node-a"][0]["memory_free"], 1_810_000);

    let one = lab.call("get-nodes-history", json!({ "nodes": ["node-b"] })).await.unwrap();
    assert_eq!(one["nodes"].as_object().unwrap().len(), 1, "{one}");
    assert_eq!(times(&one, "node-b"), [62_000, 2_000]);

    let window = lab.call("get-nodes-history", json!({ "after_ms": 61_000, "before_ms": 181_000 })).await.unwrap();
    assert_eq!(times(&window, "node-a"), [121_000, 61_000], "after is inclusive, before is not");
    assert_eq!(times(&window, "node-b"), [62_000]);

    let newest = lab.call("get-nodes-history", json!({ "nodes": ["node-a"], "limit": 2 })).await.unwrap();
    assert_eq!(times(&newest, "node-a"), [181_000, 121_000]);
    let unknown = lab.call("get-nodes-history", json!({ "nodes": ["node-z"] })).await.unwrap();
    assert_eq!(times(&unknown, "node-z"), Vec::<u64>::new());

    lab.fails("get-nodes-history", json!({ "after_ms": 5, "before_ms": 5 }), ErrorCode::InvalidArgument, "before_ms")
        .await;
    lab.fails("get-nodes-history", json!({ "limit": 0 }), ErrorCode::InvalidArgument, "limit").await;
    lab.fails("get-nodes-history", json!({ "limit": 100_000 }), ErrorCode::InvalidArgument, "limit").await;
    lab.fails("get-nodes-history", json!({ "nodes": ["../x"] }), ErrorCode::InvalidArgs, "not an id").await;
    lab.fails("get-nodes-history", json!({ "node": "node-a" }), ErrorCode::InvalidArgs, "unknown field `node`").await;
}
